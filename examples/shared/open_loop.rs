//! What `openloop` and `produceloop` share: the fixed-rate schedule and the summary line.

use std::time::{Duration, Instant};

/// Sends `total` due times, `rate` a second from `start`, into `tx`, on a thread of its own
/// with the OS's sleep: tokio's timer ticks in whole milliseconds, which alone would add up to a
/// millisecond to every figure.
pub fn schedule(
    start: Instant,
    rate: f64,
    total: u64,
    tx: tokio::sync::mpsc::Sender<Instant>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for i in 0..total {
            let due = start + Duration::from_secs_f64(i as f64 / rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            if tx.blocking_send(due).is_err() {
                break;
            }
        }
    })
}

/// Prints `count p50_ms p99_ms max_ms failed` for `latencies` in milliseconds.
pub fn print_summary(mut latencies: Vec<f64>, failed: u64) {
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| {
        latencies
            .get(((latencies.len().max(1) - 1) as f64 * q).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    println!(
        "{} {:.2} {:.2} {:.2} {}",
        latencies.len(),
        at(0.5),
        at(0.99),
        at(1.0),
        failed
    );
}
