//! The egress filter for [`Network::Enabled`](crate::Network::Enabled) sandboxes.
//!
//! slirp4netns opens ordinary host sockets on a sandbox's behalf, so without a filter an
//! enabled sandbox reaches everything the host reaches: the host's own addresses (a service
//! bound to 0.0.0.0), private networks, and link-local addresses such as a cloud metadata
//! service (169.254.169.254), which is the classic way out of a code-execution sandbox into
//! the cloud account that hosts it. The supervisor therefore runs slirp4netns with group
//! [`HELPER_GID`] (and no supplementary groups) and installs one nftables table,
//! `inet cloister_egress`, whose output chain rejects, for sockets of that group only:
//!
//! * the host's own addresses (`fib daddr type local`), loopback included;
//! * private, shared, link-local, benchmarking, multicast and reserved IPv4 ranges
//!   ([`DENY_V4`]) and their IPv6 counterparts ([`DENY_V6`]);
//!
//! and accepts, before those, DNS (port 53) to the host's own resolvers from `/etc/resolv.conf`
//! (slirp4netns forwards the sandbox's queries there, often a private or loopback address).
//! Everything else (the public internet) is accepted. Sandbox processes themselves live in
//! their own network namespaces and never meet this chain; only the helper's sockets do.
//!
//! The table is replaced as a whole (idempotent, and a changed resolver list is picked up) the
//! first time an enabled sandbox starts in a process. If it cannot be installed (no `nft`, no
//! nf_tables in the kernel, a supervisor that is not root), enabled sandboxes refuse to start
//! rather than run unfiltered; `CLOISTER_EGRESS_FILTER=off` in the supervisor's environment
//! opts out (the operator then filters elsewhere).

use crate::SandboxError;
use std::io::Write;
use std::net::IpAddr;
use std::process::Stdio;
use std::sync::Mutex;

/// The group slirp4netns runs with; sockets of this group are the ones filtered. Not a group
/// Debian assigns (65534 is `nogroup`); processes of the host should not use it.
pub const HELPER_GID: u32 = 65533;

/// The nftables table the filter lives in.
pub const TABLE: &str = "cloister_egress";

/// IPv4 destinations refused: "this network", RFC 1918, CGNAT, link-local (cloud metadata),
/// IETF protocol assignments, benchmarking, multicast and reserved (RFC 6890).
pub const DENY_V4: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/3",
];

/// IPv6 destinations refused: unspecified, loopback, IPv4-mapped, unique-local, link-local,
/// multicast.
pub const DENY_V6: &[&str] = &[
    "::/127",
    "::ffff:0:0/96",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
];

/// Whether the filter is wanted (`CLOISTER_EGRESS_FILTER` is not `off`).
pub fn enabled() -> bool {
    std::env::var("CLOISTER_EGRESS_FILTER").map_or(true, |v| v != "off")
}

/// The resolvers in a resolv.conf text.
pub fn nameservers(resolv_conf: &str) -> Vec<IpAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver"))
                .then(|| w.next())
                .flatten()
                .and_then(|a| a.split('%').next()?.parse().ok())
        })
        .collect()
}

/// The nft script that (re)creates the table for the helper's group `gid`. Only packets from
/// sockets of that group jump to the filtering chain: packets without a socket (the kernel's
/// own RSTs and ICMP answers) and everyone else's are never looked at.
pub fn ruleset(gid: u32, resolvers: &[IpAddr]) -> String {
    let reject = "reject with icmpx type admin-prohibited";
    let mut s = format!(
        "table inet {TABLE}\ndelete table inet {TABLE}\ntable inet {TABLE} {{\n  \
         chain output {{\n    type filter hook output priority 0; policy accept;\n    \
         meta skgid {gid} jump sandbox_egress\n  }}\n  chain sandbox_egress {{\n"
    );
    for r in resolvers {
        let fam = if r.is_ipv4() { "ip" } else { "ip6" };
        s.push_str(&format!(
            "    {fam} daddr {r} meta l4proto {{ tcp, udp }} th dport 53 accept\n"
        ));
    }
    s.push_str(&format!("    fib daddr type local {reject}\n"));
    s.push_str(&format!(
        "    ip daddr {{ {} }} {reject}\n",
        DENY_V4.join(", ")
    ));
    s.push_str(&format!(
        "    ip6 daddr {{ {} }} {reject}\n  }}\n}}\n",
        DENY_V6.join(", ")
    ));
    s
}

static INSTALLED: Mutex<bool> = Mutex::new(false);

/// Installs the filter once per process (see the module docs).
pub(crate) fn ensure(gid: u32) -> Result<(), SandboxError> {
    if !enabled() {
        return Ok(());
    }
    let mut done = INSTALLED.lock().unwrap_or_else(|e| e.into_inner());
    if *done {
        return Ok(());
    }
    let refuse = |why: String| {
        SandboxError::Start(format!(
            "network: the egress filter could not be installed ({why}); install nftables \
             (apt-get install nftables) and run the server as root, or set \
             CLOISTER_EGRESS_FILTER=off to run enabled sandboxes unfiltered"
        ))
    };
    let resolvers = nameservers(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default());
    let script = ruleset(gid, &resolvers);
    let mut child = std::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| refuse(format!("nft: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| refuse(format!("nft: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| refuse(format!("nft: {e}")))?;
    if !out.status.success() {
        return Err(refuse(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    tracing::info!(
        table = TABLE,
        "egress filter installed for enabled sandboxes"
    );
    *done = true;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolvers_are_read_from_resolv_conf() {
        let conf = "# comment\nnameserver 10.255.255.53\nnameserver fe80::1%eth0\n\
                    search example\nnameserver\nnameserver not-an-ip\n options ndots:1\n";
        assert_eq!(
            nameservers(conf),
            vec![
                "10.255.255.53".parse::<IpAddr>().unwrap(),
                "fe80::1".parse().unwrap()
            ]
        );
    }

    #[test]
    fn the_ruleset_filters_only_the_helper_group_and_accepts_dns_first() {
        let s = ruleset(65533, &["10.0.0.2".parse().unwrap()]);
        let skuid = s.find("meta skgid 65533 jump sandbox_egress").unwrap();
        let dns = s
            .find("ip daddr 10.0.0.2 meta l4proto { tcp, udp } th dport 53 accept")
            .unwrap();
        let local = s.find("fib daddr type local reject").unwrap();
        let v4 = s.find("169.254.0.0/16").unwrap();
        assert!(skuid < dns && dns < local && local < v4, "{s}");
        assert!(s.starts_with("table inet cloister_egress\ndelete table inet cloister_egress\n"));
        assert!(s.contains("fc00::/7"));
    }
}
