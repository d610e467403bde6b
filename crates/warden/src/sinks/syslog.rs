//! Syslog (RFC 5424): one message per record, the stored JSON line as MSG, over UDP, TCP with
//! octet-counting framing (RFC 6587) or a local datagram socket such as `/dev/log`.

use anyhow::{Context, Result};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket, UnixDatagram};
use warden_audit::StoredRecord;
use warden_policy::{SyslogSink, SyslogTransport};

/// Above this a datagram is cut (its JSON then no longer parses): use TCP for large statements.
const MAX_DATAGRAM: usize = 64 * 1024 - 1024;

pub(crate) struct Syslog {
    config: SyslogSink,
    hostname: String,
    procid: String,
    tcp: Option<TcpStream>,
    udp: Option<UdpSocket>,
    unix: Option<UnixDatagram>,
}

impl Syslog {
    pub(crate) fn new(config: &SyslogSink) -> Self {
        Syslog {
            config: config.clone(),
            hostname: hostname(),
            procid: std::process::id().to_string(),
            tcp: None,
            udp: None,
            unix: None,
        }
    }

    pub(crate) async fn deliver(&mut self, batch: &[StoredRecord]) -> Result<()> {
        let messages = batch.iter().map(|r| {
            format(
                r,
                self.config.facility,
                &self.hostname,
                &self.config.app_name,
                &self.procid,
            )
        });
        let result = match &self.config.transport {
            SyslogTransport::Tcp(addr) => {
                let mut framed = Vec::new();
                for m in messages {
                    framed.extend_from_slice(format!("{} ", m.len()).as_bytes());
                    framed.extend_from_slice(&m);
                }
                if self.tcp.as_ref().is_some_and(|s| !still_open(s)) {
                    self.tcp = None;
                }
                let stream = match &mut self.tcp {
                    Some(s) => s,
                    None => self.tcp.insert(
                        TcpStream::connect(addr.as_str())
                            .await
                            .with_context(|| format!("connecting to {addr}"))?,
                    ),
                };
                async {
                    stream.write_all(&framed).await?;
                    stream.flush().await
                }
                .await
                .with_context(|| format!("sending to {addr}"))
            }
            SyslogTransport::Udp(addr) => {
                let socket = match &mut self.udp {
                    Some(s) => s,
                    None => {
                        let target = tokio::net::lookup_host(addr.as_str())
                            .await?
                            .next()
                            .with_context(|| format!("{addr} resolves to no address"))?;
                        let local = if target.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
                        let socket = UdpSocket::bind(local).await?;
                        socket.connect(target).await?;
                        self.udp.insert(socket)
                    }
                };
                async {
                    for mut m in messages {
                        m.truncate(MAX_DATAGRAM);
                        socket.send(&m).await?;
                    }
                    std::io::Result::Ok(())
                }
                .await
                .with_context(|| format!("sending to {addr}"))
            }
            SyslogTransport::Unix(path) => {
                let socket = match &mut self.unix {
                    Some(s) => s,
                    None => self.unix.insert(UnixDatagram::unbound()?),
                };
                async {
                    for mut m in messages {
                        m.truncate(MAX_DATAGRAM);
                        socket.send_to(&m, path).await?;
                    }
                    std::io::Result::Ok(())
                }
                .await
                .with_context(|| format!("sending to {}", path.display()))
            }
        };
        if result.is_err() {
            // Start over with a fresh connection at the retry.
            self.tcp = None;
            self.udp = None;
        }
        result
    }
}

/// Whether the receiver has not closed the connection. Syslog over TCP has no acknowledgement: a
/// write to a connection the peer already closed succeeds locally and the records are lost, so a
/// closed connection is noticed before writing (the receiver sends nothing, so a read that is not
/// `WouldBlock` means EOF or an error).
fn still_open(stream: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [meta sequenceId="SEQ"] JSON`. The timestamp is
/// the record's own `ts`; MSGID its event; the severity is warning for a failed login or a denied
/// statement, informational otherwise. MSG is the stored line without a BOM.
pub(crate) fn format(r: &StoredRecord, facility: u8, hostname: &str, app_name: &str, procid: &str) -> Vec<u8> {
    let e = &r.event;
    let severity = if e.body.event == "auth.failed" || e.body.decision.as_deref() == Some("deny") {
        4
    } else {
        6
    };
    let pri = u32::from(facility) * 8 + severity;
    let msgid = header_field(&e.body.event, 32);
    let ts = header_field(&e.ts, 64);
    // RFC 5424 §7.3.1: sequenceId is 1 to 2147483647.
    let sd = if (1..=2_147_483_647).contains(&e.seq) {
        format!("[meta sequenceId=\"{}\"]", e.seq)
    } else {
        "-".to_string()
    };
    let mut out = format!("<{pri}>1 {ts} {hostname} {app_name} {procid} {msgid} {sd} ").into_bytes();
    out.extend_from_slice(&r.line);
    out
}

/// A header field: printable US-ASCII without spaces, at most `max`; `-` (nil) when empty.
fn header_field(s: &str, max: usize) -> String {
    let cleaned: String = s.chars().filter(|c| c.is_ascii_graphic()).take(max).collect();
    if cleaned.is_empty() {
        "-".into()
    } else {
        cleaned
    }
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it or fails.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "-".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    header_field(&String::from_utf8_lossy(&buf[..end]), 255)
}

#[cfg(test)]
mod tests {
    use super::*;
    use warden_audit::{AuditLog, EventBody, FsyncMode};

    #[tokio::test]
    async fn messages_follow_rfc_5424() {
        let bodies = [("query", Some("allow")), ("query", Some("deny")), ("auth.failed", None)]
            .into_iter()
            .map(|(event, decision)| EventBody {
                event: event.into(),
                statement: Some("SELECT 'é'".into()),
                decision: decision.map(|d| d.to_string().into()),
                ..Default::default()
            })
            .collect();
        let (_dir, records) = super::super::stored(bodies).await;
        let lines: Vec<String> = records
            .iter()
            .map(|r| String::from_utf8(format(r, 10, "db-gw-1", "warden", "4242")).unwrap())
            .collect();
        let ts = &records[0].event.ts;
        let stored = String::from_utf8(records[0].line.clone()).unwrap();
        assert_eq!(
            lines[0],
            format!("<86>1 {ts} db-gw-1 warden 4242 query [meta sequenceId=\"1\"] {stored}")
        );
        assert!(lines[1].starts_with("<84>1 "), "a denial is a warning: {}", lines[1]);
        assert!(lines[2].starts_with("<84>1 ") && lines[2].contains(" auth.failed [meta sequenceId=\"3\"] {"));
        // The timestamp is RFC 3339 with at most 6 fractional digits, as RFC 5424 requires.
        assert!(
            ts.ends_with('Z') && ts.len() == "2026-11-23T06:44:19.123456Z".len(),
            "{ts}"
        );
    }

    #[tokio::test]
    async fn tcp_frames_by_octet_counting_and_reconnects() {
        use tokio::io::AsyncReadExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path, FsyncMode::Off).unwrap();
        for s in ["SELECT 1", "SELECT 'two words'"] {
            log.append(EventBody {
                event: "query".into(),
                statement: Some(s.into()),
                ..Default::default()
            })
            .await
            .unwrap();
        }
        log.checkpoint_now().await.unwrap();
        let records: Vec<StoredRecord> = warden_audit::read_after(&path, 0)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let mut sink = Syslog::new(&SyslogSink {
            transport: SyslogTransport::Tcp(addr),
            facility: 16,
            app_name: "w".into(),
        });
        for round in 0..2 {
            sink.deliver(&records).await.unwrap();
            let (mut conn, _) = tokio::time::timeout(std::time::Duration::from_secs(5), listener.accept())
                .await
                .unwrap_or_else(|_| panic!("round {round}: the records went into the closed connection"))
                .unwrap();
            let mut got = Vec::new();
            while !got.ends_with(&records[1].line) {
                let mut chunk = [0u8; 4096];
                let n = conn.read(&mut chunk).await.unwrap();
                assert!(n > 0, "round {round}: the connection ended early");
                got.extend_from_slice(&chunk[..n]);
            }
            // The receiver goes away (a restart): the next delivery notices and connects again
            // instead of writing into the closed connection.
            drop(conn);
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            let mut rest = &got[..];
            for r in &records {
                let space = rest.iter().position(|b| *b == b' ').unwrap();
                let len: usize = std::str::from_utf8(&rest[..space]).unwrap().parse().unwrap();
                let msg = &rest[space + 1..space + 1 + len];
                assert!(msg.starts_with(b"<134>1 "), "round {round}");
                assert!(msg.ends_with(&r.line), "round {round}");
                rest = &rest[space + 1 + len..];
            }
            assert!(rest.is_empty());
        }
    }

    #[tokio::test]
    async fn a_unix_socket_gets_one_datagram_per_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path, FsyncMode::Off).unwrap();
        for _ in 0..2 {
            log.append(EventBody {
                event: "session.start".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        }
        log.checkpoint_now().await.unwrap();
        let records: Vec<StoredRecord> = warden_audit::read_after(&path, 0)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let socket_path = dir.path().join("log.sock");
        let receiver = UnixDatagram::bind(&socket_path).unwrap();
        let mut sink = Syslog::new(&SyslogSink {
            transport: SyslogTransport::Unix(socket_path),
            facility: 10,
            app_name: "warden".into(),
        });
        sink.deliver(&records).await.unwrap();
        for r in &records {
            let mut buf = vec![0u8; 65536];
            let n = receiver.recv(&mut buf).await.unwrap();
            assert!(buf[..n].starts_with(b"<86>1 "));
            assert!(buf[..n].ends_with(&r.line));
        }
    }

    #[test]
    fn header_fields_are_printable_ascii() {
        assert_eq!(header_field("a b\tc", 32), "abc");
        assert_eq!(header_field("", 32), "-");
        assert_eq!(header_field(&"x".repeat(40), 32).len(), 32);
    }
}
