//! The gVisor tier: the startup probe's choice of network mode, and a container under runsc
//! that serves HTTP over its veth, exits with its code and is cleaned up.

mod common;
use cloister_containers::{RunscNetwork, Runtime};
use common::require_root;
use std::time::Duration;

fn runsc_or_skip(h: &cloister_containers::Containers) -> Option<RunscNetwork> {
    if h.config().runsc.is_none() {
        if std::env::var_os("CI").is_some() {
            panic!("runsc is not installed on CI (scripts/install-deps.sh installs it)");
        }
        eprintln!("skipped: runsc is not installed");
        return None;
    }
    Some(
        h.runsc_network()
            .expect("the runsc probe found no working network mode"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runsc_serves_http_in_the_mode_the_probe_chose_and_exits_with_its_code() {
    require_root!();
    let (_d, h) = common::host(|_| {});
    let Some(mode) = runsc_or_skip(&h) else {
        return;
    };
    eprintln!("runsc network mode chosen by the probe: {}", mode.as_str());
    assert!(h.available(Runtime::Runsc).is_ok());
    let a = h.start(&common::launch(Runtime::Runsc)).await.unwrap();
    let b = h.start(&common::launch(Runtime::Runsc)).await.unwrap();
    let (ja, took) = common::wait_http(&a).await;
    eprintln!("runsc start -> first 200 (after start returned): {took:?}");
    common::wait_http(&b).await;
    let c = common::client();
    c.post(format!("http://{}/counter", a.addr()))
        .send()
        .await
        .unwrap();
    let jb: serde_json::Value = c
        .get(format!("http://{}/", b.addr()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jb["counter"], 0);
    assert_eq!(ja["hostname"], a.id());
    assert!(a.memory_bytes().is_some());
    let (id, ns, cg) = (b.id().to_string(), b.netns(), b.cgroup());
    b.stop().await;
    assert_eq!(common::leftovers(&h, &id, &ns, &cg), Vec::<String>::new());
    c.post(format!("http://{}/exit?code=5", a.addr()))
        .send()
        .await
        .unwrap();
    assert_eq!(a.wait_exit(Duration::from_secs(15)).await, Some(5));
    assert!(a.console_tail(4096).contains("listening on 8080"));
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_runsc_the_kernel_is_gvisors_and_the_host_is_unreachable() {
    require_root!();
    let (_d, h) = common::host(|_| {});
    if runsc_or_skip(&h).is_none() {
        return;
    }
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let code = format!(
        r#"
import socket, os
print("kernel", os.uname().release, flush=True)
s = socket.socket(); s.settimeout(1.5)
gw = None
for line in open("/proc/net/route").read().splitlines()[1:]:
    f = line.split()
    if f[1] != "00000000":
        net = int.from_bytes(bytes.fromhex(f[1]), "little")
        gw = socket.inet_ntoa((net + 1).to_bytes(4, "big"))
try:
    assert gw, "no route"
    s.connect((gw, {port})); print("host connected", flush=True)
except Exception as e:
    print("host refused", type(e).__name__, flush=True)
print("uid", os.getuid(), flush=True)
"#
    );
    let (exit, out) = common::finish(
        h.start(&common::python(Runtime::Runsc, &code))
            .await
            .unwrap(),
    )
    .await;
    drop(listener);
    assert_eq!(exit, Some(0), "{out}");
    assert!(out.contains("host refused"), "{out}");
    assert!(out.contains("uid 65534"), "{out}");
}
