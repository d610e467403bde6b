use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Result};
use time::{Duration, OffsetDateTime};
use warden_identity::{parse_duration, Claims, IdentityKind, IdentityName};
use warden_policy::Config;
use warden_state::StateStore;

use crate::deployment::{self, CaKind};

#[derive(clap::Args, Debug)]
pub struct IssueArgs {
    #[arg(long, env = "WARDEN_CONFIG")]
    pub config: PathBuf,
    /// human, agent or workload.
    #[arg(long)]
    pub kind: IdentityKind,
    /// The identity's name as configured, e.g. report-bot. Clients connect with it as the PostgreSQL user.
    #[arg(long)]
    pub name: String,
    /// For agents: the human or workload it acts for, as KIND:NAME (e.g. human:alice).
    #[arg(long)]
    pub requester: Option<IdentityName>,
    /// For agents: the task this credential is for.
    #[arg(long)]
    pub task: Option<String>,
    /// Roles to carry (comma separated). Default: every role the identity (and its requester) holds,
    /// except those with approval = "session" (held through `warden requests`; name one here to issue
    /// it without an access request, as the admin).
    #[arg(long, value_delimiter = ',')]
    pub roles: Vec<String>,
    /// Lifetime, e.g. 15m, 1h. Bounded by the smallest max_ttl of the identity, requester and roles.
    #[arg(long, default_value = "15m")]
    pub ttl: String,
    /// Directory to write the credential to (created 0700).
    #[arg(long)]
    pub out: PathBuf,
    /// Replace a credential already in --out.
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: &IssueArgs) -> Result<ExitCode> {
    let config = deployment::load_config(&args.config)?;
    let identity = IdentityName::new(args.kind, &args.name)?;
    let ttl = parse_duration(&args.ttl)?;
    let claims = claims_for(
        &config,
        &identity,
        args.requester.as_ref(),
        args.task.as_deref(),
        &args.roles,
        ttl,
    )?;
    let issued = write_credential(&config, &claims, &args.out, args.force)?;
    println!(
        "Issued {} for {} (credential {}), valid until {}.",
        issued.identity, issued.roles, claims.credential_id, issued.expires
    );
    let unrequested: Vec<&str> = claims
        .roles
        .iter()
        .filter(|r| config.needs_request(r))
        .map(String::as_str)
        .collect();
    if !unrequested.is_empty() {
        println!(
            "Note: it carries {} without an access request (approval = \"session\"), because you named them with --roles.",
            unrequested.join(", ")
        );
    }
    println!(
        "Wrote {}/{{identity.crt, identity.key, ca.crt, token, profile.toml}}.",
        args.out.display()
    );
    if let Some(db) = issued.database {
        println!();
        println!("Connect with:");
        println!("  psql \"{}\"", psql_conninfo(&config, &claims.name, &db, &args.out));
    }
    Ok(ExitCode::SUCCESS)
}

pub struct Issued {
    pub identity: IdentityName,
    pub roles: String,
    pub expires: String,
    /// A database the credential's roles reach, for the connection hint.
    pub database: Option<String>,
}

/// Builds the claims of a new credential within every bound of the configuration, or says which bound refused.
pub fn claims_for(
    config: &Config,
    identity: &IdentityName,
    requester: Option<&IdentityName>,
    task: Option<&str>,
    roles: &[String],
    ttl: Duration,
) -> Result<Claims> {
    let Some(configured) = config.identity(identity) else {
        bail!(
            "{identity} is not in {}; add a [[{}]] section with name = \"{}\"",
            config.path.display(),
            identity.kind,
            identity.name
        );
    };
    let requester_roles = match (identity.kind, requester) {
        (IdentityKind::Agent, None) => {
            bail!("an agent acts for someone: pass --requester human:NAME (and --task ID)")
        }
        (IdentityKind::Agent, Some(r)) => {
            if r.kind == IdentityKind::Agent {
                bail!("requester {r} is an agent; an agent acts for a human or a workload");
            }
            let Some(rc) = config.identity(r) else {
                bail!("requester {r} is not in {}", config.path.display());
            };
            if task.is_none_or(|t| t.trim().is_empty()) {
                bail!("an agent credential is issued for a task: pass --task ID");
            }
            if let Some(t) = task {
                crate::control::check_text("the task id", t, 128).map_err(anyhow::Error::msg)?;
            }
            Some(rc.roles.clone())
        }
        (_, Some(_)) => bail!("--requester is for agents; {identity} acts for itself"),
        (_, None) => None,
    };
    let allowed = |r: &String| configured.roles.contains(r) && requester_roles.as_ref().is_none_or(|rr| rr.contains(r));
    // A role with approval = "session" is held through an approved access request: never by default.
    let roles: Vec<String> = if roles.is_empty() {
        let held: Vec<String> = configured.roles.iter().filter(|r| allowed(r)).cloned().collect();
        let by_default: Vec<String> = held.iter().filter(|r| !config.needs_request(r)).cloned().collect();
        if by_default.is_empty() && !held.is_empty() {
            bail!(
                "{identity}'s roles ({}) all need an approved access request (approval = \"session\"); \
                 ask with `warden requests create --roles ROLE --reason ...`, or name them with --roles to issue without one",
                held.join(", ")
            );
        }
        by_default
    } else {
        for r in roles {
            if config.role(r).is_none() {
                bail!("unknown role \"{r}\"");
            }
            if !configured.roles.contains(r) {
                bail!(
                    "{identity} does not hold role \"{r}\" in {}; its roles are: {}",
                    config.path.display(),
                    configured.roles.join(", ")
                );
            }
            if let (Some(req), Some(rr)) = (requester, &requester_roles) {
                if !rr.contains(r) {
                    bail!("requester {req} does not hold role \"{r}\", so its agent may not either");
                }
            }
        }
        roles.to_vec()
    };
    if roles.is_empty() {
        bail!(
            "{identity} would hold no role; give it roles in {}",
            config.path.display()
        );
    }
    let max = config.max_ttl(identity, requester, &roles);
    if ttl > max {
        bail!("--ttl {} exceeds the {} bound (the smallest max_ttl of {identity}, its requester and roles {}); ask for at most that",
            human_duration(ttl), human_duration(max), roles.join(", "));
    }
    if !ttl.is_positive() {
        bail!("--ttl must be longer than zero");
    }
    // Whole seconds: the certificate and the token carry the same instants.
    let now = OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .expect("0 is a valid nanosecond");
    Ok(Claims {
        kind: identity.kind,
        name: identity.name.clone(),
        requester: requester.cloned(),
        task: task.map(str::to_string),
        roles,
        credential_id: uuid::Uuid::new_v4().to_string(),
        // Backdated a minute so a client whose clock runs slightly behind accepts it at once.
        not_before: now - Duration::minutes(1),
        not_after: now + ttl,
    })
}

/// Signs `claims` as certificate and token and writes the credential directory.
pub fn write_credential(config: &Config, claims: &Claims, out: &Path, force: bool) -> Result<Issued> {
    let data_dir = &config.server.data_dir;
    let user_ca = deployment::load_ca(data_dir, CaKind::User)?;
    let host_ca = deployment::load_ca(data_dir, CaKind::Host)?;
    let cert = user_ca.issue_client(claims)?;
    let token = user_ca.sign_token(claims)?;
    let expires = claims
        .not_after
        .format(&time::format_description::well_known::Rfc3339)?;
    let database = claims
        .roles
        .iter()
        .filter_map(|r| config.role(r))
        .flat_map(|r| r.databases.first())
        .next()
        .cloned();
    let profile = profile_toml(config, claims, &expires, database.as_deref());
    if !force && out.join("identity.key").metadata().is_ok_and(|m| m.len() > 0) {
        return Err(warden_identity::IdentityError::CredentialExists {
            path: out.to_path_buf(),
        }
        .into());
    }
    let actor = crate::control::local_admin();
    // Recorded (so that it can be revoked by id and listed) and audited before anything is written:
    // a credential whose issue cannot be recorded never reaches a file.
    let audit = deployment::open_audit(config)?;
    let state = deployment::open_state(config)?;
    state.record_credential(&crate::control::credential_record(claims, &actor, None))?;
    // Recorded but not audited, or audited but its files not written: never handed out, and revoked
    // so that the store says so too. The error reported is the one that stopped the issue.
    let withdraw =
        |why: String| match state.revoke_credential(&claims.credential_id, &actor, &why, OffsetDateTime::now_utc()) {
            Ok(r) => {
                if let Err(e) = audit.append_blocking(crate::control::revoked_event(&r.credential)) {
                    eprintln!(
                        "warning: cannot record the withdrawal of credential {}: {e}",
                        claims.credential_id
                    );
                }
            }
            Err(e) => eprintln!("warning: cannot mark credential {} revoked: {e}", claims.credential_id),
        };
    if let Err(e) = audit.append_blocking(crate::control::issued_event(claims, &actor, "by `warden issue`")) {
        withdraw(format!("its issue could not be recorded in the audit log: {e}"));
        return Err(e.into());
    }
    if let Err(e) = warden_identity::write_credential_dir(out, &cert, host_ca.cert_pem(), &token, &profile, force) {
        withdraw(format!("its files could not be written to {}: {e}", out.display()));
        return Err(e.into());
    }
    Ok(Issued {
        identity: claims.identity(),
        roles: claims.roles.join(", "),
        expires,
        database,
    })
}

fn profile_toml(config: &Config, claims: &Claims, expires: &str, database: Option<&str>) -> String {
    let mut s = String::from("# Written by `warden issue`. Where this credential connects, and what it is.\n");
    s += &format!("identity = {:?}\n", claims.identity().to_string());
    if let Some(r) = &claims.requester {
        s += &format!("requester = {:?}\n", r.to_string());
    }
    if let Some(t) = &claims.task {
        s += &format!("task = {t:?}\n");
    }
    s += &format!("roles = {:?}\n", claims.roles);
    s += &format!("credential_id = {:?}\n", claims.credential_id);
    s += &format!("expires = {expires:?}\n");
    s += &format!("postgres = {:?}\n", config.server.postgres_listen);
    if let Some(api) = &config.server.api_listen {
        s += &format!("api = {:?}\n", format!("https://{api}"));
    }
    if let Some(db) = database {
        s += &format!("database = {db:?}\n");
    }
    s
}

/// A libpq connection string for a credential directory.
pub fn psql_conninfo(config: &Config, user: &str, database: &str, dir: &Path) -> String {
    let (host, port) = config
        .server
        .postgres_listen
        .rsplit_once(':')
        .unwrap_or((config.server.postgres_listen.as_str(), "6432"));
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    format!(
        "host={host} port={port} dbname={database} user={user} sslmode=verify-full sslrootcert={d}/ca.crt sslcert={d}/identity.crt sslkey={d}/identity.key",
        d = dir.display()
    )
}

pub fn human_duration(d: Duration) -> String {
    let s = d.whole_seconds();
    match s {
        s if s % 86_400 == 0 && s > 0 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 && s > 0 => format!("{}h", s / 3_600),
        s if s % 60 == 0 && s > 0 => format!("{}m", s / 60),
        s if s > 60 => format!("{}m{}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}
