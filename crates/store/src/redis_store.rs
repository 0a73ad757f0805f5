//! The Redis audit store: a list of JSON entries and a head string, changed only by Lua
//! scripts, which Redis runs atomically.

use std::sync::Arc;

use agentmesh_trust::audit::{AuditEntry, Head};
use redis::aio::MultiplexedConnection;
use tokio::sync::Mutex;

use crate::{Appended, Remote, Result, StoreError, timed};

pub const ENTRIES_KEY: &str = "agentmesh:audit:entries";
pub const HEAD_KEY: &str = "agentmesh:audit:head";
pub const BASELINES_KEY: &str = "agentmesh:baselines";

/// Appends ARGV[3..] if the head is ARGV[1] (`''` when there is none yet), then sets it to ARGV[2].
const APPEND: &str = r"
local head = redis.call('GET', KEYS[2])
if not head then head = '' end
if head ~= ARGV[1] then return 0 end
for i = 3, #ARGV do redis.call('RPUSH', KEYS[1], ARGV[i]) end
redis.call('SET', KEYS[2], ARGV[2])
return 1
";

/// Up to ARGV[2] entries from sequence number ARGV[1] on, located by the first entry's number.
const READ: &str = r"
local first = redis.call('LINDEX', KEYS[1], 0)
if not first then return {} end
local start = tonumber(ARGV[1]) - cjson.decode(first).seq
if start < 0 then start = 0 end
return redis.call('LRANGE', KEYS[1], start, start + tonumber(ARGV[2]) - 1)
";

/// Deletes the entries before sequence number ARGV[1].
const DELETE_BEFORE: &str = r"
local first = redis.call('LINDEX', KEYS[1], 0)
if not first then return 0 end
local n = tonumber(ARGV[1]) - cjson.decode(first).seq
if n <= 0 then return 0 end
if n > redis.call('LLEN', KEYS[1]) then n = redis.call('LLEN', KEYS[1]) end
redis.call('LTRIM', KEYS[1], n, -1)
return n
";

#[derive(Clone)]
pub struct RedisStore {
    remote: Remote,
    connection: Arc<Mutex<Option<MultiplexedConnection>>>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RedisStore({:?})", self.remote)
    }
}

fn unavailable(error: redis::RedisError) -> StoreError {
    StoreError::Unavailable(error.to_string())
}

impl RedisStore {
    pub(crate) fn new(remote: &Remote) -> Self {
        Self {
            remote: remote.clone(),
            connection: Arc::new(Mutex::new(None)),
        }
    }

    /// Where the store is.
    pub fn remote(&self) -> &Remote {
        &self.remote
    }

    async fn connection(&self) -> Result<MultiplexedConnection> {
        let mut slot = self.connection.lock().await;
        if let Some(connection) = &*slot {
            return Ok(connection.clone());
        }
        let Remote::Redis {
            host,
            port,
            password,
        } = &self.remote
        else {
            unreachable!("a RedisStore is made from a Redis remote")
        };
        let mut info = redis::IntoConnectionInfo::into_connection_info(redis::ConnectionAddr::Tcp(
            host.clone(),
            *port,
        ))
        .map_err(unavailable)?;
        if let Some(password) = password {
            let settings = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(settings);
        }
        let client = redis::Client::open(info).map_err(unavailable)?;
        let connection = client
            .get_multiplexed_async_connection()
            .await
            .map_err(unavailable)?;
        *slot = Some(connection.clone());
        Ok(connection)
    }

    /// Runs `operation` on a connection; a failure drops the connection, so that the next
    /// operation connects afresh.
    async fn run<T, F, Fut>(&self, operation: F) -> Result<T>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let result = timed(async {
            let connection = self.connection().await?;
            operation(connection).await.map_err(unavailable)
        })
        .await;
        if result.is_err() {
            *self.connection.lock().await = None;
        }
        result
    }

    pub(crate) async fn check(&self) -> Result<()> {
        let pong: String = self
            .run(|mut c| async move { redis::cmd("PING").query_async(&mut c).await })
            .await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(StoreError::Unavailable(format!("PING answered {pong:?}")))
        }
    }

    pub(crate) async fn head(&self) -> Result<Head> {
        let text: Option<String> = self
            .run(|mut c| async move { redis::cmd("GET").arg(HEAD_KEY).query_async(&mut c).await })
            .await?;
        match text {
            None => Ok(Head::default()),
            Some(text) => parse_head(&text).ok_or_else(|| StoreError::Unreadable {
                what: "the head".into(),
                reason: format!("{HEAD_KEY} is {text:?}, not `<next sequence number> <hash>`"),
            }),
        }
    }

    pub(crate) async fn append(
        &self,
        from: &Head,
        to: &Head,
        entries: &[AuditEntry],
    ) -> Result<Appended> {
        let expected = if *from == Head::default() {
            // A store never written has no head key; one written has a non-genesis head.
            String::new()
        } else {
            head_text(from)
        };
        let script = redis::Script::new(APPEND);
        let to_text = head_text(to);
        let texts: Vec<String> = entries
            .iter()
            .map(|entry| serde_json::to_string(entry).expect("entries serialize"))
            .collect();
        let appended: i64 = self
            .run(|mut c| async move {
                let mut invocation = script.prepare_invoke();
                invocation
                    .key(ENTRIES_KEY)
                    .key(HEAD_KEY)
                    .arg(expected)
                    .arg(to_text);
                for text in texts {
                    invocation.arg(text);
                }
                invocation.invoke_async(&mut c).await
            })
            .await?;
        Ok(if appended == 1 {
            Appended::Yes(to.clone())
        } else {
            Appended::Conflict
        })
    }

    pub(crate) async fn read(&self, from_seq: u64, limit: usize) -> Result<Vec<AuditEntry>> {
        let script = redis::Script::new(READ);
        let texts: Vec<String> = self
            .run(|mut c| async move {
                let mut invocation = script.prepare_invoke();
                invocation.key(ENTRIES_KEY).arg(from_seq).arg(limit);
                invocation.invoke_async(&mut c).await
            })
            .await
            .map_err(unreadable_first)?;
        texts
            .iter()
            .enumerate()
            .map(|(i, text)| {
                serde_json::from_str(text).map_err(|e| StoreError::Unreadable {
                    what: format!(
                        "the entry in the place of sequence number {}",
                        from_seq + i as u64
                    ),
                    reason: e.to_string(),
                })
            })
            .collect()
    }

    pub(crate) async fn delete_before(&self, seq: u64) -> Result<u64> {
        let script = redis::Script::new(DELETE_BEFORE);
        let deleted: u64 = self
            .run(|mut c| async move {
                let mut invocation = script.prepare_invoke();
                invocation.key(ENTRIES_KEY).arg(seq);
                invocation.invoke_async(&mut c).await
            })
            .await
            .map_err(unreadable_first)?;
        Ok(deleted)
    }
}

impl RedisStore {
    pub(crate) async fn save_baselines(&self, baselines: &[(String, String)]) -> Result<()> {
        let mut command = redis::cmd("HSET");
        command.arg(BASELINES_KEY);
        for (key, json) in baselines {
            command.arg(key).arg(json);
        }
        self.run(|mut c| async move { command.query_async::<()>(&mut c).await })
            .await
    }

    pub(crate) async fn load_baselines(&self) -> Result<Vec<(String, String)>> {
        self.run(|mut c| async move {
            redis::cmd("HGETALL")
                .arg(BASELINES_KEY)
                .query_async(&mut c)
                .await
        })
        .await
    }

    pub(crate) async fn delete_baselines(&self, keys: &[String]) -> Result<()> {
        let mut command = redis::cmd("HDEL");
        command.arg(BASELINES_KEY).arg(keys);
        self.run(|mut c| async move { command.query_async::<()>(&mut c).await })
            .await
    }
}

/// A script that could not decode the first entry's JSON says so: that entry was edited.
fn unreadable_first(error: StoreError) -> StoreError {
    match error {
        StoreError::Unavailable(reason) if reason.contains("cjson") => StoreError::Unreadable {
            what: "the oldest entry".into(),
            reason,
        },
        other => other,
    }
}

fn head_text(head: &Head) -> String {
    format!("{} {}", head.next_seq, head.hash)
}

fn parse_head(text: &str) -> Option<Head> {
    let (seq, hash) = text.split_once(' ')?;
    Some(Head {
        next_seq: seq.parse().ok()?,
        hash: hash.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_round_trip_and_junk_is_refused() {
        let head = Head {
            next_seq: 42,
            hash: "ab".repeat(32),
        };
        assert_eq!(parse_head(&head_text(&head)), Some(head));
        assert_eq!(parse_head("42"), None);
        assert_eq!(parse_head("x abc"), None);
    }
}
