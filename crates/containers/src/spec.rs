//! The OCI runtime `config.json` of one container, generated from the launch (never from
//! umoci's template: containers.md P4).

use serde_json::{Value, json};

/// `clone` flags that would create namespaces (denied by the profile).
const NS_FLAGS: &[u64] = &[
    0x1000_0000, // CLONE_NEWUSER
    0x0002_0000, // CLONE_NEWNS
    0x4000_0000, // CLONE_NEWNET
    0x2000_0000, // CLONE_NEWPID
    0x0800_0000, // CLONE_NEWIPC
    0x0400_0000, // CLONE_NEWUTS
    0x0200_0000, // CLONE_NEWCGROUP
];

/// runc's default masked paths.
pub const MASKED: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/fs/cgroup",
];

/// runc's default read-only paths.
pub const READONLY: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// What goes into one config.json.
pub struct SpecInput<'a> {
    pub root: &'a str,
    pub root_readonly: bool,
    pub hostname: &'a str,
    pub args: &'a [String],
    pub env: &'a [String],
    pub cwd: &'a str,
    pub uid: u32,
    pub gid: u32,
    pub netns: &'a str,
    /// Absolute cgroup path; None = the runtime's default (the probe only).
    pub cgroups_path: Option<&'a str>,
    pub memory: u64,
    pub pids: i64,
    pub cpu: Option<f64>,
    pub tmp_bytes: u64,
    /// Host file bind-mounted read-only at /etc/resolv.conf (egress on).
    pub resolv_conf: Option<&'a str>,
}

/// The seccomp profile: allow by default, refuse (EPERM) the syscalls of the sandbox's deny
/// list and namespace-creating `clone` flags; `clone3` answers ENOSYS so libc falls back to
/// `clone`, whose flags the filter can read. Only x86_64 (other ABIs get the kill action).
pub fn seccomp() -> Value {
    let mut syscalls = vec![json!({
        "names": cloister_sandbox::seccomp::DENIED,
        "action": "SCMP_ACT_ERRNO",
        "errnoRet": libc::EPERM,
    })];
    for f in NS_FLAGS {
        syscalls.push(json!({
            "names": ["clone"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": libc::EPERM,
            "args": [{"index": 0, "value": f, "valueTwo": f, "op": "SCMP_CMP_MASKED_EQ"}],
        }));
    }
    syscalls.push(json!({
        "names": ["clone3"],
        "action": "SCMP_ACT_ERRNO",
        "errnoRet": libc::ENOSYS,
    }));
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": syscalls,
    })
}

pub fn config(s: &SpecInput<'_>) -> Value {
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
               "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "nodev", "mode=1777", format!("size={}", s.tmp_bytes)]}),
    ];
    if let Some(r) = s.resolv_conf {
        mounts.push(
            json!({"destination": "/etc/resolv.conf", "type": "bind", "source": r,
                           "options": ["rbind", "ro", "nosuid", "nodev", "noexec"]}),
        );
    }
    let mut resources = json!({
        "devices": [{"allow": false, "access": "rwm"}],
        "memory": {"limit": s.memory},
        "pids": {"limit": s.pids},
    });
    if let Some(cpu) = s.cpu.filter(|c| *c > 0.0) {
        let period: u64 = 100_000;
        let quota = ((cpu * period as f64).round() as i64).max(1000);
        resources["cpu"] = json!({"quota": quota, "period": period});
    }
    let mut linux = json!({
        "namespaces": [
            {"type": "pid"},
            {"type": "network", "path": s.netns},
            {"type": "ipc"},
            {"type": "uts"},
            {"type": "mount"},
            {"type": "cgroup"},
        ],
        "resources": resources,
        "maskedPaths": MASKED,
        "readonlyPaths": READONLY,
        "seccomp": seccomp(),
    });
    if let Some(p) = s.cgroups_path {
        linux["cgroupsPath"] = json!(p);
    }
    let caps: Vec<&str> = vec![];
    json!({
        "ociVersion": "1.0.2",
        "root": {"path": s.root, "readonly": s.root_readonly},
        "hostname": s.hostname,
        "mounts": mounts,
        "process": {
            "terminal": false,
            "user": {"uid": s.uid, "gid": s.gid, "additionalGids": [s.gid]},
            "args": s.args,
            "env": s.env,
            "cwd": s.cwd,
            "capabilities": {"bounding": caps, "effective": caps, "inheritable": caps,
                              "permitted": caps, "ambient": caps},
            "rlimits": [
                {"type": "RLIMIT_NOFILE", "hard": 4096, "soft": 4096},
                {"type": "RLIMIT_CORE", "hard": 0, "soft": 0},
            ],
            "noNewPrivileges": true,
        },
        "linux": linux,
    })
}

/// The uid and gid an image's `User` names (`uid`, `uid:gid`, `name`, `name:group`), looked up
/// in the image's own /etc/passwd and /etc/group. None = not resolvable.
pub fn resolve_user(rootfs: &std::path::Path, user: Option<&str>) -> Option<(u32, u32)> {
    let user = user.map(str::trim).filter(|u| !u.is_empty());
    let Some(user) = user else {
        return Some((0, 0));
    };
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap_or_default();
    let group = std::fs::read_to_string(rootfs.join("etc/group")).unwrap_or_default();
    let lookup = |table: &str, name: &str, field: usize| -> Option<u32> {
        table.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > field && f[0] == name)
                .then(|| f[field].parse().ok())
                .flatten()
        })
    };
    let (uid, primary) = match u.parse::<u32>() {
        Ok(uid) => {
            let primary = passwd.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() > 3 && f[2] == uid.to_string())
                    .then(|| f[3].parse().ok())
                    .flatten()
            });
            (uid, primary)
        }
        Err(_) => (lookup(&passwd, u, 2)?, lookup(&passwd, u, 3)),
    };
    let gid = match g {
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => lookup(&group, g, 2)?,
        },
        None => primary.unwrap_or(uid),
    };
    Some((uid, gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_resolve_by_number_and_by_name() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("etc")).unwrap();
        std::fs::write(
            d.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(d.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        assert_eq!(resolve_user(d.path(), None), Some((0, 0)));
        assert_eq!(
            resolve_user(d.path(), Some("65534:65534")),
            Some((65534, 65534))
        );
        assert_eq!(resolve_user(d.path(), Some("1000")), Some((1000, 1001)));
        assert_eq!(resolve_user(d.path(), Some("app")), Some((1000, 1001)));
        assert_eq!(resolve_user(d.path(), Some("app:staff")), Some((1000, 50)));
        assert_eq!(resolve_user(d.path(), Some("nobody-here")), None);
    }

    #[test]
    fn the_spec_drops_every_capability_and_denies_mount() {
        let args = vec!["/bin/true".to_string()];
        let v = config(&SpecInput {
            root: "/r",
            root_readonly: false,
            hostname: "h",
            args: &args,
            env: &[],
            cwd: "/",
            uid: 1,
            gid: 1,
            netns: "/var/run/netns/x",
            cgroups_path: Some("/a/b"),
            memory: 1 << 20,
            pids: 10,
            cpu: Some(0.5),
            tmp_bytes: 1 << 20,
            resolv_conf: None,
        });
        assert_eq!(v["process"]["capabilities"]["effective"], json!([]));
        assert_eq!(v["process"]["noNewPrivileges"], json!(true));
        assert_eq!(v["linux"]["resources"]["cpu"]["quota"], json!(50_000));
        let s = v["linux"]["seccomp"].to_string();
        assert!(s.contains("\"mount\"") && s.contains("clone3"), "{s}");
    }
}
