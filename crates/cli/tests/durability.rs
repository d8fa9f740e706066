//! `kill -9` in the middle of writes loses no acknowledged write.

mod common;
use common::*;
use serde_json::json;
use std::sync::{Arc, Mutex};

#[tokio::test]
async fn kill_minus_nine_keeps_every_acknowledged_write() {
    let mut s = Server::start().await;
    let admin = s.admin_token().await;
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = vec![];
    for w in 0..4 {
        let http = s.http.clone();
        let url = s.url("");
        let sub = s.sub();
        let admin = admin.clone();
        let acked = acked.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let name = format!("w{w}-{i}");
                let r = http
                    .put(format!(
                        "{url}/subscriptions/{sub}/resourcegroups/{name}?api-version=2021-04-01"
                    ))
                    .bearer_auth(&admin)
                    .json(&json!({"location": "local"}))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status().as_u16() == 201 => acked.lock().unwrap().push(name),
                    Ok(_) => {}
                    Err(_) => break,
                }
                i += 1;
            }
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    s.kill9();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for t in tasks {
        let _ = t.await;
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 10,
        "too few writes to mean anything: {}",
        acked.len()
    );
    s.spawn().await;
    let admin = s.admin_token().await;
    let (st, v) = s
        .call(
            &admin,
            "GET",
            &format!(
                "/subscriptions/{}/resourcegroups?api-version=2021-04-01",
                s.sub()
            ),
            None,
        )
        .await;
    assert_eq!(st, 200);
    let have: std::collections::HashSet<String> = v["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap().to_string())
        .collect();
    let lost: Vec<&String> = acked.iter().filter(|n| !have.contains(*n)).collect();
    assert!(
        lost.is_empty(),
        "acknowledged writes lost after kill -9: {lost:?}"
    );
}
