//! `cargo run -p cloister-images --example pull -- STORE REFERENCE [PLAIN_HTTP_HOST]`: pulls one
//! image and prints how long it took (a measuring aid; credentials from CLOISTER_REGISTRY_USER /
//! CLOISTER_REGISTRY_PASSWORD).
use std::time::Instant;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: pull STORE REFERENCE [PLAIN_HTTP_HOST]");
        std::process::exit(2);
    }
    let store = cloister_images::ImageStore::open(&args[1]).expect("open store");
    let opts = cloister_images::PullOptions {
        plain_http: args.get(3).into_iter().cloned().collect(),
        ..Default::default()
    };
    let auth = match (
        std::env::var("CLOISTER_REGISTRY_USER"),
        std::env::var("CLOISTER_REGISTRY_PASSWORD"),
    ) {
        (Ok(username), Ok(password)) => Some(cloister_images::RegistryAuth { username, password }),
        _ => None,
    };
    let t = Instant::now();
    match store.pull(&args[2], auth.as_ref(), &opts).await {
        Ok(image) => println!(
            "{} {} in {:.3} s ({:?})",
            image.digest,
            image.rootfs.display(),
            t.elapsed().as_secs_f64(),
            store.stats()
        ),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
