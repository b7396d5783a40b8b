//! An open-loop HTTP load generator for `scripts/bench-ingest`: requests are due at a fixed rate
//! whatever the server does, and each one's latency counts from when it was due, not from when
//! a connection was free to send it, so a stalled server shows as latency instead of as a lower
//! rate (what wrk's closed loop hides).
//!
//!   openloop URL RATE SECONDS CONNECTIONS BODY_FILE
//!
//! Prints `sent p50_ms p99_ms max_ms non2xx`. OPENLOOP_AUTHORIZATION, when set, is sent as the
//! `Authorization` header; OPENLOOP_TRACE names a file to write each request's due time and
//! latency to (`due_ms latency_ms`, in due order), to see when a tail happened.

#[path = "shared/open_loop.rs"]
mod open_loop;

use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Mutex};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, rate, secs, conns, body] = args.as_slice() else {
        return Err("usage: openloop URL RATE SECONDS CONNECTIONS BODY_FILE".into());
    };
    let rate: f64 = rate.parse()?;
    let secs: f64 = secs.parse()?;
    let conns: usize = conns.parse()?;
    let body = bytes_of(body)?;
    let total = (rate * secs) as u64;
    let auth = std::env::var("OPENLOOP_AUTHORIZATION").ok();

    let (tx, rx) = mpsc::channel::<Instant>(100_000);
    let rx = Arc::new(Mutex::new(rx));
    let mut workers = Vec::new();
    for _ in 0..conns {
        // One client per worker with one idle connection: 64 workers keep 64 keep-alive
        // connections, as the aim says, instead of a shared pool deciding.
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .timeout(Duration::from_secs(30))
            .build()?;
        let (rx, url, body, auth) = (rx.clone(), url.clone(), body.clone(), auth.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut bad = 0u64;
            loop {
                let due = { rx.lock().await.recv().await };
                let Some(due) = due else { break };
                let mut request = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone());
                if let Some(auth) = &auth {
                    request = request.header("authorization", auth);
                }
                let ok = request.send().await.is_ok_and(|r| r.status().is_success());
                latencies.push((due, due.elapsed().as_secs_f64() * 1000.0));
                bad += u64::from(!ok);
            }
            (latencies, bad)
        }));
    }
    let start = Instant::now();
    let schedule = open_loop::schedule(start, rate, total, tx);
    let mut all = Vec::with_capacity(total as usize);
    let mut bad = 0;
    for w in workers {
        let (l, b) = w.await?;
        all.extend(l);
        bad += b;
    }
    // Only now: joining earlier would block the one thread the workers run on.
    schedule.join().map_err(|_| "the schedule thread panicked")?;
    if let Ok(path) = std::env::var("OPENLOOP_TRACE") {
        all.sort_by_key(|(due, _)| *due);
        let lines: String = all
            .iter()
            .map(|(due, ms)| {
                format!(
                    "{:.3} {ms:.3}\n",
                    due.duration_since(start).as_secs_f64() * 1000.0
                )
            })
            .collect();
        std::fs::write(path, lines)?;
    }
    open_loop::print_summary(all.into_iter().map(|(_, ms)| ms).collect(), bad);
    Ok(())
}

fn bytes_of(path: &str) -> std::io::Result<Vec<u8>> {
    std::fs::read(path)
}
