//! The audit store named by `AGENTMESH_STORAGE_BACKEND`: its connection, checked at start-up
//! and every [`CHECK_INTERVAL`], reported in `/ready` and `meshlogic_operator_storage_up`.
//!
//! What is written there is not this module's business: in this version the audit hash chain
//! stays in memory whatever the backend (see the README's status); this module proves the
//! connection settings an installation gives (host, port, password from a Secret) reach a real
//! server that accepts them. A store that is down never stops the operator nor makes it unready:
//! the webhook and the trust API matter more than the audit copy.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use agentmesh_api::settings::StorageBackend;
use serde_json::{Value, json};

use crate::config::Config;
use crate::metrics::Metrics;

/// Time between two connection checks.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(10);
/// Longest a check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a remote store is and how to log in.
#[derive(Clone)]
pub enum Remote {
    Redis {
        host: String,
        port: u16,
        password: Option<String>,
    },
    Postgres {
        host: String,
        port: u16,
        user: String,
        database: String,
        password: Option<String>,
    },
}

impl std::fmt::Debug for Remote {
    // Never the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.describe())
    }
}

impl Remote {
    /// The remote store of a configuration, `None` for the memory backend.
    pub fn of(config: &Config) -> Option<Self> {
        let (settings, args) = (&config.settings, &config.args);
        match settings.storage_backend {
            StorageBackend::Memory => None,
            StorageBackend::Redis => Some(Self::Redis {
                host: settings.redis_host.clone(),
                port: settings.redis_port,
                password: args.redis_password.clone().filter(|p| !p.is_empty()),
            }),
            StorageBackend::Postgres => Some(Self::Postgres {
                host: args.postgres_host.clone().unwrap_or_default(),
                port: args.postgres_port,
                user: args.postgres_user.clone(),
                database: args.postgres_database.clone(),
                password: args.postgres_password.clone().filter(|p| !p.is_empty()),
            }),
        }
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Self::Redis { .. } => "redis",
            Self::Postgres { .. } => "postgres",
        }
    }

    /// `redis://host:port` or `postgres://user@host:port/database`, without the password.
    pub fn describe(&self) -> String {
        match self {
            Self::Redis { host, port, .. } => format!("redis://{host}:{port}"),
            Self::Postgres {
                host,
                port,
                user,
                database,
                ..
            } => format!("postgres://{user}@{host}:{port}/{database}"),
        }
    }

    /// Connects, logs in and runs a trivial command (`PING`, `SELECT 1`).
    pub async fn check(&self) -> Result<(), String> {
        match tokio::time::timeout(CHECK_TIMEOUT, self.check_inner()).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {} s", CHECK_TIMEOUT.as_secs())),
        }
    }

    async fn check_inner(&self) -> Result<(), String> {
        match self {
            Self::Redis {
                host,
                port,
                password,
            } => {
                let mut info = redis::IntoConnectionInfo::into_connection_info(
                    redis::ConnectionAddr::Tcp(host.clone(), *port),
                )
                .map_err(|e| e.to_string())?;
                if let Some(password) = password {
                    let settings = info.redis_settings().clone().set_password(password);
                    info = info.set_redis_settings(settings);
                }
                let client = redis::Client::open(info).map_err(|e| e.to_string())?;
                let mut connection = client
                    .get_multiplexed_async_connection()
                    .await
                    .map_err(|e| e.to_string())?;
                let pong: String = redis::cmd("PING")
                    .query_async(&mut connection)
                    .await
                    .map_err(|e| e.to_string())?;
                (pong == "PONG")
                    .then_some(())
                    .ok_or_else(|| format!("PING answered {pong:?}"))
            }
            Self::Postgres {
                host,
                port,
                user,
                database,
                password,
            } => {
                let mut config = tokio_postgres::Config::new();
                config
                    .host(host)
                    .port(*port)
                    .user(user)
                    .dbname(database)
                    .connect_timeout(CHECK_TIMEOUT)
                    .application_name("meshlogic-operator");
                if let Some(password) = password {
                    config.password(password);
                }
                let (client, connection) = config
                    .connect(tokio_postgres::NoTls)
                    .await
                    .map_err(|e| e.to_string())?;
                let connection = tokio::spawn(connection);
                let result = client
                    .simple_query("SELECT 1")
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string());
                drop(client);
                let _ = connection.await;
                result
            }
        }
    }
}

/// The last check's result, shared with `/ready`.
#[derive(Debug, Default)]
pub struct Health {
    remote: Option<Remote>,
    /// `None` before the first check; then `Ok` or the error.
    last: RwLock<Option<Result<(), String>>>,
}

impl Health {
    pub fn new(remote: Option<Remote>) -> Self {
        Self {
            remote,
            last: RwLock::new(None),
        }
    }

    /// What `/ready` says of the store: `{"backend": "memory"}`, or the remote store, whether
    /// it answered and, if not, why.
    pub fn report(&self) -> Value {
        let Some(remote) = &self.remote else {
            return json!({"backend": "memory"});
        };
        let last = self.last.read().unwrap_or_else(|e| e.into_inner()).clone();
        match last {
            None => json!({"backend": remote.backend(), "at": remote.describe(), "up": null}),
            Some(Ok(())) => {
                json!({"backend": remote.backend(), "at": remote.describe(), "up": true})
            }
            Some(Err(error)) => json!({
                "backend": remote.backend(), "at": remote.describe(), "up": false, "error": error,
            }),
        }
    }

    fn record(&self, result: Result<(), String>) {
        *self.last.write().unwrap_or_else(|e| e.into_inner()) = Some(result);
    }
}

/// Checks the remote store every [`CHECK_INTERVAL`], logging each change of state.
pub async fn run(health: Arc<Health>, metrics: Arc<Metrics>) {
    let Some(remote) = health.remote.clone() else {
        metrics.storage_up.set(1);
        return;
    };
    let mut was_up: Option<bool> = None;
    loop {
        let result = remote.check().await;
        let up = result.is_ok();
        metrics.storage_up.set(i64::from(up));
        match (&result, was_up) {
            (Ok(()), Some(true)) | (Err(_), Some(false)) => {}
            (Ok(()), _) => tracing::info!(store = %remote.describe(), "audit store reachable"),
            (Err(error), _) => {
                tracing::warn!(store = %remote.describe(), %error, "audit store unreachable")
            }
        }
        was_up = Some(up);
        health.record(result);
        tokio::time::sleep(CHECK_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_never_carry_the_password() {
        let remote = Remote::Redis {
            host: "agentmesh-redis-master".into(),
            port: 6379,
            password: Some("s3cret".into()),
        };
        assert_eq!(remote.describe(), "redis://agentmesh-redis-master:6379");
        assert!(!format!("{remote:?}").contains("s3cret"));
        let health = Health::new(Some(remote));
        health.record(Err("WRONGPASS invalid username-password pair".into()));
        let report = health.report();
        assert_eq!(report["up"], false);
        assert!(!report.to_string().contains("s3cret"));
    }

    #[tokio::test]
    async fn a_store_nobody_listens_on_is_reported_down_with_the_reason() {
        // A port just released: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        for remote in [
            Remote::Redis {
                host: "127.0.0.1".into(),
                port,
                password: None,
            },
            Remote::Postgres {
                host: "127.0.0.1".into(),
                port,
                user: "agentmesh".into(),
                database: "agentmesh".into(),
                password: None,
            },
        ] {
            let error = remote.check().await.unwrap_err();
            assert!(!error.is_empty(), "{remote:?}");
        }
    }
}
