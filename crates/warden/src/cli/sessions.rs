//! `warden sessions list` and `warden sessions play`: sessions as the audit log recorded them, read
//! through the search index beside the log (see docs/search.md).

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use serde_json::json;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use warden_audit::{Event, Index, SearchFilter, SessionSummary, StoredRecord};

use super::audit::open_index;
use crate::deployment;

/// Longest pause `play` makes between two events, whatever the speed: idle time is shown, not waited.
const MAX_PAUSE: Duration = Duration::from_secs(2);

#[derive(clap::Subcommand, Debug)]
pub enum SessionsCommand {
    /// One line per session: id, identity (requester, task), database, client address, start, end and
    /// why it ended, statements and denials. A session whose Warden crashed has no `session.end` and
    /// stays listed as active.
    List {
        #[arg(long, env = "WARDEN_CONFIG")]
        config: PathBuf,
        /// Only sessions that started and have not ended.
        #[arg(long)]
        active: bool,
        /// Only the newest N sessions.
        #[arg(long)]
        limit: Option<usize>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Replay a session: its statements with their decisions, results, errors and timing, at the
    /// original pace (scaled by --speed; pauses longer than 2s are shortened to 2s and shown).
    Play {
        #[arg(long, env = "WARDEN_CONFIG")]
        config: PathBuf,
        /// The session id, or a unique prefix of it.
        session: String,
        /// Playback speed: 2 is twice as fast, 0 does not wait at all.
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Print everything at once (same as --speed 0).
        #[arg(long)]
        no_wait: bool,
        /// Print the session's events as stored, one per line, without waiting.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(command: SessionsCommand) -> Result<ExitCode> {
    match command {
        SessionsCommand::List {
            config,
            active,
            limit,
            json,
        } => list(&config, active, limit, json),
        SessionsCommand::Play {
            config,
            session,
            speed,
            no_wait,
            json,
        } => {
            if !speed.is_finite() || speed < 0.0 {
                bail!("--speed must be 0 or more (0 does not wait), not {speed}");
            }
            play(&config, &session, if no_wait { 0.0 } else { speed }, json)
        }
    }
}

fn index(config: &std::path::Path) -> Result<(Index, PathBuf)> {
    let config = deployment::load_config(config)?;
    let log = config.audit.path.clone();
    let index = open_index(&log)?.ok_or_else(|| anyhow!("no audit log at {}", log.display()))?;
    Ok((index, log))
}

fn list(config: &std::path::Path, active: bool, limit: Option<usize>, json: bool) -> Result<ExitCode> {
    let (mut index, log) = index(config)?;
    let sessions: Vec<SessionSummary> = index.sessions(active, limit)?;
    let mut out = std::io::stdout().lock();
    if json {
        for s in &sessions {
            writeln!(out, "{}", summary_json(s))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = Escaped::new(out);
    if sessions.is_empty() {
        writeln!(
            out,
            "No {}sessions in {}.",
            if active { "active " } else { "" },
            log.display()
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "{:<36}  {:<27}  {:<27}  {:>5}  {:>6}  {:<12}  {:<21}  IDENTITY  (END)",
        "SESSION", "STARTED", "ENDED", "STMTS", "DENIED", "DATABASE", "CLIENT"
    )?;
    for s in &sessions {
        let first = s.start.as_ref().or(s.end.as_ref());
        let b = first.map(|e| &e.body);
        writeln!(
            out,
            "{:<36}  {:<27}  {:<27}  {:>5}  {:>6}  {:<12}  {:<21}  {}{}",
            s.session_id,
            s.start.as_ref().map_or("?", |e| e.ts.as_str()),
            s.end.as_ref().map_or("active", |e| e.ts.as_str()),
            s.statements,
            s.denials,
            b.and_then(|b| b.database.as_deref()).unwrap_or("-"),
            b.and_then(|b| b.client_addr.as_deref()).unwrap_or("-"),
            first.map(who).unwrap_or_default(),
            s.end
                .as_ref()
                .and_then(|e| e.body.reason.as_deref())
                .map(|r| format!("  ({r})"))
                .unwrap_or_default(),
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn summary_json(s: &SessionSummary) -> serde_json::Value {
    let first = s.start.as_ref().or(s.end.as_ref()).map(|e| &e.body);
    json!({
        "session_id": s.session_id,
        "identity": first.and_then(|b| b.identity.as_ref()),
        "credential_id": first.and_then(|b| b.credential_id.as_ref()),
        "database": first.and_then(|b| b.database.as_ref()),
        "db_user": first.and_then(|b| b.db_user.as_ref()),
        "client_addr": first.and_then(|b| b.client_addr.as_ref()),
        "started_at": s.start.as_ref().map(|e| &e.ts),
        "ended_at": s.end.as_ref().map(|e| &e.ts),
        "end_reason": s.end.as_ref().and_then(|e| e.body.reason.as_ref()),
        "duration_us": s.end.as_ref().and_then(|e| e.body.duration_us),
        "statements": s.statements,
        "denials": s.denials,
        "active": s.active(),
    })
}

fn play(config: &std::path::Path, prefix: &str, speed: f64, json: bool) -> Result<ExitCode> {
    if prefix.is_empty() {
        bail!("give a session id (or a unique prefix of one); `warden sessions list` shows them");
    }
    let (mut index, log) = index(config)?;
    let matches = index.sessions_with_prefix(prefix, 5)?;
    let id = match matches.as_slice() {
        [] => bail!("no session {prefix:?} in the audit log {}", log.display()),
        [one] => one.clone(),
        more => bail!(
            "{prefix:?} is ambiguous: it starts {}{}; give more characters",
            more.join(", "),
            if more.len() >= 5 { ", ..." } else { "" }
        ),
    };
    let records = index.search(&SearchFilter {
        session: Some(id.clone()),
        ..SearchFilter::default()
    })?;
    let mut out = std::io::stdout().lock();
    if json {
        for r in &records {
            out.write_all(&r.line)?;
            out.write_all(b"\n")?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    replay(&mut Escaped::new(out), &id, &records, speed)?;
    Ok(ExitCode::SUCCESS)
}

/// Text for a terminal: control characters from the log (an agent's statement could carry escape
/// sequences that hide or fake lines) are shown as `\xNN` instead of being sent to the terminal.
struct Escaped<W: Write> {
    inner: W,
    /// A 0xC2 byte whose follower is still to come (C1 controls are 0xC2 0x80..=0x9F in UTF-8).
    pending_c2: bool,
}

impl<W: Write> Escaped<W> {
    fn new(inner: W) -> Self {
        Escaped {
            inner,
            pending_c2: false,
        }
    }
}

impl<W: Write> Write for Escaped<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut out = Vec::with_capacity(buf.len());
        for &b in buf {
            if self.pending_c2 {
                self.pending_c2 = false;
                if (0x80..=0x9f).contains(&b) {
                    out.extend_from_slice(format!("\\u{{{b:02x}}}").as_bytes());
                    continue;
                }
                out.push(0xc2);
            }
            match b {
                b'\n' | b'\t' => out.push(b),
                0x00..=0x1f | 0x7f => out.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
                0xc2 => self.pending_c2 = true,
                _ => out.push(b),
            }
        }
        self.inner.write_all(&out)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.pending_c2 {
            self.pending_c2 = false;
            self.inner.write_all(&[0xc2])?;
        }
        self.inner.flush()
    }
}

#[cfg(test)]
mod escape_tests {
    use std::io::Write;

    #[test]
    fn control_characters_never_reach_the_terminal() {
        let mut w = super::Escaped::new(Vec::new());
        writeln!(w, "a\x1b[2Jb\u{9b}31mc\té").unwrap();
        w.flush().unwrap();
        let text = String::from_utf8(w.inner).unwrap();
        assert_eq!(text, "a\\x1b[2Jb\\u{9b}31mc\té\n");
    }
}

/// Prints the events with the original pauses between them, divided by `speed` (0: no pauses).
fn replay(out: &mut impl Write, id: &str, records: &[StoredRecord], speed: f64) -> Result<()> {
    writeln!(out, "session {id}")?;
    if let Some(first) = records.first() {
        let b = &first.event.body;
        writeln!(
            out,
            "  {}, database {} as {}, from {}",
            who(&first.event),
            b.database.as_deref().unwrap_or("-"),
            b.db_user.as_deref().unwrap_or("-"),
            b.client_addr.as_deref().unwrap_or("-"),
        )?;
    }
    let start = records.first().and_then(|r| ts(&r.event));
    let mut previous = start;
    let mut statements: HashMap<u64, &str> = HashMap::new();
    let mut last_query = None;
    for r in records {
        let e = &r.event;
        let at = ts(e);
        if let (Some(at), Some(prev)) = (at, previous) {
            let gap = at - prev;
            if speed > 0.0 && gap.is_positive() {
                let wanted = gap.as_seconds_f64() / speed;
                if wanted > MAX_PAUSE.as_secs_f64() {
                    writeln!(out, "           ... {} idle", human(gap))?;
                }
                out.flush()?;
                std::thread::sleep(Duration::from_secs_f64(wanted.min(MAX_PAUSE.as_secs_f64())));
            }
        }
        if at.is_some() {
            previous = at;
        }
        let offset = match (at, start) {
            (Some(at), Some(start)) => format!("{:>10}", format!("+{:.3}s", (at - start).as_seconds_f64())),
            _ => format!("{:>10}", "?"),
        };
        let b = &e.body;
        match &*b.event {
            "session.start" => writeln!(
                out,
                "{offset}  session.start{}",
                b.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default()
            )?,
            "session.end" => writeln!(
                out,
                "{offset}  session.end: {}{}",
                b.reason.as_deref().unwrap_or("-"),
                b.duration_us
                    .map(|us| format!(", after {}", human(time::Duration::microseconds(us as i64))))
                    .unwrap_or_default()
            )?,
            "query" => {
                let statement = b.statement.as_deref().unwrap_or("");
                statements.insert(e.seq, statement);
                last_query = Some(e.seq);
                let decision = b.decision.as_deref().unwrap_or("?").to_uppercase();
                writeln!(out, "{offset}  #{} {decision:<5} {}", e.seq, indent(statement))?;
                if let Some(p) = &b.parameters {
                    let shown: Vec<String> = p
                        .iter()
                        .map(|v| v.as_deref().map_or("NULL".into(), |v| format!("{v:?}")))
                        .collect();
                    writeln!(out, "{:12}parameters: {}", "", shown.join(", "))?;
                }
                if let Some(review) = &b.review_id {
                    writeln!(out, "{:12}review {review}", "")?;
                }
                if b.decision.as_deref() == Some("deny") {
                    writeln!(out, "{:12}denied: {}", "", b.reason.as_deref().unwrap_or("-"))?;
                }
            }
            "query.result" => {
                let of = b.query_id.map_or("?".to_string(), |q| format!("#{q}"));
                // Results can arrive after later statements (pipelining): name the statement then.
                let named = match b.query_id {
                    Some(q) if last_query != Some(q) => statements
                        .get(&q)
                        .map(|s| format!(" ({})", clip(s, 40)))
                        .unwrap_or_default(),
                    _ => String::new(),
                };
                let took = b
                    .duration_us
                    .map(|us| format!(" in {}", human(time::Duration::microseconds(us as i64))))
                    .unwrap_or_default();
                match &b.error {
                    Some(err) => writeln!(out, "{offset}    -> {of}{named} ERROR {err}{took}")?,
                    None => writeln!(
                        out,
                        "{offset}    -> {of}{named} ok, {} row{}{took}",
                        b.rows.unwrap_or(0),
                        if b.rows == Some(1) { "" } else { "s" }
                    )?,
                }
                if let Some(columns) = &b.columns {
                    writeln!(out, "{:16}columns: {}", "", columns.join(", "))?;
                }
                for row in b.sample_rows.iter().flatten() {
                    let cells: Vec<&str> = row.iter().map(|c| c.as_deref().unwrap_or("NULL")).collect();
                    writeln!(out, "{:16}| {} |", "", cells.join(" | "))?;
                }
            }
            other => writeln!(
                out,
                "{offset}  {other}{}",
                b.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default()
            )?,
        }
    }
    out.flush()?;
    Ok(())
}

/// `agent:report-bot for human:alice task=T-42`
fn who(e: &Event) -> String {
    let Some(id) = &e.body.identity else {
        return "-".into();
    };
    let mut s = format!("{}:{}", id.kind, id.name);
    if let Some(r) = &id.requester {
        s += &format!(" for {r}");
    }
    if let Some(t) = &id.task {
        s += &format!(" task={t}");
    }
    s
}

fn ts(e: &Event) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(&e.ts, &Rfc3339).ok()
}

fn human(d: time::Duration) -> String {
    let s = d.as_seconds_f64();
    if s < 0.001 {
        format!("{}us", d.whole_microseconds())
    } else if s < 1.0 {
        format!("{:.1}ms", s * 1000.0)
    } else if s < 120.0 {
        format!("{s:.1}s")
    } else if s < 7200.0 {
        format!("{:.1}min", s / 60.0)
    } else {
        format!("{:.1}h", s / 3600.0)
    }
}

/// A multi-line statement, its later lines indented under the first.
fn indent(s: &str) -> String {
    s.trim_end().replace('\n', &format!("\n{:18}", ""))
}

fn clip(s: &str, max: usize) -> String {
    let one_line = s.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(max) {
        Some((at, _)) => format!("{}...", &one_line[..at]),
        None => one_line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clips_and_humanises() {
        assert_eq!(clip("SELECT\n  1", 40), "SELECT 1");
        assert_eq!(clip("abcdef", 3), "abc...");
        assert_eq!(human(time::Duration::milliseconds(1500)), "1.5s");
        assert_eq!(human(time::Duration::microseconds(250)), "250us");
    }
}
