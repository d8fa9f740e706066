# Cloister's sandbox zygote: one per sandbox template (see zygote.rs). It runs inside a bubblewrap
# sandbox that has the template's read-only root, imports the runtime's heavy modules once, and
# then forks one process per session, which jails itself further before it runs the agent:
#
#   zygote (bwrap's pid 2)  --fork-->  C  (born in the session's cgroup: the supervisor moves
#                                          the zygote there for the fork and back after it;
#                                          becomes the session's own uid, of the zygote's block,
#                                          and drops CAP_SETUID/SETGID;
#                                          unshares user, mount, pid, net,
#                                          ipc, uts and cgroup namespaces, maps uid 65534, mounts
#                                          a private /tmp, /mnt/data, /dev/shm and /dev/pts,
#                                          names the host, brings lo up, forks and exits)
#                                      G  (pid 1 of the session: mounts its /proc, drops every
#                                          capability, installs the seccomp filter, forks the
#                                          agent, then only reaps; it exits with the agent)
#                                      A  (pid 2: agent.py, exactly as in a bwrap-started sandbox)
#
# Forked sessions share the zygote's pages copy-on-write: the interpreter, IPython, numpy and
# pandas cost memory once, not once per session. Protocol on fd 4 (a socketpair end): the zygote
# writes {"ready": true, ...}; each request is one JSON line {"op": "spawn", "tmp": BYTES,
# "data": BYTES, "uid": UID or null} sent together with the session's channel as SCM_RIGHTS
# (UID: the session's host uid, a root supervisor's, mapped one to one into the zygote's user
# namespace together with the rest of the zygote's block; the zygote holds CAP_SETUID and
# CAP_SETGID in that namespace only, for this); the answer is
# {"pid": N} (the child's pid in the zygote's pid namespace) or {"error": "..."}. The child
# then reads one JSON line {"env": {...}} from the supervisor on the session's channel (its own
# variables, secrets among them, which thus never pass through the zygote). Any failure
# of the child before the agent runs is reported on the session's channel as
# {"ready": false, "error": "..."}.
import ctypes, gc, json, os, signal, socket, struct, sys

CTL_FD = 4
AGENT = "/opt/cloister/agent.py"
SANDBOX_UID = 65534
os.closerange(5, 64)  # bwrap's --userns-block-fd (a root supervisor's zygote), nothing else

with open(3, "rb") as _f:  # the seccomp program (BPF, 8 bytes per instruction)
    SECCOMP = _f.read()
_ctl = socket.socket(fileno=CTL_FD)

libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]

CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS = 0x00020000, 0x02000000, 0x04000000
CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x08000000, 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP = 1, 4, 24
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP = 38, 22
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, SECCOMP_MODE_FILTER = 47, 4, 2
SIOCSIFFLAGS, IFF_UP, IFF_LOOPBACK, IFF_RUNNING = 0x8914, 0x1, 0x8, 0x40


class JailError(Exception):
    pass


def check(r, what):
    if r != 0:
        e = ctypes.get_errno()
        raise JailError(f"{what}: {os.strerror(e)}")


def mount(src, dst, fstype, flags, data=None):
    enc = lambda s: s.encode() if isinstance(s, str) else s
    check(libc.mount(enc(src), enc(dst), enc(fstype), flags, enc(data)), f"mount {dst}")


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


class CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def clear_capabilities():
    """Empties the effective, permitted, inheritable and ambient sets (the bounding set needs
    CAP_SETPCAP, which the zygote has not; the child's new user namespace starts from a full
    one anyway, and G drops it)."""
    check(libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "clear ambient capabilities")
    hdr = CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (CapData * 2)()
    check(libc.capset(ctypes.byref(hdr), data), "capset")


def become(uid):
    """In C, first of all: the session's own host uid and gid (no supplementary groups: the
    zygote has none, and setgroups is denied in its namespace), no capabilities left."""
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    # A change of uid makes the process non-dumpable, so its /proc/self files belong to root,
    # and it could not write its own uid_map below; pid 1 and the agent turn it off again.
    check(libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0), "dumpable")
    clear_capabilities()


def drop_capabilities():
    last = int(open("/proc/sys/kernel/cap_last_cap").read())
    for cap in range(last + 1):
        check(libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), "drop the bounding set")
    clear_capabilities()


def install_seccomp():
    check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    buf = ctypes.create_string_buffer(SECCOMP, len(SECCOMP))
    prog = SockFprog(len(SECCOMP) // 8, ctypes.addressof(buf))
    check(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(prog), 0, 0), "seccomp")


def loopback_up():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        import fcntl
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", IFF_UP | IFF_LOOPBACK | IFF_RUNNING))
    finally:
        s.close()


def jail(req):
    """In C: new namespaces, uid map and private mounts (everything but /proc)."""
    uid, gid = os.getuid(), os.getgid()
    check(libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC
                       | CLONE_NEWUTS | CLONE_NEWCGROUP), "unshare")
    write("/proc/self/setgroups", "deny")
    write("/proc/self/uid_map", f"{SANDBOX_UID} {uid} 1")
    write("/proc/self/gid_map", f"{SANDBOX_UID} {gid} 1")
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    tmp, data = int(req["tmp"]), int(req["data"])
    mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={tmp},mode=1777")
    mount("tmpfs", "/mnt/data", "tmpfs", MS_NOSUID | MS_NODEV, f"size={data},mode=0777")
    mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, f"size={tmp},mode=1777")
    mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=620")
    check(libc.sethostname(b"sandbox", 7), "sethostname")
    loopback_up()


def init_proc():
    """In G (pid 1 of the new pid namespace): its own /proc, with the same read-only parts as bwrap's."""
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for sub in ("sys", "sysrq-trigger", "irq", "bus"):
        p = "/proc/" + sub
        if os.path.exists(p):
            mount(p, p, None, MS_BIND | MS_REC)
            mount(None, p, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)


def fail(sess, e):
    try:
        sess.sendall(json.dumps({"ready": False, "error": str(e)}).encode() + b"\n")
    except OSError:
        pass
    os._exit(1)


def session(req, fd):
    """Runs in the forked child; never returns."""
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        _ctl.close()
        os.closerange(5, fd)
        os.closerange(fd + 1, 4096)
        sess = socket.socket(fileno=fd)
    except BaseException:
        os._exit(1)
    try:
        if req.get("uid") is not None:
            become(int(req["uid"]))
    except BaseException as e:
        fail(sess, e)
    try:
        # The session's own variables (the identity binding's secret) come from the supervisor
        # on this channel, never through the zygote.
        line = b""
        while not line.endswith(b"\n"):
            chunk = sess.recv(65536)
            if not chunk:
                os._exit(1)
            line += chunk
        os.environ.update(json.loads(line)["env"])
        del line
        os.setsid()
        jail(req)
        if os.fork():
            os._exit(0)  # C: the session's pid 1 is reparented to the zygote's init
        init_proc()
        drop_capabilities()
        install_seccomp()
        # Nothing of the zygote's stays reachable from the session: its stdio (the zygote's
        # stderr pipe) goes before the agent is forked (which points fds 0-2 at its own pipes
        # anyway), and pid 1 makes itself non-dumpable below, so /proc/1 is off limits.
        devnull = os.open("/dev/null", os.O_RDWR)
        for target in (0, 1, 2):
            os.dup2(devnull, target)
        os.close(devnull)
        # Non-dumpable before the agent exists (which inherits it, and sets it itself anyway):
        # set after the fork, a fast agent's first cell could still inspect /proc/1.
        check(libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "not dumpable")
        agent = os.fork()
    except BaseException as e:
        fail(sess, e)
    if agent:
        # G: pid 1 of the session. Reaps orphans; ends (and with it the whole pid namespace)
        # when the agent ends.
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE):
            signal.signal(s, signal.SIG_IGN)
        sess.close()
        while True:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                os._exit(0)
            except InterruptedError:
                continue
            if pid == agent:
                os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
    # A: the agent, on fd 4 as always.
    try:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        os.dup2(fd, CTL_FD)
        sess.close()
        _reseed()
        if AGENT_MAIN is not None:
            main = AGENT_MAIN  # holds the prebuilt shell (see `prebuild`)
        else:
            import types
            main = types.ModuleType("__main__")
            main.__file__ = AGENT
            main.__builtins__ = __builtins__
        sys.modules["__main__"] = main
        sys.argv = [AGENT]
    except BaseException as e:
        fail(socket.socket(fileno=CTL_FD), e)
    try:
        exec(AGENT_CODE, main.__dict__)
    finally:
        os._exit(0)


def _reseed():
    """State seeded once per process at import time would otherwise be the same in every
    session: numpy's global generator (Python's `random` reseeds itself after fork)."""
    np = sys.modules.get("numpy")
    if np is not None:
        try:
            np.random.seed()
        except Exception:
            pass


def preload():
    for m in [m for m in os.environ.get("CLOISTER_ZYGOTE_PRELOAD", "").split(",") if m]:
        try:
            __import__(m)
        except Exception:
            pass
    if "matplotlib.pyplot" in sys.modules:
        warm_matplotlib()


def mpl_config():
    """The runtime's prebuilt font list, copied into the zygote's own (writable) config dir,
    as the agent does in every session: imported without it, matplotlib would rebuild the list
    (seconds) and warn."""
    cache, dst = os.environ.get("CLOISTER_MPL_CACHE", ""), os.environ.get("MPLCONFIGDIR", "")
    if not (cache and dst and os.path.isdir(cache)):
        return
    import shutil
    try:
        os.makedirs(dst, exist_ok=True)
        for f in os.listdir(cache):
            shutil.copyfile(os.path.join(cache, f), os.path.join(dst, f))
    except OSError:
        pass


def warm_matplotlib():
    """A session's first plot used to cost 0.7-1.7 s: importing pyplot, the Agg backend, the
    font list, the first font and the text layout. One figure drawn and saved here, before any
    fork, leaves all of that in the pages every session shares; sessions start with no figure
    open (the agent installs its `plt.show` on the imported module)."""
    try:
        import io
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots()
        ax.plot([0, 1, 2], [0, 1, 4], label="warm-up")
        ax.set_title("warm-up")
        ax.legend()
        fig.savefig(io.BytesIO(), format="png", bbox_inches="tight")
        plt.close("all")
    except Exception:
        pass


AGENT_MAIN = None
# Cells run in the prebuilt shell before any fork, then forgotten (`reset`): the first cell of
# every session no longer pays for IPython's first compile, display and traceback paths.
WARMUP = [
    "print(1)",
    "1+1",
    "import os\nx = [i * i for i in range(3)]\nos.getcwd(), x",
    "def f(n):\n    return n * 2\nf(21)",
    "1/0",
    "undefined_name",
    "def broken(:\n    pass",
]


def prebuild(source):
    """Builds the agent's IPython shell here, before any fork: constructing InteractiveShell
    cost about 50 ms of CPU in every forked session. The agent's definitions between its
    `cloister:shell-begin` and `shell-end` markers run in the module every session's agent will
    then run in (so the shell's display hooks find that session's own `Cell` and `add_image`,
    which the agent defines again), make_ipython() builds the shell, a few cells warm it up,
    and `reset` forgets them (execution count 1, empty namespace). The agent adopts the shell
    (`_adopt`) instead of building one. Without IPython, or on any failure, nothing is kept
    and each session builds its own, as before."""
    global AGENT_MAIN
    if "IPython.core.interactiveshell" not in sys.modules:
        return
    begin, end = "# --- cloister:shell-begin", "# --- cloister:shell-end"
    head, sep, rest = source.partition(begin)
    block, sep2, _ = rest.partition(end)
    if not (sep and sep2):
        return
    import io, types
    main = types.ModuleType("__main__")
    main.__file__ = AGENT
    main.__builtins__ = __builtins__
    ns = main.__dict__
    saved = sys.modules.get("__main__"), sys.stdout, sys.stderr, os.getcwd()
    try:
        exec("import base64, builtins, io, json, os, sys, traceback, warnings", ns)
        # Padded so that the definitions keep their line numbers in agent.py.
        exec(compile("\n" * head.count("\n") + begin + block, AGENT, "exec"), ns)
        if os.path.isdir("/mnt/data"):
            os.chdir("/mnt/data")
        sys.stdout = sys.stderr = io.StringIO()
        run = ns["make_ipython"]()
        for code in WARMUP:
            run(code)
        run.shell.reset(new_session=True)
        ns["Cell"].result, ns["Cell"].images, ns["Cell"].image_bytes = None, [], 0
        ns["_CLOISTER_RUN"] = run
        AGENT_MAIN = main
    except Exception:
        AGENT_MAIN = None
    finally:
        sys.modules["__main__"], sys.stdout, sys.stderr = saved[0], saved[1], saved[2]
        try:
            os.chdir(saved[3])
        except OSError:
            pass


MADV_HUGEPAGE, MADV_COLLAPSE = 14, 25


def huge_pages():
    """Backs the zygote's big anonymous mappings (the interpreter's heap, numpy's and pandas'
    arenas) with transparent huge pages, now that they will no longer grow: each fork then
    copies one page-table entry per 2 MiB instead of 512, and the first child's exit frees as
    few (each session's first write in a 2 MiB range splits it back into small pages, copying
    only the page written). Best effort: MADV_COLLAPSE needs Linux 6.1; without it nothing
    changes."""
    if os.environ.get("CLOISTER_ZYGOTE_HUGEPAGES", "1") == "0":
        return
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    huge = 2 << 20
    try:
        maps = open("/proc/self/maps").read().splitlines()
    except OSError:
        return
    for line in maps:
        f = line.split()
        # Private writable anonymous memory (the heap has the name [heap]).
        if len(f) < 5 or f[1][:2] != "rw" or f[1][3] != "p" or (len(f) > 5 and f[5] != "[heap]"):
            continue
        lo, hi = (int(x, 16) for x in f[0].split("-"))
        lo = (lo + huge - 1) & ~(huge - 1)
        hi &= ~(huge - 1)
        if hi - lo < huge:
            continue
        libc.madvise(lo, hi - lo, MADV_HUGEPAGE)
        libc.madvise(lo, hi - lo, MADV_COLLAPSE)


def reap(*_):
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def main():
    global AGENT_CODE
    mpl_config()
    preload()
    os.environ.pop("CLOISTER_ZYGOTE_PRELOAD", None)
    # Compiled once, here, not in every session: compiling the agent took 14-22 ms of each
    # forked start (about a fifth of it). The code object is immutable and comes from the same
    # read-only file every session would read; like the zygote's other pages, each session has
    # it copy-on-write.
    with open(AGENT, "rb") as f:
        source = f.read()
    AGENT_CODE = compile(source, AGENT, "exec")
    prebuild(source.decode())
    gc.collect()
    gc.freeze()  # imported objects move to the permanent generation: the collector never writes to them
    huge_pages()
    signal.signal(signal.SIGCHLD, reap)
    _ctl.sendall(json.dumps({"ready": True, "pid": os.getpid(), "python": sys.version.split()[0]}).encode() + b"\n")
    while True:
        try:
            msg, fds, _flags, _addr = socket.recv_fds(_ctl, 65536, 4)
        except InterruptedError:
            continue
        if not msg:
            os._exit(0)
        try:
            req = json.loads(msg)
            if req.get("op") != "spawn" or len(fds) != 1:
                raise ValueError("expected one spawn request with one descriptor")
            pid = os.fork()
            if pid == 0:
                session(req, fds[0])
            reply = {"pid": pid}
        except Exception as e:
            reply = {"error": str(e)}
        for fd in fds:
            os.close(fd)
        _ctl.sendall(json.dumps(reply).encode() + b"\n")


main()
