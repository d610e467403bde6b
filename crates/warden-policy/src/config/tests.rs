use super::*;
use crate::TableRef;
use crate::{SinkKind, SyslogTransport, WebhookFormat};

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
fn a_row_filter_trait_that_no_holder_has_is_located() {
    let text = SAMPLE.replace("region = {{traits.region}}", "region = {{traits.regoin}}");
    let e = parse(&text).unwrap_err().to_string();
    let line = 1 + SAMPLE.lines().position(|l| l.starts_with("row_filter")).unwrap();
    assert!(
        e.starts_with(&format!("/etc/warden/warden.toml:{line}: `role.row_filter.\"public.orders\"`: {{{{traits.regoin}}}}: no human or workload holding role \"analyst\"")),
        "{e}"
    );
    // bob holds analyst without a region: he alone is refused at connect; the file is fine.
    parse(SAMPLE).unwrap();
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
fn admins_that_are_not_configured_humans_are_named() {
    let with = |admins: &str| {
        SAMPLE.replace(
            "data_dir        = \"data\"",
            &format!("data_dir = \"data\"\nadmins = {admins}"),
        )
    };
    assert!(parse(&with("[\"human:alice\"]"))
        .unwrap()
        .unconfigured_admins()
        .is_empty());
    // Accepted (a reload that removed the human must not be refused), and named.
    let c = parse(&with("[\"human:alice\", \"human:nobody\"]")).unwrap();
    assert_eq!(c.unconfigured_admins(), vec![&name("human:nobody")]);
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
    // Parsed with PostgreSQL's grammar: a filter it cannot read is refused here, naming the line and
    // key, not when a session's role is provisioned.
    let line = 1 + SAMPLE.lines().position(|l| l.starts_with("row_filter")).unwrap();
    for bad in [
        "region = = {{traits.region}}",
        "this is not sql",
        "region = 'eu' --",
        "(region) = ",
        // The placeholder is replaced by a quoted literal already.
        "region = '{{traits.region}}'",
    ] {
        let e = parse(&SAMPLE.replace("region = {{traits.region}}", bad))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("warden.toml:{line}: `role.row_filter")),
            "{bad}: {e}"
        );
        assert!(e.contains("not a SQL expression"), "{bad}: {e}");
    }
    for good in [
        "region = {{traits.region}} AND status <> 'void'",
        "region IN ({{traits.region}}, 'global') OR customer_id = 1",
        "lower(region) = lower({{traits.region}}) /* case */",
    ] {
        parse(&SAMPLE.replace("region = {{traits.region}}", good)).unwrap_or_else(|e| panic!("{good}: {e}"));
    }
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
fn a_row_filter_is_lifted_only_by_roles_that_grant_all_it_covers_on_every_row() {
    let c = parse(SAMPLE).unwrap();
    let analyst = c.role("analyst").unwrap();
    let grant = |t: &str| crate::TableGrant::parse(t).unwrap();
    let role = |name: &str, read: &[&str], write: &[&str]| {
        let mut r = analyst.clone();
        r.name = name.into();
        r.row_filter.clear();
        r.read = read.iter().map(|t| grant(t)).collect();
        r.write = write.iter().map(|t| grant(t)).collect();
        r
    };
    // analyst reads five columns of public.orders, filtered by region.
    let cases = [
        // Fewer columns on every row: analyst's total of other regions must stay hidden.
        (
            role("ordwriter", &["public.orders(id, status)"], &["public.orders(status)"]),
            true,
        ),
        (role("counter", &["public.orders(id)"], &[]), true),
        // A write on every row of a column analyst reads does not show it.
        (role("blind", &[], &["public.orders"]), true),
        // All analyst reads, on every row: the filter has nothing left to hide.
        (role("auditor", &["public.orders"], &[]), false),
        (role("wide", &["public.*"], &[]), false),
        (
            role("same", &["public.orders(id, customer_id, status, total, region)"], &[]),
            false,
        ),
        // Another table: nothing to do with orders.
        (role("other", &["public.customers"], &[]), true),
    ];
    // A filter on a table its role does not grant itself (reached through a view or partition)
    // stays: nothing without a filter grants the table.
    let mut viewer = role("viewer", &["public.customers"], &[]);
    viewer.row_filter.insert("public.orders".into(), "region = 'eu'".into());
    assert!(c.grants(&[&viewer]).row_filters.contains_key("public.orders"));
    assert!(c
        .grants(&[&viewer, &role("other", &["public.customers"], &[])])
        .row_filters
        .contains_key("public.orders"));
    for (other, filtered) in &cases {
        let set = c.grants(&[analyst, other]);
        assert_eq!(
            set.row_filters.contains_key("public.orders"),
            *filtered,
            "analyst + {}",
            other.name
        );
    }
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

/// SAMPLE with `audit` lines after `fsync` (line 9 on) and `sinks` at the end.
fn with_audit(audit: &str, sinks: &str) -> Result<Config, ConfigError> {
    parse(&format!(
        "{}\n{sinks}",
        SAMPLE.replace("fsync = \"batch\"", &format!("fsync = \"batch\"\n{audit}"))
    ))
}

#[test]
fn sinks_and_redaction_parse() {
    let c = with_audit(
        r#"redact = ["sk_live_[A-Za-z0-9]+"]"#,
        r#"
[[audit.sink]]
name = "out"
type = "stdout"

[[audit.sink]]
name = "export"
type = "file"
path = "export/audit.jsonl"

[[audit.sink]]
name = "syslog-1"
type = "syslog"
address = "tcp://siem.example.com:6514"
facility = "local3"

[[audit.sink]]
name = "siem"
type = "webhook"
url = "https://siem.example.com/ingest?x=1"
ca_file = "siem-ca.pem"
format = "json"
batch_size = 100
batch_interval_ms = 250
headers = { Authorization = "Bearer s3cret", X-Source = "warden" }
"#,
    )
    .unwrap();
    assert_eq!(c.audit.redact.len(), 1);
    let s = &c.audit.sinks;
    assert_eq!(s.len(), 4);
    assert!(matches!(s[0].kind, SinkKind::Stdout));
    assert!(matches!(&s[1].kind, SinkKind::File { path } if path == Path::new("/etc/warden/export/audit.jsonl")));
    let SinkKind::Syslog(sys) = &s[2].kind else { panic!() };
    assert_eq!(sys.transport, SyslogTransport::Tcp("siem.example.com:6514".into()));
    assert_eq!((sys.facility, sys.app_name.as_str()), (19, "warden"));
    let SinkKind::Webhook(w) = &s[3].kind else { panic!() };
    assert_eq!(w.ca_file.as_deref(), Some(Path::new("/etc/warden/siem-ca.pem")));
    assert_eq!(w.format, WebhookFormat::Json);
    assert_eq!((w.batch_size, w.batch_interval.as_millis()), (100, 250));
    assert_eq!(w.headers[0].0, "Authorization");
    assert_eq!(w.headers[0].1.expose(), "Bearer s3cret");
    let debug = format!("{:?}", c.audit);
    assert!(!debug.contains("s3cret"), "header values stay out of Debug: {debug}");

    let c = with_audit(
        "",
        "[[audit.sink]]\nname = \"u\"\ntype = \"syslog\"\naddress = \"unix:///dev/log\"",
    )
    .unwrap();
    let SinkKind::Syslog(sys) = &c.audit.sinks[0].kind else {
        panic!()
    };
    assert_eq!(sys.transport, SyslogTransport::Unix("/dev/log".into()));
    assert_eq!(sys.facility, 10, "authpriv by default");
    let c = with_audit(
        "",
        "[[audit.sink]]\nname = \"w\"\ntype = \"webhook\"\nurl = \"http://127.0.0.1:9/x\"",
    )
    .unwrap();
    let SinkKind::Webhook(w) = &c.audit.sinks[0].kind else {
        panic!()
    };
    assert_eq!(
        (w.batch_size, w.batch_interval.as_millis(), w.format),
        (500, 1000, WebhookFormat::Ndjson)
    );
}

#[test]
fn bad_redaction_and_sinks_are_located() {
    let bad = |audit: &str, sinks: &str| with_audit(audit, sinks).unwrap_err().to_string();
    let e = bad(r#"redact = ["ok", "sk_live_[unclosed"]"#, "");
    assert!(
        e.starts_with("/etc/warden/warden.toml:9: `audit.redact`: not a regular expression"),
        "{e}"
    );
    let e = bad(r#"redact = ["x*"]"#, "");
    assert!(
        e.contains(":9: `audit.redact`: the pattern matches the empty string"),
        "{e}"
    );

    let sink = |body: &str| format!("[[audit.sink]]\n{body}");
    // The first sink's `name` is on line 52.
    let at = |line: usize, key: &str| format!("/etc/warden/warden.toml:{line}: `{key}`");
    let e = bad("", &sink("name = \"Bad Name\"\ntype = \"stdout\""));
    assert!(e.starts_with(&at(52, "audit.sink.name")), "{e}");
    let e = bad("", &sink("name = \"a\"\ntype = \"kafka\""));
    assert!(e.starts_with(&at(53, "audit.sink.type")), "{e}");
    let e = bad("", &sink("name = \"a\"\ntype = \"file\"\nurl = \"http://x/\""));
    assert!(
        e.starts_with(&at(54, "audit.sink.url")) && e.contains("a file sink has no `url`"),
        "{e}"
    );
    let e = bad("", &sink("name = \"a\"\ntype = \"file\""));
    assert!(e.starts_with(&at(52, "audit.sink.path")), "{e}");
    let e = bad(
        "",
        &sink("name = \"a\"\ntype = \"file\"\npath = \"data/audit/audit.jsonl\""),
    );
    assert!(e.contains("the audit log itself"), "{e}");
    for own in [
        "data/audit/audit.checkpoints.jsonl",
        "data/audit/audit.00000000000000000042.jsonl",
        "data/audit/checkpoint.key",
        "data/audit/audit.index.db",
    ] {
        let e = bad("", &sink(&format!("name = \"a\"\ntype = \"file\"\npath = \"{own}\"")));
        assert!(e.contains("one of the audit log's own files"), "{own}: {e}");
    }
    // Beside the log under another name, or elsewhere: accepted.
    with_audit(
        "",
        &sink("name = \"a\"\ntype = \"file\"\npath = \"data/audit/export.jsonl\""),
    )
    .unwrap();
    let e = bad("", &sink("name = \"a\"\ntype = \"syslog\"\naddress = \"udp://host\""));
    assert!(e.starts_with(&at(54, "audit.sink.address")), "{e}");
    let e = bad(
        "",
        &sink("name = \"a\"\ntype = \"syslog\"\naddress = \"udp://h:514\"\nfacility = \"loca8\""),
    );
    assert!(e.starts_with(&at(55, "audit.sink.facility")), "{e}");
    let e = bad("", &sink("name = \"a\"\ntype = \"webhook\"\nurl = \"ftp://h/\""));
    assert!(e.starts_with(&at(54, "audit.sink.url")), "{e}");
    let e = bad("", &sink("name = \"a\"\ntype = \"webhook\"\nurl = \"https://u:p@h/\""));
    assert!(e.contains("not in the URL"), "{e}");
    let e = bad(
        "",
        &sink("name = \"a\"\ntype = \"webhook\"\nurl = \"http://h/\"\nca_file = \"ca.pem\""),
    );
    assert!(e.starts_with(&at(55, "audit.sink.ca_file")), "{e}");
    let e = bad(
        "",
        &sink("name = \"a\"\ntype = \"webhook\"\nurl = \"http://h/\"\nbatch_size = 0"),
    );
    assert!(e.starts_with(&at(55, "audit.sink.batch_size")), "{e}");
    let e = bad(
        "",
        &sink("name = \"a\"\ntype = \"webhook\"\nurl = \"http://h/\"\nheaders = { \"Bad Header\" = \"v\" }"),
    );
    assert!(e.starts_with(&at(55, "audit.sink.headers")), "{e}");
    let e = bad(
        "",
        &sink("name = \"a\"\ntype = \"webhook\"\nurl = \"http://h/\"\nheaders = { A = \"caf\u{e9}\" }"),
    );
    assert!(e.contains("printable ASCII") && !e.contains("caf"), "{e}");
    let e = bad(
        "",
        &sink("name = \"a\"\ntype = \"webhook\"\nurl = \"http://h/\"\nretries = 3"),
    );
    assert!(e.contains("retries"), "unknown keys are refused: {e}");
    let two = format!(
        "{}\n{}",
        sink("name = \"a\"\ntype = \"stdout\""),
        sink("name = \"a\"\ntype = \"stdout\"")
    );
    let e = bad("", &two);
    assert!(
        e.starts_with(&at(55, "audit.sink.name")) && e.contains("defined twice"),
        "{e}"
    );
}

#[test]
fn audit_changes_are_noticed_for_reload() {
    let sink = "[[audit.sink]]\nname = \"w\"\ntype = \"webhook\"\nurl = \"http://h/\"\nheaders = { A = \"1\" }";
    let base = with_audit("redact = [\"a+\"]", sink).unwrap();
    assert!(!base.audit_differs(&with_audit("redact = [\"a+\"]", sink).unwrap()));
    assert!(base.audit_differs(&with_audit("redact = [\"b+\"]", sink).unwrap()));
    assert!(base.audit_differs(&with_audit("redact = [\"a+\"]", &sink.replace("\"1\"", "\"2\"")).unwrap()));
    assert!(base.audit_differs(&with_audit("redact = [\"a+\"]", "").unwrap()));
}
