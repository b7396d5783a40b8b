//! Logging: a `tracing` subscriber writing JSON lines (or human-readable text) to stdout.

use crate::config::{LogFormat, TelemetryConfig};
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. A second call (as in tests) keeps the first one.
pub fn init(cfg: &TelemetryConfig) {
    let mut filter = EnvFilter::try_new(&cfg.log_filter).unwrap_or_else(|_| EnvFilter::new("info"));
    // actix-http logs every request it can't parse (a client's mistake, or a scanner's) at ERROR,
    // which our policy keeps for data at risk; it answers 400 all the same. Quiet unless the
    // filter names it.
    if !cfg.log_filter.contains("actix_http") {
        if let Ok(quiet) = "actix_http::h1::dispatcher=off".parse() {
            filter = filter.add_directive(quiet);
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    let result = match cfg.log_format {
        // Span fields (event_id, route, ...) go into every line so logs join up per event.
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
    // Err only means a subscriber is already installed, which is fine.
    let _ = result;
}
