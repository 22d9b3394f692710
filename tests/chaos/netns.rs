//! A network namespace joined to this one by a veth pair, whose link the scenarios slow down
//! (`tc tbf`: this kernel has no netem) or make lossy (`iptables -m statistic` drops). Names
//! are unique per run (`chaos-<pid>-<tag>`); dropping the `Link` deletes the namespace, which
//! takes its veth end (and so the pair), its qdiscs and its iptables rules with it. A run
//! killed before its drops ran is cleaned by the next one (`remove_stale`).

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn must(args: &[&str]) {
    if let Err(e) = run(args) {
        panic!("{e}");
    }
}

pub struct Link {
    pub ns: String,
    host_if: String,
    ns_if: String,
    pub host_ip: IpAddr,
    pub ns_ip: IpAddr,
}

impl Link {
    /// A namespace `chaos-<pid>-<tag>` with `lo` up and a /30 to this namespace on a veth pair.
    pub fn new(tag: u8) -> Self {
        let pid = std::process::id();
        let link = Self {
            ns: format!("chaos-{pid}-{tag}"),
            host_if: format!("chx{}{tag}a", pid % 10_000_000),
            ns_if: format!("chx{}{tag}b", pid % 10_000_000),
            host_ip: IpAddr::V4(Ipv4Addr::new(10, 251, (pid % 250) as u8, tag * 4 + 1)),
            ns_ip: IpAddr::V4(Ipv4Addr::new(10, 251, (pid % 250) as u8, tag * 4 + 2)),
        };
        // Made step by step; a failure panics and the drop removes what was made.
        must(&["ip", "netns", "add", &link.ns]);
        must(&[
            "ip",
            "link",
            "add",
            &link.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &link.ns_if,
        ]);
        must(&["ip", "link", "set", &link.ns_if, "netns", &link.ns]);
        must(&[
            "ip",
            "addr",
            "add",
            &format!("{}/30", link.host_ip),
            "dev",
            &link.host_if,
        ]);
        must(&["ip", "link", "set", &link.host_if, "up"]);
        link.in_ns(&[
            "ip",
            "addr",
            "add",
            &format!("{}/30", link.ns_ip),
            "dev",
            &link.ns_if,
        ]);
        link.in_ns(&["ip", "link", "set", &link.ns_if, "up"]);
        link.in_ns(&["ip", "link", "set", "lo", "up"]);
        link
    }

    fn in_ns(&self, args: &[&str]) {
        let full = [&["ip", "netns", "exec", &self.ns][..], args].concat();
        must(&full);
    }

    /// Both directions limited to `rate` (tc units, e.g. `64kbit`) by a token bucket whose
    /// queue holds up to 5 s of traffic: a slow link, not a dropping one.
    pub fn slow(&self, rate: &str) {
        let tbf = ["qdisc", "replace", "dev"];
        let rest = ["root", "tbf", "rate", rate, "burst", "4kb", "latency", "5s"];
        must(&[&["tc"][..], &tbf, &[&self.host_if], &rest].concat());
        self.in_ns(&[&["tc"][..], &tbf, &[&self.ns_if], &rest].concat());
    }

    /// Each packet on the link, either way, dropped with probability `p`.
    pub fn lossy(&self, p: f64) {
        let p = format!("{p}");
        for (chain, dir) in [("INPUT", "-i"), ("OUTPUT", "-o")] {
            self.in_ns(&[
                "iptables",
                "-A",
                chain,
                dir,
                &self.ns_if,
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                &p,
                "-j",
                "DROP",
            ]);
        }
    }

    /// The link as it was: no shaping, no drops.
    pub fn heal(&self) {
        let _ = run(&["tc", "qdisc", "del", "dev", &self.host_if, "root"]);
        let _ = run(&[
            "ip",
            "netns",
            "exec",
            &self.ns,
            "tc",
            "qdisc",
            "del",
            "dev",
            &self.ns_if,
            "root",
        ]);
        let _ = run(&["ip", "netns", "exec", &self.ns, "iptables", "-F"]);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.heal();
        let _ = run(&["ip", "netns", "del", &self.ns]);
        // Gone with the namespace already, unless the pair was never moved into it.
        let _ = run(&["ip", "link", "del", &self.host_if]);
    }
}

/// Deletes namespaces (and their veth pairs) left by a run that no longer exists.
pub fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(pid) = name
            .strip_prefix("chaos-")
            .and_then(|r| r.split('-').next())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = run(&["ip", "netns", "del", name]);
            if let Some(tag) = name.rsplit('-').next() {
                let pid: u32 = pid.parse().unwrap_or(0);
                let _ = run(&[
                    "ip",
                    "link",
                    "del",
                    &format!("chx{}{tag}a", pid % 10_000_000),
                ]);
            }
        }
    }
}
