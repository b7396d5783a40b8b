//! gamemetrics: a real-time gaming analytics pipeline.
//!
//! # The tour
//!
//! An event's journey, and where each hop lives:
//!
//! 1. **Ingestion** ([`http`]): `POST /api/v1/events` parses the body into a [`domain::GameEvent`]
//!    (every field checked once, errors name the field), stamps `ingested_at`, and hands it to
//! 2. **the producer** ([`kafka::EventProducer`]): keyed by `player_id`, murmur2-partitioned like
//!    the Java client, written with `acks=all` and idempotence. The API answers 200 only after the
//!    in-sync replicas have it, 503 with `Retry-After` when they don't in time.
//! 3. **The topic** `player.events.raw` (created by `gamemetrics migrate`, see [`kafka::ensure_topic`])
//!    is read by three consumer groups (logger, stats, leaderboard): the actor tree in [`actors`],
//!    one source actor per partition (which first ties the partition's offsets to the topic's
//!    id, its log) feeding a role actor that batches and flushes through supervised PostgreSQL
//!    and Redis sinks, with exactly-once effects.
//! 4. **Storage** ([`db`]): PostgreSQL tables from `migrations/` ([`schema`]) and the queries on
//!    them; Redis DB 0 for stats and DB 1 for leaderboards (on a Redis Cluster, one database
//!    and hash-tagged keys), every key built by [`db::redis_keys`] and every connection by
//!    [`db::redis_conn`]. What a board, a period and a score are: [`domain::leaderboard`].
//! 5. **Reads** ([`http::query`]): player stats (Redis, falling back to PostgreSQL), leaderboards
//!    and ranks (Redis), events (PostgreSQL). Ingestion, and optionally reads, can require
//!    per-game API keys ([`auth`]), and every ingest request spends [`rate_limit`] tokens after
//!    authentication. The contract is [`http::openapi`], served at `/openapi.json`.
//!
//! Arrows point one way: [`http`] and [`actors`] use [`domain`], [`db`], [`kafka`], [`auth`]
//! and [`rate_limit`]; none of those uses `http` or `actors`.
//!
//! # Errors
//!
//! Each module owns a `thiserror` enum for what can go wrong inside it ([`domain::ValidationError`],
//! [`kafka::ProduceError`], [`db::DbError`], ...). At the HTTP boundary they become one
//! [`http::error::ApiError`], which alone decides status codes. `main` glues with `anyhow` and
//! `.context()`. Nothing a client sends can produce a 500.
//!
//! # Configuration
//!
//! [`config::Config`] is built once from the environment in `main` and passed down; nothing
//! else reads the environment.

pub mod actors;
pub mod app;
pub mod auth;
pub mod config;
pub mod db;
pub mod domain;
pub mod forget;
pub mod heap;
pub mod http;
pub mod kafka;
pub mod metrics;
pub mod rate_limit;
pub mod rebuild;
pub mod replay;
pub mod schema;
pub mod telemetry;
