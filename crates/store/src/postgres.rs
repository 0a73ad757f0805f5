//! The PostgreSQL audit store: a table of entries and a one-row head table, appended in one
//! transaction that moves the head only from the head the entries chain from.

use std::sync::Arc;

use agentmesh_trust::Timestamp;
use agentmesh_trust::audit::{AuditEntry, AuditRecord, Head};
use tokio::sync::Mutex;
use tokio_postgres::{Client, Row};

use crate::{Appended, Remote, Result, StoreError, parse_decision, timed};

/// The tables, made when missing. `at_ms` is the entry's time in milliseconds since the epoch,
/// exactly as hashed; `at` is the same instant for people's queries.
///
/// Made in one transaction, under an advisory lock, and only when missing: `CREATE INDEX IF
/// NOT EXISTS` locks its table even when the index exists, which deadlocked with another
/// replica's append (its inserts waiting for that lock, the lock's holder waiting for the head
/// row the append had updated).
const SCHEMA: &str = "
SELECT pg_advisory_xact_lock(7412290117);
DO $$
BEGIN
IF to_regclass('agentmesh_baselines') IS NULL THEN
    CREATE TABLE IF NOT EXISTS agentmesh_audit (
        seq            BIGINT PRIMARY KEY,
        at_ms          BIGINT NOT NULL,
        at             TIMESTAMPTZ GENERATED ALWAYS AS (to_timestamp(at_ms / 1000.0)) STORED,
        identity       TEXT NOT NULL,
        subject        TEXT NOT NULL,
        decision       TEXT NOT NULL,
        rule           TEXT NOT NULL,
        score          INTEGER NOT NULL,
        policy_version TEXT NOT NULL,
        detail         TEXT NOT NULL,
        prev_hash      TEXT NOT NULL,
        hash           TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS agentmesh_audit_identity ON agentmesh_audit (identity, seq);
    CREATE INDEX IF NOT EXISTS agentmesh_audit_at ON agentmesh_audit (at_ms);
    CREATE TABLE IF NOT EXISTS agentmesh_audit_head (
        one      BOOLEAN PRIMARY KEY DEFAULT true CHECK (one),
        next_seq BIGINT NOT NULL,
        hash     TEXT NOT NULL
    );
    INSERT INTO agentmesh_audit_head (one, next_seq, hash)
        VALUES (true, 0, '0000000000000000000000000000000000000000000000000000000000000000')
        ON CONFLICT DO NOTHING;
    CREATE TABLE agentmesh_baselines (
        identity   TEXT PRIMARY KEY,
        baseline   TEXT NOT NULL,
        updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
    );
END IF;
END
$$;
";

const COLUMNS: &str =
    "seq, at_ms, identity, subject, decision, rule, score, policy_version, detail, prev_hash, hash";

#[derive(Clone)]
pub struct PostgresStore {
    remote: Remote,
    client: Arc<Mutex<Option<Client>>>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PostgresStore({:?})", self.remote)
    }
}

fn unavailable(error: tokio_postgres::Error) -> StoreError {
    // The server's own message (e.g. "password authentication failed") is in the source.
    let detail = error
        .as_db_error()
        .map(|db| db.message().to_owned())
        .unwrap_or_else(|| {
            let mut text = error.to_string();
            if let Some(source) = std::error::Error::source(&error) {
                text = format!("{text}: {source}");
            }
            text
        });
    StoreError::Unavailable(detail)
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl PostgresStore {
    pub(crate) fn new(remote: &Remote) -> Self {
        Self {
            remote: remote.clone(),
            client: Arc::new(Mutex::new(None)),
        }
    }

    /// Where the store is.
    pub fn remote(&self) -> &Remote {
        &self.remote
    }

    /// Runs `operation` with the connected client (connecting, and making the tables, first
    /// when there is none); a failure drops the client, so that the next operation reconnects.
    async fn run<T, F>(&self, operation: F) -> Result<T>
    where
        F: AsyncFnOnce(&mut Client) -> std::result::Result<T, tokio_postgres::Error>,
    {
        let mut slot = self.client.lock().await;
        let result = timed(async {
            if slot.as_ref().is_none_or(Client::is_closed) {
                *slot = Some(self.connect().await?);
            }
            let client = slot.as_mut().expect("connected above");
            operation(client).await.map_err(unavailable)
        })
        .await;
        if result.is_err() {
            *slot = None;
        }
        result
    }

    async fn connect(&self) -> Result<Client> {
        let Remote::Postgres {
            host,
            port,
            user,
            database,
            password,
        } = &self.remote
        else {
            unreachable!("a PostgresStore is made from a PostgreSQL remote")
        };
        let mut config = tokio_postgres::Config::new();
        config
            .host(host)
            .port(*port)
            .user(user)
            .dbname(database)
            .connect_timeout(crate::OPERATION_TIMEOUT)
            .application_name("agentmesh");
        if let Some(password) = password {
            config.password(password);
        }
        let (mut client, connection) = config
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(unavailable)?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "PostgreSQL connection closed");
            }
        });
        let transaction = client.transaction().await.map_err(unavailable)?;
        transaction
            .batch_execute(SCHEMA)
            .await
            .map_err(unavailable)?;
        transaction.commit().await.map_err(unavailable)?;
        Ok(client)
    }

    pub(crate) async fn check(&self) -> Result<()> {
        self.run(async |client| client.simple_query("SELECT 1").await.map(|_| ()))
            .await
    }

    pub(crate) async fn head(&self) -> Result<Head> {
        let row = self
            .run(async |client| {
                client
                    .query_one("SELECT next_seq, hash FROM agentmesh_audit_head", &[])
                    .await
            })
            .await?;
        let next_seq: i64 = row.get(0);
        Ok(Head {
            next_seq: u64::try_from(next_seq).map_err(|_| StoreError::Unreadable {
                what: "the head".into(),
                reason: format!("next_seq is {next_seq}"),
            })?,
            hash: row.get(1),
        })
    }

    pub(crate) async fn append(
        &self,
        from: &Head,
        to: &Head,
        entries: &[AuditEntry],
    ) -> Result<Appended> {
        self.run(async |client| {
            let transaction = client.transaction().await?;
            let moved = transaction
                .execute(
                    "UPDATE agentmesh_audit_head SET next_seq = $1, hash = $2 \
                     WHERE next_seq = $3 AND hash = $4",
                    &[
                        &to_i64(to.next_seq),
                        &to.hash,
                        &to_i64(from.next_seq),
                        &from.hash,
                    ],
                )
                .await?;
            if moved != 1 {
                transaction.rollback().await?;
                return Ok(Appended::Conflict);
            }
            let insert = transaction
                .prepare(&format!(
                    "INSERT INTO agentmesh_audit ({COLUMNS}) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
                ))
                .await?;
            // Pipelined: the inserts go out without waiting for each answer.
            let inserts = entries.iter().map(|e| {
                let r = &e.record;
                let transaction = &transaction;
                let insert = &insert;
                async move {
                    transaction
                        .execute(
                            insert,
                            &[
                                &to_i64(e.seq),
                                &r.at.as_millis(),
                                &r.identity,
                                &r.subject,
                                &r.decision.as_str(),
                                &r.rule,
                                &r.score,
                                &r.policy_version,
                                &r.detail,
                                &e.prev_hash,
                                &e.hash,
                            ],
                        )
                        .await
                }
            });
            futures::future::try_join_all(inserts).await?;
            transaction.commit().await?;
            Ok(Appended::Yes(to.clone()))
        })
        .await
    }

    pub(crate) async fn read(&self, from_seq: u64, limit: usize) -> Result<Vec<AuditEntry>> {
        let rows = self
            .run(async |client| {
                client
                    .query(
                        &format!(
                            "SELECT {COLUMNS} FROM agentmesh_audit WHERE seq >= $1 \
                             ORDER BY seq LIMIT $2"
                        ),
                        &[&to_i64(from_seq), &to_i64(limit as u64)],
                    )
                    .await
            })
            .await?;
        rows.iter().map(entry).collect()
    }

    pub(crate) async fn delete_before(&self, seq: u64) -> Result<u64> {
        self.run(async |client| {
            client
                .execute(
                    "DELETE FROM agentmesh_audit WHERE seq < $1",
                    &[&to_i64(seq)],
                )
                .await
        })
        .await
    }
}

impl PostgresStore {
    pub(crate) async fn save_baselines(&self, baselines: &[(String, String)]) -> Result<()> {
        self.run(async |client| {
            let transaction = client.transaction().await?;
            let upsert = transaction
                .prepare(
                    "INSERT INTO agentmesh_baselines (identity, baseline) VALUES ($1, $2) \
                     ON CONFLICT (identity) DO UPDATE \
                     SET baseline = EXCLUDED.baseline, updated_at = now()",
                )
                .await?;
            for (key, json) in baselines {
                transaction.execute(&upsert, &[key, json]).await?;
            }
            transaction.commit().await
        })
        .await
    }

    pub(crate) async fn load_baselines(&self) -> Result<Vec<(String, String)>> {
        let rows = self
            .run(async |client| {
                client
                    .query("SELECT identity, baseline FROM agentmesh_baselines", &[])
                    .await
            })
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    pub(crate) async fn delete_baselines(&self, keys: &[String]) -> Result<()> {
        self.run(async |client| {
            client
                .execute(
                    "DELETE FROM agentmesh_baselines WHERE identity = ANY($1)",
                    &[&keys],
                )
                .await
                .map(|_| ())
        })
        .await
    }
}

fn entry(row: &Row) -> Result<AuditEntry> {
    let seq: i64 = row.get(0);
    let seq = u64::try_from(seq).map_err(|_| StoreError::Unreadable {
        what: format!("entry {seq}"),
        reason: "negative sequence number".into(),
    })?;
    let decision: String = row.get(4);
    Ok(AuditEntry {
        seq,
        record: AuditRecord {
            at: Timestamp::from_millis(row.get(1)),
            identity: row.get(2),
            subject: row.get(3),
            decision: parse_decision(&decision, seq)?,
            rule: row.get(5),
            score: row.get(6),
            policy_version: row.get(7),
            detail: row.get(8),
        },
        prev_hash: row.get(9),
        hash: row.get(10),
    })
}
