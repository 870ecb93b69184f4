//! The link between the sending host A and the receiving host B.
//!
//! As root: two network namespaces ([`NS_A`], [`NS_B`]) joined by a veth pair
//! (10.77.0.1 in A, 10.77.0.2 in B), each end shaped with `tc qdisc ... tbf`
//! to the requested rate, plus a delay relay (see [`super::relay`]) in A that
//! adds half the RTT in each direction. Servers listen in B on
//! `10.77.0.2:PORT`; clients in A dial `127.0.0.1:PORT+RELAY_OFFSET`, the
//! relay, which forwards across the veth. Bytes on the wire are read from the
//! veth's interface counters in A (`ip -s -j link`), so they include every
//! header and retransmission and nothing the tools say about themselves.
//!
//! Without root: both hosts are this machine's loopback, unshaped, still
//! through the delay relay; the byte counter is loopback's, which also counts
//! every other process using it (and sees each relayed byte twice; the harness
//! halves it).
//!
//! The namespaces are deleted when the [`Link`] is dropped and on SIGINT or
//! SIGTERM (see [`cleanup_on_signal`]).

use std::io;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::proc::{run, Side};

/// Namespace of the sending host.
pub const NS_A: &str = "cbtA";
/// Namespace of the receiving host.
pub const NS_B: &str = "cbtB";
const VETH_A: &str = "vethcbtA";
const VETH_B: &str = "vethcbtB";
const IP_A: &str = "10.77.0.1";
const IP_B: &str = "10.77.0.2";
/// Relay port = server port + this.
pub const RELAY_OFFSET: u16 = 100;

/// Ports of the servers in B, one per tool (each also relayed).
pub mod ports {
    /// The full copy (`cat`).
    pub const COPY: u16 = 47001;
    /// The rsync daemon.
    pub const RSYNC: u16 = 47002;
    /// `cbt recv --listen`.
    pub const CBT: u16 = 47003;
    /// The echo server for RTT probes.
    pub const ECHO: u16 = 47004;
    /// Every port.
    pub const ALL: [u16; 4] = [COPY, RSYNC, CBT, ECHO];
}

/// How the link was built.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LinkInfo {
    /// "veth between network namespaces, tbf-shaped" or "loopback".
    pub kind: String,
    /// Requested rate in bit/s (`None` on loopback: unshaped).
    pub rate_bit_s: Option<u64>,
    /// Requested round-trip time in ms (added by the relay).
    pub rtt_ms: f64,
    /// The exact `tc` command used on each end, if any.
    pub tc: Option<String>,
}

/// The emulated (or loopback) link; deleting it on drop.
pub struct Link {
    /// Description for the report.
    pub info: LinkInfo,
    namespaces: bool,
    relay: Option<Side>,
}

fn ip(args: &[&str]) -> io::Result<String> {
    run(Command::new("ip").args(args))
}

/// Deletes the namespaces, first killing (by id) the processes left in them.
pub fn teardown_namespaces() {
    for ns in [NS_A, NS_B] {
        if let Ok(pids) = ip(&["netns", "pids", ns]) {
            for pid in pids.split_whitespace() {
                let _ = Command::new("kill").arg(pid).output();
            }
        }
        let _ = Command::new("ip").args(["netns", "del", ns]).output();
    }
}

/// Installs a SIGINT/SIGTERM handler that deletes the namespaces and exits.
pub fn cleanup_on_signal() {
    let _ = ctrlc::set_handler(|| {
        eprintln!("harness: interrupted, deleting the network namespaces");
        if Path::new("/run/netns").join(NS_A).exists() || Path::new("/run/netns").join(NS_B).exists() {
            teardown_namespaces();
        }
        std::process::exit(130);
    });
}

/// Parses a rate like `100mbit`, `1gbit`, `500kbit` (tc's units) into bit/s.
pub fn parse_rate(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let (num, mult) = if let Some(n) = s.strip_suffix("gbit") {
        (n, 1_000_000_000)
    } else if let Some(n) = s.strip_suffix("mbit") {
        (n, 1_000_000)
    } else if let Some(n) = s.strip_suffix("kbit") {
        (n, 1_000)
    } else if let Some(n) = s.strip_suffix("bit") {
        (n, 1)
    } else {
        (s.as_str(), 1)
    };
    let v: f64 = num.parse().ok()?;
    (v > 0.0).then_some((v * mult as f64) as u64)
}

impl Link {
    /// Builds the link: namespaces if `emulate` (needs root), loopback
    /// otherwise; starts the delay relay (`relay_cmd` runs
    /// `harness helper relay`) in A.
    pub fn setup(emulate: bool, rate: &str, rtt: Duration, exe: &Path) -> io::Result<Link> {
        let rate_bits = parse_rate(rate).ok_or_else(|| io::Error::other(format!("bad --rate {rate}")))?;
        let mut link = Link {
            info: LinkInfo {
                kind: "loopback (not root: no namespaces, no rate shaping)".into(),
                rate_bit_s: None,
                rtt_ms: rtt.as_secs_f64() * 1000.0,
                tc: None,
            },
            namespaces: false,
            relay: None,
        };
        if emulate {
            teardown_namespaces();
            link.namespaces = true;
            ip(&["netns", "add", NS_A])?;
            ip(&["netns", "add", NS_B])?;
            ip(&[
                "link", "add", VETH_A, "netns", NS_A, "type", "veth", "peer", "name", VETH_B, "netns", NS_B,
            ])?;
            ip(&["-n", NS_A, "addr", "add", &format!("{IP_A}/24"), "dev", VETH_A])?;
            ip(&["-n", NS_B, "addr", "add", &format!("{IP_B}/24"), "dev", VETH_B])?;
            for (ns, dev) in [(NS_A, VETH_A), (NS_B, VETH_B)] {
                ip(&["-n", ns, "link", "set", dev, "up"])?;
                ip(&["-n", ns, "link", "set", "lo", "up"])?;
                run(Command::new("ip").args([
                    "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate,
                    "burst", "32kbit", "latency", "400ms",
                ]))?;
            }
            link.info = LinkInfo {
                kind: format!("veth pair between network namespaces {NS_A} ({IP_A}) and {NS_B} ({IP_B}), tbf-shaped on both ends, RTT added by a userspace delay relay in {NS_A}"),
                rate_bit_s: Some(rate_bits),
                rtt_ms: rtt.as_secs_f64() * 1000.0,
                tc: Some(format!("tc qdisc add dev <veth> root tbf rate {rate} burst 32kbit latency 400ms")),
            };
        }
        let mut args = vec![
            "helper".to_string(),
            "relay".into(),
            "--one-way-us".into(),
            (rtt.as_micros() / 2).to_string(),
        ];
        for p in ports::ALL {
            args.push("--map".into());
            args.push(format!("127.0.0.1:{}={}", p + RELAY_OFFSET, link.listen_addr(p)));
        }
        let mut relay = Side::spawn_untimed(&link.in_a(), &exe.display().to_string(), &args)?;
        relay.wait_for_line("relay: ready", Duration::from_secs(10))?;
        link.relay = Some(relay);
        Ok(link)
    }

    fn prefix(&self, ns: &str) -> Vec<String> {
        if self.namespaces {
            vec!["ip".into(), "netns".into(), "exec".into(), ns.into()]
        } else {
            Vec::new()
        }
    }

    /// Command prefix that runs a program on host A.
    pub fn in_a(&self) -> Vec<String> {
        self.prefix(NS_A)
    }

    /// Command prefix that runs a program on host B.
    pub fn in_b(&self) -> Vec<String> {
        self.prefix(NS_B)
    }

    /// Where a server in B listens for tool port `port`.
    pub fn listen_addr(&self, port: u16) -> String {
        if self.namespaces {
            format!("{IP_B}:{port}")
        } else {
            format!("127.0.0.1:{port}")
        }
    }

    /// What a client in A dials to reach the server of `port` (the relay).
    pub fn dial_addr(&self, port: u16) -> String {
        format!("127.0.0.1:{}", port + RELAY_OFFSET)
    }

    /// Bytes that have crossed the link so far, both directions.
    pub fn wire_bytes(&self) -> io::Result<u64> {
        if self.namespaces {
            let json = ip(&["-n", NS_A, "-s", "-j", "link", "show", "dev", VETH_A])?;
            let v: serde_json::Value = serde_json::from_str(&json).map_err(io::Error::other)?;
            let s = &v[0]["stats64"];
            let rx = s["rx"]["bytes"].as_u64();
            let tx = s["tx"]["bytes"].as_u64();
            match (rx, tx) {
                (Some(r), Some(t)) => Ok(r + t),
                _ => Err(io::Error::other("no stats64 in `ip -s -j link`")),
            }
        } else {
            let dev = std::fs::read_to_string("/proc/net/dev")?;
            let lo = dev
                .lines()
                .find(|l| l.trim_start().starts_with("lo:"))
                .ok_or_else(|| io::Error::other("no lo in /proc/net/dev"))?;
            let tx: u64 = lo
                .split(':')
                .nth(1)
                .and_then(|r| r.split_whitespace().nth(8))
                .and_then(|t| t.parse().ok())
                .ok_or_else(|| io::Error::other("bad /proc/net/dev"))?;
            // Each byte crosses loopback twice: client -> relay -> server.
            Ok(tx / 2)
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        if let Some(r) = self.relay.take() {
            r.kill();
        }
        if self.namespaces {
            teardown_namespaces();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("100mbit"), Some(100_000_000));
        assert_eq!(parse_rate("1.5Gbit"), Some(1_500_000_000));
        assert_eq!(parse_rate("x"), None);
    }
}
