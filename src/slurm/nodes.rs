//! Slurm's view of the nodes (`scontrol -o show node`): which node a configured host is, and
//! whether a step can reach it now. Pure parsing; the engine runs scontrol.

use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub addr: String,
    pub hostname: String,
    /// `IDLE`, `MIXED+DRAIN`, `DOWN+NOT_RESPONDING`, ...
    pub state: String,
    pub reason: String,
}

/// Parse `scontrol -o show node` (one node per line, `Key=value` words; `Reason=` is last and
/// may contain spaces).
pub fn parse_show_node(text: &str) -> Vec<Node> {
    let mut nodes = Vec::new();
    for line in text.lines() {
        let (fields, reason) = match line.split_once(" Reason=") {
            Some((f, r)) => (f, r.trim().to_owned()),
            None => (line, String::new()),
        };
        let mut node = Node {
            name: String::new(),
            addr: String::new(),
            hostname: String::new(),
            state: String::new(),
            reason,
        };
        for word in fields.split_whitespace() {
            let Some((k, v)) = word.split_once('=') else {
                continue;
            };
            match k {
                "NodeName" => node.name = v.to_owned(),
                "NodeAddr" => node.addr = v.to_owned(),
                "NodeHostName" => node.hostname = v.to_owned(),
                "State" => node.state = v.to_owned(),
                _ => {}
            }
        }
        if !node.name.is_empty() {
            nodes.push(node);
        }
    }
    nodes
}

impl Node {
    /// Why a new task on this node would not start (or would wait forever), if it would not.
    /// `in_allocation`: the node already belongs to the caller's job, where a drained node
    /// still runs steps.
    pub fn unusable(&self, in_allocation: bool) -> Option<String> {
        let flags: Vec<&str> = self
            .state
            .split('+')
            .map(|f| f.trim_end_matches('*'))
            .collect();
        let bad = flags.iter().find(|f| {
            matches!(
                **f,
                "DOWN"
                    | "NOT_RESPONDING"
                    | "FAIL"
                    | "FAILING"
                    | "POWERED_DOWN"
                    | "POWER_DOWN"
                    | "POWERING_DOWN"
                    | "FUTURE"
                    | "UNKNOWN"
                    | "NO_RESPOND"
            ) || (!in_allocation && matches!(**f, "DRAIN" | "DRAINED" | "DRAINING"))
        });
        let not_responding = self.state.ends_with('*');
        if bad.is_none() && !not_responding {
            return None;
        }
        let why = if self.reason.is_empty() {
            String::new()
        } else {
            format!(": {}", self.reason)
        };
        Some(format!("slurm node {} is {}{why}", self.name, self.state))
    }
}

/// Which Slurm node each host is: by NodeName, NodeHostName or NodeAddr, in that order. A host
/// that matches no node, or two hosts that are the same node, are errors for that host.
pub fn map_hosts(hosts: &[String], nodes: &[Node]) -> Vec<Result<usize, String>> {
    let mut by: [HashMap<&str, usize>; 3] = Default::default();
    for (i, n) in nodes.iter().enumerate() {
        by[0].entry(n.name.as_str()).or_insert(i);
        by[1].entry(n.hostname.as_str()).or_insert(i);
        by[2].entry(n.addr.as_str()).or_insert(i);
    }
    let mut owner: HashMap<usize, &str> = HashMap::new();
    hosts
        .iter()
        .map(|h| {
            let i = by
                .iter()
                .find_map(|m| m.get(h.as_str()).copied())
                .ok_or_else(|| {
                    format!("slurm knows no node named {h:?} (NodeName, NodeHostName or NodeAddr)")
                })?;
            if let Some(other) = owner.insert(i, h) {
                owner.insert(i, other);
                return Err(format!(
                    "{h:?} is slurm node {}, as is {other:?}: list each node once",
                    nodes[i].name
                ));
            }
            Ok(i)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHOW: &str = "NodeName=sl1 Arch=x86_64 CoresPerSocket=1 NodeAddr=10.79.0.11 NodeHostName=sl1 Version=22.05.8 State=IDLE ThreadsPerCore=1 Partitions=cvs ExtSensorsTemp=n/s
NodeName=sl2 Arch=x86_64 NodeAddr=10.79.0.12 NodeHostName=host-b State=IDLE+DRAIN Partitions=cvs ExtSensorsTemp=n/s Reason=cvs test drain [root@2026-12-02T16:21:27]
NodeName=sl3 NodeAddr=10.79.0.13 NodeHostName=sl3 State=DOWN+NOT_RESPONDING Reason=Not responding [slurm@2026-12-02T16:22:10]
NodeName=sl4 NodeAddr=10.79.0.14 NodeHostName=sl4 State=IDLE* Partitions=cvs
";

    #[test]
    fn nodes_parse_with_multi_word_reasons() {
        let n = parse_show_node(SHOW);
        assert_eq!(n.len(), 4);
        assert_eq!(n[1].hostname, "host-b");
        assert_eq!(n[1].state, "IDLE+DRAIN");
        assert_eq!(n[1].reason, "cvs test drain [root@2026-12-02T16:21:27]");
        assert_eq!(n[0].reason, "");
    }

    #[test]
    fn down_drained_and_silent_nodes_are_unusable_with_slurms_reason() {
        let n = parse_show_node(SHOW);
        assert_eq!(n[0].unusable(false), None);
        let drained = n[1].unusable(false).unwrap();
        assert!(drained.contains("IDLE+DRAIN: cvs test drain"), "{drained}");
        // A drained node still runs steps of a job it already belongs to.
        assert_eq!(n[1].unusable(true), None);
        assert!(n[2].unusable(true).unwrap().contains("Not responding"));
        assert!(n[3].unusable(true).unwrap().contains("IDLE*"));
    }

    #[test]
    fn hosts_map_by_name_hostname_or_address_and_never_by_guess() {
        let n = parse_show_node(SHOW);
        let hosts: Vec<String> = ["10.79.0.11", "host-b", "sl3", "10.79.0.99", "sl1"]
            .map(String::from)
            .to_vec();
        let m = map_hosts(&hosts, &n);
        assert_eq!(m[0], Ok(0));
        assert_eq!(m[1], Ok(1));
        assert_eq!(m[2], Ok(2));
        assert!(
            m[3].as_ref()
                .unwrap_err()
                .contains("knows no node named \"10.79.0.99\"")
        );
        assert!(m[4].as_ref().unwrap_err().contains("as is \"10.79.0.11\""));
    }
}
