//! The `warden` command line. Each subcommand lives in its own file; this one only parses and dispatches.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::deployment::CaKind;

mod api_client;
mod audit;
mod exec;
mod init;
pub(crate) mod issue;
mod lock;
mod quickstart;
mod requests;
mod sessions;
mod start;

pub use init::SAMPLE_CONFIG;

#[derive(Parser, Debug)]
#[command(
    name = "warden",
    version,
    about = "Warden: an identity-aware access gateway for PostgreSQL.",
    long_about = "Warden stands between clients and PostgreSQL. Every actor (human, agent or workload) connects with a \
short-lived certificate or token that names it; each statement is recorded against that actor before PostgreSQL sees it, \
and each identity reaches PostgreSQL as its own provisioned role.\n\nNew here? Run `warden quickstart`."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a new deployment: DIR/warden.toml (a commented sample), the user, host and db CAs, the audit dir.
    Init {
        /// Directory for the deployment (created 0700 if missing).
        #[arg(long)]
        dir: PathBuf,
    },
    /// Run the proxy and the API. SIGTERM or Ctrl-C stops accepting and drains open sessions (running
    /// statements get up to 30 s); a second one ends them at once. SIGHUP reloads warden.toml (so
    /// does a change of the file). Logs go to stderr: WARDEN_LOG sets the filter (default info),
    /// WARDEN_LOG_FORMAT=json writes one JSON object per line.
    Start {
        /// The deployment's warden.toml.
        #[arg(long, env = "WARDEN_CONFIG")]
        config: PathBuf,
    },
    /// Try Warden in one command: a private PostgreSQL with sample data, Warden in front of it, credentials issued.
    Quickstart {
        /// Where to keep everything (default: ./warden-quickstart). Reused if it exists.
        #[arg(long, default_value = "warden-quickstart")]
        dir: PathBuf,
        /// Port for Warden's PostgreSQL listener.
        #[arg(long, default_value_t = 6432)]
        port: u16,
    },
    /// Certificate authorities.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Issue a credential (admin, offline): DIR/identity.crt, identity.key, ca.crt, token, profile.toml.
    Issue(issue::IssueArgs),
    /// Run a command as an agent acting for you: a task credential is issued through the API, handed to
    /// the command in PGHOST, PGPORT, PGUSER, PGDATABASE, PGSSL* and DATABASE_URL, and revoked when the
    /// command exits (its sessions end too). Exits with the command's status.
    Exec(exec::ExecArgs),
    /// Cut off an identity, a requester (and all its agents), a task, a credential or a session: live
    /// sessions end within a second (57P01), new connections are refused (28000) until the lock is lifted.
    Lock(lock::LockArgs),
    /// List locks.
    Locks {
        #[command(subcommand)]
        command: lock::LocksCommand,
    },
    /// Lift a lock.
    Unlock(lock::UnlockArgs),
    /// Revoke a credential: its live sessions end within a second and it is refused from then on.
    Revoke(lock::RevokeArgs),
    /// Access requests for roles that need a human's approval: create, list, approve, deny, assume.
    Requests {
        #[command(subcommand)]
        command: requests::RequestsCommand,
    },
    /// Search and verify the audit log.
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
    /// Sessions from the audit log: list them, or replay one with its statements, timing and outcomes.
    Sessions {
        #[command(subcommand)]
        command: sessions::SessionsCommand,
    },
}

#[derive(Subcommand, Debug)]
enum CaCommand {
    /// Print a CA certificate (PEM) to stdout. `host` is what clients use as sslrootcert; `db` is what
    /// PostgreSQL trusts for Warden's logins (ssl_ca_file).
    Export {
        #[arg(value_enum)]
        which: CaKind,
        #[arg(long, env = "WARDEN_CONFIG")]
        config: PathBuf,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(
        cli.command,
        Command::Init { .. }
            | Command::Ca { .. }
            | Command::Issue(_)
            | Command::Audit { .. }
            | Command::Sessions { .. }
            | Command::Locks { .. }
    ) {
        // Commands that print what they did or found end quietly when their reader goes away
        // (`warden audit search | head`), as other command-line tools do, instead of panicking on
        // the broken pipe. Their work is done by the time they print, and none writes to a socket
        // (rustls writes with writev, which would raise SIGPIPE on a reset connection). The proxy
        // (start, quickstart) and the API's clients (exec, requests) keep SIGPIPE ignored.
        // SAFETY: no other thread exists yet; SIG_DFL installs no handler code.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let result = match cli.command {
        Command::Init { dir } => init::run(&dir),
        Command::Start { config } => start::run(&config),
        Command::Quickstart { dir, port } => quickstart::run(&dir, port),
        Command::Ca {
            command: CaCommand::Export { which, config },
        } => init::export_ca(&config, which),
        Command::Issue(args) => issue::run(&args),
        Command::Audit { command } => audit::run(command),
        Command::Sessions { command } => sessions::run(command),
        Command::Exec(args) => exec::run(&args),
        Command::Requests { command } => requests::run(command),
        Command::Lock(args) => lock::lock(&args),
        Command::Locks { command } => lock::list(command),
        Command::Unlock(args) => lock::unlock(&args),
        Command::Revoke(args) => lock::revoke(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("warden: {e:#}");
            ExitCode::from(2)
        }
    }
}
