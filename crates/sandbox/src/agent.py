# Cloister's in-sandbox agent. It speaks JSON lines on fd 4 (a socketpair end the supervisor
# passed in; see the crate docs), runs code in one persistent IPython InteractiveShell (or, when
# IPython is not importable, a plain exec/eval loop with repr results), and serves file requests
# confined to /mnt/data. fd 0 is /dev/null; fds 1 and 2 are pipes the agent drains itself, so
# whatever user code, C extensions or subprocesses write there is captured (capped) and can never
# reach the protocol channel.
import base64, builtins, errno, fcntl, io, json, os, select, shutil, signal, socket, stat, sys
import threading, time, traceback, warnings

PROTO_FD = 4
DATA = "/mnt/data"
DEFAULT_MAX_OUTPUT = 65536
IDENTITY_PORT = 42356


def _exec_node():
    """A NodeLTS sandbox: node_agent.js serves the protocol on fd 4 instead of this agent. The
    jail (namespaces, cgroup, uid, seccomp) is already complete; only the program changes."""
    try:
        os.close(3)  # bwrap's seccomp program, if still open
    except OSError:
        pass
    if os.environ.pop("CLOISTER_ENV_ON_CHANNEL", "") == "1":
        # The session's own variables, read unbuffered: nothing past this line is consumed.
        line = b""
        while not line.endswith(b"\n"):
            b = os.read(PROTO_FD, 1)
            if not b:
                os._exit(1)
            line += b
        os.environ.update(json.loads(line)["env"])
    node = os.environ.pop("CLOISTER_NODE", "/usr/bin/node")
    os.environ.pop("CLOISTER_AGENT", None)
    for k in ("CLOISTER_PRELOAD", "CLOISTER_MPL_CACHE", "MPLBACKEND", "MPLCONFIGDIR", "IPYTHONDIR",
              "PYTHONDONTWRITEBYTECODE"):
        os.environ.pop(k, None)
    # The session's own variables (the identity binding's secret) must not be in Node's initial
    # environment, which /proc/PID/environ shows: they go on a pipe Node reads first thing.
    secret = {k: os.environ.pop(k) for k in ("IDENTITY_HEADER",) if k in os.environ}
    if secret:
        r, w = os.pipe()
        os.write(w, json.dumps(secret).encode())
        os.close(w)
        os.set_inheritable(r, True)
        os.environ["CLOISTER_SECRET_ENV_FD"] = str(r)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    os.execve(node, [node, "/opt/cloister/node_agent.js"], dict(os.environ))


if os.environ.get("CLOISTER_AGENT") == "node":
    _exec_node()

# Not dumpable: no other process of the host, whatever its uid, may ptrace the agent or read
# its memory (/proc/PID/mem, environ); the agent still reads its own /proc/self/fd and status.
# Subprocesses that exec become dumpable again (the kernel resets it), forked ones do not.
import ctypes as _ctypes

_ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE
del _ctypes

# --- file descriptors -------------------------------------------------------------------------
try:
    os.close(3)  # bwrap's seccomp program, if still open
except OSError:
    pass
# Close-on-exec and out of the way: no subprocess inherits the channel.
_proto = fcntl.fcntl(PROTO_FD, fcntl.F_DUPFD_CLOEXEC, 100)
os.close(PROTO_FD)
_devnull = os.open(os.devnull, os.O_RDWR)
os.dup2(_devnull, 0)
os.close(_devnull)
_out_r, _out_w = os.pipe()
_err_r, _err_w = os.pipe()
os.dup2(_out_w, 1)
os.dup2(_err_w, 2)
_sock = socket.socket(fileno=_proto)
_rfile = _sock.makefile("rb")
_wfile = _sock.makefile("wb")
sys.stdin = sys.__stdin__ = open(0, "r", closefd=False)
if os.environ.pop("CLOISTER_ENV_ON_CHANNEL", "") == "1":
    # A bwrap-started sandbox: the session's own variables (the identity binding's secret) come
    # as the first line on the channel, never on bwrap's command line (a forked session's pid 1
    # reads the same line before the agent starts).
    os.environ.update(json.loads(_rfile.readline())["env"])


class Capture:
    """Drains one pipe on a thread into a capped buffer; writers never block for long."""

    def __init__(self, rfd):
        self.fd = rfd
        self.lock = threading.Lock()
        self.buf = bytearray()
        self.limit = 4 * DEFAULT_MAX_OUTPUT
        os.set_blocking(rfd, False)
        threading.Thread(target=self._pump, daemon=True, name="cloister-capture").start()

    def _pump(self):
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        while True:
            poller.poll()
            with self.lock:
                self._drain()

    def _drain(self):  # call with the lock held
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                return
            if not chunk:
                return
            room = self.limit - len(self.buf)
            if room > 0:
                self.buf += chunk[:room]

    def start(self, limit):
        with self.lock:
            self._drain()
            self.buf = bytearray()
            self.limit = limit

    def take(self):
        with self.lock:
            self._drain()
            data = bytes(self.buf)
            self.buf = bytearray()
            return data


OUT = Capture(_out_r)
ERR = Capture(_err_r)


def _streams():
    """(Re)attaches fds 1/2 and sys.stdout/stderr to the capture pipes (user code may have
    closed or replaced them)."""
    for w, fd in ((_out_w, 1), (_err_w, 2)):
        try:
            os.dup2(w, fd)
        except OSError:
            pass
    sys.stdout = sys.__stdout__ = _STDOUT
    sys.stderr = sys.__stderr__ = _STDERR


_STDOUT = open(1, "w", encoding="utf-8", errors="backslashreplace", buffering=1, closefd=False)
_STDERR = open(2, "w", encoding="utf-8", errors="backslashreplace", buffering=1, closefd=False)
_streams()

# --- environment --------------------------------------------------------------------------------
_identity_sock = os.environ.pop("CLOISTER_IDENTITY_SOCKET", "")
_preload = [m for m in os.environ.pop("CLOISTER_PRELOAD", "").split(",") if m]
_mpl_cache = os.environ.pop("CLOISTER_MPL_CACHE", "")
try:
    os.chdir(DATA)
except OSError:
    pass
if _mpl_cache and os.path.isdir(_mpl_cache):
    _dst = os.environ.get("MPLCONFIGDIR") or "/tmp/.config/matplotlib"
    try:
        os.makedirs(_dst, exist_ok=True)
        for _f in os.listdir(_mpl_cache):
            shutil.copyfile(os.path.join(_mpl_cache, _f), os.path.join(_dst, _f))
    except OSError:
        pass


# Compiled under a pseudo file name so tracebacks show `File <sandbox>, in input(prompt)`
# rather than the agent's source.
_ns = {}
exec(
    compile(
        "def input(prompt=''):\n"
        "    raise EOFError('input() is not supported: the sandbox has no interactive stdin')\n",
        "<sandbox>",
        "exec",
    ),
    _ns,
)
builtins.input = _ns["input"]
warnings.filterwarnings("ignore", message=".*non-interactive.*cannot be shown")


# --- cloister:shell-begin: everything from here to shell-end is also run by a zygote, before
# it forks (see zygote.py: `prebuild`), to build one IPython shell every forked session then
# starts with. Definitions only: no side effect until make_ipython() is called.
MAX_IMAGE_BYTES = 32 << 20  # base64 characters of images per reply (the supervisor's cap too)
MAX_RESULT = 1 << 20  # characters of an exec's result
MAX_LIST_BYTES = 15 << 20  # JSON of a listing (the supervisor accepts 16 MiB)
# The supervisor refuses a reply longer than it expects (see exec_reply_cap in lib.rs): every
# text field of an exec reply stays within 4 bytes of JSON per character it is allowed.


class Cell:
    result = None
    images = []
    image_bytes = 0


def add_image(b64):
    if Cell.image_bytes + len(b64) + 4 > MAX_IMAGE_BYTES:
        sys.stderr.write("cloister: image dropped, the reply already holds 32 MiB of images\n")
        return
    Cell.image_bytes += len(b64) + 4
    Cell.images.append(b64)


def make_ipython():
    from traitlets import Type
    from traitlets.config import Config
    from IPython.core.displayhook import DisplayHook
    from IPython.core.displaypub import DisplayPublisher
    from IPython.core.interactiveshell import InteractiveShell

    class Hook(DisplayHook):
        def start_displayhook(self):
            pass

        def write_output_prompt(self):
            pass

        def write_format_data(self, format_dict, md_dict=None):
            Cell.result = format_dict.get("text/plain")

        def finish_displayhook(self):
            pass

    class Pub(DisplayPublisher):
        def publish(self, data, metadata=None, source=None, *, transient=None, update=False, **kw):
            png = data.get("image/png")
            if png is not None:
                if isinstance(png, bytes):
                    png = base64.b64encode(png).decode("ascii")
                add_image(png)
            elif "text/plain" in data:
                print(data["text/plain"])

        def clear_output(self, wait=False):
            pass

    class Shell(InteractiveShell):
        displayhook_class = Type(Hook)
        display_pub_class = Type(Pub)

        def _showtraceback(self, etype, evalue, stb):
            sys.stderr.write(self.InteractiveTB.stb2text(stb) + "\n")
            sys.stderr.flush()

        def system(self, cmd):
            # `!cmd`: a plain subprocess on the captured fds 1/2 (not a pty: no \r\n).
            return self.system_raw(cmd)

        def ask_exit(self):
            # exit()/quit(): a session ends when the supervisor says so.
            pass

    c = Config()
    c.HistoryManager.enabled = False
    c.InteractiveShell.colors = "nocolor"
    c.InteractiveShell.xmode = "Context"
    c.InteractiveShell.autoindent = False
    shell = Shell.instance(config=c)
    shell.colors = "nocolor"

    def run(code):
        res = shell.run_cell(code, store_history=True)
        return res.success

    run.shell = shell
    return run

# --- cloister:shell-end


# --- matplotlib -------------------------------------------------------------------------------
def capture_figures():
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is None:
        return
    try:
        for num in plt.get_fignums():
            fig = plt.figure(num)
            buf = io.BytesIO()
            fig.savefig(buf, format="png", bbox_inches="tight")
            add_image(base64.b64encode(buf.getvalue()).decode("ascii"))
        plt.close("all")
    except Exception:
        traceback.print_exc()


def _show(*args, **kwargs):
    capture_figures()


class _PyplotHook:
    """Makes `plt.show()` capture the open figures (and close them, as Jupyter's inline backend
    does) instead of warning that Agg cannot show anything."""

    def find_spec(self, name, path=None, target=None):
        if name != "matplotlib.pyplot":
            return None
        import importlib.machinery

        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return None
        real = spec.loader.exec_module

        def exec_module(module):
            real(module)
            module.show = _show

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _PyplotHook())
if "matplotlib.pyplot" in sys.modules:  # a forked session: the zygote imported it already
    sys.modules["matplotlib.pyplot"].show = _show


# --- interrupts -------------------------------------------------------------------------------
_running = False
_interrupted = False


def _on_sigint(signum, frame):
    global _interrupted
    if _running:
        _interrupted = True
        raise KeyboardInterrupt


signal.signal(signal.SIGINT, _on_sigint)


# --- the two code runners ---------------------------------------------------------------------
_namespace = {"__name__": "__main__", "__builtins__": builtins}


def run_plain(code):
    import ast

    try:
        tree = ast.parse(code, "<cell>", "exec")
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        exec(compile(tree, "<cell>", "exec"), _namespace)
        if last is not None:
            value = eval(compile(last, "<cell>", "eval"), _namespace)
            if value is not None:
                Cell.result = repr(value)
                _namespace["_"] = value
        return True
    except KeyboardInterrupt:
        raise
    except BaseException as e:
        tb = e.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != "<cell>":
            tb = tb.tb_next
        if isinstance(e, SyntaxError):
            tb = None
        sys.stderr.write("".join(traceback.format_exception(type(e), e, tb)))
        return False


def _adopt(shell):
    """A shell the zygote built before it forked this session (see zygote.py: `prebuild`):
    what its construction did for the process is redone for this session's: user code's
    `__main__` is the shell's module, its directory history starts in /mnt/data, and its
    profile directory exists in this session's own /tmp."""
    import pathlib

    sys.modules["__main__"] = shell.user_module
    try:
        shell.history_manager.dir_hist[:] = [pathlib.Path.cwd()]
        os.makedirs(shell.profile_dir.location, mode=0o700, exist_ok=True)
        shell.profile_dir.check_dirs()
    except Exception:
        pass


RUN = globals().pop("_CLOISTER_RUN", None)
if RUN is not None:
    FLAVOUR = "ipython"
    _adopt(RUN.shell)
else:
    try:
        RUN = make_ipython()
        FLAVOUR = "ipython"
    except ImportError:
        RUN = run_plain
        FLAVOUR = "plain"
# setuptools' `pkg_resources` warns at import that it is deprecated (a DeprecationWarning that
# IPython shows for code run in __main__, so for `import pkg_resources` and for every package
# importing it from a cell): noise on the user's stderr about nothing they wrote. Only that
# warning is filtered, ahead of IPython's own filters; every other warning still shows.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated")

for _m in _preload:
    try:
        __import__(_m)
    except Exception:
        pass


def _fit(text, limit):
    """`text` cut to `limit` characters, and further until its JSON takes at most 4 bytes a
    character (only text full of control characters, which JSON spells as 6 bytes, needs it)."""
    text = text[:limit]
    budget = 4 * limit + 2
    if 6 * len(text) <= budget:
        return text
    while text and len(json.dumps(text, ensure_ascii=False).encode("utf-8", "replace")) > budget:
        text = text[: len(text) * 2 // 3]
    return text


def _text(data, limit):
    return _fit(data.decode("utf-8", "replace"), limit)


def op_exec(req):
    global _running, _interrupted
    limit = req.get("max_output")
    limit = DEFAULT_MAX_OUTPUT if limit is None else max(0, int(limit))
    _streams()
    OUT.start(4 * limit)
    ERR.start(4 * limit)
    Cell.result = None
    Cell.images = []
    Cell.image_bytes = 0
    _interrupted = False
    ok = False
    t0 = time.monotonic()
    try:
        signal.signal(signal.SIGINT, _on_sigint)
        _running = True
        try:
            ok = RUN(req.get("code", ""))
            capture_figures()
        finally:
            _running = False
    except KeyboardInterrupt:
        _interrupted = True
        sys.stderr.write("KeyboardInterrupt\n")
    except BaseException:
        traceback.print_exc()
    for s in (sys.stdout, sys.stderr, _STDOUT, _STDERR):
        try:
            s.flush()
        except Exception:
            pass
    _streams()
    return {
        "status": "Succeeded" if ok and not _interrupted else "Failed",
        "stdout": _text(OUT.take(), limit),
        "stderr": _text(ERR.take(), limit),
        "result": _fit(Cell.result, MAX_RESULT) if ok and Cell.result is not None else None,
        "images": Cell.images,
        "duration_ms": int((time.monotonic() - t0) * 1000),
        "interrupted": _interrupted,
    }


# --- shell commands ---------------------------------------------------------------------------
# A Shell session runs each command in a fresh `bash` of its own process group (a new session),
# started in the working directory the previous command ended in and with the variables it had
# exported: the EXIT trap of the wrapper below writes both (`$PWD`, a NUL, then `declare -px`,
# which bash prints as input it can read back) to a memfd, using builtins only; the next command's
# bash starts with an empty environment and sources that script (from another memfd) before it
# runs the command. Nothing else persists: unexported variables, functions, aliases, shell
# options, traps and background jobs end with the command (its process group is killed when bash
# exits, and the supervisor kills any stray left in the sandbox after every request).
MAX_SHELL_STATE = 1 << 20
_shell_state = {"cwd": DATA, "exports": None}
_SHELL_WRAPPER = r"""
__cloister_save() {
  __cloister_rc=$?
  { printf '%%s\0' "$PWD"; declare -px; } >&%d 2>/dev/null
  exit $__cloister_rc
}
%s
trap __cloister_save EXIT
__cloister_command=$CLOISTER_SHELL_COMMAND
unset CLOISTER_SHELL_COMMAND
eval "$__cloister_command"
"""


def _first_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOISTER_")}
    env["PWD"] = DATA
    return env


def _read_shell_state(fd):
    try:
        size = os.fstat(fd).st_size
        if size == 0 or size > MAX_SHELL_STATE:
            return
        data = os.pread(fd, size, 0)
    except OSError:
        return
    cwd, sep, exports = data.partition(b"\0")
    if not sep:
        return
    cwd = os.fsdecode(cwd)
    _shell_state["cwd"] = cwd if cwd.startswith("/") else DATA
    _shell_state["exports"] = exports


def _wait(proc, timeout):
    """Waits for `proc` at most `timeout` seconds, woken by its pidfd the moment it exits
    (Popen.wait(timeout) polls with growing sleeps); raises subprocess.TimeoutExpired."""
    import subprocess

    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        return proc.wait(timeout=timeout)
    try:
        p = select.poll()
        p.register(pidfd, select.POLLIN)
        if not p.poll(max(1, int(timeout * 1000))):
            raise subprocess.TimeoutExpired(proc.args, timeout)
    finally:
        os.close(pidfd)
    return proc.wait()


def op_shell(req):
    global _running, _interrupted
    import subprocess

    limit = req.get("max_output")
    limit = DEFAULT_MAX_OUTPUT if limit is None else max(0, int(limit))
    timeout = max(0.001, float(req.get("timeout_ms") or 220000) / 1000.0)
    command = req.get("command")
    if not isinstance(command, str):
        raise FileError("Invalid", "a shell request needs a command")
    _streams()
    OUT.start(4 * limit)
    ERR.start(4 * limit)
    _interrupted = False
    timed_out = False
    exit_code, error_name, error_message = -1, None, None
    t0 = time.monotonic()
    state = os.memfd_create("cloister-shell-state", 0)  # close-on-exec unless passed below
    restore = None
    proc = None
    try:
        fds = [state]
        if _shell_state["exports"] is None:
            env, source = _first_env(), ""
        else:
            restore = os.memfd_create("cloister-shell-restore", 0)
            os.write(restore, _shell_state["exports"])
            fds.append(restore)
            env, source = {}, "source /dev/fd/%d 2>/dev/null" % restore
        env["CLOISTER_SHELL_COMMAND"] = command
        cwd = _shell_state["cwd"]
        if not os.path.isdir(cwd):
            cwd = DATA
        try:
            proc = subprocess.Popen(
                ["/bin/bash", "--noprofile", "--norc", "-c", _SHELL_WRAPPER % (state, source)],
                stdin=subprocess.DEVNULL, cwd=cwd, env=env, pass_fds=tuple(fds),
                start_new_session=True,
            )
        except (OSError, ValueError) as e:
            error_name, error_message = "CommandStartError", "the command could not be started: %s" % e
        if proc is not None:
            signal.signal(signal.SIGINT, _on_sigint)
            _running = True
            try:
                exit_code = _wait(proc, timeout)
                if exit_code < 0:
                    exit_code = 128 - exit_code
            except subprocess.TimeoutExpired:
                timed_out = True
                exit_code = -1
                error_name = "ExecutionTimeout"
                error_message = "the command ran longer than %g s and was killed" % timeout
            except KeyboardInterrupt:
                _interrupted = True
                exit_code = -1
            finally:
                _running = False
                # The whole process group goes: background jobs and the command itself on a
                # timeout. (A child that made a session of its own is the supervisor's sweep's.)
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except OSError:
                    pass
                try:
                    proc.wait(timeout=5)
                except Exception:
                    pass
            if not timed_out and not _interrupted:
                _read_shell_state(state)
    finally:
        os.close(state)
        if restore is not None:
            os.close(restore)
    for s in (sys.stdout, sys.stderr, _STDOUT, _STDERR):
        try:
            s.flush()
        except Exception:
            pass
    _streams()
    return {
        "status": "Succeeded" if exit_code == 0 else "Failed",
        "stdout": _text(OUT.take(), limit),
        "stderr": _text(ERR.take(), limit),
        "result": None,
        "images": [],
        "duration_ms": int((time.monotonic() - t0) * 1000),
        "interrupted": _interrupted,
        "timed_out": timed_out,
        "exit_code": exit_code,
        "error_name": error_name,
        "error_message": error_message,
    }


# --- files ------------------------------------------------------------------------------------
class FileError(Exception):
    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind
        self.message = message


def _inside(p):
    return p == DATA or p.startswith(DATA + "/")


def resolve(name, follow=True, allow_root=False):
    """Maps a request path (relative to /mnt/data, or absolute under it) to a real path that is
    inside /mnt/data, or raises Invalid. `follow=False` keeps a final symlink itself."""
    if not isinstance(name, str) or "\0" in name:
        raise FileError("Invalid", "invalid path")
    p = os.path.normpath(name if name.startswith("/") else os.path.join(DATA, name))
    if p.startswith("//"):
        p = p[1:]
    if not _inside(p):
        raise FileError("Invalid", "%r is outside %s" % (name, DATA))
    if p == DATA:
        if not allow_root:
            raise FileError("Invalid", "%r names the data directory itself" % name)
        return DATA
    parent = os.path.realpath(os.path.dirname(p))
    if not _inside(parent):
        raise FileError("Invalid", "%r resolves outside %s" % (name, DATA))
    full = os.path.join(parent, os.path.basename(p))
    if follow:
        full = os.path.realpath(full)
        if not _inside(full):
            raise FileError("Invalid", "%r resolves outside %s" % (name, DATA))
        if full == DATA and not allow_root:
            raise FileError("Invalid", "%r names the data directory itself" % name)
    return full


UPLOAD_PREFIX = ".cloister-upload-"


def entry(path):
    st = os.lstat(path)
    is_dir = stat.S_ISDIR(st.st_mode)
    return {
        "name": os.path.basename(path) or path,
        "path": path,
        "is_dir": is_dir,
        "size": 0 if is_dir else st.st_size,
        "modified": st.st_mtime,
    }


_upload = None


def abort_upload():
    global _upload
    if _upload is not None:
        try:
            os.close(_upload["fd"])
        except OSError:
            pass
        try:
            os.unlink(_upload["tmp"])
        except OSError:
            pass
        _upload = None


def op_write(req):
    global _upload
    if req.get("first"):
        abort_upload()
        path = resolve(req.get("path"))
        if os.path.isdir(path):
            raise FileError("Invalid", "%s is a directory" % path)
        size = int(req.get("size") or 0)
        parent = os.path.dirname(path)
        os.makedirs(parent, exist_ok=True)
        st = os.statvfs(DATA)
        free = st.f_bavail * st.f_frsize
        try:
            free += os.stat(path).st_size  # replaced on success
        except OSError:
            pass
        if size > free:
            raise FileError(
                "TooLarge",
                "%d bytes do not fit: %d bytes free of %d in %s"
                % (size, free, st.f_blocks * st.f_frsize, DATA),
            )
        tmp = os.path.join(parent, UPLOAD_PREFIX + str(os.getpid()))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        _upload = {"fd": fd, "tmp": tmp, "path": path}
    elif _upload is None:
        raise FileError("Invalid", "no upload in progress")
    try:
        data = base64.b64decode(req.get("data") or "")
        view = memoryview(data)
        while view:
            n = os.write(_upload["fd"], view)
            view = view[n:]
        if req.get("last"):
            os.close(_upload["fd"])
            os.rename(_upload["tmp"], _upload["path"])
            path = _upload["path"]
            _upload = None
            return {"entry": entry(path)}
        return {}
    except BaseException:
        abort_upload()
        raise


def op_read(req):
    path = resolve(req.get("path"))
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise FileError("Invalid", "%s is a directory" % path)
        offset = int(req.get("offset") or 0)
        length = int(req.get("length") or (1 << 20))
        data = os.pread(fd, length, offset)
        return {
            "data": base64.b64encode(data).decode("ascii"),
            "size": st.st_size,
            "eof": len(data) < length or offset + len(data) >= st.st_size,
        }
    finally:
        os.close(fd)


class _Listing(list):
    """Entries up to MAX_LIST_BYTES of JSON; the rest is left out (`truncated`)."""

    size = 0
    truncated = False

    def append(self, e):
        n = len(json.dumps(e, ensure_ascii=False).encode("utf-8", "replace")) + 2
        if self.truncated or self.size + n > MAX_LIST_BYTES:
            self.truncated = True
            return
        self.size += n
        list.append(self, e)


def op_list(req):
    base = resolve(req.get("path") or DATA, allow_root=True)
    if not os.path.isdir(base):
        if os.path.lexists(base):
            raise FileError("Invalid", "%s is not a directory" % base)
        raise FileError("NotFound", "%s does not exist" % base)
    out = _Listing()
    if req.get("recursive"):
        for root, dirs, files in os.walk(base):
            dirs.sort()
            for n in sorted(dirs) + sorted(files):
                if not n.startswith(UPLOAD_PREFIX):
                    try:
                        out.append(entry(os.path.join(root, n)))
                    except FileNotFoundError:
                        pass
    else:
        for n in sorted(os.listdir(base)):
            if not n.startswith(UPLOAD_PREFIX):
                try:
                    out.append(entry(os.path.join(base, n)))
                except FileNotFoundError:
                    pass
    return {"entries": out, "truncated": out.truncated}


def op_stat(req):
    return {"entry": entry(resolve(req.get("path"), follow=False, allow_root=True))}


def op_delete(req):
    path = resolve(req.get("path"), follow=False)
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)
    return {}


def op_ping(req):
    return {"pong": True}


OPS = {
    "exec": op_exec,
    "shell": op_shell,
    "write": op_write,
    "read": op_read,
    "list": op_list,
    "stat": op_stat,
    "delete": op_delete,
    "ping": op_ping,
}


def file_error(e):
    if isinstance(e, FileError):
        return {"kind": e.kind, "message": e.message}
    if isinstance(e, FileNotFoundError):
        return {"kind": "NotFound", "message": "%s does not exist" % (e.filename or "file")}
    if isinstance(e, (IsADirectoryError, NotADirectoryError)):
        return {"kind": "Invalid", "message": str(e)}
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return {"kind": "TooLarge", "message": "%s is full: %s" % (DATA, e.strerror)}
    if isinstance(e, OSError) and e.errno in (errno.ELOOP, errno.ENAMETOOLONG):
        return {"kind": "Invalid", "message": str(e)}
    return {"kind": "Other", "message": "%s: %s" % (type(e).__name__, e)}


# --- identity forwarder -----------------------------------------------------------------------
def _pump(src, dst):
    try:
        while True:
            b = src.recv(65536)
            if not b:
                break
            dst.sendall(b)
    except OSError:
        pass
    try:
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def _forward(conn, path):
    try:
        up = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        up.connect(path)
    except OSError:
        conn.close()
        return
    t = threading.Thread(target=_pump, args=(up, conn), daemon=True)
    t.start()
    _pump(conn, up)
    t.join()
    up.close()
    conn.close()


def start_identity_forwarder(path):
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", IDENTITY_PORT))
    srv.listen(16)

    def loop():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            threading.Thread(target=_forward, args=(conn, path), daemon=True).start()

    threading.Thread(target=loop, daemon=True, name="cloister-identity").start()


if _identity_sock:
    start_identity_forwarder(_identity_sock)


# --- main loop --------------------------------------------------------------------------------
def reap():
    """Collects children the supervisor killed after the previous request."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def send(obj):
    _wfile.write(json.dumps(obj, ensure_ascii=False).encode("utf-8", "replace") + b"\n")
    _wfile.flush()


send({"ready": True, "pid": os.getpid(), "flavour": FLAVOUR, "python": sys.version.split()[0]})
while True:
    line = _rfile.readline()
    if not line:
        break
    rid = None
    try:
        req = json.loads(line)
        rid = req.get("id")
        op = req.get("op", "exec")
        reap()
        if op != "write":
            abort_upload()
        resp = OPS[op](req)
    except KeyboardInterrupt:  # a late interrupt, after the cell had finished
        resp = {"error": {"kind": "Other", "message": "interrupted"}}
    except BaseException as e:
        resp = {"error": file_error(e)}
        resp["error"]["message"] = _fit(str(resp["error"]["message"]), 4096)
    resp["id"] = rid
    send(resp)
