use super::*;
use crate::TableRef;

const SAMPLE: &str = r#"
[server]
postgres_listen = "127.0.0.1:6432"
api_listen      = "127.0.0.1:3080"
data_dir        = "data"

[audit]
fsync = "batch"

[[database]]
name = "shop"
url  = "postgres://warden_admin@127.0.0.1:5432/shop?sslmode=verify-ca&sslrootcert=server-ca.pem"
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
approval  = "session"
approvers = ["dba"]

[[role]]
name = "dba"
databases = ["shop"]
read = ["public.*"]

[[human]]
name = "alice"
roles = ["analyst", "writer", "dba"]
traits = { region = "eu" }

[[human]]
name = "bob"
roles = ["analyst"]

[[agent]]
name = "report-bot"
roles = ["analyst", "writer"]
max_ttl = "15m"
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("/etc/warden/warden.toml"), text)
}

fn name(s: &str) -> IdentityName {
    s.parse().unwrap()
}

#[test]
fn sample_parses_and_resolves_paths() {
    let c = parse(SAMPLE).unwrap();
    assert_eq!(c.server.data_dir, Path::new("/etc/warden/data"));
    assert_eq!(c.audit.path, Path::new("/etc/warden/data/audit/audit.jsonl"));
    let db = c.database("shop").unwrap();
    assert_eq!(db.url.port, 5432);
    assert_eq!(db.url.admin_user, "warden_admin");
    assert_eq!(
        db.url.sslrootcert.as_deref(),
        Some(Path::new("/etc/warden/server-ca.pem"))
    );
    assert_eq!(c.role("writer").unwrap().approval, Approval::Session);
    assert_eq!(c.identities.len(), 3);
}

#[test]
fn unknown_key_names_file_and_line() {
    let text = SAMPLE.replace("fsync = \"batch\"", "fsync = \"batch\"\nfsink = 1");
    let e = parse(&text).unwrap_err().to_string();
    assert!(e.contains("/etc/warden/warden.toml"), "{e}");
    assert!(e.contains("fsink"), "{e}");
    assert!(e.contains("line 9"), "{e}");
}

#[test]
fn unknown_role_is_located() {
    let text = SAMPLE.replace("roles = [\"analyst\"]\n", "roles = [\"analyst\", \"root\"]\n");
    let e = parse(&text).unwrap_err().to_string();
    assert!(
        e.starts_with("/etc/warden/warden.toml:43: `human.roles`: unknown role \"root\""),
        "{e}"
    );
}

#[test]
fn bad_duration_and_bad_enum_are_located() {
    let e = parse(&SAMPLE.replace("max_ttl = \"15m\"", "max_ttl = \"15 minutes\""))
        .unwrap_err()
        .to_string();
    assert!(e.contains("`agent.max_ttl`"), "{e}");
    let e = parse(&SAMPLE.replace("fsync = \"batch\"", "fsync = \"sometimes\""))
        .unwrap_err()
        .to_string();
    assert!(e.contains(":8: `audit.fsync`"), "{e}");
    let e = parse(&SAMPLE.replace("upstream_auth = \"cert\"", "upstream_auth = \"trust\""))
        .unwrap_err()
        .to_string();
    assert!(e.contains("`database.upstream_auth`"), "{e}");
}

#[test]
fn bad_grants_and_filters_are_refused() {
    let e = parse(&SAMPLE.replace("\"public.customers(id, name, region)\"", "\"customers\"")).unwrap_err();
    assert!(e.to_string().contains("name the schema"), "{e}");
    let e = parse(&SAMPLE.replace("region = {{traits.region}}", "region = {{traits.region}")).unwrap_err();
    assert!(e.to_string().contains("row_filter"), "{e}");
    let e = parse(&SAMPLE.replace("region = {{traits.region}}", "region = 'eu'; DROP TABLE x")).unwrap_err();
    assert!(e.to_string().contains("';'"), "{e}");
    let e = parse(&SAMPLE.replace("sslmode=verify-ca", "sslmode=disable")).unwrap_err();
    assert!(e.to_string().contains("always uses TLS"), "{e}");
}

#[test]
fn effective_roles_intersect_credential_identity_and_requester() {
    let c = parse(SAMPLE).unwrap();
    let bot = name("agent:report-bot");
    let all = vec!["analyst".to_string(), "writer".to_string(), "dba".to_string()];
    // dba: not configured for the agent; writer: bob lacks it.
    let roles = c.effective_roles(&bot, Some(&name("human:bob")), &all, "shop").unwrap();
    assert_eq!(roles.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["analyst"]);
    let roles = c
        .effective_roles(&bot, Some(&name("human:alice")), &all, "shop")
        .unwrap();
    assert_eq!(
        roles.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        ["analyst", "writer"]
    );
    assert!(matches!(
        c.effective_roles(&bot, None, &all, "shop"),
        Err(Refusal::MissingRequester { .. })
    ));
    assert!(matches!(
        c.effective_roles(&bot, Some(&name("human:alice")), &all, "nope"),
        Err(Refusal::UnknownDatabase { .. })
    ));
    assert!(matches!(
        c.effective_roles(&name("human:bob"), None, &["writer".to_string()], "shop"),
        Err(Refusal::NoRoleForDatabase { .. })
    ));
    assert!(matches!(
        c.effective_roles(&name("human:mallory"), None, &all, "shop"),
        Err(Refusal::UnknownIdentity { .. })
    ));
}

#[test]
fn max_ttl_is_the_smallest_bound() {
    let c = parse(SAMPLE).unwrap();
    let bot = name("agent:report-bot");
    let ttl = c.max_ttl(&bot, Some(&name("human:alice")), &["analyst".to_string()]);
    assert_eq!(ttl, Duration::minutes(15));
    let ttl = c.max_ttl(&name("human:alice"), None, &["analyst".to_string()]);
    assert_eq!(ttl, Duration::hours(1));
    let ttl = c.max_ttl(&name("human:alice"), None, &["dba".to_string()]);
    assert_eq!(ttl, DEFAULT_MAX_TTL);
}

#[test]
fn grants_union_columns_and_write_privileges() {
    let c = parse(SAMPLE).unwrap();
    let analyst = c.role("analyst").unwrap();
    let writer = c.role("writer").unwrap();
    let set = c.grants(&[analyst, writer]);
    let orders = TableRef {
        schema: "public".into(),
        name: Some("orders".into()),
    };
    let p = &set.tables[&orders];
    assert!(matches!(&p.select, crate::ColumnScope::Columns(cols) if cols.len() == 5));
    assert_eq!(p.insert, crate::ColumnScope::All);
    assert!(p.delete);
    let all_public = TableRef {
        schema: "public".into(),
        name: None,
    };
    assert_eq!(set.tables[&all_public].select, crate::ColumnScope::All);
    // writer reads public.* unfiltered: together the roles see every row.
    assert!(set.row_filters.is_empty());
    assert_eq!(set.schemas().into_iter().collect::<Vec<_>>(), ["public"]);
    let alone = c.grants(&[analyst]);
    assert_eq!(
        alone.row_filters["public.orders"],
        vec!["region = {{traits.region}}".to_string()]
    );
    let traits = std::collections::BTreeMap::from([("region".to_string(), "eu".to_string())]);
    assert_eq!(
        alone.resolved_row_filters(&traits).unwrap()["public.orders"],
        "(region = 'eu')"
    );
}

#[test]
fn column_write_grant_does_not_imply_delete() {
    let g = TableGrant::parse("public.orders(status)").unwrap();
    assert_eq!(g.columns.as_deref(), Some(&["status".to_string()][..]));
    let text = SAMPLE.replace("write = [\"public.orders\"]", "write = [\"public.orders(status)\"]");
    let c = parse(&text).unwrap();
    let set = c.grants(&[c.role("writer").unwrap()]);
    let orders = TableRef {
        schema: "public".into(),
        name: Some("orders".into()),
    };
    assert!(!set.tables[&orders].delete);
}

#[test]
fn review_timeout_defaults_and_parses() {
    assert_eq!(parse(SAMPLE).unwrap().server.review_timeout, DEFAULT_REVIEW_TIMEOUT);
    let text = SAMPLE.replace(
        "data_dir        = \"data\"",
        "data_dir        = \"data\"\nreview_timeout = \"30s\"",
    );
    assert_eq!(parse(&text).unwrap().server.review_timeout, Duration::seconds(30));
    let bad = SAMPLE.replace(
        "data_dir        = \"data\"",
        "data_dir        = \"data\"\nreview_timeout = \"soon\"",
    );
    let err = parse(&bad).unwrap_err().to_string();
    assert!(err.contains("server.review_timeout"), "{err}");
}

#[test]
fn a_session_approval_role_needs_approvers() {
    let text = SAMPLE.replace("approvers = [\"dba\"]\n", "");
    let err = parse(&text).unwrap_err().to_string();
    assert!(
        err.contains("role.approvers") && err.contains("warden.toml:28"),
        "{err}"
    );
}
