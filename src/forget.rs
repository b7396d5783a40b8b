//! Forgetting a player (GDPR article 17), for `gamemetrics players forget` and
//! `DELETE /players/{player_id}`: a tombstone in PostgreSQL, then a forget record to the
//! player's partition, which each consumer role acts on in order (`crate::actors::forget`).
//!
//! The tombstone comes first: from the moment it is committed, a role that (re)opens a partition
//! drops the player's records, so a record read again after a restart can't bring them back.
//! The record is produced again on every request until all three roles have reported, so a
//! request whose produce failed is completed by asking again.

use crate::db::forget::{self, Tombstone};
use crate::kafka::{EventProducer, ProduceError};
use diesel_async::AsyncPgConnection;

/// Where a forget request came from, as the audit table records it.
#[derive(Debug, Clone, Copy)]
pub enum Via {
    Cli,
    Http,
}

impl Via {
    fn as_str(self) -> &'static str {
        match self {
            Via::Cli => "cli",
            Via::Http => "http",
        }
    }
}

/// What a forget request answers: the tombstone, with what each role removed so far.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Forgetting {
    /// `forgetting` until all three roles have removed the player, then `forgotten`.
    pub status: &'static str,
    /// True for the request that made the tombstone.
    pub first_request: bool,
    #[serde(flatten)]
    pub tombstone: Tombstone,
}

impl Forgetting {
    /// True once every role has removed the player.
    pub fn complete(&self) -> bool {
        self.tombstone.complete()
    }
}

/// Why a forget request failed; asking again is always safe.
#[derive(Debug, thiserror::Error)]
pub enum ForgetError {
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] diesel::result::Error),
    #[error("the forget record could not be written to Kafka ({0}); the tombstone is kept: ask again")]
    Kafka(#[from] ProduceError),
}

/// Records the request, makes the tombstone and (until every role has done its part) writes the
/// forget record.
pub async fn forget(
    conn: &mut AsyncPgConnection,
    producer: &EventProducer,
    player: &str,
    requested_by: &str,
    via: Via,
) -> Result<Forgetting, ForgetError> {
    let (tombstone, first_request) = forget::request(conn, player, requested_by, via.as_str()).await?;
    if !tombstone.complete() {
        let delivery = producer.forget_player(player).await?;
        tracing::info!(
            player_id = player,
            requested_by,
            partition = delivery.partition,
            offset = delivery.offset,
            "forget record written"
        );
    }
    Ok(Forgetting {
        status: if tombstone.complete() {
            "forgotten"
        } else {
            "forgetting"
        },
        first_request,
        tombstone,
    })
}
