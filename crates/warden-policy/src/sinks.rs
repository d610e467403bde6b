//! `[[audit.sink]]`: where the audit log is shipped (SIEM export), validated at load.

use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use crate::config::{clean, Locator};
use crate::error::ConfigError;
use crate::raw::RawSink;

/// One configured sink. Its name keys its cursor file, so renaming a sink ships the log again.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkConfig {
    pub name: String,
    pub kind: SinkKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SinkKind {
    /// JSON lines on Warden's standard output (its own logs go to standard error).
    Stdout,
    /// JSON lines appended to a file.
    File {
        path: PathBuf,
    },
    Syslog(SyslogSink),
    Webhook(WebhookSink),
}

#[derive(Debug, Clone, PartialEq)]
pub struct SyslogSink {
    pub transport: SyslogTransport,
    /// The RFC 5424 facility number (`authpriv` = 10 by default).
    pub facility: u8,
    pub app_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyslogTransport {
    /// `host:port`, one datagram per record.
    Udp(String),
    /// `host:port`, octet-counting framing (RFC 6587).
    Tcp(String),
    /// A local datagram socket such as `/dev/log`.
    Unix(PathBuf),
}

#[derive(Debug, Clone, PartialEq)]
pub struct WebhookSink {
    pub url: url::Url,
    /// Roots to trust for an https url instead of the system's.
    pub ca_file: Option<PathBuf>,
    pub format: WebhookFormat,
    /// Most records per request.
    pub batch_size: usize,
    /// Longest a record waits for its batch to fill before it is sent anyway.
    pub batch_interval: Duration,
    pub headers: Vec<(String, Secret)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookFormat {
    /// `application/x-ndjson`: each record's stored line and `\n`.
    Ndjson,
    /// `application/json`: `[line,line,...]`.
    Json,
}

/// A header value (often a token): kept out of `Debug` output and so out of logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

pub const DEFAULT_BATCH_SIZE: usize = 500;
pub const DEFAULT_BATCH_INTERVAL: Duration = Duration::from_millis(1000);

const FACILITIES: &[(&str, u8)] = &[
    ("kern", 0),
    ("user", 1),
    ("mail", 2),
    ("daemon", 3),
    ("auth", 4),
    ("syslog", 5),
    ("lpr", 6),
    ("news", 7),
    ("uucp", 8),
    ("cron", 9),
    ("authpriv", 10),
    ("ftp", 11),
    ("local0", 16),
    ("local1", 17),
    ("local2", 18),
    ("local3", 19),
    ("local4", 20),
    ("local5", 21),
    ("local6", 22),
    ("local7", 23),
];

pub(crate) fn build_sinks(cx: &Locator, audit_path: &Path, raw: &[RawSink]) -> Result<Vec<SinkConfig>, ConfigError> {
    let mut sinks: Vec<SinkConfig> = Vec::new();
    for r in raw {
        let sink = build_sink(cx, audit_path, r)?;
        if sinks.iter().any(|s| s.name == sink.name) {
            return Err(cx.invalid(
                &r.name,
                "audit.sink.name",
                format!("sink \"{}\" is defined twice", sink.name),
            ));
        }
        sinks.push(sink);
    }
    Ok(sinks)
}

fn build_sink(cx: &Locator, audit_path: &Path, r: &RawSink) -> Result<SinkConfig, ConfigError> {
    let name = r.name.get_ref();
    let valid_name = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if !valid_name {
        return Err(cx.invalid(
            &r.name,
            "audit.sink.name",
            format!("\"{name}\" is not a sink name (a-z, 0-9, _ and -; at most 63)"),
        ));
    }
    let kind = r.kind.get_ref().as_str();
    let allowed: &[&str] = match kind {
        "stdout" => &[],
        "file" => &["path"],
        "syslog" => &["address", "facility", "app_name"],
        "webhook" => &["url", "ca_file", "format", "batch_size", "batch_interval_ms", "headers"],
        other => {
            return Err(cx.invalid(
                &r.kind,
                "audit.sink.type",
                format!("\"{other}\" is not one of \"stdout\", \"file\", \"syslog\", \"webhook\""),
            ))
        }
    };
    for (key, span) in present_keys(r) {
        if !allowed.contains(&key) {
            return Err(cx.invalid_at(
                span,
                &format!("audit.sink.{key}"),
                format!("a {kind} sink has no `{key}` (sink \"{name}\")"),
            ));
        }
    }
    let base = cx.path.parent().unwrap_or(Path::new("."));
    let kind = match kind {
        "stdout" => SinkKind::Stdout,
        "file" => {
            let p = required(cx, r, &r.path, "path", "path = \"audit-export.jsonl\"")?;
            let path = clean(&base.join(p.get_ref()));
            if path == audit_path {
                return Err(cx.invalid(p, "audit.sink.path", "a file sink cannot write to the audit log itself"));
            }
            if is_audit_file(&path, audit_path) {
                return Err(cx.invalid(
                    p,
                    "audit.sink.path",
                    "a file sink cannot write to one of the audit log's own files (rotated files, checkpoints, the checkpoint key, the index, the locks); choose another name or directory",
                ));
            }
            SinkKind::File { path }
        }
        "syslog" => SinkKind::Syslog(build_syslog(cx, r)?),
        _ => SinkKind::Webhook(build_webhook(cx, base, r)?),
    };
    Ok(SinkConfig {
        name: name.clone(),
        kind,
    })
}

/// Whether `path` is one of the files Warden keeps beside the log `audit`: `STEM.*` (rotated files,
/// checkpoints, index, lock files) and the checkpoint key pair, in the log's directory.
fn is_audit_file(path: &Path, audit: &Path) -> bool {
    if path.parent() != audit.parent() {
        return false;
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let stem = audit.file_stem().and_then(|n| n.to_str()).unwrap_or_default();
    name.starts_with(&format!("{stem}.")) || name == "checkpoint.key" || name == "checkpoint.pub"
}

fn build_syslog(cx: &Locator, r: &RawSink) -> Result<SyslogSink, ConfigError> {
    let a = required(cx, r, &r.address, "address", "address = \"udp://127.0.0.1:514\"")?;
    let text = a.get_ref();
    let host_port = |rest: &str| -> Result<String, ConfigError> {
        match rest.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => Ok(rest.to_string()),
            _ => Err(cx.invalid(a, "audit.sink.address", format!("\"{text}\" has no host:port"))),
        }
    };
    let transport = if let Some(rest) = text.strip_prefix("udp://") {
        SyslogTransport::Udp(host_port(rest)?)
    } else if let Some(rest) = text.strip_prefix("tcp://") {
        SyslogTransport::Tcp(host_port(rest)?)
    } else if let Some(rest) = text.strip_prefix("unix://").filter(|p| p.starts_with('/')) {
        SyslogTransport::Unix(PathBuf::from(rest))
    } else {
        return Err(cx.invalid(
            a,
            "audit.sink.address",
            format!("\"{text}\" is not udp://HOST:PORT, tcp://HOST:PORT or unix:///PATH"),
        ));
    };
    let facility = match &r.facility {
        None => 10,
        Some(f) => match FACILITIES.iter().find(|(n, _)| n == f.get_ref()) {
            Some((_, code)) => *code,
            None => {
                return Err(cx.invalid(
                    f,
                    "audit.sink.facility",
                    format!(
                        "\"{}\" is not a syslog facility (auth, authpriv, daemon, local0 .. local7, ...)",
                        f.get_ref()
                    ),
                ))
            }
        },
    };
    let app_name = match &r.app_name {
        None => "warden".to_string(),
        // RFC 5424 APP-NAME: 1 to 48 printable US-ASCII characters, no space.
        Some(n) if (1..=48).contains(&n.get_ref().len()) && n.get_ref().bytes().all(|b| (33..=126).contains(&b)) => {
            n.get_ref().clone()
        }
        Some(n) => {
            return Err(cx.invalid(
                n,
                "audit.sink.app_name",
                "must be 1 to 48 printable ASCII characters without spaces (RFC 5424)",
            ))
        }
    };
    Ok(SyslogSink {
        transport,
        facility,
        app_name,
    })
}

fn build_webhook(cx: &Locator, base: &Path, r: &RawSink) -> Result<WebhookSink, ConfigError> {
    let u = required(cx, r, &r.url, "url", "url = \"https://siem.example.com/ingest\"")?;
    let url = url::Url::parse(u.get_ref()).map_err(|e| cx.invalid(u, "audit.sink.url", format!("not a URL: {e}")))?;
    if !["http", "https"].contains(&url.scheme()) {
        return Err(cx.invalid(u, "audit.sink.url", "must be an http:// or https:// URL"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(cx.invalid(
            u,
            "audit.sink.url",
            "put credentials in headers = { Authorization = \"...\" }, not in the URL",
        ));
    }
    let ca_file = match &r.ca_file {
        Some(c) if url.scheme() != "https" => {
            return Err(cx.invalid(c, "audit.sink.ca_file", "only an https:// url uses a ca_file"))
        }
        Some(c) => Some(clean(&base.join(c.get_ref()))),
        None => None,
    };
    let format = match r.format.as_ref().map(|f| f.get_ref().as_str()) {
        None | Some("ndjson") => WebhookFormat::Ndjson,
        Some("json") => WebhookFormat::Json,
        Some(other) => {
            let span = r.format.as_ref().expect("matched Some above");
            return Err(cx.invalid(
                span,
                "audit.sink.format",
                format!("\"{other}\" is not one of \"ndjson\", \"json\""),
            ));
        }
    };
    let batch_size = match &r.batch_size {
        None => DEFAULT_BATCH_SIZE,
        Some(v) if (1..=100_000).contains(v.get_ref()) => *v.get_ref() as usize,
        Some(v) => return Err(cx.invalid(v, "audit.sink.batch_size", "must be between 1 and 100000")),
    };
    let batch_interval = match &r.batch_interval_ms {
        None => DEFAULT_BATCH_INTERVAL,
        Some(v) if (0..=3_600_000).contains(v.get_ref()) => Duration::from_millis(*v.get_ref() as u64),
        Some(v) => {
            return Err(cx.invalid(
                v,
                "audit.sink.batch_interval_ms",
                "must be between 0 (send at once) and 3600000",
            ))
        }
    };
    let mut headers = Vec::new();
    for (key, value) in r.headers.iter().flatten() {
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if key.is_empty() || !key.bytes().all(token) {
            return Err(cx.invalid(
                value,
                "audit.sink.headers",
                format!("\"{key}\" is not an HTTP header name"),
            ));
        }
        if ["content-type", "content-length", "host"].contains(&key.to_ascii_lowercase().as_str()) {
            return Err(cx.invalid(value, "audit.sink.headers", format!("Warden sets {key} itself")));
        }
        // The value is not quoted back: it is usually a token.
        if !value.get_ref().bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b)) {
            return Err(cx.invalid(
                value,
                "audit.sink.headers",
                format!("the value of {key} must be printable ASCII"),
            ));
        }
        headers.push((key.clone(), Secret(value.get_ref().clone())));
    }
    Ok(WebhookSink {
        url,
        ca_file,
        format,
        batch_size,
        batch_interval,
        headers,
    })
}

/// The optional keys a sink table sets, with where.
fn present_keys(r: &RawSink) -> Vec<(&'static str, std::ops::Range<usize>)> {
    fn at<T>(key: &'static str, v: &Option<Spanned<T>>) -> Option<(&'static str, std::ops::Range<usize>)> {
        v.as_ref().map(|v| (key, v.span()))
    }
    let headers = r.headers.as_ref().map(|h| {
        let span = h.values().next().map(|v| v.span()).unwrap_or_else(|| r.name.span());
        ("headers", span)
    });
    [
        at("path", &r.path),
        at("address", &r.address),
        at("facility", &r.facility),
        at("app_name", &r.app_name),
        at("url", &r.url),
        at("ca_file", &r.ca_file),
        at("format", &r.format),
        at("batch_size", &r.batch_size),
        at("batch_interval_ms", &r.batch_interval_ms),
        headers,
    ]
    .into_iter()
    .flatten()
    .collect()
}

fn required<'a>(
    cx: &Locator,
    r: &RawSink,
    v: &'a Option<Spanned<String>>,
    key: &str,
    example: &str,
) -> Result<&'a Spanned<String>, ConfigError> {
    v.as_ref().ok_or_else(|| {
        cx.invalid(
            &r.name,
            &format!("audit.sink.{key}"),
            format!(
                "a {} sink needs {key}, e.g. {example} (sink \"{}\")",
                r.kind.get_ref(),
                r.name.get_ref()
            ),
        )
    })
}
