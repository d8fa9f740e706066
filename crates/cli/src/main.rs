//! `cloister`: the one binary. `cloister serve` runs the platform; the other commands are a
//! client shaped like the Azure CLI (`az`) where `az` has the command.

mod apim;
mod commands;
mod containerapp;
mod output;
mod profile;

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "cloister",
    version,
    about = "Cloister: secure sandbox sessions with an Entra-compatible identity and access plane"
)]
struct Cli {
    /// Output format: json (default) or table.
    #[arg(short = 'o', long = "output", global = true, default_value = "json")]
    output: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the platform.
    Serve(ServeArgs),
    /// Log in with a service principal or a user, and keep a profile.
    Login(commands::LoginArgs),
    /// Forget the profile.
    Logout,
    /// Resource groups (like `az group`).
    #[command(subcommand)]
    Group(commands::GroupCmd),
    /// User-assigned managed identities (like `az identity`).
    #[command(subcommand)]
    Identity(commands::IdentityCmd),
    /// Directory objects (like `az ad`).
    #[command(subcommand)]
    Ad(commands::AdCmd),
    /// Role assignments and definitions (like `az role`).
    #[command(subcommand)]
    Role(commands::RoleCmd),
    /// Tokens and the current account (like `az account`).
    #[command(subcommand)]
    Account(commands::AccountCmd),
    /// Run a command that gets tokens for a managed identity with no secret.
    Run(commands::RunArgs),
    /// Session pools and code-interpreter sessions (like `az containerapp`).
    #[command(subcommand)]
    Containerapp(containerapp::ContainerappCmd),
    /// The credential manager: providers, connections, access policies, APIs (like `az apim`).
    #[command(subcommand)]
    Apim(apim::ApimCmd),
    /// Call any Cloister API with the profile's token (like `az rest`).
    Rest(commands::RestArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// A TOML configuration file (flags and CLOISTER_* variables override it).
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// HTTPS listen address, e.g. 127.0.0.1:8443.
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Plain-HTTP listen address for managed-identity endpoints and local use.
    #[arg(long)]
    http_listen: Option<std::net::SocketAddr>,
    /// State store: sqlite://PATH?mode=rwc (default: DATA_DIR/cloister.db) or postgres://…
    #[arg(long)]
    store: Option<String>,
    /// Public HTTPS base URL (default https://LISTEN).
    #[arg(long)]
    public_url: Option<String>,
    /// ES256 (default) or RS256.
    #[arg(long)]
    signing_alg: Option<String>,
    #[arg(long)]
    log_format: Option<String>,
    #[arg(long)]
    log_level: Option<String>,
    /// After SIGTERM, seconds requests in flight may take before the server exits anyway.
    #[arg(long)]
    drain_timeout: Option<u64>,
}

fn main() {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = rt.block_on(async move {
        match cli.cmd {
            Cmd::Serve(a) => match serve(a).await {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("cloister serve: {e:#}");
                    1
                }
            },
            cmd => match commands::dispatch(cmd_into(cmd), &cli.output).await {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("ERROR: {e:#}");
                    1
                }
            },
        }
    });
    std::process::exit(code);
}

fn cmd_into(c: Cmd) -> commands::Command {
    match c {
        Cmd::Login(a) => commands::Command::Login(a),
        Cmd::Logout => commands::Command::Logout,
        Cmd::Group(g) => commands::Command::Group(g),
        Cmd::Identity(i) => commands::Command::Identity(i),
        Cmd::Ad(a) => commands::Command::Ad(a),
        Cmd::Role(r) => commands::Command::Role(r),
        Cmd::Account(a) => commands::Command::Account(a),
        Cmd::Run(r) => commands::Command::Run(r),
        Cmd::Rest(r) => commands::Command::Rest(r),
        Cmd::Containerapp(c) => commands::Command::Containerapp(c),
        Cmd::Apim(c) => commands::Command::Apim(c),
        Cmd::Serve(_) => unreachable!("serve handled in main"),
    }
}

async fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let mut cfg = cloister_server::config::ServerConfig::load(a.config.as_deref())?;
    if let Some(v) = a.data_dir {
        cfg.data_dir = v;
    }
    if let Some(v) = a.listen {
        cfg.listen = v;
    }
    if let Some(v) = a.http_listen {
        cfg.http_listen = Some(v);
    }
    if let Some(v) = a.store {
        cfg.store = Some(v);
    }
    if let Some(v) = a.public_url {
        cfg.public_url = Some(v);
    }
    if let Some(v) = a.signing_alg {
        cfg.identity.signing_alg = v;
    }
    if let Some(v) = a.log_format {
        cfg.log_format = v;
    }
    if let Some(v) = a.log_level {
        cfg.log_level = v;
    }
    if let Some(v) = a.drain_timeout {
        cfg.drain_timeout_secs = v;
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&cfg.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cfg.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
    cloister_server::run(cfg).await
}
