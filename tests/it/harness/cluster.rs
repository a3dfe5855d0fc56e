//! A private Redis Cluster: 3 masters and 3 replicas on free loopback ports, made with
//! `redis-cli --cluster create`, for the tests that write to a cluster, fail a master over or
//! move a slot. The shared Redis is never touched.

use std::process::Command;
use std::time::{Duration, Instant};

use outbox_relay::sink::RedisConnection;
use redis::AsyncCommands;
use redis::cluster::ClusterClient;

use super::servers::PrivateRedis;

pub struct PrivateCluster {
    pub nodes: Vec<PrivateRedis>,
    client: ClusterClient,
}

impl PrivateCluster {
    /// Six nodes, `--cluster-replicas 1`: the first three are the masters.
    pub fn start() -> PrivateCluster {
        let nodes: Vec<PrivateRedis> = (0..6).map(|_| PrivateRedis::start_cluster_node()).collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port))
            .collect();
        // Bounded: it waits for the nodes to agree, which a node that never does would make
        // endless.
        let output = Command::new("timeout")
            .args(["120", "redis-cli"])
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            output.status.success(),
            "redis-cli --cluster create: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let client = ClusterClient::builder(nodes.iter().map(PrivateRedis::url))
            .response_timeout(Duration::from_secs(30))
            .build()
            .expect("cluster client");
        let cluster = PrivateCluster { nodes, client };
        cluster.wait_until_healthy(Duration::from_secs(30));
        cluster
    }

    /// The first master's URL: what a relay is given as `redis_url`.
    pub fn seed_url(&self) -> String {
        self.nodes[0].url()
    }

    /// `redis-cli -p <port> <args>`, its output (panics when it fails).
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        let output = redis_cli(port).args(args).output().expect("run redis-cli");
        assert!(output.status.success(), "redis-cli {args:?} failed");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Waits until every running node says `cluster_state:ok` and every master has its replica,
    /// synced.
    pub fn wait_until_healthy(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let healthy = self.nodes.iter().filter(|n| n.is_running()).all(|node| {
                let info = cli_output(node.port, &["cluster", "info"]);
                info.contains("cluster_state:ok")
            }) && self.masters().iter().all(|port| {
                {
                    // Connected and through its first sync.
                    let info = cli_output(*port, &["info", "replication"]);
                    info.contains("connected_slaves:1") && info.contains("state=online")
                }
            });
            if healthy {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not become healthy"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The ports of the masters now (as a running node sees the cluster).
    pub fn masters(&self) -> Vec<u16> {
        let node = self
            .nodes
            .iter()
            .find(|n| n.is_running())
            .expect("a node runs");
        let mut masters: Vec<u16> = cli_output(node.port, &["cluster", "nodes"])
            .lines()
            .filter(|line| line.contains("master") && !line.contains("fail"))
            .filter_map(|line| {
                let address = line.split_whitespace().nth(1)?;
                address.split(['@', ':']).nth(1)?.parse().ok()
            })
            .collect();
        masters.sort();
        masters
    }

    /// The port of the master that holds `key`'s slot now.
    pub fn master_of(&self, key: &str) -> u16 {
        let node = self
            .nodes
            .iter()
            .find(|n| n.is_running())
            .expect("a node runs");
        let slot: u16 = cli_output(node.port, &["cluster", "keyslot", key])
            .trim()
            .parse()
            .expect("CLUSTER KEYSLOT");
        for line in cli_output(node.port, &["cluster", "nodes"]).lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if !fields.get(2).is_some_and(|f| f.contains("master")) || line.contains("fail") {
                continue;
            }
            for range in &fields[8..] {
                if range.starts_with('[') {
                    continue;
                }
                let (first, last) = range.split_once('-').unwrap_or((range, range));
                let (first, last): (u16, u16) = (first.parse().unwrap(), last.parse().unwrap());
                if (first..=last).contains(&slot) {
                    return fields[1].split(['@', ':']).nth(1).unwrap().parse().unwrap();
                }
            }
        }
        panic!("no master holds slot {slot}");
    }

    /// The port of the replica of the master on `master`.
    pub fn replica_of(&self, master: u16) -> u16 {
        let id = self.node_id(master);
        cli_output(master, &["cluster", "nodes"])
            .lines()
            .find(|line| line.contains("slave") && line.contains(&id))
            .and_then(|line| {
                line.split_whitespace()
                    .nth(1)?
                    .split(['@', ':'])
                    .nth(1)?
                    .parse()
                    .ok()
            })
            .expect("the master has a replica")
    }

    /// Waits until the node on `port` is a master of a healthy cluster; forces it
    /// (`CLUSTER FAILOVER TAKEOVER`) when it has not taken over by itself within half of `within`.
    pub fn wait_for_promotion(&self, port: u16, within: Duration) {
        let start = Instant::now();
        let mut forced = false;
        loop {
            let role = cli_output(port, &["role"]);
            let ok = cli_output(port, &["cluster", "info"]).contains("cluster_state:ok");
            if role.starts_with("master") && ok {
                eprintln!(
                    "{port} is master after {:?} (forced: {forced})",
                    start.elapsed()
                );
                return;
            }
            if !forced && start.elapsed() > within / 2 {
                eprintln!("forcing the failover: CLUSTER FAILOVER TAKEOVER on {port}");
                cli_output(port, &["cluster", "failover", "takeover"]);
                forced = true;
            }
            assert!(start.elapsed() < within, "{port} did not become master");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Moves the slot of `key` from master `source` to master `target` the way
    /// `redis-cli --cluster reshard` does (IMPORTING, MIGRATING, MIGRATE key by key, NODE),
    /// pausing `pause` between keys so appends meet the slot half moved. Returns how many keys
    /// moved.
    pub fn migrate_slot_of(&self, key: &str, source: u16, target: u16, pause: Duration) -> usize {
        let slot = cli_output(source, &["cluster", "keyslot", key])
            .trim()
            .to_owned();
        let source_id = self.node_id(source);
        let target_id = self.node_id(target);
        self.cli(
            target,
            &["cluster", "setslot", &slot, "importing", &source_id],
        );
        self.cli(
            source,
            &["cluster", "setslot", &slot, "migrating", &target_id],
        );
        let mut moved = 0;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            assert!(
                Instant::now() < deadline,
                "slot {slot} still has keys on {source} after moving {moved}"
            );
            let keys = cli_output(source, &["cluster", "getkeysinslot", &slot, "1"]);
            let Some(next) = keys.lines().next().filter(|k| !k.is_empty()) else {
                break;
            };
            let reply = self.cli(
                source,
                &[
                    "migrate",
                    "127.0.0.1",
                    &target.to_string(),
                    next,
                    "0",
                    "10000",
                ],
            );
            assert!(
                reply.trim() == "OK" || reply.trim() == "NOKEY",
                "MIGRATE {next}: {reply}"
            );
            moved += 1;
            std::thread::sleep(pause);
        }
        self.cli(target, &["cluster", "setslot", &slot, "node", &target_id]);
        self.cli(source, &["cluster", "setslot", &slot, "node", &target_id]);
        for node in self.nodes.iter().filter(|n| n.is_running()) {
            if node.port != source && node.port != target {
                cli_output(
                    node.port,
                    &["cluster", "setslot", &slot, "node", &target_id],
                );
            }
        }
        moved
    }

    /// The node ID of the node on `port`.
    pub fn node_id(&self, port: u16) -> String {
        cli_output(port, &["cluster", "myid"]).trim().to_owned()
    }

    /// The node on `port`.
    pub fn node(&mut self, port: u16) -> &mut PrivateRedis {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node of this cluster")
    }

    /// A routed connection (follows MOVED/ASK), as the relay's sink has.
    pub async fn connection(&self) -> RedisConnection {
        RedisConnection::Cluster(
            self.client
                .get_async_connection()
                .await
                .expect("connect to the cluster"),
        )
    }

    /// The payloads' `n` of every entry of `key`, oldest first.
    pub async fn numbers(&self, key: &str) -> Vec<u64> {
        let mut connection = self.connection().await;
        let mut numbers = Vec::new();
        let mut start = "-".to_owned();
        loop {
            let page: redis::streams::StreamRangeReply = connection
                .xrange_count(key, &start, "+", 5000)
                .await
                .expect("XRANGE");
            let Some(last) = page.ids.last() else {
                return numbers;
            };
            start = format!("({}", last.id);
            for entry in &page.ids {
                let payload: String = entry.get("payload").expect("a payload field");
                let payload: serde_json::Value = serde_json::from_str(&payload).unwrap();
                numbers.push(payload["n"].as_u64().expect("n"));
            }
        }
    }
}

/// `redis-cli -p <port>`, ended after 30 s (`timeout`): a node that never answers fails the
/// call instead of hanging the test.
fn redis_cli(port: u16) -> Command {
    let mut command = Command::new("timeout");
    command.args(["30", "redis-cli", "-p", &port.to_string()]);
    command
}

fn cli_output(port: u16, args: &[&str]) -> String {
    redis_cli(port)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}
