//! `gamemetrics rebuild redis`: after a lost Redis (a new instance, `FLUSHALL`), recompute the
//! live stats (DB 0) and boards (DB 1, current and retained dated ones) from `events`, and set
//! the stats and leaderboard consumers' positions so that what they add next joins exactly.
//!
//! The cut: the logger's stored offsets (`consumer_offsets`, `event-logger`, the topic's current
//! log), read in the same snapshot as the events. `events` holds exactly the records below them
//! (the logger stores its offset in the transaction that writes its rows), so Redis is rebuilt
//! from those, and both roles resume at the cut: their Redis offsets are set to it, and their
//! Kafka groups' committed offsets are moved back to it where they were ahead. Records at and
//! above the cut are then applied by the consumers as usual. The stats' `player_statistics` is
//! rewritten from the same events and its offsets set to the cut too, so both of that role's
//! stores resume from one place. Retry claims are written for the events of the last two dedup
//! windows, so a client retry arriving after the rebuild still counts once.
//!
//! The stats and leaderboard consumers must be stopped: the command refuses while their groups
//! have members, and fences them out while it runs (a partition doesn't open while
//! `gamemetrics:rebuilding:{stats,boards}` is set). The logger and ingestion keep running.
//!
//! With `--game`, one game's boards alone, at the leaderboard's own place (see
//! `rebuild_game`); only the leaderboard consumers stop.

use crate::actors::Role;
use crate::config::Config;
use crate::db::redis_keys::{Layout, RedisKeys, Store};
use crate::db::{PartitionLog, RedisPool};
use crate::domain::leaderboard::{periods_of, Board, BoardTop, Period};
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use diesel::sql_types::{Array, BigInt, Date, Int4, Jsonb, Text, Timestamptz, Uuid as SqlUuid, Varchar};
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, RunQueryDsl};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// What a rebuild wrote.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Rebuilt {
    /// The topic's log the cut belongs to.
    pub log: String,
    /// Partition → the offset both roles resume from.
    pub cut: BTreeMap<i32, i64>,
    pub players: usize,
    /// Board keys written, current and dated.
    pub boards: usize,
    pub board_entries: usize,
    /// Retry claims written (stats, boards).
    pub claims: (usize, usize),
    /// Partition → committed offset moved back to the cut, per group.
    pub rewound: BTreeMap<String, BTreeMap<i32, i64>>,
}

/// Why a rebuild stopped; nothing half-written is left as final (run it again).
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error(transparent)]
    Connect(#[from] crate::db::DbError),
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] diesel::result::Error),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("Kafka: {0}")]
    Kafka(String),
    #[error(
        "consumer group {group} has {members} member(s): stop the stats and leaderboard consumers \
         first (kubectl scale deploy/stats-aggregator deploy/leaderboard-manager --replicas=0); the \
         logger and ingestion may keep running"
    )]
    ConsumersRunning { group: String, members: usize },
    #[error("the logger has stored no offset of topic {0}'s current log: nothing to rebuild from")]
    NoCut(String),
    #[error("writing the rebuilt stores failed ({0}); the consumers stay fenced out: run the rebuild again")]
    Writing(String),
    #[error(
        "rebuilding one game needs retry claims (DEDUP_WINDOW_SECS > 0): they keep the leaderboard \
         from counting again what the rebuild counted"
    )]
    GameNeedsDedup,
    #[error("the logger has not stored partition {partition} up to {wanted} (only {stored}) within {waited:?}: is it running?")]
    LoggerBehind {
        partition: i32,
        wanted: i64,
        stored: i64,
        waited: std::time::Duration,
    },
}

impl From<rdkafka::error::KafkaError> for RebuildError {
    fn from(e: rdkafka::error::KafkaError) -> Self {
        RebuildError::Kafka(e.to_string())
    }
}

const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the fence outlives a rebuild that died without lifting it.
const FENCE_SECS: u64 = 3_600;

/// Rebuilds both Redis stores, or with `game` that game's boards alone; see the module
/// documentation.
pub async fn rebuild_redis(config: &Config, game: Option<&str>) -> Result<Rebuilt, RebuildError> {
    let keys = RedisKeys::for_config(&config.redis);
    let stats = crate::db::redis_pool(&config.redis, 0)?;
    let boards = crate::db::redis_pool(&config.redis, 1)?;
    let by = format!("pid {} since {}", std::process::id(), Utc::now().to_rfc3339());
    // The fence first, then the check: a consumer that starts in between can't open a
    // partition, and one already running is a member the check sees. One game's boards fence
    // the leaderboard alone.
    let fenced: Vec<(&RedisPool, String)> = match game {
        Some(_) => vec![(&boards, keys.rebuilding(Store::Boards))],
        None => vec![
            (&stats, keys.rebuilding(Store::Stats)),
            (&boards, keys.rebuilding(Store::Boards)),
        ],
    };
    for (pool, fence) in &fenced {
        redis::cmd("SET")
            .arg(fence)
            .arg(&by)
            .arg("EX")
            .arg(FENCE_SECS)
            .query_async::<()>(&mut pool.get().await?)
            .await?;
    }
    let result = rebuild_fenced(config, &keys, &stats, &boards, game).await;
    if matches!(result, Err(RebuildError::Writing(_))) {
        // Half-written stores must not be consumed: the fence stays until a rebuild succeeds
        // (or it expires).
        return result;
    }
    for (pool, fence) in &fenced {
        let lifted = async {
            redis::cmd("DEL")
                .arg(fence)
                .query_async::<()>(&mut pool.get().await?)
                .await
        };
        if let Err(e) = lifted.await {
            tracing::warn!(error = %e, "could not lift the rebuild fence; it expires on its own");
        }
    }
    result
}

async fn rebuild_fenced(
    config: &Config,
    keys: &RedisKeys,
    stats: &RedisPool,
    boards: &RedisPool,
    game: Option<&str>,
) -> Result<Rebuilt, RebuildError> {
    let topic = config.kafka.kafka_topic.clone();
    // One game's boards are the leaderboard's alone: the stats keep running.
    let roles: &[Role] = match game {
        Some(_) => &[Role::Leaderboard],
        None => &[Role::Stats, Role::Leaderboard],
    };
    let groups: Vec<String> = roles
        .iter()
        .map(|r| format!("{}{}", config.consumer.consumer_group_prefix, r.group_id()))
        .collect();
    let kafka = config.kafka.clone();
    let to_check = groups.clone();
    let (log, partitions) =
        tokio::task::spawn_blocking(move || -> Result<(String, Vec<i32>), RebuildError> {
            let consumer: BaseConsumer = crate::kafka::client_config(&kafka)
                .map_err(|e| RebuildError::Kafka(e.to_string()))?
                .create()?;
            for group in &to_check {
                let list = consumer.fetch_group_list(Some(group), KAFKA_TIMEOUT)?;
                let members = list.groups().iter().map(|g| g.members().len()).sum::<usize>();
                if members > 0 {
                    return Err(RebuildError::ConsumersRunning {
                        group: group.clone(),
                        members,
                    });
                }
            }
            let id = crate::kafka::describe_topic_id(consumer.client(), &kafka.kafka_topic, KAFKA_TIMEOUT)
                .map_err(|e| RebuildError::Kafka(e.to_string()))?;
            let partitions = consumer
                .fetch_metadata(Some(&kafka.kafka_topic), KAFKA_TIMEOUT)?
                .topics()
                .iter()
                .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                .collect();
            Ok((id.as_str().to_owned(), partitions))
        })
        .await
        .map_err(|e| RebuildError::Kafka(e.to_string()))??;
    if let Some(game) = game {
        return rebuild_game(config, keys, boards, &topic, &log, &partitions, game).await;
    }

    let window = config.consumer.dedup_window_secs;
    let snapshot = read_snapshot(config, &topic, &log, window, None).await?;
    if snapshot.cut.is_empty() {
        return Err(RebuildError::NoCut(topic));
    }
    let retention = config.consumer.leaderboard_retention_days;
    let model = Model::of(&snapshot, &scoring_types(config), retention, Utc::now());

    let written = write_stores(config, keys, stats, boards, &snapshot, &model, &topic, &log).await;
    let mut out = written.map_err(|e| RebuildError::Writing(e.to_string()))?;
    // Last, the groups: once they resume from the cut, the stores must already hold it.
    let (kafka, cut) = (config.kafka.clone(), snapshot.cut.clone());
    out.rewound = tokio::task::spawn_blocking(move || rewind_groups(&kafka, &groups, &cut))
        .await
        .map_err(|e| RebuildError::Writing(e.to_string()))?
        .map_err(|e| RebuildError::Writing(e.to_string()))?;
    Ok(out)
}

/// Writes the rebuilt state: Redis (stats, boards, retry claims, the roles' offsets), then the
/// stats role's `player_statistics` and its offsets there, and the stored top N, all as of the
/// cut, so every store of both roles resumes from the same place.
#[allow(clippy::too_many_arguments)]
async fn write_stores(
    config: &Config,
    keys: &RedisKeys,
    stats: &RedisPool,
    boards: &RedisPool,
    snapshot: &Snapshot,
    model: &Model,
    topic: &str,
    log: &str,
) -> Result<Rebuilt, RebuildError> {
    let window = config.consumer.dedup_window_secs;
    // Whatever the lost Redis left (a partial loss, an earlier attempt) goes: this is the state.
    for (pool, patterns) in [
        (
            stats,
            vec![keys.pattern("player_stats:"), keys.pattern("gamemetrics:")],
        ),
        (
            boards,
            vec![keys.pattern("leaderboard:"), keys.pattern("gamemetrics:")],
        ),
    ] {
        let mut doomed = Vec::new();
        for pattern in patterns {
            for kind in ["hash", "zset", "string"] {
                doomed.extend(pool.get().await?.scan_keys(&pattern, kind).await?);
            }
        }
        doomed.retain(|k| *k != keys.rebuilding(Store::Stats) && *k != keys.rebuilding(Store::Boards));
        run(
            pool,
            doomed.into_iter().map(|k| cmd("DEL").arg(k).to_owned()).collect(),
        )
        .await?;
    }

    let mut out = Rebuilt {
        log: log.to_owned(),
        cut: snapshot.cut.clone(),
        players: model.stats.len(),
        ..Rebuilt::default()
    };
    run(stats, model.stats_commands(keys)).await?;
    let (board_cmds, n_boards, entries) = model.board_commands(keys);
    out.boards = n_boards;
    out.board_entries = entries;
    run(boards, board_cmds).await?;
    let (stats_claims, board_claims) =
        model.claim_commands(keys, snapshot, window, config.consumer.dedup_buckets, log);
    out.claims = (stats_claims.len(), board_claims.len());
    run(stats, stats_claims).await?;
    run(boards, board_claims).await?;
    run(
        stats,
        guard_commands(keys, Role::Stats, topic, log, &snapshot.cut, model.stats.keys()),
    )
    .await?;
    run(
        boards,
        guard_commands(keys, Role::Leaderboard, topic, log, &snapshot.cut, model.games()),
    )
    .await?;
    write_postgres(config, model, topic, log, &snapshot.cut).await?;
    Ok(out)
}

/// `player_statistics` as the events make it, the stats role's offsets there set to the cut,
/// and `leaderboards` as the rebuilt boards' top N, in one transaction.
async fn write_postgres(
    config: &Config,
    model: &Model,
    topic: &str,
    log: &str,
    cut: &BTreeMap<i32, i64>,
) -> Result<(), RebuildError> {
    let mut conn = crate::db::connect(&config.database).await?;
    let n = config.consumer.leaderboard_top_n;
    let (mut players, mut totals, mut breakdowns) = (Vec::new(), Vec::new(), Vec::new());
    for (player, (total, types, _)) in &model.stats {
        players.push(player.as_str());
        totals.push(i32::try_from(*total).unwrap_or(i32::MAX));
        breakdowns.push(serde_json::json!(types));
    }
    let tops = model.tops(n);
    let games: Vec<String> = model.games().cloned().collect();
    conn.transaction::<_, diesel::result::Error, _>(async |conn| {
        for (p, next) in cut {
            let o = PartitionLog {
                service: Role::Stats.service(),
                topic,
                partition: *p,
                log,
            };
            crate::db::offsets::reset(conn, o, *next).await?;
        }
        diesel::sql_query("DELETE FROM player_statistics")
            .execute(conn)
            .await?;
        diesel::sql_query(
            "INSERT INTO player_statistics (player_id, total_events, event_breakdown) \
             SELECT p, t, b FROM unnest($1::text[], $2::int[], $3::jsonb[]) AS u(p, t, b)",
        )
        .bind::<Array<Text>, _>(&players)
        .bind::<Array<Int4>, _>(&totals)
        .bind::<Array<Jsonb>, _>(&breakdowns)
        .execute(conn)
        .await?;
        crate::db::boards::lock(conn, &games).await?;
        diesel::sql_query("DELETE FROM leaderboards")
            .execute(conn)
            .await?;
        crate::db::boards::write_top(conn, &tops).await
    })
    .await?;
    Ok(())
}

/// One game's boards, lost while the rest of Redis is whole. The leaderboard keeps its place
/// (its offsets and its other games' boards are right), so the cut is where it stands: the
/// rebuild waits until the logger has stored at least that far, recomputes the game's boards
/// from `events`, and claims (as retries) the game's scoring events the logger stored beyond
/// the leaderboard's place, read from the topic, which the leaderboard reads when it resumes
/// and must not count again. Needs retry claims, and the leaderboard restarted within
/// DEDUP_WINDOW_SECS.
#[allow(clippy::too_many_arguments)]
async fn rebuild_game(
    config: &Config,
    keys: &RedisKeys,
    boards: &RedisPool,
    topic: &str,
    log: &str,
    partitions: &[i32],
    game: &str,
) -> Result<Rebuilt, RebuildError> {
    let window = config.consumer.dedup_window_secs;
    if window == 0 {
        return Err(RebuildError::GameNeedsDedup);
    }
    let mut stands = BTreeMap::new();
    {
        let mut conn = boards.get().await?;
        for p in partitions {
            let o = PartitionLog {
                service: Role::Leaderboard.service(),
                topic,
                partition: *p,
                log,
            };
            let at: Option<i64> = redis::cmd("GET")
                .arg(keys.offsets(o))
                .query_async(&mut conn)
                .await?;
            stands.insert(*p, at.unwrap_or(0));
        }
    }
    let started = std::time::Instant::now();
    let snapshot = loop {
        let s = read_snapshot(config, topic, log, 0, Some(game)).await?;
        let behind = stands
            .iter()
            .map(|(p, at)| (*p, *at, s.cut.get(p).copied().unwrap_or(0)))
            .find(|(_, at, stored)| stored < at);
        let Some((partition, wanted, stored)) = behind else {
            break s;
        };
        if started.elapsed() >= LOGGER_WAIT {
            return Err(RebuildError::LoggerBehind {
                partition,
                wanted,
                stored,
                waited: LOGGER_WAIT,
            });
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    };
    let scoring: Vec<String> = scoring_types(config).into_iter().map(str::to_owned).collect();
    let (kafka, range, owned_game) = (
        config.kafka.clone(),
        stands
            .iter()
            .map(|(p, from)| (*p, (*from, snapshot.cut.get(p).copied().unwrap_or(*from))))
            .collect::<BTreeMap<i32, (i64, i64)>>(),
        game.to_owned(),
    );
    let between = tokio::task::spawn_blocking(move || read_between(&kafka, &range, &owned_game, &scoring))
        .await
        .map_err(|e| RebuildError::Kafka(e.to_string()))??;
    let model = Model::of(
        &snapshot,
        &scoring_types(config),
        config.consumer.leaderboard_retention_days,
        Utc::now(),
    );
    let written = async {
        let mut doomed = Vec::new();
        for kind in ["zset", "string"] {
            doomed.extend(
                boards
                    .get()
                    .await?
                    .scan_keys(&keys.game_boards_pattern(game), kind)
                    .await?,
            );
        }
        doomed.retain(|k| keys.is_board_of(game, k));
        run(
            boards,
            doomed.into_iter().map(|k| cmd("DEL").arg(k).to_owned()).collect(),
        )
        .await?;
        let (mut cmds, n_boards, entries) = model.board_commands(keys);
        let claim = Claims::new(keys, window, config.consumer.dedup_buckets, log);
        // And the replayed dead letters the model counted, as the full rebuild does.
        let replayed = model.replay_claims.iter().map(|(id, _)| id);
        for id in between.iter().chain(replayed) {
            cmds.extend(claim.of(Store::Boards, game, id));
        }
        if keys.layout() == Layout::Cluster {
            // The game's guard on a cluster lives with its boards: where the leaderboard stands.
            for (p, at) in &stands {
                let o = PartitionLog {
                    service: Role::Leaderboard.service(),
                    topic,
                    partition: *p,
                    log,
                };
                let (key, field) = keys.guard(Store::Boards, game, o);
                cmds.push(cmd("HSET").arg(key).arg(field).arg(*at).to_owned());
            }
        }
        run(boards, cmds).await?;
        let mut conn = crate::db::connect(&config.database).await?;
        let tops = model.tops(config.consumer.leaderboard_top_n);
        let games = vec![game.to_owned()];
        conn.transaction::<_, diesel::result::Error, _>(async |conn| {
            crate::db::boards::lock(conn, &games).await?;
            diesel::sql_query("DELETE FROM leaderboards WHERE game_id = $1")
                .bind::<Text, _>(game)
                .execute(conn)
                .await?;
            crate::db::boards::write_top(conn, &tops).await
        })
        .await?;
        Ok::<_, RebuildError>(Rebuilt {
            log: log.to_owned(),
            cut: stands.clone(),
            boards: n_boards,
            board_entries: entries,
            claims: (0, between.len()),
            ..Rebuilt::default()
        })
    };
    written.await.map_err(|e| RebuildError::Writing(e.to_string()))
}

/// The scoped ids of `game`'s scoring events in each partition's `[from, to)` of the topic.
fn read_between(
    kafka: &crate::config::KafkaConfig,
    range: &BTreeMap<i32, (i64, i64)>,
    game: &str,
    scoring: &[String],
) -> Result<Vec<uuid::Uuid>, RebuildError> {
    use rdkafka::Message;
    let mut cc = crate::kafka::client_config(kafka).map_err(|e| RebuildError::Kafka(e.to_string()))?;
    cc.set("group.id", "gamemetrics-rebuild")
        .set("enable.auto.commit", "false");
    let consumer: BaseConsumer = cc.create()?;
    let mut tpl = TopicPartitionList::new();
    let mut todo = BTreeMap::new();
    for (p, (from, to)) in range {
        if to > from {
            tpl.add_partition_offset(&kafka.kafka_topic, *p, Offset::Offset(*from))?;
            todo.insert(*p, *to);
        }
    }
    let mut ids = Vec::new();
    if todo.is_empty() {
        return Ok(ids);
    }
    consumer.assign(&tpl)?;
    let started = std::time::Instant::now();
    while !todo.is_empty() {
        if started.elapsed() >= LOGGER_WAIT {
            return Err(RebuildError::Kafka(format!(
                "reading the records between the leaderboard and the cut took over {LOGGER_WAIT:?}"
            )));
        }
        let Some(message) = consumer.poll(std::time::Duration::from_millis(500)) else {
            continue;
        };
        let m = message?;
        let Some(&to) = todo.get(&m.partition()) else {
            continue;
        };
        if m.offset() < to {
            if let crate::actors::messages::Payload::Event(e) = crate::actors::source::parse(m.payload()) {
                let scores = scoring.iter().any(|t| t == e.event_type.as_str())
                    && crate::domain::leaderboard::score_of(&e).is_ok();
                if scores && e.game_id.as_str() == game {
                    ids.push(e.scoped_id());
                }
            }
        }
        if m.offset() + 1 >= to {
            todo.remove(&m.partition());
        }
    }
    Ok(ids)
}

/// Moves each group's committed offsets back to the cut where they are ahead of it (records
/// between would be skipped: Redis no longer has them); behind it, they are left (the offsets
/// just set in Redis skip what the rebuild counted).
fn rewind_groups(
    kafka: &crate::config::KafkaConfig,
    groups: &[String],
    cut: &BTreeMap<i32, i64>,
) -> Result<BTreeMap<String, BTreeMap<i32, i64>>, RebuildError> {
    let mut out = BTreeMap::new();
    for group in groups {
        let mut cc = crate::kafka::client_config(kafka).map_err(|e| RebuildError::Kafka(e.to_string()))?;
        cc.set("group.id", group).set("enable.auto.commit", "false");
        let consumer: BaseConsumer = cc.create()?;
        let mut tpl = TopicPartitionList::new();
        for p in cut.keys() {
            tpl.add_partition(&kafka.kafka_topic, *p);
        }
        let committed = consumer.committed_offsets(tpl, KAFKA_TIMEOUT)?;
        let mut back = TopicPartitionList::new();
        let mut moved = BTreeMap::new();
        for e in committed.elements() {
            if let (Offset::Offset(at), Some(&to)) = (e.offset(), cut.get(&e.partition())) {
                if at > to {
                    back.add_partition_offset(&kafka.kafka_topic, e.partition(), Offset::Offset(to))?;
                    moved.insert(e.partition(), to);
                }
            }
        }
        if back.count() > 0 {
            consumer.commit(&back, CommitMode::Sync)?;
        }
        out.insert(group.clone(), moved);
    }
    Ok(out)
}

/// What the rebuild reads from PostgreSQL, in one snapshot.
struct Snapshot {
    cut: BTreeMap<i32, i64>,
    counts: Vec<TypeCount>,
    scores: Vec<DayScore>,
    /// Events of the last two dedup windows: (scoped id, game, whether it scored).
    recent: Vec<Recent>,
    /// Corrected scoring events replayed from the leaderboard's dead letters.
    replayed: Vec<serde_json::Value>,
}

#[derive(QueryableByName)]
struct CutRow {
    #[diesel(sql_type = Int4)]
    kafka_partition: i32,
    #[diesel(sql_type = BigInt)]
    next_offset: i64,
}

#[derive(QueryableByName)]
struct TypeCount {
    #[diesel(sql_type = Varchar)]
    player_id: String,
    #[diesel(sql_type = Varchar)]
    event_type: String,
    #[diesel(sql_type = BigInt)]
    n: i64,
    #[diesel(sql_type = Timestamptz)]
    newest: DateTime<Utc>,
}

#[derive(QueryableByName)]
struct DayScore {
    #[diesel(sql_type = Varchar)]
    game_id: String,
    #[diesel(sql_type = Varchar)]
    player_id: String,
    #[diesel(sql_type = Date)]
    day: NaiveDate,
    #[diesel(sql_type = BigInt)]
    score: i64,
}

#[derive(QueryableByName)]
struct Recent {
    #[diesel(sql_type = SqlUuid)]
    event_id: uuid::Uuid,
    #[diesel(sql_type = Varchar)]
    game_id: String,
    #[diesel(sql_type = Varchar)]
    player_id: String,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    scores: bool,
}

#[derive(QueryableByName)]
struct Replayed {
    #[diesel(sql_type = Jsonb)]
    original_event: serde_json::Value,
}

/// `data.score` as the leaderboard takes it (`domain::leaderboard::score_of`): a JSON integer from
/// 0 to 1,000,000,000. An integer survives JSONB as digits alone; a float (`1.0`) or exponent
/// keeps its point, so the pattern tells them apart as serde_json does.
const VALID_SCORE: &str = "jsonb_typeof(data->'score') = 'number' AND (data->>'score') ~ '^[0-9]{1,10}$' \
                           AND (data->>'score')::bigint <= 1000000000";

/// SCORING_EVENT_TYPES, trimmed.
fn scoring_types(config: &Config) -> Vec<&str> {
    config
        .consumer
        .scoring_event_types
        .iter()
        .map(|s| s.trim())
        .collect()
}

/// How long a rebuild of one game waits for the logger to store what the leaderboard applied.
const LOGGER_WAIT: std::time::Duration = std::time::Duration::from_secs(300);

async fn read_snapshot(
    config: &Config,
    topic: &str,
    log: &str,
    window: u64,
    game: Option<&str>,
) -> Result<Snapshot, RebuildError> {
    let mut conn = crate::db::connect(&config.database).await?;
    let scoring: Vec<String> = scoring_types(config).into_iter().map(str::to_owned).collect();
    let since =
        Utc::now() - chrono::Duration::seconds(i64::try_from(window.saturating_mul(2)).unwrap_or(i64::MAX));
    conn.build_transaction()
        .repeatable_read()
        .read_only()
        .run(async |conn| {
            let cut: Vec<CutRow> = diesel::sql_query(
                "SELECT kafka_partition, next_offset FROM consumer_offsets \
                 WHERE consumer_service = $1 AND topic = $2 AND topic_id = $3",
            )
            .bind::<Text, _>(Role::Logger.service())
            .bind::<Text, _>(topic)
            .bind::<Text, _>(log)
            .load(conn)
            .await?;
            let counts: Vec<TypeCount> = match game {
                Some(_) => Vec::new(),
                None => {
                    diesel::sql_query(
                        "SELECT player_id, event_type, count(*) AS n, max(event_timestamp) AS newest \
                         FROM events GROUP BY player_id, event_type",
                    )
                    .load(conn)
                    .await?
                }
            };
            let scores: Vec<DayScore> = diesel::sql_query(format!(
                "SELECT game_id, player_id, (event_timestamp AT TIME ZONE 'UTC')::date AS day, \
                        sum((data->>'score')::bigint)::bigint AS score \
                 FROM events WHERE event_type = ANY($1) AND {VALID_SCORE} \
                 AND ($2::text IS NULL OR game_id = $2) GROUP BY 1, 2, 3"
            ))
            .bind::<diesel::sql_types::Array<Text>, _>(&scoring)
            .bind::<diesel::sql_types::Nullable<Text>, _>(game)
            .load(conn)
            .await?;
            let recent: Vec<Recent> = if window == 0 || game.is_some() {
                Vec::new()
            } else {
                diesel::sql_query(format!(
                    "SELECT event_id, game_id, player_id, \
                            (event_type = ANY($1) AND {VALID_SCORE}) AS scores \
                     FROM events WHERE ingested_at >= $2"
                ))
                .bind::<diesel::sql_types::Array<Text>, _>(&scoring)
                .bind::<Timestamptz, _>(since)
                .load(conn)
                .await?
            };
            let replayed: Vec<Replayed> = diesel::sql_query(
                "SELECT original_event FROM dlq WHERE consumer_service = $1 AND replay_count > 0 \
                 AND ($2::text IS NULL OR original_event->>'game_id' = $2)",
            )
            .bind::<Text, _>(Role::Leaderboard.service())
            .bind::<diesel::sql_types::Nullable<Text>, _>(game)
            .load(conn)
            .await?;
            Ok::<_, diesel::result::Error>(Snapshot {
                cut: cut
                    .into_iter()
                    .map(|r| (r.kafka_partition, r.next_offset))
                    .collect(),
                counts,
                scores,
                recent,
                replayed: replayed.into_iter().map(|r| r.original_event).collect(),
            })
        })
        .await
        .map_err(RebuildError::from)
}

/// A player's counts: total, per event type, and the newest event's time.
type PlayerStats = (i64, BTreeMap<String, i64>, DateTime<Utc>);

/// The stores as the events make them.
struct Model {
    /// player → (total, type → count, newest timestamp).
    stats: BTreeMap<String, PlayerStats>,
    /// (game, board) → player → score.
    boards: BTreeMap<(String, Board), BTreeMap<String, i64>>,
    /// Dated board → when it expires.
    expiry: HashMap<(String, Board), i64>,
    /// game → period → the stamp its current board holds.
    markers: BTreeMap<String, BTreeMap<Period, String>>,
    /// Scoped ids of replayed dead letters that scored (claimed as scored).
    replay_claims: Vec<(uuid::Uuid, String)>,
}

impl Model {
    fn of(s: &Snapshot, scoring: &[&str], retention: u32, now: DateTime<Utc>) -> Self {
        let mut m = Model {
            stats: BTreeMap::new(),
            boards: BTreeMap::new(),
            expiry: HashMap::new(),
            markers: BTreeMap::new(),
            replay_claims: Vec::new(),
        };
        for c in &s.counts {
            let e = m
                .stats
                .entry(c.player_id.clone())
                .or_insert_with(|| (0, BTreeMap::new(), c.newest));
            e.0 += c.n;
            *e.1.entry(c.event_type.clone()).or_default() += c.n;
            e.2 = e.2.max(c.newest);
        }
        let mut scored: Vec<(String, String, NaiveDate, i64)> = s
            .scores
            .iter()
            .map(|d| (d.game_id.clone(), d.player_id.clone(), d.day, d.score))
            .collect();
        for original in &s.replayed {
            let bytes = serde_json::to_vec(original).unwrap_or_default();
            if let crate::actors::messages::Payload::Event(e) = crate::actors::source::parse(Some(&bytes)) {
                if scoring.contains(&e.event_type.as_str()) {
                    if let Ok(score) = crate::domain::leaderboard::score_of(&e) {
                        scored.push((
                            e.game_id.to_string(),
                            e.player_id.to_string(),
                            e.timestamp.date_naive(),
                            score,
                        ));
                        m.replay_claims.push((e.scoped_id(), e.game_id.to_string()));
                    }
                }
            }
        }
        let today = periods_of(now, retention);
        for (game, player, day, score) in scored {
            let midnight = day.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc();
            let periods = periods_of(midnight, retention);
            *m.boards
                .entry((game.clone(), Board::Current(Period::Alltime)))
                .or_default()
                .entry(player.clone())
                .or_default() += score;
            for (period, stamp, expires, server) in [
                (Period::Daily, &periods.day, periods.day_expires_at, &today.day),
                (
                    Period::Weekly,
                    &periods.week,
                    periods.week_expires_at,
                    &today.week,
                ),
            ] {
                // The current board follows the newest period seen that isn't ahead of the
                // server's clock, as the scores script does.
                if stamp <= server {
                    let marker = m
                        .markers
                        .entry(game.clone())
                        .or_default()
                        .entry(period)
                        .or_default();
                    if stamp > marker {
                        *marker = stamp.clone();
                    }
                }
                if expires > now.timestamp() {
                    let board = (game.clone(), Board::Dated(period, stamp.clone()));
                    m.expiry.insert(board.clone(), expires);
                    *m.boards
                        .entry(board)
                        .or_default()
                        .entry(player.clone())
                        .or_default() += score;
                }
            }
        }
        // Current daily and weekly boards: a copy of the dated board their marker names, with its
        // expiry (the scores script renames a current board, expiry and all, to its dated key
        // when its period ends).
        let mut current = Vec::new();
        for (game, periods) in &m.markers {
            for (period, stamp) in periods {
                let dated = (game.clone(), Board::Dated(*period, stamp.clone()));
                if let (Some(scores), Some(at)) = (m.boards.get(&dated), m.expiry.get(&dated)) {
                    current.push(((game.clone(), Board::Current(*period)), scores.clone(), *at));
                }
            }
        }
        for (board, scores, at) in current {
            m.expiry.insert(board.clone(), at);
            m.boards.insert(board, scores);
        }
        m
    }

    /// The top `n` of every current board, as `leaderboards` holds them.
    fn tops(&self, n: usize) -> Vec<BoardTop> {
        self.boards
            .iter()
            .filter_map(|((game, board), scores)| match board {
                Board::Current(period) => {
                    let mut entries: Vec<(String, i64)> =
                        scores.iter().map(|(p, s)| (p.clone(), *s)).collect();
                    // Redis's ZREVRANGE order: score, then member, both descending.
                    entries.sort_by(|a, b| b.1.cmp(&a.1).then(b.0.cmp(&a.0)));
                    entries.truncate(n);
                    Some(BoardTop {
                        game_id: game.clone(),
                        period: *period,
                        entries,
                    })
                }
                Board::Dated(..) => None,
            })
            .collect()
    }

    fn games(&self) -> impl Iterator<Item = &String> {
        let mut games: Vec<&String> = self.boards.keys().map(|(g, _)| g).collect();
        games.dedup();
        games.into_iter()
    }

    fn stats_commands(&self, keys: &RedisKeys) -> Vec<redis::Cmd> {
        self.stats
            .iter()
            .map(|(player, (total, types, newest))| {
                let mut c = cmd("HSET");
                c.arg(keys.player_stats(player)).arg("total_events").arg(total);
                for (t, n) in types {
                    c.arg(format!("event_{t}")).arg(n);
                }
                c.arg("last_event")
                    .arg(newest.to_rfc3339_opts(SecondsFormat::Micros, true));
                c
            })
            .collect()
    }

    /// The board commands, how many boards, how many entries.
    fn board_commands(&self, keys: &RedisKeys) -> (Vec<redis::Cmd>, usize, usize) {
        let mut cmds = Vec::new();
        let mut entries = 0;
        for ((game, board), scores) in &self.boards {
            let key = keys.board(game, board);
            for chunk in scores.iter().collect::<Vec<_>>().chunks(1_000) {
                let mut c = cmd("ZADD");
                c.arg(&key);
                for (player, score) in chunk {
                    c.arg(**score).arg(*player);
                }
                cmds.push(c);
            }
            entries += scores.len();
            if let Some(at) = self.expiry.get(&(game.clone(), board.clone())) {
                cmds.push(cmd("EXPIREAT").arg(&key).arg(*at).to_owned());
            }
        }
        for (game, periods) in &self.markers {
            for (period, stamp) in periods {
                cmds.push(
                    cmd("SET")
                        .arg(keys.board_marker(game, *period))
                        .arg(stamp)
                        .to_owned(),
                );
            }
        }
        (cmds, self.boards.len(), entries)
    }

    /// Retry claims for the recent events, stats' and boards': marked as seen by the rebuild, a
    /// place no record has, so a record carrying one of these ids later is a retry.
    fn claim_commands(
        &self,
        keys: &RedisKeys,
        s: &Snapshot,
        window: u64,
        configured_buckets: u32,
        log: &str,
    ) -> (Vec<redis::Cmd>, Vec<redis::Cmd>) {
        if window == 0 {
            return (Vec::new(), Vec::new());
        }
        let claim = Claims::new(keys, window, configured_buckets, log);
        let (mut stats, mut boards) = (Vec::new(), Vec::new());
        for r in &s.recent {
            let scoped = uuid::Uuid::new_v5(&r.event_id, r.game_id.as_bytes());
            stats.extend(claim.of(Store::Stats, &r.player_id, &scoped));
            if r.scores {
                boards.extend(claim.of(Store::Boards, &r.game_id, &scoped));
            }
        }
        for (scoped, game) in &self.replay_claims {
            boards.extend(claim.of(Store::Boards, game, scoped));
        }
        (stats, boards)
    }
}

/// Retry claims as the rebuild writes them: in this generation's hashes, marked as first seen by
/// the rebuild (a place no record has), so a record carrying one of these ids later is a retry.
struct Claims<'a> {
    keys: &'a RedisKeys,
    configured_buckets: u32,
    generation: u64,
    expires: u64,
    seen: String,
}

impl<'a> Claims<'a> {
    fn new(keys: &'a RedisKeys, window: u64, configured_buckets: u32, log: &str) -> Self {
        let window = window.max(1);
        let generation = u64::try_from(Utc::now().timestamp()).unwrap_or(0) / window;
        Claims {
            keys,
            configured_buckets,
            generation,
            expires: (generation + 2) * window,
            seen: format!("{}:rebuild:", log.get(..8).unwrap_or(log)),
        }
    }

    /// The commands claiming `id` for `store`, kept with `tag` (the player or game) on a cluster.
    fn of(&self, store: Store, tag: &str, id: &uuid::Uuid) -> [redis::Cmd; 2] {
        let buckets = self.keys.claim_buckets(store, self.configured_buckets);
        let hash = format!(
            "{}{}",
            self.keys.claims_of(store, tag, self.generation),
            RedisKeys::claim_bucket(id, buckets)
        );
        [
            cmd("HSET")
                .arg(&hash)
                .arg(id.as_bytes().as_slice())
                .arg(&self.seen)
                .to_owned(),
            cmd("EXPIREAT").arg(&hash).arg(self.expires).arg("NX").to_owned(),
        ]
    }
}

/// The offsets a role's scripts check, set to the cut: the partition's (and, on a cluster, each
/// player's or game's guard field for every partition).
fn guard_commands<'a>(
    keys: &RedisKeys,
    role: Role,
    topic: &str,
    log: &str,
    cut: &BTreeMap<i32, i64>,
    tags: impl Iterator<Item = &'a String>,
) -> Vec<redis::Cmd> {
    let store = if role == Role::Stats {
        Store::Stats
    } else {
        Store::Boards
    };
    let mut cmds = Vec::new();
    let logs: Vec<(PartitionLog<'_>, i64)> = cut
        .iter()
        .map(|(p, next)| {
            (
                PartitionLog {
                    service: role.service(),
                    topic,
                    partition: *p,
                    log,
                },
                *next,
            )
        })
        .collect();
    for (o, next) in &logs {
        cmds.push(cmd("SET").arg(keys.offsets(*o)).arg(next).to_owned());
        cmds.push(cmd("SET").arg(keys.last_log(*o)).arg(log).to_owned());
    }
    if keys.layout() == Layout::Cluster {
        for tag in tags {
            for (o, next) in &logs {
                let (key, field) = keys.guard(store, tag, *o);
                cmds.push(cmd("HSET").arg(key).arg(field).arg(next).to_owned());
            }
        }
    }
    cmds
}

fn cmd(name: &str) -> redis::Cmd {
    redis::cmd(name)
}

/// Runs commands: pipelined in chunks on a single Redis, many at once on a cluster (each routed
/// by its key).
async fn run(pool: &RedisPool, cmds: Vec<redis::Cmd>) -> Result<(), redis::RedisError> {
    for chunk in cmds.chunks(500) {
        if pool.is_cluster() {
            let sent = futures::future::join_all(chunk.iter().map(|c| async move {
                let mut conn = pool.get().await?;
                c.query_async::<()>(&mut conn).await
            }))
            .await;
            sent.into_iter().collect::<Result<Vec<()>, _>>()?;
        } else {
            let mut pipe = redis::pipe();
            for c in chunk {
                pipe.add_command(c.clone()).ignore();
            }
            pipe.query_async::<()>(&mut pool.get().await?).await?;
        }
    }
    Ok(())
}
