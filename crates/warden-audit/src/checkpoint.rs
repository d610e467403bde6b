//! Signed checkpoints: the chain alone cannot show that records were cut off its end, or that the
//! tail was rewritten with fresh hashes. So the writer signs the chain head (`seq`, `hash`) with its
//! own Ed25519 key, at most every [`crate::AuditOptions::checkpoint_every`] while records arrive, and
//! appends the signature to `audit.checkpoints.jsonl`:
//!
//! ```text
//! {"seq":1234,"hash":"<64 hex>","ts":"2026-11-23T06:44:19.123456Z","signature":"<128 hex>"}
//! ```
//!
//! The signature is Ed25519 over the ASCII bytes `warden-audit-checkpoint:{seq}:{hash}:{ts}`, with the
//! public key in `checkpoint.pub` (32 bytes, hex). `verify` fails when a checkpoint's record is missing
//! (the log was truncated) or differs (it was rewritten), or a signature does not check.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};

/// One line of the checkpoints file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub seq: u64,
    pub hash: String,
    pub ts: String,
    pub signature: String,
}

/// The bytes a checkpoint's signature covers.
pub fn signed_message(seq: u64, hash: &str, ts: &str) -> String {
    format!("warden-audit-checkpoint:{seq}:{hash}:{ts}")
}

pub(crate) struct Signer {
    key: Ed25519KeyPair,
}

impl Signer {
    /// Loads the key, or creates it (0600, in the log's 0700 directory) with its public half.
    pub(crate) fn load_or_create(key_path: &Path, pub_path: &Path) -> io::Result<Signer> {
        use std::os::unix::fs::OpenOptionsExt;
        let invalid =
            |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {what}", key_path.display()));
        let existing = match std::fs::read(key_path) {
            // An empty key with no public half: a crash while an older Warden created it (it wrote
            // the file before its contents). Nothing was ever signed with it: made anew.
            Ok(bytes) if bytes.is_empty() && !pub_path.exists() => {
                std::fs::remove_file(key_path)?;
                None
            }
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let pkcs8 = match existing {
            Some(bytes) => bytes,
            None => {
                let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
                    .map_err(|_| invalid("cannot generate an Ed25519 key"))?;
                // Written whole under another name, then linked into place: the key file exists
                // only with its contents, and a key another process linked first is kept.
                let tmp = key_path.with_extension(format!("key.tmp-{}", std::process::id()));
                let _ = std::fs::remove_file(&tmp);
                {
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(&tmp)?;
                    f.write_all(doc.as_ref())?;
                    f.sync_all()?;
                }
                let linked = std::fs::hard_link(&tmp, key_path);
                let _ = std::fs::remove_file(&tmp);
                match linked {
                    Ok(()) => {
                        crate::files::sync_dir(key_path)?;
                        doc.as_ref().to_vec()
                    }
                    // Another process created it first: use theirs.
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => std::fs::read(key_path)?,
                    Err(e) => return Err(e),
                }
            }
        };
        let key = Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|_| invalid("not an Ed25519 PKCS#8 key"))?;
        let public = hex::encode(key.public_key().as_ref());
        match std::fs::read_to_string(pub_path) {
            Ok(existing) if existing.trim() == public => {}
            Ok(_) => {
                // Someone replaced one of the two: signing on would leave checkpoints nobody can check.
                return Err(invalid(&format!(
                    "does not match {} (the checkpoint public key): restore the pair",
                    pub_path.display()
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                write_atomically(pub_path, format!("{public}\n").as_bytes())?;
            }
            Err(e) => return Err(e),
        }
        Ok(Signer { key })
    }

    pub(crate) fn sign(&self, seq: u64, hash: &str, ts: &str) -> Checkpoint {
        let sig = self.key.sign(signed_message(seq, hash, ts).as_bytes());
        Checkpoint {
            seq,
            hash: hash.to_string(),
            ts: ts.to_string(),
            signature: hex::encode(sig.as_ref()),
        }
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    crate::files::sync_dir(path)
}

/// A public key, from the 64 hex characters of `checkpoint.pub`.
#[derive(Debug, Clone)]
pub struct PublicKey(Vec<u8>);

impl PublicKey {
    pub fn from_hex(text: &str) -> Result<PublicKey, String> {
        let bytes = hex::decode(text.trim()).map_err(|e| format!("not hex: {e}"))?;
        if bytes.len() != 32 {
            return Err(format!("{} bytes, an Ed25519 public key has 32", bytes.len()));
        }
        Ok(PublicKey(bytes))
    }

    pub fn read(path: &Path) -> Result<PublicKey, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        PublicKey::from_hex(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn verifies(&self, c: &Checkpoint) -> bool {
        let Ok(sig) = hex::decode(&c.signature) else {
            return false;
        };
        UnparsedPublicKey::new(&ED25519, &self.0)
            .verify(signed_message(c.seq, &c.hash, &c.ts).as_bytes(), &sig)
            .is_ok()
    }
}

/// Reads every checkpoint; a torn last line (a crash mid-append) is skipped, any other bad line is
/// an error naming it.
pub fn read_checkpoints(path: &Path) -> Result<Vec<Checkpoint>, (PathBuf, usize, String)> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err((path.to_path_buf(), 0, e.to_string())),
    };
    let mut out = Vec::new();
    let mut reader = BufReader::new(file);
    let mut line = Vec::new();
    let mut n = 0;
    loop {
        line.clear();
        if reader
            .read_until(b'\n', &mut line)
            .map_err(|e| (path.to_path_buf(), n + 1, e.to_string()))?
            == 0
        {
            break;
        }
        n += 1;
        let Some(text) = line.strip_suffix(b"\n") else {
            break; // torn by a crash: the record it would have covered is still chained
        };
        let c: Checkpoint =
            serde_json::from_slice(text).map_err(|e| (path.to_path_buf(), n, format!("not a checkpoint: {e}")))?;
        out.push(c);
    }
    Ok(out)
}

/// The newest checkpoint: the file's last complete line (checkpoints are appended in chain order
/// under the writers' lock). `None` when there is none.
pub fn last_checkpoint(path: &Path) -> io::Result<Option<Checkpoint>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let back = len.min(8192);
    let mut tail = vec![0u8; back as usize];
    file.seek(SeekFrom::Start(len - back))?;
    file.read_exact(&mut tail)?;
    let complete = match tail.iter().rposition(|&b| b == b'\n') {
        Some(i) => &tail[..i],
        None => return Ok(None),
    };
    let last = complete
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(complete, |i| &complete[i + 1..]);
    if last.is_empty() {
        return Ok(None);
    }
    serde_json::from_slice(last).map(Some).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: last line is not a checkpoint: {e}", path.display()),
        )
    })
}

/// A process killed mid-append leaves part of a line: cut it, so the next line starts clean.
pub(crate) fn cut_torn_tail(file: &mut File) -> io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    let back = len.min(4096);
    let mut tail = vec![0u8; back as usize];
    file.seek(SeekFrom::Start(len - back))?;
    file.read_exact(&mut tail)?;
    if tail.ends_with(b"\n") {
        return Ok(());
    }
    let keep = match tail.iter().rposition(|&b| b == b'\n') {
        Some(i) => len - back + i as u64 + 1,
        None if back == len => 0,
        None => return Err(io::Error::new(io::ErrorKind::InvalidData, "checkpoint line over 4 KiB")),
    };
    file.set_len(keep)
}

/// Appends one checkpoint line (the caller holds the writers' lock).
pub(crate) fn append(file: &mut File, c: &Checkpoint) -> io::Result<()> {
    let mut line = serde_json::to_vec(c).map_err(io::Error::other)?;
    line.push(b'\n');
    file.write_all(&line)
}
