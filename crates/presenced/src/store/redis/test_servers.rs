//! Redis servers for tests, started from Debian's `redis-server` on free loopback ports, each in
//! its own temporary directory with `appendonly yes` and `appendfsync always`, and killed when
//! dropped. Never a fixed port, never a shared server. (Also used by the integration tests,
//! through `#[path]`.)
#![allow(dead_code)]
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One `redis-server` process.
pub struct Node {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
    extra: Vec<&'static str>,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Node {
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stop it as a crash would (SIGKILL).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Start it again on the same port and directory (its append-only file), as after a crash.
    pub fn restart(&mut self) {
        self.kill();
        let mut child = spawn(self.port, self._dir.path(), &self.extra).expect("redis-server restarts");
        assert!(
            wait_listening(self.port, &mut child),
            "redis-server came back on its port"
        );
        self.child = child;
    }
}

fn free_port(cluster: bool) -> u16 {
    loop {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("a free loopback port");
        let port = listener.local_addr().unwrap().port();
        // A Cluster node also listens on port + 10000 (the bus).
        if !cluster || (port < 55_000 && TcpListener::bind((Ipv4Addr::LOCALHOST, port + 10_000)).is_ok()) {
            return port;
        }
    }
}

fn spawn(port: u16, dir: &std::path::Path, extra: &[&str]) -> std::io::Result<Child> {
    let mut cmd = Command::new("redis-server");
    cmd.arg("--port")
        .arg(port.to_string())
        .args([
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
        ])
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd.spawn()
}

fn wait_listening(port: u16, child: &mut Child) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Start one node (standalone, or a Cluster member), retrying on another port if it cannot bind.
pub fn start_node(cluster: bool) -> Node {
    start_node_with(cluster, &[])
}

/// [`start_node`] with more `redis-server` arguments (later ones win over the defaults).
pub fn start_node_with(cluster: bool, more: &[&'static str]) -> Node {
    for _ in 0..20 {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let port = free_port(cluster);
        let base: &[&'static str] = if cluster {
            // A replica's first sync waits no 5 s for others to join (a failover test needs it synced).
            &[
                "--cluster-enabled",
                "yes",
                "--cluster-node-timeout",
                "2000",
                "--repl-diskless-sync-delay",
                "0",
            ]
        } else {
            &[]
        };
        let extra: Vec<&'static str> = base.iter().chain(more).copied().collect();
        let Ok(mut child) = spawn(port, dir.path(), &extra) else {
            panic!("redis-server cannot be started: is it installed (apt-get install redis-server)?");
        };
        if wait_listening(port, &mut child) {
            return Node {
                port,
                child,
                _dir: dir,
                extra,
            };
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("no redis-server came up after 20 tries");
}

fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli runs (apt-get install redis-tools)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A Cluster of three masters with one replica each.
pub struct Cluster {
    pub nodes: Vec<Node>,
}

impl Cluster {
    pub fn start() -> Cluster {
        let nodes: Vec<Node> = (0..6).map(|_| start_node(true)).collect();
        let addresses: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli runs (apt-get install redis-tools)");
        assert!(
            out.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = Cluster { nodes };
        cluster.wait_ok();
        cluster
    }

    /// Until every node says the cluster is ok and knows all six nodes, and every replica is in
    /// sync with its master.
    pub fn wait_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let ok = self.nodes.iter().all(|n| {
                let info = cli(n.port, &["cluster", "info"]);
                let nodes = cli(n.port, &["cluster", "nodes"]);
                let role = cli(n.port, &["info", "replication"]);
                info.contains("cluster_state:ok")
                    && info.contains("cluster_known_nodes:6")
                    && nodes.matches("slave").count() == 3
                    && (role.contains("role:master") || role.contains("master_link_status:up"))
            });
            if ok {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the cluster did not become ok");
    }

    /// The index of a node that is a master now.
    pub fn a_master(&self) -> usize {
        self.nodes
            .iter()
            .position(|n| cli(n.port, &["role"]).starts_with("master"))
            .expect("a master")
    }

    /// Move every slot of the master that holds `key` to another master, keys and all
    /// (`redis-cli --cluster reshard`), as an operator rebalancing the Cluster does.
    pub fn move_slots_holding(&self, key: &str) {
        let any = self.nodes[0].port;
        let slot: u16 = cli(any, &["cluster", "keyslot", key]).trim().parse().expect("a slot");
        // `cluster nodes`: id, address, flags, master, ..., then the slot ranges a master serves.
        let nodes = cli(any, &["cluster", "nodes"]);
        let masters: Vec<(&str, &str, bool)> = nodes
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                if fields.len() < 8 || !fields[2].contains("master") {
                    return None;
                }
                let holds = fields[8..].iter().any(|range| {
                    let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                    matches!((lo.parse::<u16>(), hi.parse::<u16>()), (Ok(lo), Ok(hi)) if lo <= slot && slot <= hi)
                });
                Some((fields[0], fields[1], holds))
            })
            .collect();
        let from = masters.iter().find(|m| m.2).expect("a master holds the slot");
        let to = masters.iter().find(|m| !m.2).expect("another master");
        let address = from.1.split('@').next().unwrap();
        let out = Command::new("redis-cli")
            .args([
                "--cluster",
                "reshard",
                address,
                "--cluster-from",
                from.0,
                "--cluster-to",
                to.0,
            ])
            .args(["--cluster-slots", "16384", "--cluster-yes"])
            .output()
            .expect("redis-cli runs (apt-get install redis-tools)");
        assert!(
            out.status.success(),
            "reshard: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let after = cli(any, &["cluster", "nodes"]);
        let from_line = after.lines().find(|l| l.starts_with(from.0)).unwrap();
        assert!(
            from_line.split_whitespace().count() <= 8,
            "the master still serves slots: {from_line}"
        );
    }

    /// `redis+cluster://` over every node.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        format!("redis+cluster://{}", hosts.join(","))
    }
}
