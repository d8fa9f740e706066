//! The sandbox's seccomp policy, as data: syscalls that are refused with `EPERM`, and the
//! namespace flags `clone` may not carry. Everything else is allowed (the namespaces, the
//! unprivileged uid and the empty capability set do the rest).
//!
//! The compiled program starts with a guard that does not depend on the filter library: a
//! call made with any architecture but `AUDIT_ARCH_X86_64` (the 32-bit `int 0x80` ABI, say)
//! kills the process, and a syscall number with the x32 bit (`0x40000000`) set is refused with
//! `EPERM`, so the x32 aliases of denied calls (`0x40000000 | SYS_unshare`, ...) cannot get
//! around the deny list on kernels built with `CONFIG_X86_X32_ABI`. No program of the runtime
//! uses x32. `clone3` answers `ENOSYS` (its flags are in memory the filter cannot read; libc then
//! falls back to `clone`, whose flags are checked), and io_uring is denied outright: its
//! operations run in kernel workers the filter never sees.

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use std::collections::BTreeMap;

/// Syscalls no sandboxed program may make.
pub const DENIED: &[&str] = &[
    "ptrace",
    "mount",
    "umount2",
    "unshare",
    "setns",
    "pivot_root",
    "chroot",
    "bpf",
    "keyctl",
    "add_key",
    "request_key",
    "perf_event_open",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "userfaultfd",
    "open_by_handle_at",
    "name_to_handle_at",
    "process_vm_readv",
    "process_vm_writev",
    "iopl",
    "ioperm",
    "syslog",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "quotactl",
    "fanotify_init",
    "lookup_dcookie",
    "mount_setattr",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
];

/// `clone` flags that would create namespaces.
const NS_FLAGS: &[u64] = &[
    0x1000_0000, // CLONE_NEWUSER
    0x0002_0000, // CLONE_NEWNS
    0x4000_0000, // CLONE_NEWNET
    0x2000_0000, // CLONE_NEWPID
    0x0800_0000, // CLONE_NEWIPC
    0x0400_0000, // CLONE_NEWUTS
    0x0200_0000, // CLONE_NEWCGROUP
];

/// The syscall number of a [`DENIED`] name (x86_64).
pub fn nr(name: &str) -> Option<i64> {
    let n = match name {
        "ptrace" => libc::SYS_ptrace,
        "mount" => libc::SYS_mount,
        "umount2" => libc::SYS_umount2,
        "unshare" => libc::SYS_unshare,
        "setns" => libc::SYS_setns,
        "pivot_root" => libc::SYS_pivot_root,
        "chroot" => libc::SYS_chroot,
        "bpf" => libc::SYS_bpf,
        "keyctl" => libc::SYS_keyctl,
        "add_key" => libc::SYS_add_key,
        "request_key" => libc::SYS_request_key,
        "perf_event_open" => libc::SYS_perf_event_open,
        "kexec_load" => libc::SYS_kexec_load,
        "kexec_file_load" => libc::SYS_kexec_file_load,
        "init_module" => libc::SYS_init_module,
        "finit_module" => libc::SYS_finit_module,
        "delete_module" => libc::SYS_delete_module,
        "reboot" => libc::SYS_reboot,
        "swapon" => libc::SYS_swapon,
        "swapoff" => libc::SYS_swapoff,
        "acct" => libc::SYS_acct,
        "userfaultfd" => libc::SYS_userfaultfd,
        "open_by_handle_at" => libc::SYS_open_by_handle_at,
        "name_to_handle_at" => libc::SYS_name_to_handle_at,
        "process_vm_readv" => libc::SYS_process_vm_readv,
        "process_vm_writev" => libc::SYS_process_vm_writev,
        "iopl" => libc::SYS_iopl,
        "ioperm" => libc::SYS_ioperm,
        "syslog" => libc::SYS_syslog,
        "settimeofday" => libc::SYS_settimeofday,
        "clock_settime" => libc::SYS_clock_settime,
        "clock_adjtime" => libc::SYS_clock_adjtime,
        "adjtimex" => libc::SYS_adjtimex,
        "quotactl" => libc::SYS_quotactl,
        "fanotify_init" => libc::SYS_fanotify_init,
        "lookup_dcookie" => libc::SYS_lookup_dcookie,
        "mount_setattr" => libc::SYS_mount_setattr,
        "move_mount" => libc::SYS_move_mount,
        "open_tree" => libc::SYS_open_tree,
        "fsopen" => libc::SYS_fsopen,
        "fsconfig" => libc::SYS_fsconfig,
        "fsmount" => libc::SYS_fsmount,
        "fspick" => libc::SYS_fspick,
        "io_uring_setup" => libc::SYS_io_uring_setup,
        "io_uring_enter" => libc::SYS_io_uring_enter,
        "io_uring_register" => libc::SYS_io_uring_register,
        _ => return None,
    };
    Some(n)
}

/// Compiles the policy to a BPF program in the kernel's `sock_filter` byte layout, which is
/// what `bwrap --seccomp FD` reads.
pub fn compile() -> Result<Vec<u8>, String> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for name in DENIED {
        let n = nr(name).ok_or_else(|| format!("unknown syscall {name}"))?;
        rules.insert(n, vec![]);
    }
    let mut clone_rules = vec![];
    for flag in NS_FLAGS {
        let c = SeccompCondition::new(
            0,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(*flag),
            *flag,
        )
        .map_err(|e| e.to_string())?;
        clone_rules.push(SeccompRule::new(vec![c]).map_err(|e| e.to_string())?);
    }
    rules.insert(libc::SYS_clone, clone_rules);
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        TargetArch::x86_64,
    )
    .map_err(|e| e.to_string())?;
    let prog: BpfProgram = filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| e.to_string())?;
    let guard = guard();
    let mut bytes = Vec::with_capacity((prog.len() + guard.len()) * 8);
    // The guard runs first (bwrap accepts one program; we prepend its checks).
    for f in guard.iter().chain(prog.iter()) {
        bytes.extend_from_slice(&f.code.to_ne_bytes());
        bytes.push(f.jt);
        bytes.push(f.jf);
        bytes.extend_from_slice(&f.k.to_ne_bytes());
    }
    Ok(bytes)
}

/// `AUDIT_ARCH_X86_64` (`EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE`).
pub const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;
/// The bit that marks an x32 syscall number on x86_64 (`__X32_SYSCALL_BIT`).
pub const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// The prefix of every program: wrong architecture -> kill the process; an x32 number ->
/// `EPERM`; `clone3` -> `ENOSYS`; anything else falls through to the deny list.
fn guard() -> Vec<seccompiler::sock_filter> {
    use seccompiler::sock_filter;
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;
    const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
    let op = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    vec![
        op(LD_W_ABS, 0, 0, 4), // seccomp_data.arch
        op(JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        op(RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS),
        op(LD_W_ABS, 0, 0, 0), // seccomp_data.nr
        op(JGE_K, 0, 1, X32_SYSCALL_BIT),
        op(RET_K, 0, 0, SECCOMP_RET_ERRNO | libc::EPERM as u32),
        op(JEQ_K, 0, 1, libc::SYS_clone3 as u32),
        op(RET_K, 0, 0, SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
    ]
}

#[cfg(test)]
mod tests {
    //! The compiled program, run through a small classic-BPF interpreter over `seccomp_data`.
    use super::*;

    const RET_ALLOW: u32 = 0x7fff_0000;
    const RET_KILL_PROCESS: u32 = 0x8000_0000;
    const RET_ERRNO: u32 = 0x0005_0000;
    const AUDIT_ARCH_I386: u32 = 3 | 0x4000_0000;

    /// `struct seccomp_data`: nr, arch, instruction_pointer, args[6].
    fn data(nr: u32, arch: u32, args: [u64; 6]) -> Vec<u8> {
        let mut d = vec![];
        d.extend_from_slice(&nr.to_ne_bytes());
        d.extend_from_slice(&arch.to_ne_bytes());
        d.extend_from_slice(&0u64.to_ne_bytes());
        for a in args {
            d.extend_from_slice(&a.to_ne_bytes());
        }
        d
    }

    /// Runs `prog` (the `sock_filter` byte layout) like the kernel's seccomp BPF checker
    /// would: the return value of the program.
    fn run(prog: &[u8], data: &[u8]) -> u32 {
        let insns: Vec<(u16, u8, u8, u32)> = prog
            .chunks(8)
            .map(|c| {
                (
                    u16::from_ne_bytes([c[0], c[1]]),
                    c[2],
                    c[3],
                    u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
                )
            })
            .collect();
        assert!(insns.len() <= 4096, "program too long");
        let word = |k: u32| {
            let k = k as usize;
            assert!(
                k.is_multiple_of(4) && k + 4 <= data.len(),
                "load out of seccomp_data: {k}"
            );
            u32::from_ne_bytes(data[k..k + 4].try_into().unwrap())
        };
        let (mut a, mut x, mut mem) = (0u32, 0u32, [0u32; 16]);
        let mut pc = 0usize;
        loop {
            let (code, jt, jf, k) = *insns.get(pc).expect("ran off the end of the program");
            pc += 1;
            let src = if code & 0x08 != 0 { x } else { k };
            match code & 0x07 {
                0x00 => match code & 0xe0 {
                    0x20 => a = word(k),           // LD ABS (W)
                    0x00 => a = k,                 // LD IMM
                    0x60 => a = mem[k as usize],   // LD MEM
                    0x80 => a = data.len() as u32, // LD LEN
                    m => panic!("ld mode {m:#x}"),
                },
                0x01 => match code & 0xe0 {
                    0x00 => x = k,
                    0x60 => x = mem[k as usize],
                    0x80 => x = data.len() as u32,
                    m => panic!("ldx mode {m:#x}"),
                },
                0x02 => mem[k as usize] = a,
                0x03 => mem[k as usize] = x,
                0x04 => {
                    a = match code & 0xf0 {
                        0x00 => a.wrapping_add(src),
                        0x10 => a.wrapping_sub(src),
                        0x20 => a.wrapping_mul(src),
                        0x30 => a / src,
                        0x40 => a | src,
                        0x50 => a & src,
                        0x60 => a.wrapping_shl(src),
                        0x70 => a.wrapping_shr(src),
                        0x80 => a.wrapping_neg(),
                        0x90 => a % src,
                        0xa0 => a ^ src,
                        op => panic!("alu op {op:#x}"),
                    }
                }
                0x05 => {
                    let taken = match code & 0xf0 {
                        0x00 => {
                            pc += k as usize; // JA
                            continue;
                        }
                        0x10 => a == src,
                        0x20 => a > src,
                        0x30 => a >= src,
                        0x40 => a & src != 0,
                        op => panic!("jmp op {op:#x}"),
                    };
                    pc += if taken { jt } else { jf } as usize;
                }
                0x06 => return if code & 0x18 == 0x10 { a } else { k },
                _ => {
                    if code & 0xf8 == 0 {
                        x = a; // TAX
                    } else {
                        a = x; // TXA
                    }
                }
            }
        }
    }

    fn eval(prog: &[u8], nr: u32, arch: u32, args: [u64; 6]) -> u32 {
        run(prog, &data(nr, arch, args))
    }

    #[test]
    fn every_denied_call_is_refused_in_every_abi() {
        let prog = compile().unwrap();
        let eperm = RET_ERRNO | libc::EPERM as u32;
        for name in DENIED {
            let n = nr(name).unwrap() as u32;
            assert_eq!(eval(&prog, n, AUDIT_ARCH_X86_64, [0; 6]), eperm, "{name}");
            assert_eq!(
                eval(&prog, n | X32_SYSCALL_BIT, AUDIT_ARCH_X86_64, [0; 6]),
                eperm,
                "the x32 alias of {name}"
            );
            for arch in [AUDIT_ARCH_I386, 0, 0xc000_00b7] {
                assert_eq!(
                    eval(&prog, n, arch, [0; 6]),
                    RET_KILL_PROCESS,
                    "{name} with arch {arch:#x}"
                );
            }
        }
        for name in ["io_uring_setup", "io_uring_enter", "io_uring_register"] {
            assert!(DENIED.contains(&name), "{name}");
        }
    }

    #[test]
    fn ordinary_calls_pass_and_clone_is_checked() {
        let prog = compile().unwrap();
        let allowed = [
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_openat,
            libc::SYS_mmap,
            libc::SYS_futex,
            libc::SYS_exit_group,
            libc::SYS_wait4,
        ];
        for n in allowed {
            assert_eq!(eval(&prog, n as u32, AUDIT_ARCH_X86_64, [0; 6]), RET_ALLOW);
            // ... but not through x32, nor another architecture.
            assert_eq!(
                eval(&prog, n as u32 | X32_SYSCALL_BIT, AUDIT_ARCH_X86_64, [0; 6]),
                RET_ERRNO | libc::EPERM as u32
            );
            assert_eq!(
                eval(&prog, n as u32, AUDIT_ARCH_I386, [0; 6]),
                RET_KILL_PROCESS
            );
        }
        let clone = libc::SYS_clone as u32;
        // A thread or a fork: allowed.
        let thread = 0x0001_0000 | 0x100 | 0x200 | 0x400 | 0x800; // CLONE_THREAD|VM|FS|FILES|SIGHAND
        assert_eq!(
            eval(&prog, clone, AUDIT_ARCH_X86_64, [thread, 0, 0, 0, 0, 0]),
            RET_ALLOW
        );
        assert_eq!(
            eval(&prog, clone, AUDIT_ARCH_X86_64, [17, 0, 0, 0, 0, 0]),
            RET_ALLOW
        );
        for flag in NS_FLAGS {
            assert_eq!(
                eval(&prog, clone, AUDIT_ARCH_X86_64, [*flag | 17, 0, 0, 0, 0, 0]),
                RET_ERRNO | libc::EPERM as u32,
                "clone with {flag:#x}"
            );
        }
        assert_eq!(
            eval(&prog, libc::SYS_clone3 as u32, AUDIT_ARCH_X86_64, [0; 6]),
            RET_ERRNO | libc::ENOSYS as u32
        );
        // Top of the number space (nr -1 is what a tracer uses to skip a call): refused too.
        assert_eq!(
            eval(&prog, u32::MAX, AUDIT_ARCH_X86_64, [0; 6]),
            RET_ERRNO | libc::EPERM as u32
        );
    }
}
