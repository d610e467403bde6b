//! `warden requests`: ask for a role that needs a human's approval, decide, and assume the result.
//! Every subcommand talks to the running Warden's API as the identity in `--identity DIR`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use serde_json::{json, Value};

use super::api_client::{write_private, ApiClient};

#[derive(clap::Subcommand, Debug)]
pub enum RequestsCommand {
    /// Ask for roles with approval = "session" that you hold in warden.toml but not in your credential.
    Create {
        #[arg(long, env = "WARDEN_IDENTITY")]
        identity: PathBuf,
        /// The roles to ask for (comma separated).
        #[arg(long, value_delimiter = ',', required = true)]
        roles: Vec<String>,
        /// Why: approvers see it, and the audit log keeps it.
        #[arg(long)]
        reason: String,
        /// How long the elevated credential may last once approved (default 1h, within max_ttl).
        #[arg(long)]
        ttl: Option<String>,
        /// How long the request waits for a decision before it expires (default 30m).
        #[arg(long)]
        wait: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Your requests, and those you may approve.
    List {
        #[arg(long, env = "WARDEN_IDENTITY")]
        identity: PathBuf,
        /// One JSON object per line: id, kind, identity, agent, requester, task, roles, state, age_seconds...
        #[arg(long)]
        json: bool,
    },
    /// Approve a request (humans holding one of the role's approver roles; never your own).
    Approve {
        id: String,
        #[arg(long, env = "WARDEN_IDENTITY")]
        identity: PathBuf,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Deny a request.
    Deny {
        id: String,
        #[arg(long, env = "WARDEN_IDENTITY")]
        identity: PathBuf,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Once approved: write the elevated credential (same requester and task, plus the roles) to --out.
    Assume {
        id: String,
        #[arg(long, env = "WARDEN_IDENTITY")]
        identity: PathBuf,
        /// Directory for the new credential (created 0700; must not hold one already).
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn run(command: RequestsCommand) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(dispatch(command))
}

async fn dispatch(command: RequestsCommand) -> Result<ExitCode> {
    match command {
        RequestsCommand::Create {
            identity,
            roles,
            reason,
            ttl,
            wait,
            json,
        } => {
            let client = ApiClient::new(&identity)?;
            let mut body = json!({ "roles": roles, "reason": reason });
            if let Some(t) = ttl {
                body["ttl"] = t.into();
            }
            if let Some(w) = wait {
                body["wait"] = w.into();
            }
            let q: Value = client.post("/v1/requests", &body).await?;
            if json {
                println!("{q}");
            } else {
                println!(
                    "Request {} for roles {} is pending until {}.",
                    q["id"].as_str().unwrap_or(""),
                    join(&q["roles"]),
                    q["expires_at"].as_str().unwrap_or("")
                );
                println!(
                    "An approver decides with `warden requests approve {}`; then run:",
                    q["id"].as_str().unwrap_or("")
                );
                println!(
                    "  warden requests assume {} --identity {} --out DIR",
                    q["id"].as_str().unwrap_or(""),
                    identity.display()
                );
            }
        }
        RequestsCommand::List { identity, json } => {
            let client = ApiClient::new(&identity)?;
            let all: Vec<Value> = client.get("/v1/requests").await?;
            if json {
                for q in &all {
                    println!("{q}");
                }
            } else if all.is_empty() {
                println!("No requests.");
            } else {
                println!(
                    "{:<19}  {:<8}  {:<9}  {:<24}  {:<16}  {:<12}  {:<14}  {:>6}  REASON",
                    "ID", "KIND", "STATE", "IDENTITY", "REQUESTER", "TASK", "ROLES", "AGE"
                );
                for q in &all {
                    println!(
                        "{:<19}  {:<8}  {:<9}  {:<24}  {:<16}  {:<12}  {:<14}  {:>5}s  {}{}",
                        q["id"].as_str().unwrap_or(""),
                        q["kind"].as_str().unwrap_or(""),
                        q["state"].as_str().unwrap_or(""),
                        q["identity"].as_str().unwrap_or(""),
                        q["requester"].as_str().unwrap_or("-"),
                        q["task"].as_str().unwrap_or("-"),
                        join(&q["roles"]),
                        q["age_seconds"].as_i64().unwrap_or(0),
                        q["reason"].as_str().unwrap_or(""),
                        if q["may_approve"] == true && q["state"] == "pending" {
                            "  (you may decide)"
                        } else {
                            ""
                        }
                    );
                    // A held statement: what would run, so that it can be decided from this list.
                    if let Some(sql) = q["statement"].as_str() {
                        println!("    statement: {}", escape_controls(sql));
                        if let Some(p) = q["parameters"].as_array().filter(|p| !p.is_empty()) {
                            println!(
                                "    parameters: {}",
                                escape_controls(&Value::Array(p.clone()).to_string())
                            );
                        }
                    }
                }
            }
        }
        RequestsCommand::Approve { id, identity, reason } => decide(&identity, &id, "approve", reason).await?,
        RequestsCommand::Deny { id, identity, reason } => decide(&identity, &id, "deny", reason).await?,
        RequestsCommand::Assume { id, identity, out } => {
            let client = ApiClient::new(&identity)?;
            let c: Value = client.post(&format!("/v1/requests/{id}/assume"), &json!({})).await?;
            write_credential(&out, &c, &client.api)?;
            println!(
                "Assumed {id}: credential {} for {} with roles {}, valid until {}; written to {}.",
                c["credential_id"].as_str().unwrap_or(""),
                c["identity"].as_str().unwrap_or(""),
                join(&c["roles"]),
                c["not_after"].as_str().unwrap_or(""),
                out.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn decide(identity: &Path, id: &str, verb: &str, reason: Option<String>) -> Result<()> {
    let client = ApiClient::new(identity)?;
    let body = match reason {
        Some(r) => json!({ "reason": r }),
        None => json!({}),
    };
    let q: Value = client.post(&format!("/v1/requests/{id}/{verb}"), &body).await?;
    println!(
        "{id} is {} (by {}).",
        q["state"].as_str().unwrap_or(""),
        q["decided_by"].as_str().unwrap_or("")
    );
    Ok(())
}

fn join(v: &Value) -> String {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(","))
        .unwrap_or_default()
}

/// The same layout `warden issue` writes: identity.crt, identity.key (0600), ca.crt, token (0600), profile.toml.
fn write_credential(out: &Path, c: &Value, api: &str) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(out)?;
    let field = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    let mut profile = String::from("# Written by `warden requests assume`.\n");
    profile += &format!("identity = {:?}\n", field("identity"));
    if let Some(r) = c["requester"].as_str() {
        profile += &format!("requester = {r:?}\n");
    }
    if let Some(t) = c["task"].as_str() {
        profile += &format!("task = {t:?}\n");
    }
    profile += &format!(
        "roles = [{}]\n",
        join(&c["roles"])
            .split(',')
            .map(|r| format!("{r:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    profile += &format!("credential_id = {:?}\n", field("credential_id"));
    profile += &format!("expires = {:?}\n", field("not_after"));
    profile += &format!("postgres = {:?}\n", field("postgres"));
    profile += &format!("api = {api:?}\n");
    if let Some(db) = c["database"].as_str() {
        profile += &format!("database = {db:?}\n");
    }
    write_private(&out.join("identity.crt"), &field("certificate"), 0o644)?;
    write_private(&out.join("ca.crt"), &field("ca_certificate"), 0o644)?;
    write_private(&out.join("profile.toml"), &profile, 0o644)?;
    write_private(&out.join("token"), &format!("{}\n", field("token")), 0o600)?;
    write_private(&out.join("identity.key"), &field("private_key"), 0o600)?;
    Ok(())
}

/// A statement as one line of a listing: line breaks and other control characters shown escaped, so
/// that a statement cannot fake lines of the list.
fn escape_controls(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '\n' => "\\n".to_string(),
            // Controls, and the invisible characters that reorder or hide text (bidi overrides,
            // zero-width, line and paragraph separators): approvers decide from this line.
            c if c.is_control()
                || matches!(c, '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}') =>
            {
                format!("\\u{{{:x}}}", c as u32)
            }
            c => c.to_string(),
        })
        .collect()
}
