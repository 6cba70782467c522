//! capture/redact.rs: keeping secrets out of the statement text that goes into the trail.
//!
//! Runs in every backend whenever a statement's text is recorded (successful or failed), so
//! the common path, text without secrets, is one pass over the bytes with no allocation.
//! Owns what counts as a secret: the literal right after the word PASSWORD (role passwords,
//! user-mapping and server options), and, inside any literal or dollar-quoted body, conninfo
//! `password=` values, URI passwords and the same rules again for the SQL nested there (DO
//! bodies, EXECUTE strings). The text is treated as ASCII-compatible bytes: it need not be
//! valid UTF-8. Assumes standard_conforming_strings (a backslash is ordinary in '...').

use std::borrow::Cow;
use std::ops::Range;

const REDACTED: &[u8] = b"<REDACTED>";
/// Literals nested deeper than this are not parsed: one that looks secret is blanked whole.
/// This bounds the work at MAX_DEPTH passes however the text nests.
const MAX_DEPTH: u8 = 8;

/// redact returns `query` with secrets replaced by `<REDACTED>`; Cow::Borrowed when nothing changed (the common case must not allocate).
pub fn redact(query: &[u8]) -> Cow<'_, [u8]> {
    sql(query, 0).map_or(Cow::Borrowed(query), Cow::Owned)
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Std,
    Esc,
    Dollar,
}

/// The output, built only once the first replacement is known.
#[derive(Default)]
struct Out {
    buf: Option<Vec<u8>>,
    copied: usize,
}

impl Out {
    fn put(&mut self, s: &[u8], r: Range<usize>, with: &[u8]) {
        let buf = self.buf.get_or_insert_with(|| Vec::with_capacity(s.len()));
        buf.extend_from_slice(&s[self.copied..r.start]);
        buf.extend_from_slice(with);
        self.copied = r.end;
    }

    fn finish(self, s: &[u8]) -> Option<Vec<u8>> {
        let mut buf = self.buf?;
        buf.extend_from_slice(&s[self.copied..]);
        Some(buf)
    }
}

fn ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn ident_char(b: u8) -> bool {
    ident_start(b) || b.is_ascii_digit() || b == b'$'
}

/// find returns the first index from `i` whose byte satisfies `f`, or the length.
fn find(s: &[u8], i: usize, f: impl Fn(u8) -> bool) -> usize {
    s[i..].iter().position(|&c| f(c)).map_or(s.len(), |p| i + p)
}

fn starts_ci(s: &[u8], w: &[u8]) -> bool {
    s.get(..w.len()).is_some_and(|p| p.eq_ignore_ascii_case(w))
}

/// sql tokenizes `s` as SQL and returns it redacted, or None when nothing changed.
fn sql(s: &[u8], depth: u8) -> Option<Vec<u8>> {
    let mut out = Out::default();
    // The last token (comments and whitespace aside) was the word password. It survives the
    // password literal itself, because PostgreSQL joins 'a'<newline>'b' into one literal.
    let mut after_password = false;
    let mut i = 0;
    while let Some(&b) = s.get(i) {
        let rest = &s[i..];
        let word_end = if ident_start(b) {
            find(s, i, |c| !ident_char(c))
        } else {
            i
        };
        let word = &s[i..word_end];
        // E'..' and U&'..' are literals too, so the word before them still counts.
        let (start, kind) = if b == b'\'' {
            (i + 1, Kind::Std)
        } else if let Some(n) = dollar_open(rest) {
            (i + n, Kind::Dollar)
        } else if word.eq_ignore_ascii_case(b"e") && s.get(word_end) == Some(&b'\'') {
            (word_end + 1, Kind::Esc)
        } else if word.eq_ignore_ascii_case(b"u") && s[word_end..].starts_with(b"&'") {
            (word_end + 2, Kind::Std)
        } else if b.is_ascii_whitespace() {
            i += 1;
            continue;
        } else if rest.starts_with(b"--") {
            i = find(s, i, |c| c == b'\n');
            continue;
        } else if rest.starts_with(b"/*") {
            i = comment_end(s, i);
            continue;
        } else {
            // Any other token. A "" inside a quoted identifier splits it in two here, which
            // only matters to a name that is not password anyway.
            let (name, end) = match b {
                b'"' => {
                    let close = find(s, i + 1, |c| c == b'"');
                    (&s[i + 1..close], close + 1)
                }
                _ => (word, word_end.max(i + 1)),
            };
            after_password = name.eq_ignore_ascii_case(b"password");
            i = end;
            continue;
        };
        let (body_end, end, hot) = scan_literal(s, start, kind, &s[i..start]);
        let body = &s[start..body_end];
        if after_password || (hot && depth >= MAX_DEPTH) {
            if body != REDACTED {
                out.put(s, start..body_end, REDACTED);
            }
        } else if hot && let Some(new) = nested(&decode(body, kind), depth + 1) {
            out.put(s, start..body_end, &encode(new, kind));
        }
        i = end;
    }
    out.finish(s)
}

/// dollar_open returns the length of the `$tag$` that `s` starts with.
fn dollar_open(s: &[u8]) -> Option<usize> {
    if s.first() != Some(&b'$') || s.get(1).is_some_and(u8::is_ascii_digit) {
        return None; // $1 is a parameter
    }
    let close = find(s, 1, |c| c == b'$' || !ident_char(c));
    (s.get(close) == Some(&b'$')).then_some(close + 1)
}

fn comment_end(s: &[u8], mut i: usize) -> usize {
    let mut depth = 0usize;
    while i < s.len() {
        if s[i..].starts_with(b"/*") {
            depth += 1;
            i += 2;
        } else if s[i..].starts_with(b"*/") {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return i;
            }
        } else {
            i += 1;
        }
    }
    s.len()
}

/// scan_literal returns (end of body, end of literal, whether the body may hold a secret);
/// `open` is the literal's opening, which a dollar quote repeats to close.
/// The secret check rides along this same scan, so that clean literals cost nothing more.
fn scan_literal(s: &[u8], start: usize, kind: Kind, open: &[u8]) -> (usize, usize, bool) {
    let mut hot = false;
    let mut i = start;
    while let Some(&b) = s.get(i) {
        match b {
            b'\\' if kind == Kind::Esc => i += 1,
            b'\'' if kind != Kind::Dollar && s.get(i + 1) == Some(&b'\'') => i += 1,
            b'\'' if kind != Kind::Dollar => return (i, i + 1, hot),
            // Compared bytes before a mismatch hold no '$', so this stays linear.
            b'$' if kind == Kind::Dollar && s[i..].starts_with(open) => {
                return (i, i + open.len(), hot);
            }
            b'p' | b'P' if !hot => {
                hot = [&b"password"[..], b"postgresql://", b"postgres://"]
                    .iter()
                    .any(|w| starts_ci(&s[i..], w))
            }
            _ => {}
        }
        i += 1;
    }
    (s.len(), s.len(), hot)
}

/// decode undoes the quoting and escapes of a literal's body, so that its text can be parsed
/// as PostgreSQL will see it.
fn decode(body: &[u8], kind: Kind) -> Cow<'_, [u8]> {
    let plain = !body.contains(&b'\'') && (kind != Kind::Esc || !body.contains(&b'\\'));
    if kind == Kind::Dollar || plain {
        return Cow::Borrowed(body);
    }
    let mut v = Vec::with_capacity(body.len());
    let mut i = 0;
    // Up to `max` digits in `radix` from i: (value, how many).
    let number = |i: &mut usize, radix: u32, max: usize| {
        let (mut n, mut count) = (0u32, 0);
        while count < max
            && let Some(d) = body.get(*i).and_then(|&c| char::from(c).to_digit(radix))
        {
            (n, count, *i) = (n * radix + d, count + 1, *i + 1);
        }
        (n, count)
    };
    while let Some(&b) = body.get(i) {
        i += 1;
        if b == b'\'' {
            i += 1; // '' is one quote
        }
        if b != b'\\' || kind == Kind::Std {
            v.push(b);
            continue;
        }
        let Some(&c) = body.get(i) else { break };
        i += 1;
        match c {
            b'0'..=b'7' => {
                i -= 1;
                v.push(number(&mut i, 8, 3).0 as u8);
            }
            b'x' => match number(&mut i, 16, 2) {
                (_, 0) => v.push(c),
                (n, _) => v.push(n as u8),
            },
            b'u' | b'U' => {
                let len = if c == b'u' { 4 } else { 8 };
                let (n, count) = number(&mut i, 16, len);
                let ch = char::from_u32(n).filter(|_| count == len);
                let ch = ch.unwrap_or(char::REPLACEMENT_CHARACTER);
                v.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes());
            }
            b'b' => v.push(8),
            b'f' => v.push(12),
            b'n' => v.push(b'\n'),
            b'r' => v.push(b'\r'),
            b't' => v.push(b'\t'),
            _ => v.push(c),
        }
    }
    Cow::Owned(v)
}

/// encode quotes redacted text back for a literal of `kind`: the same value, not always the
/// same spelling (E'\n' comes back as a raw newline).
fn encode(text: Vec<u8>, kind: Kind) -> Vec<u8> {
    if kind == Kind::Dollar {
        return text;
    }
    let mut v = Vec::with_capacity(text.len() + 8);
    for b in text {
        v.push(b);
        if b == b'\'' || (b == b'\\' && kind == Kind::Esc) {
            v.push(b);
        }
    }
    v
}

/// nested redacts the decoded text of a literal: it may be SQL (DO body, EXECUTE string) or
/// a conninfo. Nested literals go first, so that conninfo values they held are already
/// `<REDACTED>` and are not taken again together with the quote that closes them.
fn nested(text: &[u8], depth: u8) -> Option<Vec<u8>> {
    let inner = sql(text, depth);
    conninfo(inner.as_deref().unwrap_or(text)).or(inner)
}

/// conninfo redacts `password=value` (value bare, or quoted with backslash escapes) and the
/// password of `postgres[ql]://user:password@host` URIs.
fn conninfo(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Out::default();
    let mut i = 0;
    while i < s.len() {
        let rest = &s[i..];
        let secret = if rest[0] | 0x20 != b'p' {
            None
        } else if starts_ci(rest, b"password") && (i == 0 || !ident_char(s[i - 1])) {
            keyword_value(s, i + 8)
        } else if starts_ci(rest, b"postgresql://") {
            uri_password(s, i + 13)
        } else if starts_ci(rest, b"postgres://") {
            uri_password(s, i + 11)
        } else {
            None
        };
        match secret {
            Some(r) if !s[r.start..].starts_with(REDACTED) => {
                i = r.end;
                out.put(s, r, REDACTED);
            }
            _ => i += 1,
        }
    }
    out.finish(s)
}

fn keyword_value(s: &[u8], k: usize) -> Option<Range<usize>> {
    if s.get(k).is_some_and(|&c| ident_char(c)) {
        return None; // password_required and the like
    }
    let k = find(s, k, |c| !c.is_ascii_whitespace());
    if s.get(k) != Some(&b'=') {
        return None;
    }
    let start = find(s, k + 1, |c| !c.is_ascii_whitespace());
    if s.get(start) != Some(&b'\'') {
        let end = find(s, start, |c| c.is_ascii_whitespace());
        return (end > start).then_some(start..end);
    }
    let mut j = start + 1;
    while let Some(&c) = s.get(j) {
        match c {
            b'\\' => j += 2,
            b'\'' => return Some(start..j + 1),
            _ => j += 1,
        }
    }
    Some(start..s.len())
}

fn uri_password(s: &[u8], k: usize) -> Option<Range<usize>> {
    let at = find(s, k, |c| b"@/?#'".contains(&c) || c.is_ascii_whitespace());
    let colon = find(&s[..at], k, |c| c == b':');
    (s.get(at) == Some(&b'@') && at > colon + 1).then_some(colon + 1..at)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A case a line: `input => output`, or `input` alone when it must come back borrowed.
    /// ⏎ stands for a newline.
    const CASES: &str = r#"
CREATE ROLE a LOGIN PASSWORD 'x' => CREATE ROLE a LOGIN PASSWORD '<REDACTED>'
alter role a password 'it''s' => alter role a password '<REDACTED>'
ALTER USER b WITH ENCRYPTED PASSWORD 'x'; => ALTER USER b WITH ENCRYPTED PASSWORD '<REDACTED>';
CREATE USER c PASSWORD 'x' VALID UNTIL 'infinity' => CREATE USER c PASSWORD '<REDACTED>' VALID UNTIL 'infinity'
CREATE ROLE d PASSWORD 'x' LOGGIN => CREATE ROLE d PASSWORD '<REDACTED>' LOGGIN
ALTER ROLE a PASSWORD E'se\'c''r\\' => ALTER ROLE a PASSWORD E'<REDACTED>'
ALTER ROLE a PASSWORD U&'d\0061t' => ALTER ROLE a PASSWORD U&'<REDACTED>'
ALTER ROLE a PASSWORD $q$x'$$y$q$; => ALTER ROLE a PASSWORD $q$<REDACTED>$q$;
ALTER ROLE a PASSWORD $$x$$ => ALTER ROLE a PASSWORD $$<REDACTED>$$
ALTER ROLE a PASSWORD /* c */ -- x⏎ 'x' => ALTER ROLE a PASSWORD /* c */ -- x⏎ '<REDACTED>'
ALTER ROLE a PASSWORD 'x'⏎'y' => ALTER ROLE a PASSWORD '<REDACTED>'⏎'<REDACTED>'
ALTER ROLE "a b" PASSWORD'x' => ALTER ROLE "a b" PASSWORD'<REDACTED>'
ALTER ROLE a PASSWORD 'abc => ALTER ROLE a PASSWORD '<REDACTED>
ALTER ROLE a PASSWORD E'ab\ => ALTER ROLE a PASSWORD E'<REDACTED>
ALTER ROLE a PASSWORD $x$abc$x => ALTER ROLE a PASSWORD $x$<REDACTED>
ALTER ROLE a PASSWORD /* 'x'
ALTER ROLE a PASSWORD NULL
ALTER ROLE a PASSWORD '<REDACTED>'
CREATE USER MAPPING FOR alice SERVER s OPTIONS (user 'postgres', password 'fdwsecret5') => CREATE USER MAPPING FOR alice SERVER s OPTIONS (user 'postgres', password '<REDACTED>')
ALTER USER MAPPING FOR a SERVER s OPTIONS (SET password 'x') => ALTER USER MAPPING FOR a SERVER s OPTIONS (SET password '<REDACTED>')
ALTER SERVER s OPTIONS (ADD "password" 'x') => ALTER SERVER s OPTIONS (ADD "password" '<REDACTED>')
ALTER USER MAPPING FOR a SERVER s OPTIONS (password_required 'false')
SELECT dblink_connect('c1', 'host=/tmp port=5432 dbname=postgres user=postgres password=dblinksecret7') => SELECT dblink_connect('c1', 'host=/tmp port=5432 dbname=postgres user=postgres password=<REDACTED>')
SELECT f('host=x password=''a b\''c'' user=u') => SELECT f('host=x password=<REDACTED> user=u')
SELECT f(E'password = \'a b\\\'c\' x') => SELECT f(E'password = <REDACTED> x')
SELECT f(E'a\nb password=\'x y\' \x41\u00e9\\') => SELECT f(E'a⏎b password=<REDACTED> Aé\\')
SELECT f($$dbname=d PASSWORD = s3$$) => SELECT f($$dbname=d PASSWORD = <REDACTED>$$)
SELECT f('password=''unterminated') => SELECT f('password=<REDACTED>')
SELECT f('postgresql://user:secret@host/db') => SELECT f('postgresql://user:<REDACTED>@host/db')
SELECT f('x POSTGRES://u:s:t@h') => SELECT f('x POSTGRES://u:<REDACTED>@h')
SELECT f('postgresql://user@host/db', 'postgres://h:5432/db', 'postgres', 'password_x=1')
DO $$ BEGIN EXECUTE 'ALTER ROLE carol PASSWORD ''dosecret13'''; END $$ => DO $$ BEGIN EXECUTE 'ALTER ROLE carol PASSWORD ''<REDACTED>'''; END $$
DO $$ BEGIN ALTER ROLE carol PASSWORD 'x'; END $$ => DO $$ BEGIN ALTER ROLE carol PASSWORD '<REDACTED>'; END $$
DO $f$ BEGIN EXECUTE E'ALTER ROLE c PASSWORD \'s\''; END $f$ => DO $f$ BEGIN EXECUTE E'ALTER ROLE c PASSWORD ''<REDACTED>'''; END $f$
DO $a$ EXECUTE $b$ SELECT dblink_connect('password=p') $b$; $a$ => DO $a$ EXECUTE $b$ SELECT dblink_connect('password=<REDACTED>') $b$; $a$
$a$ $b$ $c$ $d$ $e$ $f$ $g$ $h$ $i$ $j$ PASSWORD 'x' => $a$ $b$ $c$ $d$ $e$ $f$ $g$ $h$ $i$<REDACTED>
SELECT 'it''s' AS "password" , 'x'
SET password_encryption = 'scram-sha-256'
SELECT my_password 'x', password_x 'y'
SELECT * FROM users WHERE password = 'x'
SELECT $1, a$b, 'forgot password?', $$ no secret $$ -- password 'x'
/* nested /* password 'x' */ still comment */ SELECT 1
"#;

    #[test]
    fn cases() {
        for line in CASES.lines().filter(|l| !l.is_empty()) {
            let line = line.replace('⏎', "\n");
            let (q, want) = line.split_once(" => ").unwrap_or((&line, &line));
            let out = redact(q.as_bytes());
            assert_eq!(String::from_utf8_lossy(&out), want, "{q}");
            assert_eq!(matches!(out, Cow::Borrowed(_)), q == want, "{q}");
            assert!(
                matches!(redact(&out), Cow::Borrowed(_)),
                "second pass changed {q}"
            );
            (0..q.len()).for_each(|n| drop(redact(&q.as_bytes()[..n])));
        }
    }

    #[test]
    fn invalid_utf8() {
        let out = redact(b"ALTER ROLE \xff PASSWORD 'a\xffb' LOGIN\xfe");
        assert_eq!(&*out, b"ALTER ROLE \xff PASSWORD '<REDACTED>' LOGIN\xfe");
        assert!(matches!(redact(b"SELECT 'x\xff' \xfe\0"), Cow::Borrowed(_)));
    }

    #[test]
    fn never_panics() {
        let pieces = b"'|''|E'|\\|$|$a$|\"|/*|*/|--|\n| password |=|postgres://u:p@|\xff|\\u12";
        let pieces: Vec<&[u8]> = pieces.split(|&c| c == b'|').collect();
        let mut seed = 0x2545_f491_u64;
        let mut next = || {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (seed >> 33) as usize
        };
        for _ in 0..50_000 {
            let q: Vec<u8> = (0..next() % 16)
                .flat_map(|_| pieces[next() % pieces.len()])
                .copied()
                .collect();
            drop(redact(&q));
        }
    }

    #[test]
    fn large_inputs_stay_linear() {
        let clean = "SELECT 'a''b', \"c\", $$d$$ /* e */ FROM t; ".repeat(125_000);
        assert!(clean.len() >= 5_000_000 && matches!(redact(clean.as_bytes()), Cow::Borrowed(_)));
        let secrets = "ALTER ROLE a PASSWORD 's'; SELECT f('password=x'); ".repeat(100_000);
        let out = redact(secrets.as_bytes());
        assert_eq!(
            out.len(),
            secrets.len() + 100_000 * 2 * (REDACTED.len() - 1)
        );
        let nest: String = (0..9).map(|n| format!("$t{n}$ ")).collect();
        let hostile = [
            "$a$".repeat(1_000_000),
            "/*".repeat(2_500_000),
            format!("'{}", "password= ".repeat(500_000)),
            format!("$${}", "$t$ ".repeat(1_200_000)),
            "E'\\".repeat(1_600_000),
            nest + &"'password=x' ".repeat(400_000),
        ];
        let start = std::time::Instant::now();
        hostile.iter().for_each(|q| drop(redact(q.as_bytes())));
        assert!(start.elapsed().as_secs() < 20, "quadratic somewhere");
    }
}
