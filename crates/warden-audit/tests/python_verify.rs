//! The independent verifier of docs/audit.md, run as the doc prints it: it passes a real log (rotated
//! files, checkpoints, records with escapes and non-ASCII) and fails an edited, cut or re-signed one.
//! Skipped, saying so, when python3 or its `cryptography` package is missing, except in CI
//! (`CI` set), where `.ci/run` installs them and a skip would hide a test that never ran.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use warden_audit::{AuditLog, AuditOptions, EventBody, FsyncMode, IdentityRecord};

const BEGIN: &str = "<!-- verify-audit.py: begin -->";
const END: &str = "<!-- verify-audit.py: end -->";

#[test]
fn the_documented_python_verifier_passes_a_real_log_and_catches_tampering() {
    if let Some(missing) = python_missing() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{missing}: .ci/run installs python3's cryptography; the verifier test must run in CI"
        );
        eprintln!("SKIPPED: {missing}; the docs/audit.md verifier needs python3 and `pip install cryptography`");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let script = work.path().join("verify-audit.py");
    std::fs::write(&script, documented_script()).unwrap();
    let log_dir = work.path().join("log");
    write_log(&log_dir.join("audit.jsonl"));
    let rotated = rotated_files(&log_dir);
    assert!(rotated.len() >= 2, "the log rotated: {rotated:?}");
    warden_audit::verify(&log_dir.join("audit.jsonl")).expect("Warden's own verify passes");

    let ok = run(&script, &log_dir);
    assert!(ok.status.success(), "{}", text(&ok));
    assert!(
        text(&ok).starts_with(&format!("ok: 120 records in {} file(s)", rotated.len() + 1)),
        "{}",
        text(&ok)
    );

    // One byte of one statement in a rotated file.
    let edited = copy_of(&log_dir, work.path(), "edited");
    let file = &rotated_files(&edited)[1];
    let mut bytes = std::fs::read(file).unwrap();
    let at = find(&bytes, b"orders").unwrap();
    bytes[at] = b'O';
    std::fs::write(file, bytes).unwrap();
    expect_failure(&script, &edited, "hash mismatch");

    // The last record cut off the end: the chain alone cannot tell, the signed checkpoint does.
    let cut = copy_of(&log_dir, work.path(), "cut");
    let active = cut.join("audit.jsonl");
    let text_now = std::fs::read_to_string(&active).unwrap();
    let body = text_now.strip_suffix('\n').unwrap();
    std::fs::write(&active, &body[..body.rfind('\n').map_or(0, |i| i + 1)]).unwrap();
    expect_failure(&script, &cut, "records were removed");

    // A checkpoint whose signature was altered.
    let resigned = copy_of(&log_dir, work.path(), "resigned");
    let ckpts = resigned.join("audit.checkpoints.jsonl");
    let mut bytes = std::fs::read(&ckpts).unwrap();
    let at = find(&bytes, b"\"signature\":\"").unwrap() + 13;
    bytes[at] = if bytes[at] == b'0' { b'1' } else { b'0' };
    std::fs::write(&ckpts, bytes).unwrap();
    expect_failure(&script, &resigned, "signature does not verify");
}

/// The script between the markers of docs/audit.md, without its code fence.
fn documented_script() -> String {
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/audit.md");
    let doc = std::fs::read_to_string(&doc).unwrap_or_else(|e| panic!("{}: {e}", doc.display()));
    let start = doc.find(BEGIN).expect("the begin marker in docs/audit.md") + BEGIN.len();
    let end = doc[start..].find(END).expect("the end marker in docs/audit.md") + start;
    let block = doc[start..end].trim();
    let code = block
        .strip_prefix("```python")
        .and_then(|b| b.strip_suffix("```"))
        .expect("the script is one ```python block between the markers");
    code.trim_start_matches('\n').to_string()
}

/// 120 records over several rotated files, a checkpoint after nearly every batch.
fn write_log(path: &Path) {
    let log = AuditLog::open_with(
        path,
        AuditOptions {
            fsync: FsyncMode::Off,
            rotate_bytes: Some(8 * 1024),
            checkpoint_every: Some(Duration::from_millis(1)),
        },
    )
    .unwrap();
    for n in 0..120 {
        let mut body = EventBody {
            event: "query".into(),
            session_id: Some(format!("s_{n:04}").into()),
            identity: Some(
                IdentityRecord {
                    kind: "agent".into(),
                    name: "report-bot".into(),
                    requester: Some("human:alice".into()),
                    task: Some("T-42".into()),
                    roles: vec!["analyst".into()],
                }
                .into(),
            ),
            database: Some("shop".into()),
            statement: Some(
                format!("SELECT id, \"total\" FROM orders WHERE note = 'café\\n{n}'\n  AND region = 'eu' -- ✓").into(),
            ),
            parameters: Some(vec![Some("ü".into()), None].into()),
            decision: Some("allow".into()),
            ..EventBody::default()
        };
        if n % 7 == 0 {
            std::thread::sleep(Duration::from_millis(2)); // a checkpoint is due
            body.event = "query.result".into();
            body.rows = Some(n);
        }
        log.append_blocking(body).unwrap();
    }
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(log.checkpoint_now())
        .unwrap();
}

fn python_missing() -> Option<String> {
    match Command::new("python3")
        .args(["-c", "import cryptography.hazmat.primitives.asymmetric.ed25519"])
        .output()
    {
        Err(e) => Some(format!("python3 cannot be run ({e})")),
        Ok(o) if !o.status.success() => Some("python3 has no `cryptography` package".into()),
        Ok(_) => None,
    }
}

fn run(script: &Path, log_dir: &Path) -> Output {
    Command::new("python3")
        .arg(script)
        .arg(log_dir.join("audit.jsonl"))
        .output()
        .unwrap()
}

fn expect_failure(script: &Path, log_dir: &Path, why: &str) {
    let out = run(script, log_dir);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains(why), "{why:?} not in: {}", text(&out));
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn rotated_files(dir: &Path) -> Vec<PathBuf> {
    let segments = warden_audit::segments(&dir.join("audit.jsonl")).unwrap();
    segments
        .into_iter()
        .filter(|s| s.last_seq.is_some())
        .map(|s| s.path)
        .collect()
}

fn copy_of(dir: &Path, root: &Path, name: &str) -> PathBuf {
    let to = root.join(name);
    std::fs::create_dir_all(&to).unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
    to
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
