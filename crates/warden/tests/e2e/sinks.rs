//! SIEM export: sinks ship the audit log in order, lose nothing across an outage or a restart, and
//! never see what `[audit] redact` cuts out.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;

const SECRET: &str = "sk_live_4eC39HqLyjWDarjtT1zdp7dc";
const SECRET_PARAM: &str = "sk_live_PARAMxyz987";
const HOOK_TOKEN: &str = "Bearer hook-token-never-logged";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_outage_then_every_record_in_order_and_again_after_a_restart() {
    let h = harness();
    let hook_port = warden::cluster::free_port().unwrap();
    let (config, log, port) = copy_with_sinks(
        h,
        "sinks-webhook",
        &format!(
            r#"
[[audit.sink]]
name = "siem"
type = "webhook"
url = "http://127.0.0.1:{hook_port}/ingest?token=url-token-never-logged"
batch_size = 3
batch_interval_ms = 50
headers = {{ Authorization = "{HOOK_TOKEN}" }}
"#
        ),
    );
    let warden_log = h.root.join("sinks-webhook.log");
    let mut child = spawn_warden_child(&config, &warden_log, port).unwrap();
    let cred = h.agent();

    // The SIEM is down (nothing listens): statements run, records wait in the log.
    for i in 0..4 {
        let out = h.psql_at(port, &cred, &format!("SELECT 'outage-{i}', '{SECRET}'"));
        assert!(out.status.success(), "{}", stderr(&out));
    }
    extended_query(h, port, &cred).await;
    wait_until("the sink reports the outage", &warden_log, || {
        read(&warden_log).contains("audit sink cannot deliver")
    });

    // It comes back answering 503 twice, then accepts; statements keep running meanwhile.
    let hook = Webhook::start(hook_port, 2);
    for i in 0..3 {
        let out = h.psql_at(port, &cred, &format!("SELECT 'recovery-{i}'"));
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let lines = wait_for_delivery(&log, &warden_log, || hook.lines());
    assert_in_order(&lines);
    assert!(lines.len() >= 15, "sessions, queries and results: {}", lines.len());
    assert!(hook.refused() >= 2, "the 503s were seen");
    assert_eq!(hook.problems(), Vec::<String>::new());
    let warden_text = read(&warden_log);
    assert!(warden_text.contains("audit sink delivers again"), "{warden_text}");
    for secret in ["hook-token-never-logged", "url-token-never-logged"] {
        assert!(
            !warden_text.contains(secret),
            "{secret} leaked into Warden's log:\n{warden_text}"
        );
    }
    assert_redacted(&lines, &log);

    // Down again; a CLI command appends to the log meanwhile; the restarted Warden ships only what
    // is new (the cursor), so the SIEM holds the log exactly once.
    stop_warden(&mut child);
    run_ok(
        Command::new(WARDEN)
            .args(["issue", "--config"])
            .arg(&config)
            .args(["--kind", "human", "--name", "bob", "--out"])
            .arg(unique_dir(&h.root, "cred-sinks")),
    );
    let cursor = h
        .deploy
        .join("audit/sinks")
        .join(format!("{}.siem.cursor", log.file_stem().unwrap().to_string_lossy()));
    assert!(cursor.exists(), "{} is written", cursor.display());
    let restarted_log = h.root.join("sinks-webhook-2.log");
    let mut child = spawn_warden_child(&config, &restarted_log, port).unwrap();
    let lines = wait_for_delivery(&log, &restarted_log, || hook.lines());
    assert_in_order(&lines);
    assert!(
        lines.iter().any(|l| l.contains("\"event\":\"credential.issued\"")),
        "the CLI's record was shipped"
    );
    stop_warden(&mut child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_and_syslog_sinks_get_the_log_redacted() {
    let h = harness();
    let syslog = UdpSocket::bind("127.0.0.1:0").unwrap();
    let syslog_addr = syslog.local_addr().unwrap();
    let (config, log, port) = copy_with_sinks(
        h,
        "sinks-lines",
        &format!(
            r#"
[[audit.sink]]
name = "export"
type = "file"
path = "export/sinks-lines.jsonl"

[[audit.sink]]
name = "syslog"
type = "syslog"
address = "udp://{syslog_addr}"
facility = "local0"
app_name = "warden-e2e"
"#
        ),
    );
    let messages = Arc::new(Mutex::new(Vec::<String>::new()));
    {
        let messages = messages.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while let Ok(n) = syslog.recv(&mut buf) {
                messages
                    .lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        });
    }
    let warden_log = h.root.join("sinks-lines.log");
    let mut child = spawn_warden_child(&config, &warden_log, port).unwrap();
    let cred = h.agent();
    let out = h.psql_at(port, &cred, &format!("SELECT 'lines', '{SECRET}'"));
    assert!(out.status.success(), "{}", stderr(&out));
    extended_query(h, port, &cred).await;

    let export = config.parent().unwrap().join("export/sinks-lines.jsonl");
    let file_lines = wait_for_delivery(&log, &warden_log, || {
        std::fs::read_to_string(&export)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    });
    assert_in_order(&file_lines);
    assert_redacted(&file_lines, &log);

    // Syslog: RFC 5424, `<PRI>1 TS HOST APP PROCID MSGID [meta sequenceId="SEQ"] JSON`, the JSON being
    // the stored line.
    let stored = complete_lines(&log);
    let syslog_lines = wait_for_delivery(&log, &warden_log, || {
        messages
            .lock()
            .unwrap()
            .iter()
            .map(|m| syslog_fields(m).7.to_string())
            .collect()
    });
    assert_in_order(&syslog_lines);
    let messages = messages.lock().unwrap().clone();
    for (m, line) in messages.iter().zip(&stored) {
        let record: Value = serde_json::from_str(line).unwrap();
        let (pri, ts, _host, app, _procid, msgid, sd, msg) = syslog_fields(m);
        let pri: u32 = pri
            .strip_prefix('<')
            .and_then(|p| p.strip_suffix(">1"))
            .unwrap_or_else(|| panic!("no <PRI>1: {m}"))
            .parse()
            .unwrap();
        assert_eq!(pri / 8, 16, "local0: {m}");
        assert!([4, 6].contains(&(pri % 8)), "warning or info: {m}");
        assert_eq!(ts, record["ts"], "{m}");
        assert_eq!(app, "warden-e2e", "{m}");
        assert_eq!(msgid, record["event"], "{m}");
        assert_eq!(sd, format!("[meta sequenceId=\"{}\"]", record["seq"]), "{m}");
        assert_eq!(msg, line, "MSG is the stored line");
    }
    assert!(!messages.concat().contains("sk_live_"));
    stop_warden(&mut child);
}

/// `<PRI>1 TS HOST APP PROCID MSGID [SD] MSG` into its parts (an empty MSG when it does not parse).
fn syslog_fields(m: &str) -> (&str, &str, &str, &str, &str, &str, &str, &str) {
    let f: Vec<&str> = m.splitn(7, ' ').collect();
    let rest = f.get(6).copied().unwrap_or_default();
    let (sd, msg) = match rest.find("] ") {
        Some(end) => (&rest[..end + 1], &rest[end + 2..]),
        None => (rest, ""),
    };
    let at = |i: usize| f.get(i).copied().unwrap_or_default();
    (at(0), at(1), at(2), at(3), at(4), at(5), sd, msg)
}

/// A Warden of its own with `[audit] redact` and the given sinks; returns its config, its audit log
/// and its port.
fn copy_with_sinks(h: &Harness, stem: &str, sinks: &str) -> (PathBuf, PathBuf, u16) {
    let w = h.warden_copy(stem);
    let text = std::fs::read_to_string(&w.config).unwrap();
    let name = w.config.file_stem().unwrap().to_string_lossy().into_owned();
    let path_line = format!("path = \"audit/{name}.jsonl\"");
    assert!(text.contains(&path_line), "{text}");
    let text = text.replace(&path_line, &format!("{path_line}\nredact = [\"sk_live_[A-Za-z0-9]+\"]")) + sinks;
    std::fs::write(&w.config, text).unwrap();
    (w.config, h.deploy.join(format!("audit/{name}.jsonl")), w.port)
}

/// A secret as a bound parameter of the extended protocol.
async fn extended_query(h: &Harness, port: u16, cred: &Path) {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host("127.0.0.1")
        .port(port)
        .user("report-bot")
        .dbname("shop")
        .ssl_mode(tokio_postgres::config::SslMode::Require);
    let client = connect_with(&cfg, &cred.join("ca.crt"), Some(load_cert(cred)))
        .await
        .unwrap();
    let row = client
        .query_one("SELECT $1::text AS v", &[&SECRET_PARAM])
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, String>(0),
        SECRET_PARAM,
        "the database still gets the real value"
    );
    let _ = h;
}

/// The log's complete lines.
fn complete_lines(log: &Path) -> Vec<String> {
    let text = read(log);
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    complete.lines().map(str::to_string).collect()
}

/// Waits until the sink holds exactly the log's lines (the log may still grow: session ends, results),
/// and returns them.
fn wait_for_delivery(log: &Path, warden_log: &Path, received: impl Fn() -> Vec<String>) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stored = complete_lines(log);
        let got = received();
        if !stored.is_empty() && got == stored {
            // Still equal a moment later: nothing was on its way.
            std::thread::sleep(Duration::from_millis(500));
            if received() == complete_lines(log) {
                return got;
            }
            continue;
        }
        if Instant::now() > deadline {
            let differ = got.iter().zip(&stored).find(|(a, b)| a != b);
            panic!(
                "the sink holds {} lines, the log {}; first difference: {differ:?}\nwarden log:\n{}",
                got.len(),
                stored.len(),
                read(warden_log)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// seq 1, 2, 3, ... with nothing missing, twice or out of place.
fn assert_in_order(lines: &[String]) {
    for (i, line) in lines.iter().enumerate() {
        let record: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(record["seq"], i as u64 + 1, "record {i} is out of order: {line}");
    }
}

/// The secrets reached neither the log nor the sink; the redacted statement and parameter did.
fn assert_redacted(received: &[String], log: &Path) {
    let stored = read(log);
    for text in [stored.as_str(), &received.join("\n")] {
        assert!(!text.contains("sk_live_"), "a secret was not redacted:\n{text}");
    }
    assert!(stored.contains("'[REDACTED]'"), "the statement is recorded, redacted");
    let redacted_param = received.iter().any(|l| {
        let v: Value = serde_json::from_str(l).unwrap();
        v["event"] == "query" && v["parameters"][0] == "[REDACTED]"
    });
    assert!(redacted_param, "the parameter is recorded, redacted");
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn wait_until(what: &str, warden_log: &Path, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "{what}:\n{}", read(warden_log));
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A tiny SIEM: answers the first `refuse` requests with 503, then accepts and keeps the lines.
struct Webhook {
    lines: Arc<Mutex<Vec<String>>>,
    refused: Arc<Mutex<usize>>,
    /// What was wrong with a request (answered 400, so the sink retries and the test times out).
    problems: Arc<Mutex<Vec<String>>>,
}

impl Webhook {
    fn start(port: u16, refuse: usize) -> Webhook {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let hook = Webhook {
            lines: Arc::default(),
            refused: Arc::default(),
            problems: Arc::default(),
        };
        let (lines, refused, problems) = (hook.lines.clone(), hook.refused.clone(), hook.problems.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let Some((headers, body)) = read_request(&mut stream) else {
                    continue;
                };
                let mut n = refused.lock().unwrap();
                let status = if *n < refuse {
                    *n += 1;
                    "503 Service Unavailable"
                } else {
                    let text = String::from_utf8_lossy(&body).into_owned();
                    let expected = [
                        "content-type: application/x-ndjson".to_string(),
                        format!("authorization: {}", HOOK_TOKEN.to_lowercase()),
                        "x-warden-first-seq: ".to_string(),
                    ];
                    match expected.iter().find(|e| !headers.contains(e.as_str())) {
                        Some(missing) => {
                            problems.lock().unwrap().push(format!("no {missing} in {headers}"));
                            "400 Bad Request"
                        }
                        None if !text.ends_with('\n') => {
                            problems.lock().unwrap().push(format!("not newline-delimited: {text}"));
                            "400 Bad Request"
                        }
                        None => {
                            lines.lock().unwrap().extend(text.lines().map(str::to_string));
                            "200 OK"
                        }
                    }
                };
                drop(n);
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        });
        hook
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    fn problems(&self) -> Vec<String> {
        self.problems.lock().unwrap().clone()
    }

    fn refused(&self) -> usize {
        *self.refused.lock().unwrap()
    }
}

/// One HTTP/1.1 request: its headers (lowercased) and body.
fn read_request(stream: &mut std::net::TcpStream) -> Option<(String, Vec<u8>)> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut headers = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if line == "\r\n" {
            break;
        }
        headers.push_str(&line.to_lowercase());
    }
    let length: usize = headers
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))?
        .trim()
        .parse()
        .ok()?;
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some((headers, body))
}
