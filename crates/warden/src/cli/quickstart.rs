//! `warden quickstart`: a private PostgreSQL with sample data, Warden in front of it, alice's identity
//! and an agent credential issued, and the next commands printed. Ctrl-C stops everything it started.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use tokio::sync::watch;
use warden_identity::{IdentityKind, IdentityName};

use super::issue;
use super::start::{init_logging, Server};
use crate::cluster::{free_port, ClusterOptions, LocalCluster};
use crate::deployment::{self, Authorities};

const ADMIN: &str = "warden_admin";

pub fn run(dir: &Path, port: u16) -> Result<ExitCode> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = std::fs::canonicalize(dir)?;
    let config_path = dir.join("warden.toml");
    let mut cluster = if config_path.exists() {
        println!("Reusing the quickstart in {}.", dir.display());
        let config = deployment::load_config(&config_path)?;
        let db = config
            .database("shop")
            .context("the quickstart config has no database \"shop\"")?;
        let mut c = LocalCluster::open(&cluster_dir(&dir)?, db.url.port)?;
        c.start()?;
        c
    } else {
        setup(&dir, port)?
    };
    let config = deployment::load_config(&config_path)?;
    let agent_dir = dir.join("report-bot");
    let alice_dir = dir.join("alice");
    let agent = IdentityName::new(IdentityKind::Agent, "report-bot")?;
    let alice = IdentityName::new(IdentityKind::Human, "alice")?;
    // A fresh short-lived agent credential each run: the point is that they expire.
    let claims = issue::claims_for(
        &config,
        &agent,
        Some(&alice),
        Some("quickstart-demo"),
        &[],
        time::Duration::minutes(15),
    )?;
    issue::write_credential(&config, &claims, &agent_dir, true)?;
    let alice_claims = issue::claims_for(&config, &alice, None, None, &[], time::Duration::hours(1))?;
    issue::write_credential(&config, &alice_claims, &alice_dir, true)?;

    init_logging();
    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(async {
        let server = Server::prepare(&config_path).await?;
        let (stop_tx, stop_rx) = watch::channel(false);
        print_next_steps(&config, &config_path, &agent_dir, &alice_dir);
        let serving = tokio::spawn(server.run(stop_rx));
        tokio::signal::ctrl_c().await?;
        println!("\nStopping Warden and PostgreSQL...");
        let _ = stop_tx.send(true);
        let _ = serving.await;
        anyhow::Ok(())
    });
    cluster.stop()?;
    result?;
    Ok(ExitCode::SUCCESS)
}

fn setup(dir: &Path, port: u16) -> Result<LocalCluster> {
    println!("Setting up a Warden quickstart in {} ...", dir.display());
    if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
        bail!("port {port} is in use; pass --port with a free one");
    }
    set_mode(dir, 0o755)?;
    let cas = Authorities::create(dir)?;
    deployment::create_private_dir(&dir.join("audit"))?;
    let pg_port = free_port()?;
    let options = ClusterOptions {
        client_ca_pem: cas.db.cert_pem().to_string(),
        extra_hba: Vec::new(),
        extra_conf: vec!["log_connections = on".into()],
    };
    let cdir = cluster_dir(dir)?;
    println!(
        "  creating a private PostgreSQL cluster in {} (port {pg_port})",
        cdir.display()
    );
    let mut cluster = LocalCluster::create(&cdir, pg_port, &options)?;
    cluster.start()?;
    cluster.psql("postgres", "CREATE DATABASE shop")?;
    cluster.psql("shop", SAMPLE_SCHEMA)?;
    cluster.create_admin(ADMIN, "shop", &["public"])?;
    // The analyst role's row filter becomes row-level security, which only the table's owner may set up.
    cluster.psql("shop", &format!("ALTER TABLE public.orders OWNER TO {ADMIN}"))?;
    println!("  loaded the sample shop (customers, orders); Warden provisions through the non-superuser role {ADMIN}");
    let config = QUICKSTART_CONFIG
        .replace("{listen}", &format!("127.0.0.1:{port}"))
        .replace("{api_listen}", &format!("127.0.0.1:{}", free_port()?))
        .replace("{pg_port}", &pg_port.to_string())
        .replace("{server_ca}", &cluster.server_ca_path().display().to_string());
    super::init::write_new(&dir.join("warden.toml"), &config)?;
    Ok(cluster)
}

/// Where the cluster lives: inside DIR when the `postgres` user can reach it (always, when not root),
/// otherwise under /var/tmp, since PostgreSQL cannot run inside a directory its user cannot enter.
fn cluster_dir(dir: &Path) -> Result<PathBuf> {
    let inside = dir.join("pg");
    let root = String::from_utf8_lossy(&std::process::Command::new("id").arg("-u").output()?.stdout).trim() == "0";
    if !root {
        return Ok(inside);
    }
    let reachable = std::process::Command::new("runuser")
        .args(["-u", "postgres", "--", "test", "-x"])
        .arg(dir)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if reachable {
        return Ok(inside);
    }
    let name: String = dir
        .display()
        .to_string()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    Ok(PathBuf::from("/var/tmp").join(format!("warden-quickstart{name}")))
}

fn print_next_steps(config: &warden_policy::Config, config_path: &Path, agent_dir: &Path, alice_dir: &Path) {
    let agent = issue::psql_conninfo(config, "report-bot", "shop", agent_dir);
    let alice = issue::psql_conninfo(config, "alice", "shop", alice_dir);
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "warden".into());
    println!();
    println!(
        "Warden is running on {} in front of a private PostgreSQL.",
        config.server.postgres_listen
    );
    println!(
        "Issued: human:alice ({}, valid 1 hour) and agent:report-bot acting for alice on task quickstart-demo ({}, valid 15 minutes).",
        alice_dir.display(),
        agent_dir.display()
    );
    println!();
    println!("Try, in another terminal:");
    println!();
    println!("  1. Query as the agent (its own PostgreSQL role, its own short-lived certificate):");
    println!("     psql \"{agent}\" -c \"SELECT id, status, total, region FROM orders\"");
    println!();
    println!("  2. See that query in the audit log, attributed to the agent, its requester and its task:");
    println!(
        "     {exe} audit search --config {} --identity agent:report-bot",
        config_path.display()
    );
    println!();
    println!("  3. A denied statement: the agent's role may not read customer e-mails. Warden refuses it before");
    println!("     PostgreSQL sees it (42501, the rule named), and records the denial:");
    println!("     psql \"{agent}\" -c \"SELECT email FROM customers\"");
    println!();
    if config.server.api_listen.is_some() {
        println!();
        println!("  4. Run a program as an agent acting for alice, with a task credential that dies with it:");
        println!(
            "     {exe} exec --identity {} --agent report-bot --task demo-2 -- psql -c \"SELECT count(*) FROM orders\"",
            alice_dir.display()
        );
        println!();
        println!("  5. Cut the agent off: its live sessions end within a second, new ones are refused:");
        println!(
            "     {exe} lock --config {c} --task quickstart-demo --reason \"trying locks\"\n     (then: {exe} locks list --config {c}, and {exe} unlock --config {c} LOCK_ID)",
            c = config_path.display()
        );
    }
    println!();
    println!("  As alice herself:  psql \"{alice}\"");
    println!("  A new agent credential: {exe} issue --config {} --kind agent --name report-bot --requester human:alice --task quickstart-demo --out {} --force", config_path.display(), agent_dir.display());
    println!();
    println!("Press Ctrl-C to stop Warden and PostgreSQL.");
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// The sample data: a small shop, with a column (email) the analyst role may not read.
pub const SAMPLE_SCHEMA: &str = "
CREATE TABLE public.customers (id serial PRIMARY KEY, name text NOT NULL, email text NOT NULL, region text NOT NULL);
CREATE TABLE public.orders (id serial PRIMARY KEY, customer_id int REFERENCES public.customers(id),
                            status text NOT NULL, total numeric(10,2) NOT NULL, region text NOT NULL);
INSERT INTO public.customers (name, email, region) VALUES
  ('Ada', 'ada@example.com', 'eu'), ('Bo', 'bo@example.com', 'us'), ('Cy', 'cy@example.com', 'eu');
INSERT INTO public.orders (customer_id, status, total, region) VALUES
  (1, 'paid', 10.00, 'eu'), (2, 'paid', 20.00, 'us'), (3, 'open', 30.00, 'eu'), (2, 'open', 40.00, 'us');
";

const QUICKSTART_CONFIG: &str = r#"# Written by `warden quickstart`. See `warden init` for a fully commented sample.
[server]
postgres_listen = "{listen}"
api_listen = "{api_listen}"
admins = ["human:alice"]
data_dir = "."

[audit]
fsync = "batch"

[[database]]
name = "shop"
url  = "postgres://warden_admin@127.0.0.1:{pg_port}/shop?sslmode=verify-full&sslrootcert={server_ca}"
upstream_auth = "cert"

[[role]]
name = "analyst"
databases = ["shop"]
read  = ["public.orders(id, customer_id, status, total, region)", "public.customers(id, name, region)"]
write = []
row_filter = { "public.orders" = "region = {{traits.region}}" }
max_ttl = "1h"

[[role]]
name = "writer"
databases = ["shop"]
read  = ["public.*"]
write = ["public.orders"]

[[human]]
name = "alice"
roles = ["analyst", "writer"]
traits = { region = "eu" }

[[agent]]
name = "report-bot"
roles = ["analyst"]
max_ttl = "15m"
"#;
