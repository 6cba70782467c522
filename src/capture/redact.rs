//! capture/redact.rs: keeping secrets out of the statement text that goes into the trail.
//!
//! Runs in every backend whenever a statement's text is recorded (successful or failed), so
//! the common path, text without secrets, is one pass over the bytes with no allocation.
//! Owns what counts as a secret:
//! - the literal right after the word PASSWORD, anywhere;
//! - in role DDL (CREATE|ALTER ROLE|USER|GROUP), every literal but VALID UNTIL's, and a bare
//!   word or quoted identifier after PASSWORD (typos are recorded too);
//! - in user mapping, server, foreign data wrapper, IMPORT FOREIGN SCHEMA and subscription
//!   statements, the value of every parenthesized option named like a secret (pass, secret,
//!   key, token; not *_required), quoted and U&-escaped names included;
//! - inside any literal or dollar-quoted body, conninfo `password=`/`sslpassword=` values, URI
//!   passwords (of the user info, and parameters named so, percent-encoded or not) and the
//!   same rules again for the SQL nested there (DO bodies, EXECUTE strings).
//!
//! The text is treated as ASCII-compatible bytes: it need not be valid UTF-8. Literals are
//! read with standard_conforming_strings on; where a backslash would make the other setting
//! end a secret literal later, the redaction runs to the later end.

use std::borrow::Cow;
use std::ops::Range;

const REDACTED: &[u8] = b"<REDACTED>";
/// Literals nested deeper than this are not parsed: one that looks secret is blanked whole.
/// This bounds the work at MAX_DEPTH passes however the text nests.
const MAX_DEPTH: u8 = 8;
/// A literal holding one of these (any case) is parsed again, as SQL and as a conninfo.
const TRIGGERS: [&[u8]; 10] = [
    b"pass",
    b"postgres",
    b"secret",
    b"key",
    b"token",
    b"pwd",
    b"credential",
    b"role",
    b"user",
    b"group",
];

/// redact returns `query` with secrets replaced by `<REDACTED>`; Cow::Borrowed when nothing changed (the common case must not allocate).
pub fn redact(query: &[u8]) -> Cow<'_, [u8]> {
    if !might_hold_secret(query) {
        return Cow::Borrowed(query);
    }
    sql(query, 0).map_or(Cow::Borrowed(query), Cow::Owned)
}

/// might_hold_secret is false when [`sql`] cannot change `s`: none of [`TRIGGERS`] is in it
/// (any case), nor anything that can spell one as PostgreSQL reads it (a backslash escape,
/// U&; undoing a doubled quote joins no letters). Every rule starts from one of those words:
/// PASSWORD, the words of a secret option's or conninfo keyword's name, those that make a
/// literal worth parsing again (a URI's scheme among them), those of role statements
/// (CREATE|ALTER ROLE|USER|GROUP); an option statement (a server, a user mapping …) redacts
/// only options named with one of them. One pass, a fraction of the tokenizer's cost on
/// the statements most workloads run (it was a fifth of capture's instructions per pgbench
/// transaction).
fn might_hold_secret(s: &[u8]) -> bool {
    /// A byte's letter: 1 for a or A, …, 26 for z or Z; 0 for any other byte.
    const LETTER: [u8; 256] = {
        let mut t = [0u8; 256];
        let mut c = 0;
        while c < 26 {
            t[(b'a' + c) as usize] = c + 1;
            t[(b'A' + c) as usize] = c + 1;
            c += 1;
        }
        t
    };
    /// For each two letters, which words of [`TRIGGERS`] start with them (any case), one bit
    /// each: most places in a statement start no word, and two table lookups say so.
    const STARTING: [[u16; 27]; 27] = {
        let mut t = [[0u16; 27]; 27];
        let mut k = 0;
        while k < TRIGGERS.len() {
            let w = TRIGGERS[k];
            assert!(w.len() >= 2 && LETTER[w[0] as usize] > 0 && LETTER[w[1] as usize] > 0);
            t[LETTER[w[0] as usize] as usize][LETTER[w[1] as usize] as usize] |= 1 << k;
            k += 1;
        }
        t
    };
    if s.contains(&b'\\') || s.contains(&b'&') {
        return true;
    }
    s.windows(2).enumerate().any(|(i, pair)| {
        let mut words =
            STARTING[LETTER[pair[0] as usize] as usize][LETTER[pair[1] as usize] as usize];
        while words != 0 {
            if starts_ci(&s[i..], TRIGGERS[words.trailing_zeros() as usize]) {
                return true;
            }
            words &= words - 1;
        }
        false
    })
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// '...', and N'...', B'...', X'...'.
    Std,
    /// E'...'.
    Esc,
    Dollar,
    /// U&'...' with its escape character.
    Uni(u8),
}

/// The output, built only once the first replacement is known.
#[derive(Default)]
struct Out {
    buf: Option<Vec<u8>>,
    copied: usize,
}

impl Out {
    fn put(&mut self, s: &[u8], r: Range<usize>, with: &[u8]) {
        if &s[r.clone()] == with {
            return;
        }
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

fn ends_ci(s: &[u8], w: &[u8]) -> bool {
    s.len() >= w.len() && s[s.len() - w.len()..].eq_ignore_ascii_case(w)
}

fn contains_ci(s: &[u8], w: &[u8]) -> bool {
    s.windows(w.len()).any(|p| p.eq_ignore_ascii_case(w))
}

/// option_secret tells whether a foreign-data or subscription option of this name holds a
/// secret (password, sslpassword, passfile, sslkey, api_token, odbc_PWD, credentials, ... but
/// not password_required).
fn option_secret(name: &[u8]) -> bool {
    [
        &b"pass"[..],
        b"secret",
        b"key",
        b"token",
        b"pwd",
        b"credential",
    ]
    .iter()
    .any(|w| contains_ci(name, w))
        && !ends_ci(name, b"_required")
}

/// conninfo_secret tells whether a conninfo keyword's value is a secret (password,
/// sslpassword, oauth_client_secret).
fn conninfo_secret(key: &[u8]) -> bool {
    ends_ci(key, b"password") || ends_ci(key, b"secret")
}

/// Statements whose literals need more than the PASSWORD rule.
#[derive(Clone, Copy, PartialEq)]
enum Stmt {
    Other,
    /// CREATE|ALTER ROLE|USER|GROUP.
    Role,
    /// User mappings, servers, wrappers, IMPORT FOREIGN SCHEMA, subscriptions.
    Options,
}

/// How far the opening words of the statement have matched.
#[derive(Clone, Copy, PartialEq)]
enum Lead {
    Start,
    CreateAlter,
    User,
    Mapping,
    Foreign,
    Data,
    Import,
    ImportForeign,
    Done,
}

/// What the tokens so far say about the next one.
#[derive(Clone, Copy)]
struct State {
    stmt: Stmt,
    lead: Lead,
    parens: usize,
    /// The last token names a secret: the literal next (and any continuing it) is its value.
    secret: bool,
    /// So is a bare word or quoted identifier next, which would be a syntax error.
    bare: bool,
    /// The last token is ROLE, USER or GROUP: a word next is a role name, whatever it spells.
    role_kw: bool,
    /// 1 after VALID, 2 after VALID UNTIL.
    valid: u8,
}

impl State {
    const NEW: State = State {
        stmt: Stmt::Other,
        lead: Lead::Start,
        parens: 0,
        secret: false,
        bare: false,
        role_kw: false,
        valid: 0,
    };

    /// lead follows the statement's opening words; `w` is None for any token but a word.
    /// PL/pgSQL statements start after BEGIN, THEN, ELSE and LOOP too.
    fn lead(&mut self, w: Option<&[u8]>) {
        use Lead::*;
        let is = |k: &[u8]| w.is_some_and(|w| w.eq_ignore_ascii_case(k));
        let (lead, stmt) = match self.lead {
            Start if is(b"create") || is(b"alter") => (CreateAlter, None),
            Start if is(b"import") => (Import, None),
            CreateAlter if is(b"role") || is(b"group") => (Done, Some(Stmt::Role)),
            CreateAlter if is(b"user") => (User, Some(Stmt::Role)),
            CreateAlter if is(b"server") || is(b"subscription") => (Done, Some(Stmt::Options)),
            CreateAlter if is(b"foreign") => (Foreign, None),
            Foreign if is(b"data") => (Data, None),
            Data if is(b"wrapper") => (Done, Some(Stmt::Options)),
            User if is(b"mapping") => (Mapping, None),
            Mapping if is(b"for") || is(b"if") => (Done, Some(Stmt::Options)),
            Import if is(b"foreign") => (ImportForeign, None),
            ImportForeign if is(b"schema") => (Done, Some(Stmt::Options)),
            _ if self.stmt == Stmt::Other
                && (is(b"begin") || is(b"then") || is(b"else") || is(b"loop")) =>
            {
                (Start, None)
            }
            _ => (Done, None),
        };
        self.lead = lead;
        self.stmt = stmt.unwrap_or(self.stmt);
    }

    /// token forgets what only the very next token may use.
    fn token(&mut self, w: Option<&[u8]>) {
        self.lead(w);
        self.bare = false;
        self.role_kw = false;
        self.valid = 0;
    }

    fn option_name(&self, name: &[u8]) -> bool {
        self.stmt == Stmt::Options && self.parens > 0 && option_secret(name)
    }

    fn word(&mut self, w: &[u8]) {
        let name_position = self.role_kw;
        let valid = match self.valid {
            _ if w.eq_ignore_ascii_case(b"valid") => 1,
            1 if w.eq_ignore_ascii_case(b"until") => 2,
            _ => 0,
        };
        self.token(Some(w));
        self.valid = valid;
        self.role_kw = [&b"role"[..], b"user", b"group"]
            .iter()
            .any(|k| w.eq_ignore_ascii_case(k));
        let password = w.eq_ignore_ascii_case(b"password");
        let option = self.option_name(w);
        self.secret = password || option;
        self.bare = option || (self.stmt == Stmt::Role && password && !name_position);
    }

    /// quoted takes a quoted identifier's (decoded) name: never a keyword, but an option's.
    fn quoted(&mut self, name: &[u8]) {
        self.token(None);
        let option = self.option_name(name);
        self.secret = name.eq_ignore_ascii_case(b"password") || option;
        self.bare = option;
    }

    fn punct(&mut self, b: u8) {
        match b {
            b';' => return *self = State::NEW,
            b'(' => self.parens += 1,
            b')' => self.parens = self.parens.saturating_sub(1),
            _ => {}
        }
        self.token(None);
        self.secret = false;
    }
}

/// literal_open returns where the body of a literal starting at `i` begins, and its kind.
fn literal_open(s: &[u8], i: usize, word_end: usize) -> Option<(usize, Kind)> {
    let word = &s[i..word_end];
    let quote = s.get(word_end) == Some(&b'\'');
    if s[i] == b'\'' {
        Some((i + 1, Kind::Std))
    } else if let Some(n) = dollar_open(&s[i..]) {
        Some((i + n, Kind::Dollar))
    } else if quote && word.eq_ignore_ascii_case(b"e") {
        Some((word_end + 1, Kind::Esc))
    } else if quote && word.len() == 1 && b"nNbBxX".contains(&word[0]) {
        Some((word_end + 1, Kind::Std))
    } else if word.eq_ignore_ascii_case(b"u") && s[word_end..].starts_with(b"&'") {
        Some((word_end + 2, Kind::Uni(b'\\')))
    } else {
        None
    }
}

/// sql tokenizes `s` as SQL and returns it redacted, or None when nothing changed.
fn sql(s: &[u8], depth: u8) -> Option<Vec<u8>> {
    let mut out = Out::default();
    let mut st = State::NEW;
    let mut i = 0;
    while let Some(&b) = s.get(i) {
        let rest = &s[i..];
        if b.is_ascii_whitespace() {
            i += 1;
            continue;
        } else if rest.starts_with(b"--") {
            i = find(s, i, |c| c == b'\n');
            continue;
        } else if rest.starts_with(b"/*") {
            i = comment_end(s, i);
            continue;
        }
        let word_end = if ident_start(b) {
            find(s, i, |c| !ident_char(c))
        } else {
            i
        };
        let word = &s[i..word_end];
        if let Some((start, kind)) = literal_open(s, i, word_end) {
            // E'..' and U&'..' are literals too, so the word before them still counts.
            i = literal(s, (i, start), kind, &mut st, &mut out, depth);
            continue;
        }
        let unicode = word.eq_ignore_ascii_case(b"u") && s[word_end..].starts_with(b"&\"");
        if b == b'"' || unicode {
            let open = if unicode { word_end + 2 } else { i + 1 };
            let (close, mut end) = quoted_end(s, open);
            let mut name = Cow::Borrowed(&s[open..close]);
            if unicode {
                let (esc, e) = uescape(s, end).unwrap_or((b'\\', end));
                name = decode_uni(&s[open..close], esc, b'"');
                end = e;
            }
            if st.bare {
                out.put(s, open..close, REDACTED);
                st.token(None);
                st.secret = false;
            } else {
                st.quoted(&name);
            }
            i = end;
            continue;
        }
        if st.bare && !word.eq_ignore_ascii_case(b"null") {
            let mut j = i;
            while let Some(&c) = s.get(j) {
                if c.is_ascii_whitespace()
                    || b",();'\"".contains(&c)
                    || s[j..].starts_with(b"--")
                    || s[j..].starts_with(b"/*")
                {
                    break;
                }
                j += 1;
            }
            if j > i {
                out.put(s, i..j, REDACTED);
                st.token(None);
                st.secret = false;
                i = j;
                continue;
            }
        }
        if word.is_empty() {
            st.punct(b);
            i += 1;
        } else {
            st.word(word);
            i = word_end;
        }
    }
    out.finish(s)
}

/// literal handles the literal at `at.0` whose body starts at `at.1`, and returns its end.
fn literal(
    s: &[u8],
    (at, start): (usize, usize),
    kind: Kind,
    st: &mut State,
    out: &mut Out,
    depth: u8,
) -> usize {
    let (mut body_end, mut end, mut hot) = scan_literal(s, start, kind, &s[at..start]);
    let mut kind = kind;
    if let Kind::Uni(_) = kind {
        let (esc, e) = uescape(s, end).unwrap_or((b'\\', end));
        kind = Kind::Uni(esc);
        end = e;
        hot |= s[start..body_end].contains(&esc);
    }
    let backslash = s[start..body_end].contains(&b'\\');
    let keep = st.stmt == Stmt::Role && st.valid == 2 && !backslash;
    st.token(None);
    if st.secret || (st.stmt == Stmt::Role && !keep) {
        if kind == Kind::Std && backslash {
            // With standard_conforming_strings off, \' does not close the literal.
            let (esc_body_end, esc_end, _) = scan_literal(s, start, Kind::Esc, b"'");
            if esc_body_end > body_end {
                (body_end, end) = (esc_body_end, esc_end);
            }
        }
        out.put(s, start..body_end, REDACTED);
        return end;
    }
    if !hot {
        return end;
    }
    let body = &s[start..body_end];
    if depth >= MAX_DEPTH {
        out.put(s, start..body_end, REDACTED);
    } else if let Some(new) = nested(&decode(body, kind), depth + 1) {
        match kind {
            // Re-encoding U& escapes is not worth it.
            Kind::Uni(_) => out.put(s, start..body_end, REDACTED),
            _ => out.put(s, start..body_end, &encode(new, kind)),
        }
    } else if kind == Kind::Std && backslash && conninfo(&decode(body, Kind::Esc)).is_some() {
        // A conninfo secret spelled for standard_conforming_strings off.
        out.put(s, start..body_end, REDACTED);
    }
    end
}

/// quoted_end returns (end of name, end of identifier) for a quoted identifier whose name
/// starts at `i`.
fn quoted_end(s: &[u8], mut i: usize) -> (usize, usize) {
    loop {
        i = find(s, i, |c| c == b'"');
        if i == s.len() {
            return (i, i);
        } else if s.get(i + 1) == Some(&b'"') {
            i += 2;
        } else {
            return (i, i + 1);
        }
    }
}

/// skip_gap returns the end of the whitespace and comments from `i`.
fn skip_gap(s: &[u8], mut i: usize) -> usize {
    while let Some(&b) = s.get(i) {
        if b.is_ascii_whitespace() {
            i += 1;
        } else if s[i..].starts_with(b"--") {
            i = find(s, i, |c| c == b'\n');
        } else if s[i..].starts_with(b"/*") {
            i = comment_end(s, i);
        } else {
            break;
        }
    }
    i
}

/// uescape reads a `UESCAPE 'c'` clause from `i`: (c, end of the clause).
fn uescape(s: &[u8], i: usize) -> Option<(u8, usize)> {
    let i = skip_gap(s, i);
    let after = i + 7;
    if !starts_ci(&s[i..], b"uescape") || s.get(after).is_some_and(|&c| ident_char(c)) {
        return None;
    }
    let j = skip_gap(s, after);
    match s.get(j..j + 3)? {
        &[b'\'', c, b'\''] if c != b'\'' => Some((c, j + 3)),
        _ => None,
    }
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
/// A backslash outside a dollar quote makes the body worth decoding too.
fn scan_literal(s: &[u8], start: usize, kind: Kind, open: &[u8]) -> (usize, usize, bool) {
    let mut hot = false;
    let mut i = start;
    while let Some(&b) = s.get(i) {
        match b {
            b'\\' if kind != Kind::Dollar => {
                hot = true;
                i += usize::from(kind == Kind::Esc);
            }
            b'\'' if kind != Kind::Dollar && s.get(i + 1) == Some(&b'\'') => i += 1,
            b'\'' if kind != Kind::Dollar => return (i, i + 1, hot),
            // Compared bytes before a mismatch hold no '$', so this stays linear.
            b'$' if kind == Kind::Dollar && s[i..].starts_with(open) => {
                return (i, i + open.len(), hot);
            }
            _ if !hot && b"pskturgPSKTURG".contains(&b) => {
                hot = TRIGGERS.iter().any(|w| starts_ci(&s[i..], w));
            }
            _ => {}
        }
        i += 1;
    }
    (s.len(), s.len(), hot)
}

/// digits reads up to `max` digits in `radix` from `*i`: (value, how many).
fn digits(body: &[u8], i: &mut usize, radix: u32, max: usize) -> (u32, usize) {
    let (mut n, mut count) = (0u32, 0);
    while count < max
        && let Some(d) = body.get(*i).and_then(|&c| char::from(c).to_digit(radix))
    {
        (n, count, *i) = (n * radix + d, count + 1, *i + 1);
    }
    (n, count)
}

fn push_char(v: &mut Vec<u8>, (n, count): (u32, usize), len: usize) {
    let ch = char::from_u32(n).filter(|_| count == len);
    let ch = ch.unwrap_or(char::REPLACEMENT_CHARACTER);
    v.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes());
}

/// decode undoes the quoting and escapes of a literal's body, so that its text can be parsed
/// as PostgreSQL will see it.
fn decode(body: &[u8], kind: Kind) -> Cow<'_, [u8]> {
    let plain = !body.contains(&b'\'') && (kind != Kind::Esc || !body.contains(&b'\\'));
    match kind {
        Kind::Dollar => return Cow::Borrowed(body),
        Kind::Uni(esc) => return decode_uni(body, esc, b'\''),
        _ if plain => return Cow::Borrowed(body),
        _ => {}
    }
    let mut v = Vec::with_capacity(body.len());
    let mut i = 0;
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
                v.push(digits(body, &mut i, 8, 3).0 as u8);
            }
            b'x' => match digits(body, &mut i, 16, 2) {
                (_, 0) => v.push(c),
                (n, _) => v.push(n as u8),
            },
            b'u' | b'U' => {
                let len = if c == b'u' { 4 } else { 8 };
                push_char(&mut v, digits(body, &mut i, 16, len), len);
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

/// decode_uni decodes the body of U&'...' or U&"..." (`quote` doubled inside): `esc` then
/// four hex digits, or + and six, or `esc` again.
fn decode_uni(body: &[u8], esc: u8, quote: u8) -> Cow<'_, [u8]> {
    if !body.contains(&esc) && !body.contains(&quote) {
        return Cow::Borrowed(body);
    }
    let mut v = Vec::with_capacity(body.len());
    let mut i = 0;
    while let Some(&b) = body.get(i) {
        i += 1;
        if b == quote {
            i += 1;
            v.push(b);
        } else if b != esc {
            v.push(b);
        } else if body.get(i) == Some(&esc) {
            i += 1;
            v.push(b);
        } else if body.get(i) == Some(&b'+') {
            i += 1;
            push_char(&mut v, digits(body, &mut i, 16, 6), 6);
        } else {
            push_char(&mut v, digits(body, &mut i, 16, 4), 4);
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

/// conninfo redacts `password=value` (value bare, or quoted with backslash escapes), the
/// same for the other keywords conninfo_secret names, and in `postgres[ql]://` URIs the
/// password of `user:password@host` and the values of such keywords among the parameters.
fn conninfo(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Out::default();
    let mut i = 0;
    while let Some(&b) = s.get(i) {
        let rest = &s[i..];
        let scheme = [&b"postgresql://"[..], b"postgres://"]
            .into_iter()
            .find(|w| starts_ci(rest, w));
        if let Some(w) = scheme {
            let (secrets, end) = uri_secrets(s, i + w.len());
            for r in secrets {
                if !s[r.start..].starts_with(REDACTED) {
                    out.put(s, r, REDACTED);
                }
            }
            i = end;
            continue;
        }
        let secret = if ident_start(b) && (i == 0 || !ident_char(s[i - 1])) {
            let end = find(s, i, |c| !ident_char(c));
            conninfo_secret(&s[i..end])
                .then(|| keyword_value(s, end))
                .flatten()
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

/// uri_secrets returns the secrets of the URI whose scheme ends at `k`, in order, and where
/// the URI ends (a blank or a quote): the password of its user info, and the values of its
/// parameters whose name, percent-decoded as libpq decodes it, conninfo_secret names.
fn uri_secrets(s: &[u8], k: usize) -> (Vec<Range<usize>>, usize) {
    let end = find(s, k, |c| c == b'\'' || c.is_ascii_whitespace());
    let uri = &s[..end];
    let mut secrets = Vec::new();
    let at = find(uri, k, |c| b"@/?#".contains(&c));
    let colon = find(&uri[..at], k, |c| c == b':');
    if uri.get(at) == Some(&b'@') && at > colon + 1 {
        secrets.push(colon + 1..at);
    }
    let mut p = find(uri, k, |c| c == b'?');
    while p < end {
        let key_end = find(uri, p + 1, |c| c == b'=' || c == b'&');
        let value_end = find(uri, key_end, |c| c == b'&');
        if uri.get(key_end) == Some(&b'=')
            && value_end > key_end + 1
            && conninfo_secret(&percent_decoded(&uri[p + 1..key_end]))
        {
            secrets.push(key_end + 1..value_end);
        }
        p = value_end;
    }
    (secrets, end)
}

/// percent_decoded undoes `%XX` escapes (a malformed one is kept as it is).
fn percent_decoded(s: &[u8]) -> Cow<'_, [u8]> {
    if !s.contains(&b'%') {
        return Cow::Borrowed(s);
    }
    let hex = |c: u8| (c as char).to_digit(16);
    let mut v = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match (
            s[i],
            s.get(i + 1).and_then(|&c| hex(c)),
            s.get(i + 2).and_then(|&c| hex(c)),
        ) {
            (b'%', Some(h), Some(l)) => {
                v.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                v.push(c);
                i += 1;
            }
        }
    }
    Cow::Owned(v)
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
SELECT f('postgresql://h/db?%70assword=S14&sslmode=require') => SELECT f('postgresql://h/db?%70assword=<REDACTED>&sslmode=require')
SELECT f('postgres://u@h?sslmode=require&PASSWORD=S14&x=%2', 'postgresql://h?ss%6cpassword=S14') => SELECT f('postgres://u@h?sslmode=require&PASSWORD=<REDACTED>&x=%2', 'postgresql://h?ss%6cpassword=<REDACTED>')
SELECT f('postgresql://u:S14@h/d?password=S14 password=S14') => SELECT f('postgresql://u:<REDACTED>@h/d?password=<REDACTED> password=<REDACTED>')
SELECT f('postgresql://h?password=&passfile=%2fp', 'postgresql://h?%70%61%73%73%77%6f%72%64') => SELECT f('postgresql://h?password=&passfile=%2fp', 'postgresql://h?%70%61%73%73%77%6f%72%64')
CREATE SERVER s FOREIGN DATA WRAPPER odbc_fdw OPTIONS (odbc_PWD 'S15', pwd 'S15', credentials 'S15', "Credential_File" 'S15') => CREATE SERVER s FOREIGN DATA WRAPPER odbc_fdw OPTIONS (odbc_PWD '<REDACTED>', pwd '<REDACTED>', credentials '<REDACTED>', "Credential_File" '<REDACTED>')
ALTER SERVER s OPTIONS (SET pwd 'S15') => ALTER SERVER s OPTIONS (SET pwd '<REDACTED>')
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
ALTER ROLE alice PASSWORD "S1" => ALTER ROLE alice PASSWORD "<REDACTED>"
ALTER ROLE alice PASSWORD S2 => ALTER ROLE alice PASSWORD <REDACTED>
ALTER ROLE alice PASSWORD U&"S\0031" => ALTER ROLE alice PASSWORD U&"<REDACTED>"
create user u with password s2-x!y valid until 'infinity'; => create user u with password <REDACTED> valid until 'infinity';
CREATE ROLE zed LOGIN 'S3' => CREATE ROLE zed LOGIN '<REDACTED>'
/* x */ create group g 'S3', E'S3', $$S3$$, N'S3', X'53' => /* x */ create group g '<REDACTED>', E'<REDACTED>', $$<REDACTED>$$, N'<REDACTED>', X'<REDACTED>'
CREATE USER mapping LOGIN 'S3' => CREATE USER mapping LOGIN '<REDACTED>'
ALTER ROLE a IN DATABASE d SET x = 'S3' => ALTER ROLE a IN DATABASE d SET x = '<REDACTED>'
ALTER USER x PASSWORD 'SCRAM-SHA-256$4096:c2FsdA==$a2V5:c2Vydg==' => ALTER USER x PASSWORD '<REDACTED>'
CREATE ROLE a VALID /* c */ UNTIL 'infinity' PASSWORD 'x' => CREATE ROLE a VALID /* c */ UNTIL 'infinity' PASSWORD '<REDACTED>'
CREATE ROLE password PASSWORD 'x' LOGIN => CREATE ROLE password PASSWORD '<REDACTED>' LOGIN
CREATE ROLE "password" PASSWORD S => CREATE ROLE "password" PASSWORD <REDACTED>
ALTER ROLE a PASSWORD 'x\'S7' => ALTER ROLE a PASSWORD '<REDACTED>'
SELECT 1; ALTER ROLE a PASSWORD 'x\'S7'; SELECT 'x\' => SELECT 1; ALTER ROLE a PASSWORD '<REDACTED>'; SELECT 'x\'
ALTER ROLE a PASSWORD 'x\'S7 => ALTER ROLE a PASSWORD '<REDACTED>
ALTER ROLE a PASSWORD 'x\' VALID UNTIL 'infinity' => ALTER ROLE a PASSWORD '<REDACTED>'infinity'<REDACTED>
DO $$ BEGIN CREATE ROLE zed LOGIN 'S3'; END $$ => DO $$ BEGIN CREATE ROLE zed LOGIN '<REDACTED>'; END $$
CREATE ROLE password LOGIN
ALTER ROLE a WITH PASSWORD NULL VALID UNTIL 'infinity'; SELECT 'visible'
ALTER GROUP g ADD USER password, u; ALTER ROLE a PASSWORD;
ALTER TABLE t ALTER role SET DEFAULT 'member'
CREATE USER MAPPING FOR u SERVER s OPTIONS (user 'u', password S4) => CREATE USER MAPPING FOR u SERVER s OPTIONS (user 'u', password <REDACTED>)
ALTER USER MAPPING FOR u SERVER s OPTIONS (ADD U&"pass\0077ord" 'S5') => ALTER USER MAPPING FOR u SERVER s OPTIONS (ADD U&"pass\0077ord" '<REDACTED>')
ALTER SERVER s OPTIONS (U&"!0070ass" UESCAPE '!' 'S5', "pass""x" N'S5') => ALTER SERVER s OPTIONS (U&"!0070ass" UESCAPE '!' '<REDACTED>', "pass""x" N'<REDACTED>')
CREATE SERVER s FOREIGN DATA WRAPPER f OPTIONS (host 'h', sslpassword 'S6', passfile '/p', sslkey '/k', password_required 'false') => CREATE SERVER s FOREIGN DATA WRAPPER f OPTIONS (host 'h', sslpassword '<REDACTED>', passfile '<REDACTED>', sslkey '<REDACTED>', password_required 'false')
ALTER FOREIGN DATA WRAPPER w OPTIONS (SET Api_Token 'S6', client_secret "S6") => ALTER FOREIGN DATA WRAPPER w OPTIONS (SET Api_Token '<REDACTED>', client_secret "<REDACTED>")
IMPORT FOREIGN SCHEMA r FROM SERVER s INTO l OPTIONS (apikey 'S6') => IMPORT FOREIGN SCHEMA r FROM SERVER s INTO l OPTIONS (apikey '<REDACTED>')
CREATE USER MAPPING IF NOT EXISTS FOR u SERVER s OPTIONS (password 'x') => CREATE USER MAPPING IF NOT EXISTS FOR u SERVER s OPTIONS (password '<REDACTED>')
CREATE USER MAPPING FOR password SERVER keyserver OPTIONS (user 'u', DROP password)
CREATE SERVER key FOREIGN DATA WRAPPER keyfdw OPTIONS (host 'h', key_required 'true')
CREATE SUBSCRIPTION sub CONNECTION 'host=h sslpassword=S8 user=u' PUBLICATION p => CREATE SUBSCRIPTION sub CONNECTION 'host=h sslpassword=<REDACTED> user=u' PUBLICATION p
ALTER SUBSCRIPTION sub CONNECTION 'oauth_client_secret=S9 password = S9' => ALTER SUBSCRIPTION sub CONNECTION 'oauth_client_secret=<REDACTED> password = <REDACTED>'
DO $$ BEGIN EXECUTE 'CREATE SERVER s FOREIGN DATA WRAPPER f OPTIONS (api_key ''K'')'; END $$ => DO $$ BEGIN EXECUTE 'CREATE SERVER s FOREIGN DATA WRAPPER f OPTIONS (api_key ''<REDACTED>'')'; END $$
SELECT f(U&'pass\0077ord=S12') => SELECT f(U&'<REDACTED>')
SELECT f(U&'host=h !0070assword=S12' UESCAPE '!') => SELECT f(U&'<REDACTED>' UESCAPE '!')
SELECT f(E'\x70assword=S12') => SELECT f(E'password=<REDACTED>')
SELECT f('pass\word=S12') => SELECT f('<REDACTED>')
SELECT f(U&'d\0061t', E'a\tb', 'a\b', 'user=u key=k', 'x', U&"a\0061")
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

    /// The shortcut never skips text the tokenizer would change: each case, each prefix of
    /// it, and random text made of pieces of secrets.
    #[test]
    fn might_hold_secret_misses_nothing() {
        let mut redacted = 0;
        let mut check = |q: &[u8]| {
            let changed = sql(q, 0).is_some();
            assert!(
                might_hold_secret(q) || !changed,
                "{}",
                String::from_utf8_lossy(q)
            );
            redacted += usize::from(changed);
        };
        for line in CASES.lines() {
            let q = line.split(" => ").next().unwrap().replace('⏎', "\n");
            (0..=q.len()).for_each(|n| check(&q.as_bytes()[..n]));
        }
        let pieces = b"'|''|E'|e'|\\|$|$a$|\"|/*|*/|--|\n| PASSWORD |pass|word|=|postgres://u:p@|postgresql://|?|&|%70|pwd|credential|\xff|\\x70|U&'|u&\"| UESCAPE '!'|!0070|ALTER ROLE |create user | mapping for |CREATE SERVER s OPTIONS (| foreign | data wrapper |import |subscription | key |token|secret|)|(|;| VALID UNTIL |N'|x|a| |,|sslpassword=|host=h";
        for q in random_texts(pieces, 0x9e37_79b9, 200_000, 12) {
            check(&q);
        }
        assert!(redacted > 10_000, "only {redacted} texts had a secret");
        for q in ["SELECT 'postgres://u:p@h'", "SELECT $$postgresql://a:b@c$$"] {
            assert!(
                sql(q.as_bytes(), 0).is_some() && might_hold_secret(q.as_bytes()),
                "{q}"
            );
        }
        // And the statements of pgbench take the shortcut.
        for q in [
            "UPDATE pgbench_accounts SET abalance = abalance + 5430 WHERE aid = 3212;",
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (3, 1, 42, -17, CURRENT_TIMESTAMP);",
        ] {
            assert!(!might_hold_secret(q.as_bytes()), "{q}");
        }
    }

    #[test]
    fn invalid_utf8() {
        let out = redact(b"ALTER ROLE \xff PASSWORD 'a\xffb' LOGIN\xfe");
        assert_eq!(&*out, b"ALTER ROLE \xff PASSWORD '<REDACTED>' LOGIN\xfe");
        assert!(matches!(redact(b"SELECT 'x\xff' \xfe\0"), Cow::Borrowed(_)));
    }

    /// random_texts makes `n` texts of up to `most - 1` pieces of `pieces` ('|' between them),
    /// the same ones for the same seed.
    fn random_texts(pieces: &[u8], mut seed: u64, n: usize, most: usize) -> Vec<Vec<u8>> {
        let pieces: Vec<&[u8]> = pieces.split(|&c| c == b'|').collect();
        let mut next = || {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (seed >> 33) as usize
        };
        (0..n)
            .map(|_| {
                (0..next() % most)
                    .flat_map(|_| pieces[next() % pieces.len()])
                    .copied()
                    .collect()
            })
            .collect()
    }

    #[test]
    fn never_panics() {
        let pieces = b"'|''|E'|\\|$|$a$|\"|/*|*/|--|\n| password |=|postgres://u:p@|\xff|\\u12|U&'|U&\"| UESCAPE '!'|!+|ALTER ROLE |CREATE SERVER s OPTIONS (| key |)|;| VALID UNTIL |N'";
        for q in random_texts(pieces, 0x2545_f491, 50_000, 16) {
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
            "U&'' /* */ U&\"\" -- \n".repeat(200_000),
            format!("ALTER ROLE a {}", "PASSWORD 'x\\' ".repeat(300_000)),
            format!("ALTER SERVER s OPTIONS ({}", "x".repeat(5_000_000)),
            format!("ALTER ROLE a PASSWORD {}", "x".repeat(5_000_000)),
            format!("'{}", "alter role a 'user' ".repeat(250_000)),
        ];
        let start = std::time::Instant::now();
        hostile.iter().for_each(|q| drop(redact(q.as_bytes())));
        assert!(start.elapsed().as_secs() < 20, "quadratic somewhere");
    }
}
