//! A statement's shape: its text with each numeric literal replaced by a marker, so that `... WHERE
//! aid = 17` and `... WHERE aid = 42` share one cached analysis. Numeric constants never change what
//! a statement touches (which relations, columns and functions, its class, what is forbidden); names,
//! strings, parameters, comments and everything else are kept byte for byte.
//!
//! The scan follows PostgreSQL's lexer (scan.l) where it matters for that promise: quoted identifiers,
//! standard and escape (`E'...'`) strings, dollar quoting, `$n` parameters, nested `/* */` and `--`
//! comments. Warden keeps `standard_conforming_strings` on, so a backslash escapes only in `E'...'`.
//! Where in doubt (a number run into a word, as in `1abc` or `0x1F`) the text is kept as it is: that
//! only costs a cache miss.

/// Replaces each numeric literal of `sql`. The marker is NUL, which a statement cannot contain (the
/// protocol ends the text at the first NUL), so a shape is never the text of another statement.
pub(crate) const MARK: char = '\0';

/// Writes the shape of `sql` into `out` (cleared first). Returns whether texts of this shape may share
/// an analysis: not when `sql` holds a backslash, where PostgreSQL's reading of strings has more
/// modes than this scan follows (an `E'...'` string continued on the next line stays an escape
/// string, so `\'` inside the continuation does not end it). Those texts are cached by exact text.
pub(crate) fn shape(sql: &str, out: &mut String) -> bool {
    out.clear();
    let b = sql.as_bytes();
    let mut i = 0;
    // Start of the stretch copied verbatim since the last replacement.
    let mut copied = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'\'' => i = string_end(b, i + 1, false),
            b'"' => i = quoted_end(b, i + 1, b'"'),
            b'-' if b.get(i + 1) == Some(&b'-') => {
                i += 2;
                while i < b.len() && b[i] != b'\n' && b[i] != b'\r' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => i = comment_end(b, i + 2),
            b'$' => i = dollar_end(b, i),
            b'0'..=b'9' => {
                let end = number_end(b, i);
                if end < b.len() && is_ident(b[end]) {
                    // `1abc`, `0x1F`, `1_`: not a plain number; kept, and the word after it too.
                    i = word_end(b, end);
                } else {
                    out.push_str(&sql[copied..i]);
                    out.push(MARK);
                    i = end;
                    copied = end;
                }
            }
            _ if is_ident_start(c) => {
                let end = word_end(b, i);
                // E'...' (or e'...'): an escape string, where a backslash escapes the next byte.
                if end == i + 1 && (c == b'e' || c == b'E') && b.get(end) == Some(&b'\'') {
                    i = string_end(b, end + 1, true);
                } else {
                    i = end;
                }
            }
            _ => i += 1,
        }
    }
    out.push_str(&sql[copied..]);
    !b.contains(&b'\\')
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn is_ident(c: u8) -> bool {
    is_ident_start(c) || c.is_ascii_digit() || c == b'$'
}

fn word_end(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && is_ident(b[i]) {
        i += 1;
    }
    i
}

/// After the opening quote of a string: the index after its closing quote (or the end).
fn string_end(b: &[u8], mut i: usize, escapes: bool) -> usize {
    while i < b.len() {
        match b[i] {
            b'\\' if escapes => i += 2,
            b'\'' if b.get(i + 1) == Some(&b'\'') => i += 2,
            b'\'' => return i + 1,
            _ => i += 1,
        }
    }
    b.len()
}

/// After the opening `q` of a quoted identifier: the index after its closing `q` (doubled = escaped).
fn quoted_end(b: &[u8], mut i: usize, q: u8) -> usize {
    while i < b.len() {
        if b[i] == q {
            if b.get(i + 1) == Some(&q) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    b.len()
}

/// After `/*`: the index after the matching `*/` (comments nest).
fn comment_end(b: &[u8], mut i: usize) -> usize {
    let mut depth = 1;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            depth += 1;
            i += 2;
        } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return i;
            }
        } else {
            i += 1;
        }
    }
    b.len()
}

/// At a `$` that starts a token: a parameter (`$1`), a dollar-quoted string (`$tag$ ... $tag$`, kept
/// whole), or a lone `$`. Returns the index after it.
fn dollar_end(b: &[u8], i: usize) -> usize {
    let mut j = i + 1;
    if j < b.len() && b[j].is_ascii_digit() {
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
        return j;
    }
    if j < b.len() && is_ident_start(b[j]) {
        while j < b.len() && (is_ident_start(b[j]) || b[j].is_ascii_digit()) {
            j += 1;
        }
    }
    if b.get(j) != Some(&b'$') {
        return i + 1;
    }
    let tag = &b[i..=j];
    let body = j + 1;
    match b[body..].windows(tag.len()).position(|w| w == tag) {
        Some(p) => body + p + tag.len(),
        None => b.len(),
    }
}

/// At a digit: the index after the number (`12`, `1_000`, `1.5`, `1.`, `1e-3`).
fn number_end(b: &[u8], mut i: usize) -> usize {
    let digits = |b: &[u8], mut i: usize| {
        while i < b.len() && (b[i].is_ascii_digit() || (b[i] == b'_' && b.get(i + 1).is_some_and(u8::is_ascii_digit))) {
            i += 1;
        }
        i
    };
    i = digits(b, i);
    // `1..2` is not a decimal point (PostgreSQL reads `1` `..` `2`).
    if b.get(i) == Some(&b'.') && b.get(i + 1) != Some(&b'.') {
        i = digits(b, i + 1);
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        let mut j = i + 1;
        if matches!(b.get(j), Some(b'+' | b'-')) {
            j += 1;
        }
        if b.get(j).is_some_and(u8::is_ascii_digit) {
            i = digits(b, j);
        }
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(sql: &str) -> String {
        let mut out = String::new();
        shape(sql, &mut out);
        out.replace(MARK, "#")
    }

    #[test]
    fn numbers_become_the_marker() {
        assert_eq!(
            s("SELECT abalance FROM pgbench_accounts WHERE aid = 48213;"),
            "SELECT abalance FROM pgbench_accounts WHERE aid = #;"
        );
        assert_eq!(
            s("SELECT 1.5, 1e-3, 1_000, .5, 7. LIMIT 10"),
            "SELECT #, #, #, .#, # LIMIT #"
        );
        assert_eq!(s("SELECT a[1:2], x-1"), "SELECT a[#:#], x-#");
    }

    #[test]
    fn numbers_inside_names_strings_parameters_and_comments_are_kept() {
        for (sql, want) in [
            ("SELECT t1.c2 FROM t1", "SELECT t1.c2 FROM t1"),
            (
                "SELECT \"col 1\" FROM \"t\"\"2\" x",
                "SELECT \"col 1\" FROM \"t\"\"2\" x",
            ),
            ("SELECT '12', 'it''s 3', 4", "SELECT '12', 'it''s 3', #"),
            ("SELECT E'it\\'s 3', e'\\\\', 4", "SELECT E'it\\'s 3', e'\\\\', #"),
            ("SELECT 'a\\', 4", "SELECT 'a\\', #"),
            ("SELECT $1, $23", "SELECT $1, $23"),
            ("SELECT $$ 1 $$, $a1$ 2 $ $a1$, 3", "SELECT $$ 1 $$, $a1$ 2 $ $a1$, #"),
            ("SELECT 1abc, 0x1F, 1_", "SELECT 1abc, 0x1F, 1_"),
            ("-- 5\nSELECT /* 6 /* 7 */ 8 */ 9", "-- 5\nSELECT /* 6 /* 7 */ 8 */ #"),
            (
                "SELECT set_config('a5', 'b', false)",
                "SELECT set_config('a5', 'b', false)",
            ),
            ("SELECT x$1 FROM t", "SELECT x$1 FROM t"),
        ] {
            assert_eq!(s(sql), want, "{sql}");
        }
    }

    #[test]
    fn an_unterminated_token_runs_to_the_end() {
        assert_eq!(s("SELECT 'abc 1"), "SELECT 'abc 1");
        assert_eq!(s("SELECT /* 1"), "SELECT /* 1");
        assert_eq!(s("SELECT $q$ 1"), "SELECT $q$ 1");
        assert_eq!(s("SELECT \"a 1"), "SELECT \"a 1");
    }

    #[test]
    fn a_text_with_a_backslash_is_not_shared() {
        let mut out = String::new();
        assert!(shape("SELECT 1 FROM t WHERE a = 'x'", &mut out));
        // PostgreSQL reads one escape string, `WIN' 932`, continued across the newline.
        assert!(!shape("SET client_encoding TO E'WIN'\n'\\' 932'", &mut out));
        assert!(!shape("SELECT 'a\\', 4", &mut out));
    }

    /// The promise the cache relies on: changing only the numbers changes nothing in the analysis.
    #[test]
    fn other_numbers_give_the_same_analysis() {
        let mut corpus: Vec<String> = [
            "SELECT id FROM orders WHERE id = 17 ORDER BY 2 LIMIT 5 OFFSET 10",
            "WITH x AS (SELECT 1 a) SELECT a FROM x",
            "SELECT (SELECT email FROM customers LIMIT 1)",
            "EXPLAIN (ANALYZE 0) DELETE FROM orders WHERE id = 3",
            "SELECT set_config('role', 'x', false), 4",
            "SET client_encoding = 5",
            // A number inside a string does matter: windows 932 is refused, windows 0 would not be.
            "SET client_encoding = 'windows 932'",
            "SET client_encoding = E'windows\\' 932'",
            "SELECT 16384::regclass, 1.5::numeric(10, 2), x'1F', b'101', e'\\'' , 1",
            "UPDATE orders SET total = total * 1.1 WHERE id IN (1, 2, 3)",
            "SELECT pg_terminate_backend(1234)",
            "SELECT * FROM orders o JOIN customers c ON c.id = o.customer_id + 0 WHERE c.id > -5",
            "INSERT INTO orders (customer_id, status, total, region) VALUES (1, 'x', 1, 'eu') RETURNING 1",
        ]
        .map(String::from)
        .to_vec();
        let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/redteam/cases.tsv");
        match std::fs::read_to_string(&fixture) {
            Ok(text) => corpus.extend(
                text.lines()
                    .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
                    .filter_map(|l| l.splitn(3, '\t').nth(2).map(String::from)),
            ),
            Err(e) if std::env::var_os("CI").is_some() => panic!("{}: {e}", fixture.display()),
            Err(_) => {}
        }
        let catalog = crate::tests::shop();
        let ctx = crate::SessionContext::default();
        let plain = |sql: &str| {
            let mut a = crate::analyze(sql, &catalog, &ctx);
            if let Ok(v) = &mut a {
                v.iter_mut().for_each(|s| s.text.clear());
            }
            format!("{a:?}")
        };
        let mut changed = 0;
        for sql in &corpus {
            let mut shaped = String::new();
            shape(sql, &mut shaped);
            for other in ["0", "9", "123.5", "7e3"] {
                let variant = shaped.replace(MARK, other);
                if variant != *sql {
                    changed += 1;
                    assert_eq!(plain(&variant), plain(sql), "{sql} vs {variant}");
                }
            }
        }
        assert!(changed > 40, "only {changed} variants");
    }
}
