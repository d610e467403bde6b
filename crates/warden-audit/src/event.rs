use std::borrow::Cow;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

/// Who: the full identity behind a session.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IdentityRecord {
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requester: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    #[serde(default)]
    pub roles: Vec<String>,
}

/// A statement's bound parameters as shown in records (`None` for SQL NULL); shared with the portal
/// they were bound to, which may run more than once.
pub type Parameters = Arc<[Option<String>]>;

/// What a caller fills in; the writer adds `ts`, `seq`, `prev_hash` and `hash`.
///
/// What a session's records share (its id, identity, credential, database, role and address) is
/// reference-counted, so a session fills them into each record without copying a string.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EventBody {
    /// `session.start`, `query`, `query.result`, `session.end`, `auth.failed`, `credential.issued`, ...
    pub event: Cow<'static, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<Arc<str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<Arc<IdentityRecord>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_id: Option<Arc<str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<Arc<str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_user: Option<Arc<str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_addr: Option<Arc<str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statement: Option<Arc<str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Parameters>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<Cow<'static, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_us: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// On `query.result`: the `seq` of its `query` record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_id: Option<u64>,
    /// Who did it, on events that are acts rather than sessions (`lock.created`, `credential.revoked`):
    /// an identity (`human:alice`) or `admin (warden lock)` for the offline commands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// On `lock.created` and `lock.removed`: the lock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock: Option<LockRecord>,
    /// On `request.*` events: the access request's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// On `review.*` events, and on the `query` event of a reviewed statement: the review's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review_id: Option<String>,
    /// On `query.result`: the result's column names (from PostgreSQL's RowDescription), when the
    /// statement returned rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<Arc<Vec<String>>>,
    /// On `query.result`: the first rows as text (NULL as null), only when `[audit] result_rows` is
    /// above 0 (it is 0 by default: results can hold what the log should not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_rows: Option<Vec<Vec<Option<String>>>>,
}

/// A lock as the audit log records it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LockRecord {
    pub id: String,
    /// identity, requester, task, credential or session.
    pub target: String,
    pub value: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

/// A stored record: the caller's body plus what the writer assigns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// When the writer took the record, as [`format_ts`] writes it.
    pub ts: String,
    /// 1 for the first record of the log, then one more per record.
    pub seq: u64,
    #[serde(flatten)]
    pub body: EventBody,
    pub prev_hash: String,
    pub hash: String,
}

/// The record as hashed: everything but `hash`, in the stored order.
#[derive(Serialize)]
pub(crate) struct Unhashed<'a> {
    pub ts: &'a str,
    pub seq: u64,
    #[serde(flatten)]
    pub body: &'a EventBody,
    pub prev_hash: &'a str,
}

/// `2026-11-23T06:44:19.123456Z`
pub fn format_ts(t: OffsetDateTime) -> String {
    let mut out = String::with_capacity(TS_LEN);
    write_ts(t, &mut out);
    out
}

/// The length of every timestamp [`format_ts`] writes (years 0-9999).
const TS_LEN: usize = "2026-11-23T06:44:19.123456Z".len();

/// [`format_ts`] into a buffer the caller reuses.
pub(crate) fn write_ts(t: OffsetDateTime, out: &mut String) {
    use std::fmt::Write;
    let t = t.to_offset(time::UtcOffset::UTC);
    // Writing into a String cannot fail.
    let _ = write!(
        out,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    );
}

/// Appends the stored line for a record to `out`, and replaces `prev_hash` (the previous record's
/// hash, which the line links to) with this record's hash.
pub(crate) fn encode_line(ts: &str, seq: u64, body: &EventBody, prev_hash: &mut String, out: &mut Vec<u8>) {
    let start = out.len();
    let unhashed = Unhashed {
        ts,
        seq,
        body,
        prev_hash,
    };
    // Serialising strings, numbers and sequences into a Vec cannot fail: no maps with non-string
    // keys, no custom Serialize impls, no I/O.
    serde_json::to_writer(&mut *out, &unhashed).expect("audit record serialises");
    let mut hash = [0u8; 64];
    hex::encode_to_slice(Sha256::digest(&out[start..]), &mut hash).expect("64 hex digits for 32 bytes");
    out.pop(); // the closing '}'
    out.extend_from_slice(HASH_KEY);
    out.extend_from_slice(&hash);
    out.extend_from_slice(b"\"}\n");
    prev_hash.clear();
    prev_hash.push_str(std::str::from_utf8(&hash).expect("hex is ASCII"));
}

const HASH_KEY: &[u8] = b",\"hash\":\"";

/// Splits a stored line (without its `\n`) into S minus its closing `}`, and the stored hash.
/// `None` when the line does not end in `,"hash":"<64 chars>"}`.
pub(crate) fn split_hash(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let suffix_len = HASH_KEY.len() + 64 + b"\"}".len();
    let cut = line.len().checked_sub(suffix_len)?;
    let (head, tail) = line.split_at(cut);
    let hash = tail.strip_prefix(HASH_KEY)?.strip_suffix(b"\"}")?;
    Some((head, hash))
}

/// The hash of a record, from the head `split_hash` returned.
pub(crate) fn chain_hash(head: &[u8]) -> String {
    hex::encode(Sha256::new().chain_update(head).chain_update(b"}").finalize())
}
