//! Replies are capped on the supervisor's side: user code that writes its own reply on the
//! protocol channel (a forged answer to the running request) gets no more through than the
//! agent would have sent, and cannot make the supervisor buffer more than the request's cap.
//! One test in this binary, so that the process's peak RSS (`VmHWM`) is this test's own.

mod common;

use cloister_sandbox::{MAX_RESULT, Sandbox, SandboxError, exec_reply_cap};
use common::finish;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Python that finds the channel and the running request's id (a global of the agent's main
/// loop, reached through the agent's SIGINT handler: the agent's globals may be in the
/// zygote's frozen generation, out of `gc.get_objects()`'s sight) and writes `reply` (a Python
/// expression over `rid`) as that request's answer.
fn forge(reply: &str) -> String {
    format!(
        r#"
import json, os, signal, socket
fd = [int(f) for f in os.listdir('/proc/self/fd') if int(f) >= 100][0]
rid = signal.getsignal(signal.SIGINT).__globals__['rid']
line = json.dumps({reply}).encode() + b'\n'
socket.socket(fileno=os.dup(fd)).sendall(line)
'real reply'
"#
    )
}

#[tokio::test]
async fn forged_replies_are_capped_and_memory_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::config(dir.path());
    cfg.limits.memory_bytes = 768 << 20;
    let mut s = Sandbox::start(&cfg).await.expect("sandbox starts");
    let r = s.exec("'warm'", T, 1000).await.unwrap();
    assert_eq!(r.result.as_deref(), Some("'warm'"));
    let base = status_kib("VmHWM:");

    // Under the cap: a forged answer with 24 MiB of stdout and stderr and a 3 MiB result is
    // accepted, and cut back to what was asked for ...
    let code = forge(
        "{'id': rid, 'status': 'Succeeded', 'stdout': 'o' * (12 << 20), 'stderr': 'e' * (12 << 20), \
         'result': 'r' * (3 << 20), 'images': [], 'duration_ms': 1}",
    );
    let r = s
        .exec(&code, T, 1000)
        .await
        .expect("a forged reply under the cap");
    assert_eq!(
        (r.stdout.len(), r.stderr.len()),
        (1000, 1000),
        "{}",
        r.stderr
    );
    assert_eq!(r.result.as_ref().map(String::len), Some(MAX_RESULT));
    // ... and so are 34 MB of images.
    let code = forge(
        "{'id': rid, 'status': 'Succeeded', 'stdout': '', 'stderr': '', 'result': None, \
         'images': ['QUFB' * 1024] * 8400, 'duration_ms': 1}",
    );
    let r = s
        .exec(&code, T, 1000)
        .await
        .expect("a forged reply under the cap");
    let images: usize = r.images.iter().map(String::len).sum();
    assert!((30 << 20..=32 << 20).contains(&images), "{images}");
    // The session goes on; the agent's own (late) reply is skipped.
    let r = s.exec("6 * 7", T, 1000).await.unwrap();
    assert_eq!(r.result.as_deref(), Some("42"));

    // Over the cap: 100 MiB of stdout in one forged line stops the sandbox with a clear error,
    // after at most the cap was read.
    let code = forge(
        "{'id': rid, 'status': 'Succeeded', 'stdout': 'x' * (100 << 20), 'stderr': '', \
         'result': None, 'images': [], 'duration_ms': 1}",
    );
    let e = s.exec(&code, T, 1000).await.unwrap_err();
    match &e {
        SandboxError::Protocol(m) => {
            assert!(m.contains("longer than") && m.contains("stopped"), "{m}")
        }
        other => panic!("expected a protocol error, got {other:?}"),
    }
    assert!(!s.is_alive());
    let grown = (status_kib("VmHWM:") - base) << 10;
    let cap = exec_reply_cap(1000);
    // The line buffer (at most the cap) and what was parsed from an accepted line; never the
    // 100 MiB (before the caps, the supervisor's peak grew by three times that).
    assert!(
        grown < 2 * cap as u64 + (16 << 20),
        "peak RSS grew by {} MiB (cap {} MiB)",
        grown >> 20,
        cap >> 20
    );
    println!(
        "peak RSS grew by {} MiB; reply cap {} MiB",
        grown >> 20,
        cap >> 20
    );
    finish(s).await;
}
