//! The chaos soak behind `scripts/soak` (ignored by `cargo test`: it runs for half an hour).
//!
//! Events at a fixed rate (`SOAK_RATE`, default 500/s) for `SOAK_MINUTES` (default 30) into
//! `gamemetrics serve` and one `consume --role …` process per role, on the three-broker cluster
//! of `tests/cluster.rs`, while every 20–40 s a fault is chosen at random: kill -9 a consumer
//! of some role or the ingest process (then started again), restart PostgreSQL or Redis, kill -9
//! a broker (then started again). Clients retry with their `event_id` until answered 200.
//! Afterwards every store is compared with the model of the accepted events, and the counts go
//! to `SOAK_REPORT` (markdown) for docs/reliability.md.

#[path = "api/helpers.rs"]
#[allow(dead_code)]
mod helpers;
#[path = "api/model.rs"]
#[allow(dead_code)]
mod model;

use gamemetrics::config::Config;
use helpers::*;
use model::{assert_state, count, events_over, Model};
use rand::{Rng, SeedableRng};
use redis::AsyncCommands;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ROLES: [&str; 3] = ["logger", "stats", "leaderboard"];

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One gamemetrics process of the soak, started again after each kill.
struct Proc {
    args: Vec<&'static str>,
    port: u16,
    child: Child,
    restarts: u32,
    /// VmRSS in MiB a minute in, and of the process alive at the end.
    rss_start: Option<u64>,
}

impl Proc {
    fn spawn(config: &Config, args: &[&'static str], port: u16) -> Child {
        Command::new(env!("CARGO_BIN_EXE_gamemetrics"))
            .args(args)
            .env("KAFKA_BROKERS", KAFKA3_BOOTSTRAP)
            .env("KAFKA_TOPIC", &config.kafka.kafka_topic)
            .env("DATABASE_URL", config.database.database_url.expose())
            .env("DATABASE_POOL_SIZE", "4")
            .env("REDIS_URL", config.redis.redis_url.expose())
            .env("REDIS_KEY_PREFIX", &config.redis.redis_key_prefix)
            .env("CONSUMER_GROUP_PREFIX", &config.consumer.consumer_group_prefix)
            .env("LEADERBOARD_RETENTION_DAYS", "36500")
            .env("AUTH_REQUIRED", "false")
            .env("RATE_LIMIT_RPS", "0")
            .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start gamemetrics")
    }

    fn start(config: &Config, args: &[&'static str]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a port")
            .port();
        Proc {
            args: args.to_vec(),
            port,
            child: Self::spawn(config, args, port),
            restarts: 0,
            rss_start: None,
        }
    }

    /// SIGKILL, then the same command again on the same port.
    fn crash_and_restart(&mut self, config: &Config) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::spawn(config, &self.args, self.port);
        self.restarts += 1;
        self.rss_start = None;
    }

    fn rss_mib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? / 1024)
    }

    fn name(&self) -> String {
        self.args.last().copied().unwrap_or("serve").to_owned()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    KillConsumer(usize),
    KillIngest,
    RestartPostgres,
    RestartRedis,
    KillBroker,
}

impl Fault {
    fn label(self) -> String {
        match self {
            Fault::KillConsumer(r) => format!("kill -9 the {} consumer", ROLES[r]),
            Fault::KillIngest => "kill -9 ingest".into(),
            Fault::RestartPostgres => "restart PostgreSQL".into(),
            Fault::RestartRedis => "restart Redis".into(),
            Fault::KillBroker => "kill -9 a broker (of 3)".into(),
        }
    }
}

/// [`run_script`] off the test's thread, so the load goes on while a broker starts.
async fn script(name: &'static str, args: Vec<&'static str>, env: &'static [(&'static str, &'static str)]) {
    tokio::task::spawn_blocking(move || run_script(name, &args, env))
        .await
        .expect("script");
}

/// Sends an event until answered 200, as a client retrying with its event_id.
async fn until_accepted(client: &reqwest::Client, url: &str, ev: &Value) -> bool {
    for _ in 0..1200 {
        if let Ok(r) = client.post(url).json(ev).send().await {
            if r.status() == 200 {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    false
}

/// Waits until a probe event is in every store: its `events` row, its player's stats, its
/// player's score on the game's alltime board.
async fn probe_visible(config: &Config, ev: &Value) {
    let keys = redis_keys(config);
    let id = ev["event_id"].as_str().expect("id").to_owned();
    let player = ev["player_id"].as_str().expect("player").to_owned();
    let game = ev["game_id"].as_str().expect("game").to_owned();
    let stats_key = keys.player_stats(&player);
    let board_key = format!("{}:alltime", keys.board_base(&game));
    eventually(Duration::from_secs(600), "a probe in every store", || {
        let (id, player, stats_key, board_key) =
            (id.clone(), player.clone(), stats_key.clone(), board_key.clone());
        async move {
            let n = count_opt(
                config,
                &format!("SELECT count(*) AS n FROM events WHERE event_id = '{id}'"),
            )
            .await?;
            (n == 1).then_some(())?;
            let mut r0 = redis_view(config, 0).conn().await.ok()?;
            let total: Option<i64> = r0.hget(&stats_key, "total_events").await.ok()?;
            total.filter(|t| *t == 1)?;
            let mut r1 = redis_view(config, 1).conn().await.ok()?;
            let score: Option<f64> = r1.zscore(&board_key, &player).await.ok()?;
            score.map(|_| ())
        }
    })
    .await;
}

/// [`count`] that answers `None` while PostgreSQL is down instead of failing.
async fn count_opt(config: &Config, sql: &str) -> Option<i64> {
    use diesel_async::{AsyncConnection, RunQueryDsl};
    let mut conn = diesel_async::AsyncPgConnection::establish(config.database.database_url.expose())
        .await
        .ok()?;
    let rows: Vec<model::Count> = diesel::sql_query(sql).load(&mut conn).await.ok()?;
    <[model::Count]>::first(&rows).map(|r| r.n)
}

/// Compares the stores with the model: (lost, counted twice) for stats and alltime boards.
async fn differences(config: &Config, model: &Model) -> BTreeMap<&'static str, (i64, i64)> {
    let mut out = BTreeMap::new();
    let ids: std::collections::HashSet<&String> = model.event_ids.iter().collect();
    let rows = count(config, "SELECT count(*) AS n FROM events").await;
    out.insert(
        "events rows",
        ((ids.len() as i64 - rows).max(0), (rows - ids.len() as i64).max(0)),
    );
    let keys = redis_keys(config);
    let mut r0 = redis_view(config, 0).conn().await.expect("Redis");
    let (mut lost, mut twice) = (0, 0);
    for (player, (total, _, _)) in &model.stats {
        let got: Option<i64> = r0
            .hget(keys.player_stats(player), "total_events")
            .await
            .expect("hget");
        let got = got.unwrap_or(0);
        lost += (total - got).max(0);
        twice += (got - total).max(0);
    }
    out.insert("Redis stats (events)", (lost, twice));
    let mut r1 = redis_view(config, 1).conn().await.expect("Redis");
    let (mut lost, mut twice) = (0, 0);
    for ((game, board), scores) in &model.boards {
        if board != "alltime" {
            continue;
        }
        let key = format!("{}:alltime", keys.board_base(game));
        for (player, want) in scores {
            let got: Option<f64> = r1.zscore(&key, player).await.expect("zscore");
            let got = got.unwrap_or(0.0) as i64;
            lost += i64::from(got < *want);
            twice += i64::from(got > *want);
        }
    }
    out.insert("alltime board entries", (lost, twice));
    out
}

#[actix_web::test]
#[ignore = "half an hour: run by scripts/soak"]
async fn soak_with_random_faults() {
    let minutes = env_or("SOAK_MINUTES", 30);
    let rate = env_or("SOAK_RATE", 500);
    let seed = env_or("SOAK_SEED", 1);
    let players = env_or("SOAK_PLAYERS", 20_000) as u32;
    run_script("kafka", &["start", "--nodes", "3"], &KAFKA3_ENV);
    let config = pipeline_config(|c| {
        c.kafka.kafka_brokers = Some(KAFKA3_BOOTSTRAP.into());
        c.consumer.leaderboard_retention_days = 36_500;
        c.kafka.kafka_topic = format!("soak-{}", uuid::Uuid::new_v4().simple());
    })
    .await;
    let mut ingest = Proc::start(&config, &["serve"]);
    let mut consumers: Vec<Proc> = ROLES
        .iter()
        .map(|r| Proc::start(&config, &["consume", "--role", r]))
        .collect();
    let url = format!("http://127.0.0.1:{}/api/v1/events", ingest.port);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    eventually(Duration::from_secs(60), "ingest ready", || async {
        client
            .get(url.replace("/api/v1/events", "/readyz"))
            .send()
            .await
            .ok()
            .filter(|r| r.status() == 200)
    })
    .await;

    // The load: `rate` events a second, each retried until accepted, its id chosen up front.
    let total = (minutes * 60 * rate) as usize;
    let evs: Vec<Value> = events_over(total, seed, players, 50)
        .into_iter()
        .map(|mut e| {
            e["event_id"] = json!(uuid::Uuid::new_v4());
            e
        })
        .collect();
    let accepted = Arc::new(Mutex::new(Vec::<Value>::with_capacity(total)));
    let never = Arc::new(Mutex::new(0u64));
    let started = Instant::now();
    let load = {
        let (client, url, accepted, never) = (client.clone(), url.clone(), accepted.clone(), never.clone());
        let limit = Arc::new(tokio::sync::Semaphore::new(256));
        actix_web::rt::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let per_tick = (rate as usize).div_ceil(100);
            let mut sent = Vec::new();
            for chunk in evs.chunks(per_tick) {
                tick.tick().await;
                for ev in chunk {
                    let permit = limit.clone().acquire_owned().await.expect("semaphore");
                    let (client, url, accepted, never, ev) = (
                        client.clone(),
                        url.clone(),
                        accepted.clone(),
                        never.clone(),
                        ev.clone(),
                    );
                    sent.push(actix_web::rt::spawn(async move {
                        if until_accepted(&client, &url, &ev).await {
                            accepted.lock().expect("lock").push(ev);
                        } else {
                            *never.lock().expect("lock") += 1;
                        }
                        drop(permit);
                    }));
                }
            }
            for s in sent {
                let _ = s.await;
            }
        })
    };

    // The faults, with a probe after each: the time until it is in every store is the
    // catch-up time of that fault.
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut faults: BTreeMap<Fault, Vec<Duration>> = BTreeMap::new();
    let mut probes = Vec::new();
    let mut rss_done = false;
    let end = started + Duration::from_secs(minutes * 60);
    while Instant::now() + Duration::from_secs(40) < end {
        tokio::time::sleep(Duration::from_secs(rng.random_range(20..=40))).await;
        if !rss_done && started.elapsed() > Duration::from_secs(60) {
            for p in consumers.iter_mut().chain(std::iter::once(&mut ingest)) {
                p.rss_start = p.rss_mib();
            }
            rss_done = true;
        }
        let fault = match rng.random_range(0..7) {
            r @ 0..=2 => Fault::KillConsumer(r),
            3 => Fault::KillIngest,
            4 => Fault::RestartPostgres,
            5 => Fault::RestartRedis,
            _ => Fault::KillBroker,
        };
        let at = Instant::now();
        eprintln!("soak: {:>5} s: {}", started.elapsed().as_secs(), fault.label());
        // A broker comes back while the probe is measured: the other two must carry on alone.
        let mut broker_back = None;
        match fault {
            Fault::KillConsumer(r) => consumers[r].crash_and_restart(&config),
            Fault::KillIngest => ingest.crash_and_restart(&config),
            Fault::RestartPostgres => script("services", vec!["restart", "postgres"], &[]).await,
            Fault::RestartRedis => script("services", vec!["restart", "redis"], &[]).await,
            Fault::KillBroker => {
                let node: &'static str = ["1", "2", "3"][rng.random_range(0..3)];
                script("kafka", vec!["kill-node", node], &KAFKA3_ENV).await;
                broker_back = Some(actix_web::rt::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    script("kafka", vec!["start-node", node], &KAFKA3_ENV).await;
                }));
            }
        }
        let probe = json!({
            "event_id": uuid::Uuid::new_v4(),
            "event_type": "player_score",
            "player_id": format!("probe-{}", probes.len()),
            "game_id": "game-0",
            "timestamp": "2024-01-15T12:00:00Z",
            "data": {"score": 1},
        });
        assert!(until_accepted(&client, &url, &probe).await, "a probe accepted");
        probe_visible(&config, &probe).await;
        faults.entry(fault).or_default().push(at.elapsed());
        probes.push(probe);
        if let Some(back) = broker_back {
            back.await.expect("broker restarted");
        }
    }
    let _ = load.await;
    let offered = total as u64;
    let load_secs = started.elapsed().as_secs_f64();
    let rss_end: Vec<(String, Option<u64>, Option<u64>, u32)> = consumers
        .iter()
        .chain(std::iter::once(&ingest))
        .map(|p| (p.name(), p.rss_start, p.rss_mib(), p.restarts))
        .collect();

    let mut model = Model::default();
    let accepted = accepted.lock().expect("lock").clone();
    for ev in accepted.iter().chain(probes.iter()) {
        model.add(ev, ev["event_id"].as_str().expect("id"));
    }
    // Drain: every accepted event in `events` (PostgreSQL and Redis as they are, no waiting on
    // a fault), then the counts, then the strict comparison.
    let drain = Instant::now();
    let want = model.event_ids.len() as i64;
    eventually(Duration::from_secs(900), "the backlog drained", || async {
        (count_opt(&config, "SELECT count(*) AS n FROM events").await? >= want).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let diffs = differences(&config, &model).await;
    let dlq = count(&config, "SELECT count(*) AS n FROM dlq").await;

    let mut report = String::new();
    let line = |r: &mut String, s: String| {
        r.push_str(&s);
        r.push('\n');
    };
    line(&mut report, format!(
        "Soak of {minutes} min at {rate} events/s offered ({players} players, 50 games; seed {seed}), three brokers, \
         one process per role; generated by `scripts/soak` on {}.\n",
        chrono::Utc::now().format("%Y-%m-%d")
    ));
    line(
        &mut report,
        "| fault | what we promise | times | catch-up (probe in every store), median / max |".into(),
    );
    line(&mut report, "|---|---|---|---|".into());
    for (fault, times) in &faults {
        let mut t = times.clone();
        t.sort();
        let promise = match fault {
            Fault::RestartPostgres | Fault::RestartRedis => {
                "nothing lost or counted twice; consumers wait and catch up"
            }
            Fault::KillBroker => "nothing lost or counted twice; ingest keeps answering 200 (2 of 3 in sync)",
            Fault::KillIngest => "every event answered 200 is kept; retries count once",
            Fault::KillConsumer(_) => "nothing lost or counted twice; the restarted consumer resumes",
        };
        line(
            &mut report,
            format!(
                "| {} | {promise} | {} | {:.1} s / {:.1} s |",
                fault.label(),
                t.len(),
                t[t.len() / 2].as_secs_f64(),
                t[t.len() - 1].as_secs_f64()
            ),
        );
    }
    let faults_total: usize = faults.values().map(Vec::len).sum();
    line(&mut report, String::new());
    line(&mut report, "| count | observed |".into());
    line(&mut report, "|---|---|".into());
    line(
        &mut report,
        format!(
            "| events offered / accepted (probes aside) / never accepted | {offered} / {} / {} |",
            accepted.len(),
            never.lock().expect("lock")
        ),
    );
    line(
        &mut report,
        format!(
            "| achieved rate | {:.0} events/s over {load_secs:.0} s |",
            accepted.len() as f64 / load_secs
        ),
    );
    line(&mut report, format!("| faults | {faults_total} |"));
    for (what, (lost, twice)) in &diffs {
        line(
            &mut report,
            format!("| {what}: lost / counted twice | {lost} / {twice} |"),
        );
    }
    line(&mut report, format!("| DLQ rows | {dlq} |"));
    line(
        &mut report,
        format!(
            "| drain after the load stopped | {:.0} s |",
            drain.elapsed().as_secs_f64()
        ),
    );
    for (name, start, end, restarts) in &rss_end {
        let mib = |v: &Option<u64>| v.map_or("–".into(), |m| format!("{m} MiB"));
        line(
            &mut report,
            format!(
            "| RSS of {name} (a minute in → end; {restarts} restarts, a restart starts it again) | {} → {} |",
            mib(start),
            mib(end)
        ),
        );
    }
    eprintln!("{report}");
    if let Ok(path) = std::env::var("SOAK_REPORT") {
        std::fs::write(&path, &report).expect("write the report");
    }
    // The verdict: every store equals the model, exactly.
    assert!(diffs.values().all(|(l, t)| *l == 0 && *t == 0), "{report}");
    assert_eq!(dlq, 0, "valid events never reach the DLQ");
    assert_state(&config, &model).await;
}
