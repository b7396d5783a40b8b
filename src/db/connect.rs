//! Opening PostgreSQL connections, over TLS when `DATABASE_URL` asks for it.
//!
//! diesel-async connects without TLS, so a managed PostgreSQL that forces it (RDS for
//! PostgreSQL 15 and later: `rds.force_ssl=1`) would refuse every connection. Here libpq's
//! `sslmode` values are honoured, with OpenSSL (already linked for Kafka):
//!
//! | `sslmode` | encrypted | certificate checked against the CA | host name checked |
//! |---|---|---|---|
//! | `disable` | no | no | no |
//! | `prefer` (when the URL names none, as libpq) | if the server offers it | no | no |
//! | `require` | yes | only if a CA is given (libpq does the same) | no |
//! | `verify-ca` | yes | yes | no |
//! | `verify-full` | yes | yes | yes |
//!
//! The CA bundle is `DATABASE_CA_FILE`, else the URL's `sslrootcert`, else the system's trust
//! store.

use crate::config::DatabaseConfig;
use diesel::{ConnectionError, ConnectionResult};
use diesel_async::AsyncPgConnection;
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use postgres_openssl::MakeTlsConnector;
use std::path::PathBuf;
use std::str::FromStr;

/// libpq's `sslmode`, as far as a client without a client certificate can honour it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Result<Self, String> {
        Ok(match s {
            "disable" => SslMode::Disable,
            // libpq's `allow` tries without TLS first; nothing here needs that, and `prefer`
            // is never less safe.
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(format!(
                    "sslmode={other} is not one of disable, prefer, require, verify-ca, verify-full"
                ))
            }
        })
    }

    fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Where and how to connect: the URL split into what tokio-postgres understands and the TLS
/// settings it doesn't (`verify-ca`, `verify-full`, `sslrootcert`).
#[derive(Clone)]
pub struct PgTarget {
    config: tokio_postgres::Config,
    mode: SslMode,
    ca_file: Option<PathBuf>,
    /// `host:port`, for error messages (the URL carries the password).
    shown: String,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgTarget({}, sslmode={})", self.shown, self.mode.as_str())
    }
}

impl PgTarget {
    /// The target `cfg` names; an error says which setting is wrong.
    pub fn from_config(cfg: &DatabaseConfig) -> Result<Self, String> {
        Self::parse(cfg.database_url.expose(), cfg.database_ca_file.clone())
    }

    /// Parses a `postgres://` URL; `ca_file`, if given, wins over the URL's `sslrootcert`.
    pub fn parse(url: &str, ca_file: Option<PathBuf>) -> Result<Self, String> {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut mode = SslMode::Prefer;
        let mut root = None;
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "sslmode" => mode = SslMode::parse(value)?,
                "sslrootcert" => root = Some(PathBuf::from(percent_decode(value))),
                "sslcert" | "sslkey" => {
                    return Err(format!(
                        "DATABASE_URL: {key} (client certificates) is not supported"
                    ))
                }
                _ => kept.push(pair),
            }
        }
        let stripped = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        let mut config = tokio_postgres::Config::from_str(&stripped)
            .map_err(|e| format!("DATABASE_URL is not a PostgreSQL URL: {e}"))?;
        config.ssl_mode(match mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        let shown = shown(&config);
        Ok(PgTarget {
            config,
            mode,
            ca_file: ca_file.or(root),
            shown,
        })
    }

    /// The sslmode in force.
    pub fn mode(&self) -> SslMode {
        self.mode
    }

    /// The TLS connector for this target: what is checked follows the table in the module
    /// documentation.
    fn tls(&self) -> Result<MakeTlsConnector, String> {
        let mut builder =
            SslConnector::builder(SslMethod::tls_client()).map_err(|e| format!("OpenSSL: {e}"))?;
        let verify = match self.mode {
            SslMode::Disable | SslMode::Prefer => false,
            SslMode::Require => self.ca_file.is_some(),
            SslMode::VerifyCa | SslMode::VerifyFull => true,
        };
        // Read only when it is used: `prefer` never verifies, so a CA file configured for all
        // environments (the ConfigMap) can't break one whose PostgreSQL has no TLS.
        if let (true, Some(ca)) = (verify, &self.ca_file) {
            builder.set_ca_file(ca).map_err(|e| {
                format!(
                    "DATABASE_CA_FILE / sslrootcert {}: not a readable PEM CA bundle: {e}",
                    ca.display()
                )
            })?;
        }
        builder.set_verify(if verify {
            SslVerifyMode::PEER
        } else {
            SslVerifyMode::NONE
        });
        let mut tls = MakeTlsConnector::new(builder.build());
        if self.mode != SslMode::VerifyFull {
            tls.set_callback(|ssl, _| {
                ssl.set_verify_hostname(false);
                Ok(())
            });
        }
        Ok(tls)
    }

    /// Opens one connection.
    pub async fn connect(&self) -> ConnectionResult<AsyncPgConnection> {
        let fail = |e: &dyn std::fmt::Display| {
            ConnectionError::BadConnection(format!(
                "PostgreSQL at {} (sslmode={}{}): {e}",
                self.shown,
                self.mode.as_str(),
                self.ca_file
                    .as_ref()
                    .map(|c| format!(", CA {}", c.display()))
                    .unwrap_or_default()
            ))
        };
        if self.mode == SslMode::Disable {
            let (client, conn) = self
                .config
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(|e| fail(&full(&e)))?;
            return AsyncPgConnection::try_from_client_and_connection(client, conn).await;
        }
        let tls = self.tls().map_err(|e| fail(&e))?;
        let (client, conn) = self.config.connect(tls).await.map_err(|e| fail(&full(&e)))?;
        AsyncPgConnection::try_from_client_and_connection(client, conn).await
    }
}

/// An error with its causes: tokio-postgres says "error performing TLS handshake" and leaves
/// OpenSSL's "certificate verify failed" to the source.
fn full(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cause = c.source();
    }
    s
}

fn shown(config: &tokio_postgres::Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}")
}

/// `%2F` and friends in a URL's query value (a CA path).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_settings_are_taken_out_of_the_url() {
        let t = PgTarget::parse(
            "postgres://u:p@db.example:6543/app?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&options=-csearch_path%3Dx",
            None,
        )
        .expect("parses");
        assert_eq!(t.mode(), SslMode::VerifyFull);
        assert_eq!(t.ca_file.as_deref(), Some(std::path::Path::new("/etc/ca.pem")));
        assert_eq!(t.shown, "db.example:6543");
        assert_eq!(t.config.get_options(), Some("-csearch_path=x"));
        assert_eq!(t.config.get_dbname(), Some("app"));
    }

    #[test]
    fn the_ca_setting_wins_over_the_url_and_prefer_is_the_default() {
        let t =
            PgTarget::parse("postgres://u@h/db?sslrootcert=/a.pem", Some("/b.pem".into())).expect("parses");
        assert_eq!(t.mode(), SslMode::Prefer);
        assert_eq!(t.ca_file.as_deref(), Some(std::path::Path::new("/b.pem")));
    }

    #[test]
    fn unknown_modes_and_client_certificates_are_refused_by_name() {
        let bad = PgTarget::parse("postgres://u@h/db?sslmode=verify", None).unwrap_err();
        assert!(bad.contains("sslmode=verify is not one of"), "{bad}");
        let cert = PgTarget::parse("postgres://u@h/db?sslcert=/c.pem", None).unwrap_err();
        assert!(cert.contains("sslcert"), "{cert}");
    }
}
