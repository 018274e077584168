//! One handle on Redis whether standalone or Cluster, with a timeout on every connect and
//! command, and the start-up checks: durability settings and the function library.
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};
use std::time::Duration;

/// The function library every master must hold (`FUNCTION LOAD REPLACE` at start).
pub const LIBRARY: &str = include_str!("functions.lua");

/// Where Redis is: one URL (`redis://`, `rediss://`) or a Cluster's seed list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub urls: Vec<String>,
    pub cluster: bool,
}

impl Target {
    /// `redis://host:port[/db]`, `rediss://…`, or `redis+cluster://host:port,host:port,…` (also
    /// `rediss+cluster://`) for a Cluster's seeds.
    pub fn parse(raw: &str) -> Result<Target, String> {
        let raw = raw.trim();
        for (scheme, inner) in [("redis+cluster://", "redis://"), ("rediss+cluster://", "rediss://")] {
            if let Some(rest) = raw.strip_prefix(scheme) {
                let (auth, hosts) = match rest.rsplit_once('@') {
                    Some((auth, hosts)) => (format!("{auth}@"), hosts),
                    None => (String::new(), rest),
                };
                let urls: Vec<String> = hosts
                    .trim_end_matches('/')
                    .split(',')
                    .filter(|h| !h.is_empty())
                    .map(|h| format!("{inner}{auth}{h}"))
                    .collect();
                if urls.is_empty() {
                    return Err(format!("{raw:?} names no Cluster node"));
                }
                return Ok(Target { urls, cluster: true });
            }
        }
        if raw.starts_with("redis://") || raw.starts_with("rediss://") {
            return Ok(Target {
                urls: vec![raw.to_owned()],
                cluster: false,
            });
        }
        Err(format!(
            "{raw:?} is not a Redis address (redis://, rediss://, redis+cluster://host:port,host:port)"
        ))
    }
}

/// A connection that reconnects by itself; cheap to clone (requests share it, pipelined).
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// Timeouts for connecting and for each command.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub command: Duration,
}

impl Conn {
    pub async fn open(target: &Target, timeouts: Timeouts) -> redis::RedisResult<Conn> {
        if target.cluster {
            let client = ClusterClientBuilder::new(target.urls.clone())
                .connection_timeout(timeouts.connect)
                .response_timeout(timeouts.command)
                .retries(2)
                .build()?;
            let conn = tokio::time::timeout(timeouts.connect * 3, client.get_async_connection())
                .await
                .map_err(|_| timeout_error("connecting to the Cluster"))??;
            Ok(Conn::Cluster(conn))
        } else {
            let client = redis::Client::open(target.urls[0].as_str())?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeouts.connect))
                .set_response_timeout(Some(timeouts.command))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_secs(2));
            let conn = tokio::time::timeout(timeouts.connect * 3, client.get_connection_manager_with_config(config))
                .await
                .map_err(|_| timeout_error("connecting to Redis"))??;
            Ok(Conn::Single(conn))
        }
    }

    /// Run one command.
    pub async fn run<T: redis::FromRedisValue>(&self, cmd: &Cmd) -> redis::RedisResult<T> {
        let mut conn = self.clone();
        cmd.query_async(&mut conn).await
    }

    /// `WAIT replicas timeout` on the master holding `key`'s slot (the connection that sent its
    /// writes); returns how many replicas confirmed.
    pub async fn wait_replicas(&self, key: &str, replicas: usize, timeout: Duration) -> redis::RedisResult<i64> {
        let mut cmd = redis::cmd("WAIT");
        cmd.arg(replicas).arg(timeout.as_millis() as u64);
        match self {
            Conn::Single(_) => self.run(&cmd).await,
            Conn::Cluster(c) => {
                use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
                let route = Route::new(slot_of(key), SlotAddr::Master);
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                let value = c.clone().route_command(cmd, routing).await?;
                redis::from_redis_value(value).map_err(Into::into)
            }
        }
    }

    /// Every master's address (one for standalone).
    pub async fn masters(&self, target: &Target) -> redis::RedisResult<Vec<String>> {
        match self {
            Conn::Single(_) => Ok(target.urls.clone()),
            Conn::Cluster(_) => {
                let nodes: String = self.run(redis::cmd("CLUSTER").arg("NODES")).await?;
                Ok(masters_of(&nodes, &target.urls[0]))
            }
        }
    }
}

/// A key's Cluster slot: CRC-16 (XMODEM) of its hash tag, or of the whole key without one.
pub fn slot_of(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let hashed = match key.find('{') {
        Some(open) => match key[open + 1..].find('}') {
            Some(len) if len > 0 => &bytes[open + 1..open + 1 + len],
            _ => bytes,
        },
        None => bytes,
    };
    crc16::State::<crc16::XMODEM>::calculate(hashed) % 16384
}

fn timeout_error(what: &str) -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("timed out {what}"),
    ))
}

/// Master addresses from a `CLUSTER NODES` reply (`<id> <ip:port@bus> <flags> …` per line), as
/// URLs of the seed's scheme and credentials.
fn masters_of(nodes: &str, seed: &str) -> Vec<String> {
    let (scheme, rest) = seed.split_once("://").unwrap_or(("redis", seed));
    let auth = rest.rsplit_once('@').map(|(a, _)| format!("{a}@")).unwrap_or_default();
    nodes
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let address = fields.nth(1)?;
            let flags = fields.next()?;
            let is_master = flags.split(',').any(|f| f == "master");
            let failed = flags.split(',').any(|f| f == "fail" || f == "fail?" || f == "noaddr");
            // A master owns slots (listed after the link state); one without is being made a
            // replica, or is empty.
            let owns_slots = fields.nth(5).is_some();
            let host_port = address.split('@').next()?;
            (is_master && !failed && owns_slots).then(|| format!("{scheme}://{auth}{host_port}"))
        })
        .collect()
}

pub fn value_text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        Value::Okay => Some("OK".into()),
        _ => None,
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// What a master's persistence and memory settings promise for an acknowledged write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Durability {
    /// `appendonly yes`, `appendfsync always`, and nothing evicted (no `maxmemory`, or
    /// `maxmemory-policy noeviction`): fsynced before the reply, and kept.
    Fsynced,
    /// Anything weaker, with the settings read.
    Weaker(String),
}

/// Read one master's persistence and eviction settings (`CONFIG GET`).
pub async fn durability_of(url: &str, timeouts: Timeouts) -> redis::RedisResult<Durability> {
    let client = redis::Client::open(url)?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeouts.connect))
        .set_response_timeout(Some(timeouts.command));
    let mut conn = client.get_multiplexed_async_connection_with_config(&config).await?;
    let mut settings = std::collections::HashMap::new();
    for name in ["appendonly", "appendfsync", "maxmemory", "maxmemory-policy"] {
        let got: std::collections::HashMap<String, String> =
            redis::cmd("CONFIG").arg("GET").arg(name).query_async(&mut conn).await?;
        settings.insert(name, got.get(name).cloned().unwrap_or_default());
    }
    let mut weaker = Vec::new();
    if settings["appendonly"] != "yes" || settings["appendfsync"] != "always" {
        weaker.push(format!(
            "appendonly {}, appendfsync {}",
            settings["appendonly"], settings["appendfsync"]
        ));
    }
    // With a memory limit, any policy but noeviction lets Redis drop keys: presence, leases,
    // subscriptions. noeviction refuses writes instead (answered 503), and loses nothing.
    if settings["maxmemory"] != "0" && settings["maxmemory-policy"] != "noeviction" {
        weaker.push(format!(
            "maxmemory {} with maxmemory-policy {} (Redis may evict the backend's keys)",
            settings["maxmemory"], settings["maxmemory-policy"]
        ));
    }
    Ok(if weaker.is_empty() {
        Durability::Fsynced
    } else {
        Durability::Weaker(weaker.join("; "))
    })
}

/// Load the function library onto one master (a replica gets it by replication).
pub async fn load_library(url: &str, timeouts: Timeouts) -> redis::RedisResult<()> {
    let client = redis::Client::open(url)?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeouts.connect))
        .set_response_timeout(Some(timeouts.command));
    let mut conn = client.get_multiplexed_async_connection_with_config(&config).await?;
    let _: Value = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg("REPLACE")
        .arg(LIBRARY)
        .query_async(&mut conn)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!(
            Target::parse("redis://127.0.0.1:6379").unwrap(),
            Target {
                urls: vec!["redis://127.0.0.1:6379".into()],
                cluster: false
            }
        );
        let t = Target::parse("rediss+cluster://user:pw@a:1,b:2").unwrap();
        assert!(t.cluster);
        assert_eq!(t.urls, ["rediss://user:pw@a:1", "rediss://user:pw@b:2"]);
        for bad in ["", "http://x", "redis+cluster://", "embedded"] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn slots_follow_the_hash_tag() {
        // Values from the Cluster specification's examples.
        assert_eq!(slot_of("foo"), 12182);
        assert_eq!(slot_of("{user1000}.following"), slot_of("user1000"));
        assert_eq!(slot_of("{}x"), slot_of("{}x"));
        assert_eq!(slot_of("a:{p3}:log"), slot_of("p3"));
    }

    #[test]
    fn masters_are_read_from_cluster_nodes() {
        let nodes = "a1 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-5460\n\
                     b2 127.0.0.1:7002@17002 slave a1 0 0 1 connected\n\
                     c3 127.0.0.1:7003@17003 master,fail - 0 0 2 connected 5461-10922\n\
                     d4 127.0.0.1:7004@17004 master - 0 0 5 connected\n";
        assert_eq!(
            masters_of(nodes, "rediss://u:p@seed:1"),
            ["rediss://u:p@127.0.0.1:7001"]
        );
    }
}
