//! Python runtime niceties that framework clients ran into: a forked session's first plot is
//! fast (the zygote imported matplotlib with Agg and drew a figure before forking) and still
//! comes back as a PNG; setuptools' `pkg_resources` deprecation warning stays off the user's
//! stderr while other warnings still show; a cell whose caller went away is interrupted and
//! the sandbox stays usable. Needs root and bubblewrap, like the other sandbox tests.

mod common;

use cloister_sandbox::{DEFAULT_MAX_OUTPUT, ExecResult, Sandbox, SandboxConfig};
use common::finish;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);

async fn run(s: &mut Sandbox, code: &str) -> ExecResult {
    let r = s.exec(code, T, DEFAULT_MAX_OUTPUT).await.expect("exec");
    assert_eq!(r.status, "Succeeded", "{code}: {}", r.stderr);
    r
}

fn forked(dir: &std::path::Path) -> SandboxConfig {
    let mut cfg = common::config(dir);
    cfg.fork = true;
    cfg
}

fn has_matplotlib(cfg: &SandboxConfig) -> bool {
    cfg.runtime_dir.is_some()
}

const PLOT: &str = "import matplotlib.pyplot as plt\n\
                    plt.plot([1, 2, 3], [4, 1, 9], label='series')\n\
                    plt.title('first plot')\n\
                    plt.legend()\n\
                    plt.show()";

#[tokio::test]
async fn a_forked_sessions_first_plot_is_fast() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = forked(dir.path());
    if !has_matplotlib(&cfg) {
        eprintln!("skipped: no runtime venv with matplotlib");
        return;
    }
    // The first sandbox starts the zygote; the second is a plain fork of a warm one.
    let first = Sandbox::start(&cfg).await.expect("starts");
    let mut s = Sandbox::start(&cfg).await.expect("starts");
    let t0 = Instant::now();
    let r = run(&mut s, PLOT).await;
    let wall = t0.elapsed();
    eprintln!(
        "first plot in a fresh forked session: {} ms in the agent, {} ms round trip",
        r.duration_ms,
        wall.as_millis()
    );
    assert_eq!(r.images.len(), 1, "one figure: {r:?}");
    use base64::Engine as _;
    let png = base64::engine::general_purpose::STANDARD
        .decode(&r.images[0])
        .expect("base64");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    assert!(r.duration_ms < 1500, "first plot took {} ms", r.duration_ms);
    assert!(
        !r.stderr.contains("Matplotlib is building the font cache")
            && !r.stderr.contains("non-interactive"),
        "{}",
        r.stderr
    );
    // The backend is Agg, savefig works too, and the session starts with no figure open.
    let r = run(
        &mut s,
        "import io, matplotlib\nfig = plt.figure()\nplt.plot([0, 1])\nb = io.BytesIO()\n\
         fig.savefig(b, format='png')\n(matplotlib.get_backend(), b.getvalue()[:4])",
    )
    .await;
    assert_eq!(
        r.result.as_deref(),
        Some("('agg', b'\\x89PNG')"),
        "{}",
        r.stderr
    );
    assert_eq!(
        r.images.len(),
        1,
        "the open figure is returned at the end of the cell"
    );
    let mut other = Sandbox::start(&cfg).await.expect("starts");
    let r = run(
        &mut other,
        "import matplotlib.pyplot as plt\nplt.get_fignums()",
    )
    .await;
    assert_eq!(r.result.as_deref(), Some("[]"));
    assert!(r.images.is_empty());
    finish(other).await;
    finish(s).await;
    finish(first).await;
}

#[tokio::test]
async fn pkg_resources_does_not_warn_but_other_warnings_show() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::config(dir.path());
    if !has_matplotlib(&cfg) {
        eprintln!("skipped: no runtime venv with setuptools");
        return;
    }
    let mut s = Sandbox::start(&cfg).await.expect("starts");
    let r = run(&mut s, "import pkg_resources\npkg_resources.__name__").await;
    assert_eq!(r.result.as_deref(), Some("'pkg_resources'"));
    assert!(
        !r.stderr.contains("pkg_resources is deprecated"),
        "{}",
        r.stderr
    );
    // Only that warning: a user's own deprecation warning still shows.
    let r = run(
        &mut s,
        "import warnings\nwarnings.warn('this API is deprecated', DeprecationWarning)\n\
         warnings.warn('careful', UserWarning)",
    )
    .await;
    assert!(
        r.stderr.contains("this API is deprecated") && r.stderr.contains("careful"),
        "{}",
        r.stderr
    );
    finish(s).await;
}

#[tokio::test]
async fn a_cell_whose_caller_went_away_is_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::config(dir.path());
    let mut s = Sandbox::start(&cfg).await.expect("starts");
    run(&mut s, "x = 41").await;
    // The caller gives up after 1 s: the exec future is dropped mid-cell.
    let gone = tokio::time::timeout(
        Duration::from_secs(1),
        s.exec("import time\ntime.sleep(60)", T, DEFAULT_MAX_OUTPUT),
    )
    .await;
    assert!(gone.is_err(), "the cell was still running");
    let t0 = Instant::now();
    let r = run(&mut s, "x + 1").await;
    let waited = t0.elapsed();
    eprintln!(
        "the next cell answered {} ms after the drop",
        waited.as_millis()
    );
    assert_eq!(r.result.as_deref(), Some("42"));
    assert!(waited < Duration::from_secs(10), "{waited:?}");
    assert!(s.is_alive());
    finish(s).await;
}

/// The shell a forked session starts with was built and warmed up in the zygote: nothing of
/// the warm-up cells is left (execution count, history, namespace), `__main__` is the user's
/// namespace, the working directory and IPython's profile directory are the session's.
#[tokio::test]
async fn a_forked_sessions_prebuilt_shell_starts_fresh() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = forked(dir.path());
    let first = Sandbox::start(&cfg).await.expect("starts");
    let mut s = Sandbox::start(&cfg).await.expect("starts");
    assert_eq!(
        s.flavour(),
        if has_matplotlib(&cfg) {
            "ipython"
        } else {
            "plain"
        }
    );
    if s.flavour() == "ipython" {
        let r = run(
            &mut s,
            "import os, sys, __main__\n\
             ip = get_ipython()\n\
             (ip.execution_count, len(Out), 'x' in globals(), 'f' in globals(), \
             __main__.__dict__ is globals(), __name__, os.getcwd(), \
             [str(d) for d in _dh], os.path.isdir(ip.profile_dir.location))",
        )
        .await;
        assert_eq!(
            r.result.as_deref(),
            Some("(1, 0, False, False, True, '__main__', '/mnt/data', ['/mnt/data'], True)"),
            "{}",
            r.stderr
        );
        let r = run(&mut s, "_i1[:6], 6 * 7").await;
        assert_eq!(r.result.as_deref(), Some("('import', 42)"), "{}", r.stderr);
        // Tracebacks still name the cell and go to stderr.
        let r = s.exec("1/0", T, DEFAULT_MAX_OUTPUT).await.unwrap();
        assert_eq!(r.status, "Failed");
        assert!(r.stderr.contains("ZeroDivisionError"), "{}", r.stderr);
    }
    finish(s).await;
    finish(first).await;
}
