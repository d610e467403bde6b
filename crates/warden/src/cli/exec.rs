//! `warden exec`: run a command as an agent acting for the human whose credential is in `--identity`.
//!
//! 1. Ask the API (mTLS with the human's own certificate) for a task credential for the agent.
//! 2. Write it to a private temporary directory (0700; the key 0600).
//! 3. Run the command with libpq's variables and `DATABASE_URL` pointing at it; forward signals.
//! 4. When the command exits, revoke the credential (its live sessions end too), remove the directory,
//!    and exit with the command's status. If `warden exec` is killed instead, the kernel kills the
//!    command too (its credential stays valid until it expires: `warden revoke` ends it sooner).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

use super::api_client::{write_private, ApiClient, Issued};

#[derive(clap::Args, Debug)]
pub struct ExecArgs {
    /// Your own credential directory (from `warden issue`): identity.crt, identity.key, ca.crt, profile.toml.
    #[arg(long, env = "WARDEN_IDENTITY")]
    pub identity: PathBuf,
    /// The agent to run as (its name in warden.toml), acting for you.
    #[arg(long)]
    pub agent: String,
    /// The task this credential is for; it shows in the audit log and can be locked.
    #[arg(long)]
    pub task: String,
    /// Roles for the agent (comma separated). Default: every role the agent may hold that you hold too.
    #[arg(long, value_delimiter = ',')]
    pub roles: Vec<String>,
    /// Lifetime of the agent's credential, e.g. 10m. Bounded by max_ttl and by your own credential.
    /// Default: 15m, or less if a bound is shorter.
    #[arg(long)]
    pub ttl: Option<String>,
    /// Database for PGDATABASE and DATABASE_URL. Default: the first one the roles reach.
    #[arg(long)]
    pub database: Option<String>,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

pub fn run(args: &ExecArgs) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(exec(args))
}

async fn exec(args: &ExecArgs) -> Result<ExitCode> {
    // Signals are caught from the start: one that arrives while the credential is being issued or
    // written must not kill `warden exec` before it can revoke.
    let mut signals = Signals::install()?;
    let client = ApiClient::new(&args.identity)?;
    let mut request = serde_json::json!({ "agent": args.agent, "task": args.task });
    if let Some(ttl) = &args.ttl {
        request["ttl"] = ttl.clone().into();
    }
    if !args.roles.is_empty() {
        request["roles"] = args.roles.clone().into();
    }
    if let Some(db) = &args.database {
        request["database"] = db.clone().into();
    }
    let issued: Issued = client.post("/v1/credentials", &request).await?;

    // From here on, every way out revokes the credential.
    let dir = tempfile::Builder::new()
        .prefix("warden-exec-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir();
    let outcome = match &dir {
        Ok(dir) => run_as_agent(args, &client.profile.identity, &issued, dir.path(), &mut signals).await,
        Err(e) => Err(anyhow::anyhow!(
            "creating a private directory for the agent's credential: {e}"
        )),
    };
    let reason = match &outcome {
        Ok(code) => format!("warden exec: the command exited ({})", describe(*code)),
        Err(e) => format!("warden exec: the command could not run ({e:#})"),
    };
    let revoked: Result<serde_json::Value> = client
        .post(
            &format!("/v1/credentials/{}/revoke", issued.credential_id),
            &serde_json::json!({ "reason": reason }),
        )
        .await;
    drop(dir);
    if let Err(e) = revoked {
        eprintln!(
            "warden: could not revoke credential {} ({e:#}); it stays valid until {}. Revoke it with `warden revoke {}`",
            issued.credential_id, issued.not_after, issued.credential_id
        );
    }
    let code = outcome?;
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}

/// Writes the credential into `dir` and runs the command with it; returns the command's exit code.
async fn run_as_agent(
    args: &ExecArgs,
    requester: &str,
    issued: &Issued,
    dir: &Path,
    signals: &mut Signals,
) -> Result<i32> {
    write_private(&dir.join("identity.crt"), &issued.certificate, 0o644)?;
    write_private(&dir.join("ca.crt"), &issued.ca_certificate, 0o644)?;
    write_private(&dir.join("token"), &issued.token, 0o600)?;
    write_private(&dir.join("identity.key"), &issued.private_key, 0o600)?;
    eprintln!(
        "warden: {} acting for {requester} on task {} (credential {}, roles {}, until {})",
        issued.identity,
        args.task,
        issued.credential_id,
        issued.roles.join(","),
        issued.not_after
    );
    let env = environment(issued, &args.agent, dir, args.database.as_deref())?;
    if let Some(sig) = signals.pending() {
        bail!("interrupted by signal {sig} before the command started");
    }
    run_child(&args.command, &env, signals).await
}

/// The variables libpq-based and native drivers read (PRODUCT.md §3), and `DATABASE_URL`.
fn environment(issued: &Issued, agent: &str, dir: &Path, database: Option<&str>) -> Result<Vec<(String, String)>> {
    let (host, port) = issued
        .postgres
        .rsplit_once(':')
        .with_context(|| format!("the API gave no port in {:?}", issued.postgres))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    // A wildcard listener is reached on loopback from this machine.
    let host = match host {
        "0.0.0.0" => "127.0.0.1",
        "::" => "::1",
        h => h,
    };
    let database = database
        .map(str::to_string)
        .or_else(|| issued.database.clone())
        .unwrap_or_else(|| agent.to_string());
    let path = |f: &str| dir.join(f).display().to_string();
    let mut url = url::Url::parse("postgresql://localhost").expect("a constant URL parses");
    let url_host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    url.set_host(Some(&url_host))?;
    url.set_port(Some(
        port.parse()
            .with_context(|| format!("bad port in {:?}", issued.postgres))?,
    ))
    .map_err(|_| anyhow::anyhow!("cannot set the port"))?;
    url.set_username(agent)
        .map_err(|_| anyhow::anyhow!("cannot set the user"))?;
    url.set_path(&database);
    url.query_pairs_mut()
        .append_pair("sslmode", "verify-full")
        .append_pair("sslcert", &path("identity.crt"))
        .append_pair("sslkey", &path("identity.key"))
        .append_pair("sslrootcert", &path("ca.crt"));
    Ok(vec![
        ("PGHOST".into(), host.to_string()),
        ("PGPORT".into(), port.to_string()),
        ("PGUSER".into(), agent.to_string()),
        ("PGDATABASE".into(), database),
        ("PGSSLMODE".into(), "verify-full".into()),
        ("PGSSLCERT".into(), path("identity.crt")),
        ("PGSSLKEY".into(), path("identity.key")),
        ("PGSSLROOTCERT".into(), path("ca.crt")),
        ("DATABASE_URL".into(), url.to_string()),
        ("WARDEN_CREDENTIAL_ID".into(), issued.credential_id.clone()),
    ])
}

/// The signals `warden exec` catches and passes on to the command.
struct Signals {
    rx: tokio::sync::mpsc::UnboundedReceiver<i32>,
}

impl Signals {
    fn install() -> Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        let kinds = [
            SignalKind::interrupt(),
            SignalKind::terminate(),
            SignalKind::hangup(),
            SignalKind::quit(),
            SignalKind::user_defined1(),
            SignalKind::user_defined2(),
        ];
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<i32>();
        for kind in kinds {
            let mut s = signal(kind)?;
            let tx = tx.clone();
            tokio::spawn(async move {
                while s.recv().await.is_some() {
                    if tx.send(kind.as_raw_value()).is_err() {
                        break;
                    }
                }
            });
        }
        Ok(Signals { rx })
    }

    /// A signal that arrived and was not passed on yet.
    fn pending(&mut self) -> Option<i32> {
        self.rx.try_recv().ok()
    }
}

/// Whether this process runs in the foreground of a terminal: then the terminal delivers Ctrl-C
/// (SIGINT) and Ctrl-\ (SIGQUIT) to the command itself, and passing them on would deliver them twice.
fn terminal_delivers_interrupts() -> bool {
    // SAFETY: tcgetpgrp and getpgrp only read process state.
    unsafe { libc::isatty(0) == 1 && libc::tcgetpgrp(0) == libc::getpgrp() }
}

/// Runs the command, passing on termination and job signals; returns its exit code (128 + the signal
/// when a signal ended it, as shells report it).
async fn run_child(command: &[String], env: &[(String, String)], signals: &mut Signals) -> Result<i32> {
    let mut cmd = tokio::process::Command::new(&command[0]);
    cmd.args(&command[1..]);
    // Nothing of the caller's own connection settings or credential reaches the agent: only its own.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("PG") || k.starts_with("WARDEN_") || k == "DATABASE_URL" {
            cmd.env_remove(k.as_ref());
        }
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    // If `warden exec` itself dies (SIGKILL, the OOM killer, a crash), nothing is left to revoke the
    // credential when the command exits: the command must not go on using it. The kernel kills it
    // when this thread ends (the runtime is current-thread: this is the main thread, which lives as
    // long as the process). Processes the command started itself are not covered.
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: between fork and exec the closure calls only async-signal-safe functions (prctl,
    // getppid, _exit) and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // `warden exec` may have died between fork and prctl.
            if libc::getppid() != parent {
                libc::_exit(128 + libc::SIGKILL);
            }
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            // As shells report it: 127 when there is no such command, 126 when it cannot run.
            eprintln!("warden: cannot start {}: {e}", command[0]);
            return Ok(if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            });
        }
    };
    let pid = child.id().context("the command exited before it could be watched")? as i32;
    let from_terminal = terminal_delivers_interrupts();
    let status = loop {
        tokio::select! {
            status = child.wait() => break status?,
            Some(sig) = signals.rx.recv() => {
                if from_terminal && (sig == libc::SIGINT || sig == libc::SIGQUIT) {
                    continue;
                }
                // SAFETY: kill(2) with the pid of our own child, which has not been reaped yet.
                unsafe { libc::kill(pid, sig) };
            }
        }
    };
    use std::os::unix::process::ExitStatusExt;
    Ok(match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(s)) => 128 + s,
        (None, None) => 1,
    })
}

fn describe(code: i32) -> String {
    if code > 128 {
        format!("signal {}", code - 128)
    } else {
        format!("status {code}")
    }
}
