//! A network namespace and a veth pair with a /30 per container, and the host's nftables table
//! that keeps containers away from the host and from each other.
//!
//! Addresses: slot `n` (0 ≤ n < 16384) is `10.213.0.0/16` + `4n`: the host end is `+1`, the
//! container's `eth0` `+2`. A slot is held by an exclusive `flock` on
//! `/run/cloister-containers/slots/<n>.lock` for the container's lifetime, so servers with
//! different data directories on one host never share one (a crashed holder's locks go with
//! it; its interfaces are swept by its successor, and a start that meets a leftover interface
//! moves to the next slot).
//!
//! Interface names: `cld<slot hex>` (egress disabled) and `cle<slot hex>` (enabled); the
//! nftables table `inet cloister_containers` matches them by those prefixes:
//! * input: from a container interface only replies to connections the host opened
//!   (`ct state established,related`); everything else (the host's listeners on the veth
//!   address, on 127.0.0.1 routed there, on any other host address) is dropped;
//! * forward: nothing is routed into a container interface unless it answers a connection the
//!   container opened; from a `cle` interface, DNS to the host's resolvers, then the egress
//!   filter's refused ranges (`cloister_sandbox::egress::DENY_V4/V6`: loopback, private,
//!   link-local/metadata, …) are rejected and the rest is accepted; from a `cld` interface
//!   everything is dropped (it has no default route anyway);
//! * postrouting: `cle` traffic leaving by another interface is masqueraded.
//!
//! Commands: three `ip` invocations to set a namespace up (`ip netns add`, `ip -batch` on the
//! host side, `ip -n NS -batch` inside), two to tear it down.

use std::fs::File;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::Mutex;

pub const SLOTS: u32 = 16384;
pub const SLOT_DIR: &str = "/run/cloister-containers/slots";
pub const TABLE: &str = "cloister_containers";
const BASE: u32 = u32::from_be_bytes([10, 213, 0, 0]);

pub fn host_addr(slot: u32) -> Ipv4Addr {
    Ipv4Addr::from(BASE + 4 * slot + 1)
}
pub fn container_addr(slot: u32) -> Ipv4Addr {
    Ipv4Addr::from(BASE + 4 * slot + 2)
}
/// The container end's MAC: locally administered, from its address.
pub fn container_mac(slot: u32) -> String {
    let o = container_addr(slot).octets();
    format!("02:00:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}
/// The host end's MAC.
pub fn host_mac(slot: u32) -> String {
    let o = host_addr(slot).octets();
    format!("02:01:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}
pub fn veth_name(slot: u32, egress: bool) -> String {
    format!("cl{}{slot:04x}", if egress { 'e' } else { 'd' })
}

/// A slot held by this process.
pub struct Slot {
    pub n: u32,
    _lock: File,
}

/// Takes the first free slot from a pseudo-random start (so a restart does not retry the
/// leftovers of a crashed predecessor first).
pub fn take_slot(skip: &dyn Fn(u32) -> bool) -> Result<Slot, String> {
    std::fs::create_dir_all(SLOT_DIR).map_err(|e| format!("{SLOT_DIR}: {e}"))?;
    let start = (uuid::Uuid::new_v4().as_u128() % SLOTS as u128) as u32;
    for i in 0..SLOTS {
        let n = (start + i) % SLOTS;
        let f = File::create(format!("{SLOT_DIR}/{n}.lock")).map_err(|e| e.to_string())?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            if skip(n) {
                continue;
            }
            return Ok(Slot { n, _lock: f });
        }
    }
    Err("no free network slot (10.213.0.0/16 is exhausted)".into())
}

pub fn link_exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

fn run(cmd: &mut Command, stdin: Option<&str>) -> Result<(), String> {
    let what = format!("{cmd:?}");
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("{what}: {e}"))?;
    if let (Some(text), Some(mut si)) = (stdin, child.stdin.take()) {
        si.write_all(text.as_bytes())
            .map_err(|e| format!("{what}: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Creates netns `ns` with `eth0` (the container end, `container_addr`) and `lo` up, and the
/// host end `veth` with `host_addr`; a default route via the host end when `egress`.
pub fn setup(ns: &str, veth: &str, slot: u32, egress: bool) -> Result<(), String> {
    run(Command::new("ip").args(["netns", "add", ns]), None)?;
    let h = host_addr(slot);
    let c = container_addr(slot);
    // A fixed MAC for the container end and a permanent neighbour entry for it on the host:
    // the host never waits on ARP (under runsc's netstack, which takes the interface over only
    // once the sandbox is up, an unanswered ARP probe would hold the first connection for the
    // kernel's 1 s retransmit time).
    let mac = container_mac(slot);
    let hmac = host_mac(slot);
    let host = format!(
        "link add {veth} address {hmac} type veth peer name eth0 address {mac} netns {ns}\n\
         addr add {h}/30 dev {veth}\nlink set {veth} up\n\
         neigh replace {c} lladdr {mac} dev {veth} nud permanent\n"
    );
    let r = run(Command::new("ip").args(["-batch", "-"]), Some(&host)).and_then(|_| {
        let mut inner = format!(
            "addr add {c}/30 dev eth0\nlink set eth0 up\nlink set lo up\n\
             neigh replace {h} lladdr {hmac} dev eth0 nud permanent\n"
        );
        if egress {
            inner.push_str(&format!("route add default via {h}\n"));
        }
        run(
            Command::new("ip").args(["-n", ns, "-batch", "-"]),
            Some(&inner),
        )
    });
    if r.is_err() {
        teardown(ns, veth);
    }
    r
}

/// Removes the veth pair and the namespace (idempotent).
pub fn teardown(ns: &str, veth: &str) {
    let ns_exists = std::path::Path::new("/var/run/netns").join(ns).exists();
    if !veth.is_empty() && link_exists(veth) {
        let _ = run(Command::new("ip").args(["link", "del", veth]), None);
    } else if ns_exists {
        // The host end's name is unknown (a sweep): deleting the container end removes the
        // pair now, rather than when the kernel gets round to destroying the namespace.
        let _ = run(
            Command::new("ip").args(["-n", ns, "link", "del", "eth0"]),
            None,
        );
    }
    if ns_exists {
        let _ = run(Command::new("ip").args(["netns", "del", ns]), None);
    }
}

/// The nft script of the table (replaced as a whole: idempotent).
pub fn ruleset(resolvers: &[std::net::IpAddr]) -> String {
    use cloister_sandbox::egress::{DENY_V4, DENY_V6};
    let mut s = format!(
        "table inet {TABLE}\ndelete table inet {TABLE}\ntable inet {TABLE} {{\n\
         \x20 chain input {{\n    type filter hook input priority -10; policy accept;\n\
         \x20   iifname \"cld*\" ct state established,related accept\n\
         \x20   iifname \"cle*\" ct state established,related accept\n\
         \x20   iifname \"cld*\" drop\n    iifname \"cle*\" drop\n  }}\n\
         \x20 chain forward {{\n    type filter hook forward priority -10; policy accept;\n\
         \x20   oifname \"cld*\" drop\n\
         \x20   oifname \"cle*\" ct state established,related accept\n\
         \x20   oifname \"cle*\" drop\n\
         \x20   iifname \"cld*\" drop\n"
    );
    for r in resolvers {
        let fam = if r.is_ipv4() { "ip" } else { "ip6" };
        s.push_str(&format!(
            "    iifname \"cle*\" {fam} daddr {r} meta l4proto {{ tcp, udp }} th dport 53 accept\n"
        ));
    }
    s.push_str(&format!(
        "    iifname \"cle*\" ip daddr {{ {} }} reject with icmpx type admin-prohibited\n",
        DENY_V4.join(", ")
    ));
    s.push_str(&format!(
        "    iifname \"cle*\" ip6 daddr {{ {} }} reject with icmpx type admin-prohibited\n",
        DENY_V6.join(", ")
    ));
    s.push_str(
        "    iifname \"cle*\" accept\n  }\n\
         \x20 chain postrouting {\n    type nat hook postrouting priority 100; policy accept;\n\
         \x20   ip saddr 10.213.0.0/16 oifname != \"cle*\" oifname != \"cld*\" masquerade\n  }\n}\n",
    );
    s
}

static INSTALLED: Mutex<bool> = Mutex::new(false);

/// Installs the table once per process.
pub fn ensure_table() -> Result<(), String> {
    let mut done = INSTALLED.lock().unwrap_or_else(|e| e.into_inner());
    if *done {
        return Ok(());
    }
    let resolvers = cloister_sandbox::egress::nameservers(
        &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
    );
    run(
        Command::new("nft").args(["-f", "-"]),
        Some(&ruleset(&resolvers)),
    )
    .map_err(|e| format!("installing the containers' nftables table: {e}"))?;
    *done = true;
    Ok(())
}

/// Egress needs the host to route: `net.ipv4.ip_forward=1` (host-wide; the table's forward
/// chain keeps everything but `cle*` egress as it was... see docs/security.md).
pub fn enable_forwarding() -> Result<(), String> {
    let p = "/proc/sys/net/ipv4/ip_forward";
    if std::fs::read_to_string(p).is_ok_and(|v| v.trim() == "1") {
        return Ok(());
    }
    std::fs::write(p, "1").map_err(|e| format!("{p}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_map_to_disjoint_30s() {
        assert_eq!(host_addr(0).to_string(), "10.213.0.1");
        assert_eq!(container_addr(0).to_string(), "10.213.0.2");
        assert_eq!(host_addr(16383).to_string(), "10.213.255.253");
        assert_eq!(veth_name(255, false), "cld00ff");
        assert_eq!(container_mac(0), "02:00:0a:d5:00:02");
        assert!(veth_name(16383, true).len() <= 15);
    }

    #[test]
    fn the_ruleset_drops_container_input_and_filters_egress() {
        let s = ruleset(&["10.0.0.2".parse().unwrap()]);
        let est = s
            .find("iifname \"cld*\" ct state established,related accept")
            .unwrap();
        let drop = s.find("iifname \"cld*\" drop").unwrap();
        assert!(est < drop);
        let dns = s.find("10.0.0.2 meta l4proto").unwrap();
        let deny = s.find("169.254.0.0/16").unwrap();
        let acc = s.find("iifname \"cle*\" accept").unwrap();
        assert!(dns < deny && deny < acc, "{s}");
    }
}
