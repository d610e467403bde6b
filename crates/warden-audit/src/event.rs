use serde::{Deserialize, Serialize};
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

/// What a caller fills in; the writer adds `ts`, `seq`, `prev_hash` and `hash`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EventBody {
    pub event: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<IdentityRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_addr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statement: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Vec<Option<String>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<String>,
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
}

/// A stored record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub ts: String,
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
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

/// Appends the stored line for a record to `out`; returns its hash.
pub(crate) fn encode_line(
    ts: &str,
    seq: u64,
    body: &EventBody,
    prev_hash: &str,
    out: &mut Vec<u8>,
) -> String {
    use sha2::{Digest, Sha256};
    let start = out.len();
    // Serialising plain strings and numbers into a Vec cannot fail.
    serde_json::to_writer(
        &mut *out,
        &Unhashed {
            ts,
            seq,
            body,
            prev_hash,
        },
    )
    .expect("audit record serialises");
    let hash = hex::encode(Sha256::digest(&out[start..]));
    out.pop(); // the closing '}'
    out.extend_from_slice(b",\"hash\":\"");
    out.extend_from_slice(hash.as_bytes());
    out.extend_from_slice(b"\"}\n");
    hash
}

/// Splits a stored line into (the bytes that were hashed, the stored hash).
pub(crate) fn split_hash(line: &str) -> Option<(String, &str)> {
    const SUFFIX_LEN: usize = ",\"hash\":\"".len() + 64 + "\"}".len();
    if line.len() < SUFFIX_LEN || !line.ends_with("\"}") {
        return None;
    }
    let (head, tail) = line.split_at(line.len() - SUFFIX_LEN);
    let hash = tail.strip_prefix(",\"hash\":\"")?.strip_suffix("\"}")?;
    Some((format!("{head}}}"), hash))
}
