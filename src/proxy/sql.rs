//! What a statement's text means for a transaction-mode pool, decided from its words.
//!
//! A client's next transaction may run on another compute connection, so session state is
//! sorted into three kinds:
//! - **settings** (SET, RESET, `set_config`, `options` at startup): they follow the client. A
//!   statement that may change them marks the transaction, and pgtide reads the connection's
//!   session settings back when it ends (see [`super::exchange`]);
//! - **what cannot follow a client** (SET ROLE, SET SESSION AUTHORIZATION, temporary tables,
//!   WITH HOLD cursors, LISTEN, session advisory locks, SQL-level PREPARE/EXECUTE): refused with
//!   0A000, whichever way it comes (simple or extended protocol, one statement of several,
//!   `set_config('role', …)`, inside a DO block or an EXECUTE'd string);
//! - **statements about the client's own prepared statements** (DEALLOCATE, DISCARD ALL): pgtide
//!   answers them for that client, and the shared connection keeps what other clients use.
//!
//! Whatever slips through (a function that does one of these inside) is caught after the
//! transaction by the same read-back, and the connection is closed instead of reused.
//!
//! The scan is a tokenizer, not a parser: comments, quoted strings and identifiers, and
//! dollar-quoted bodies are told apart, so `UPDATE t SET role = 'x'` or a table called `temp`
//! pass, and a DO block's body is scanned as code.

/// What to do with one Query or Parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Send it. `settings`: it may change session settings (or run code that may), so the
    /// connection's settings are read back after the transaction.
    Pass { settings: bool },
    /// Refuse it with 0A000 and this message.
    Refuse(String),
    /// `DEALLOCATE [PREPARE] name` (or `ALL`, `None`), alone in a simple query.
    Deallocate(Option<String>),
    /// `DISCARD ALL`, alone in a simple query.
    DiscardAll,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// A keyword or unquoted identifier, lowercased.
    Word(String),
    /// A quoted identifier, as written.
    Ident(String),
    /// A string constant's contents.
    Str(String),
    /// A dollar-quoted string's contents.
    Dollar(String),
    Punct(u8),
}

fn tokenize(text: &str) -> Vec<Token> {
    let b = text.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c == b'-' && b.get(i + 1) == Some(&b'-') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == b'\'' {
            let escapes = i > 0 && matches!(b[i - 1], b'e' | b'E');
            let (value, next) = quoted(b, i, b'\'', escapes);
            i = next;
            if escapes {
                // The E was read as a word of its own.
                if tokens.last() == Some(&Token::Word("e".to_string())) {
                    tokens.pop();
                }
            }
            tokens.push(Token::Str(String::from_utf8_lossy(&value).into_owned()));
        } else if c == b'"' {
            let (value, next) = quoted(b, i, b'"', false);
            i = next;
            tokens.push(Token::Ident(String::from_utf8_lossy(&value).into_owned()));
        } else if c == b'$' && dollar_tag(&b[i..]).is_some() {
            let tag_len = dollar_tag(&b[i..]).expect("checked");
            let tag = &b[i..i + tag_len];
            let start = i + tag_len;
            let end = find(&b[start..], tag).map(|p| start + p);
            let body_end = end.unwrap_or(b.len());
            tokens.push(Token::Dollar(
                String::from_utf8_lossy(&b[start..body_end]).into_owned(),
            ));
            i = end.map(|e| e + tag_len).unwrap_or(b.len());
        } else if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'$')
                || i < b.len() && b[i] >= 0x80
            {
                i += 1;
            }
            tokens.push(Token::Word(
                String::from_utf8_lossy(&b[start..i]).to_ascii_lowercase(),
            ));
        } else if c.is_ascii_digit() {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                i += 1;
            }
        } else {
            tokens.push(Token::Punct(c));
            i += 1;
        }
    }
    tokens
}

/// The text of a quoted string or identifier starting at `b[at]` (the opening `quote`): a
/// doubled quote is one quote, and with `backslash_escapes` (an `E'…'` string) a backslash takes
/// the next byte as it is. Returns the text and where scanning goes on, after the closing quote
/// (or at the end, for an unterminated one).
fn quoted(b: &[u8], at: usize, quote: u8, backslash_escapes: bool) -> (Vec<u8>, usize) {
    let mut value = Vec::new();
    let mut i = at + 1;
    while i < b.len() {
        if backslash_escapes && b[i] == b'\\' && i + 1 < b.len() {
            value.push(b[i + 1]);
            i += 2;
        } else if b[i] == quote {
            if b.get(i + 1) == Some(&quote) {
                value.push(quote);
                i += 2;
            } else {
                return (value, i + 1);
            }
        } else {
            value.push(b[i]);
            i += 1;
        }
    }
    (value, i)
}

/// The length of a dollar-quote opening tag (`$$`, `$body$`) at the start of `b`.
fn dollar_tag(b: &[u8]) -> Option<usize> {
    let mut i = 1;
    if b.get(1).is_some_and(|c| c.is_ascii_digit()) {
        return None; // a parameter, $1
    }
    while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
        i += 1;
    }
    (b.get(i) == Some(&b'$')).then_some(i + 1)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn word(token: Option<&Token>) -> &str {
    match token {
        Some(Token::Word(w)) => w,
        _ => "",
    }
}

const ADVISORY_LOCKS: [&str; 4] = [
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
];

/// Words after which a PL/pgSQL statement starts.
const BLOCK_WORDS: [&str; 4] = ["begin", "then", "else", "loop"];

/// What was found in some code.
#[derive(Default)]
struct Findings {
    refusal: Option<&'static str>,
    settings: bool,
}

/// Scans statements; `executed`: the code runs now (not a function body being defined);
/// `top`: SQL sent by the client, not PL/pgSQL inside a body.
fn scan(tokens: &[Token], executed: bool, top: bool, found: &mut Findings) {
    for statement in tokens.split(|t| *t == Token::Punct(b';')) {
        scan_statement(statement, executed, top, found);
    }
}

fn scan_statement(statement: &[Token], executed: bool, top: bool, found: &mut Findings) {
    let first = word(statement.first());
    // Bodies run now only in a DO block; a CREATE FUNCTION's body runs when it is called.
    let body_runs = executed && first == "do";
    let mut after_execute = false;
    for (i, token) in statement.iter().enumerate() {
        match token {
            Token::Dollar(body) => {
                found.settings = true; // code: read the settings back afterwards
                scan(&tokenize(body), body_runs, false, found);
            }
            Token::Str(text) if after_execute => {
                scan(&tokenize(text), executed, true, found);
            }
            Token::Word(w) => {
                if w == "execute" && !top {
                    after_execute = true;
                }
                let starts = i == 0 || BLOCK_WORDS.contains(&word(statement.get(i - 1)));
                if starts && executed {
                    if let Some(what) = refused_at(&statement[i..], top) {
                        found.refusal.get_or_insert(what);
                    }
                }
                if starts && matches!(w.as_str(), "set" | "reset" | "discard" | "call") {
                    let local = matches!(
                        word(statement.get(i + 1)),
                        "local" | "transaction" | "constraints"
                    );
                    found.settings |= !(w == "set" && local);
                }
                if w == "set_config" && statement.get(i + 1) == Some(&Token::Punct(b'(')) {
                    found.settings = true;
                    if let Some(Token::Str(name)) = statement.get(i + 2) {
                        let name = name.to_ascii_lowercase();
                        if executed && (name == "role" || name == "session_authorization") {
                            found
                                .refusal
                                .get_or_insert("SET ROLE and SET SESSION AUTHORIZATION");
                        }
                    }
                }
                if executed
                    && ADVISORY_LOCKS.contains(&w.as_str())
                    && statement.get(i + 1) == Some(&Token::Punct(b'('))
                {
                    found
                        .refusal
                        .get_or_insert("session advisory locks (pg_advisory_xact_lock works)");
                }
            }
            _ => {}
        }
    }
}

/// Whether the statement starting here is one that cannot follow a client (`top`: SQL, where
/// EXECUTE runs a prepared statement; in PL/pgSQL it runs a string, scanned on its own).
fn refused_at(statement: &[Token], top: bool) -> Option<&'static str> {
    let w = |i: usize| word(statement.get(i));
    match w(0) {
        "set" => match (w(1), w(2)) {
            ("role", _) | ("session", "role" | "authorization") => {
                Some("SET ROLE and SET SESSION AUTHORIZATION")
            }
            _ => None,
        },
        "listen" => Some("LISTEN"),
        "prepare" | "execute" if top => {
            Some("SQL-level PREPARE and EXECUTE (protocol-level prepared statements work)")
        }
        "create" => {
            let temp = statement[1..]
                .iter()
                .map(|t| word(Some(t)))
                .take_while(|w| !matches!(*w, "table" | "view" | "sequence" | ""))
                .any(|w| w == "temp" || w == "temporary");
            temp.then_some("temporary tables")
        }
        "select" => {
            let into = statement.iter().position(|t| word(Some(t)) == "into")?;
            matches!(
                word(statement.get(into + 1)),
                "temp" | "temporary" | "local" | "global"
            )
            .then_some("temporary tables")
        }
        "declare" => statement
            .windows(2)
            .any(|p| word(p.first()) == "with" && word(p.get(1)) == "hold")
            .then_some("WITH HOLD cursors"),
        _ => None,
    }
}

fn refusal(what: &str) -> String {
    format!(
        "{what} cannot be used through a transaction-mode pool, where the next transaction may run on another connection; use pool_mode = \"session\" for this client"
    )
}

/// Words one of which any statement that is not plainly passed contains: most queries are
/// passed after this search alone, without tokenizing.
const NEEDLES: [&[u8]; 13] = [
    b"set",
    b"listen",
    b"prepare",
    b"execute",
    b"deallocate",
    b"discard",
    b"temp",
    b"hold",
    b"advisory",
    b"$",
    b"call",
    b"role",
    b"session",
];

fn may_matter(text: &str) -> bool {
    let text = text.as_bytes();
    NEEDLES.iter().any(|needle| {
        text.windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
    })
}

/// Judges the text of a Query (`simple`) or of a Parse.
pub fn classify(text: &str, simple: bool) -> Verdict {
    if !may_matter(text) {
        return Verdict::Pass { settings: false };
    }
    let tokens = tokenize(text);
    let statements: Vec<&[Token]> = tokens
        .split(|t| *t == Token::Punct(b';'))
        .filter(|s| !s.is_empty())
        .collect();
    let alone = statements.len() == 1;
    for statement in &statements {
        let w = |i: usize| word(statement.get(i));
        match w(0) {
            "deallocate" => {
                if !(alone && simple) {
                    return Verdict::Refuse(refusal(
                        "DEALLOCATE together with other statements or through the extended protocol",
                    ));
                }
                let name = if w(1) == "prepare" { 2 } else { 1 };
                return match statement.get(name) {
                    Some(Token::Word(all)) if all == "all" => Verdict::Deallocate(None),
                    Some(Token::Word(n) | Token::Ident(n)) => Verdict::Deallocate(Some(n.clone())),
                    _ => Verdict::Refuse(refusal("this DEALLOCATE")),
                };
            }
            "discard" if w(1) == "all" && alone && simple => return Verdict::DiscardAll,
            "discard" if w(1) == "all" && !simple => {
                return Verdict::Refuse(refusal("DISCARD ALL through the extended protocol"))
            }
            _ => {}
        }
    }
    let mut found = Findings::default();
    scan(&tokens, true, true, &mut found);
    match found.refusal {
        Some(what) => Verdict::Refuse(refusal(what)),
        None => Verdict::Pass {
            settings: found.settings,
        },
    }
}

/// Quotes a string constant.
pub fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(text: &str) -> bool {
        matches!(classify(text, true), Verdict::Refuse(m) if m.contains("pool_mode = \"session\""))
    }

    #[test]
    fn what_cannot_follow_a_client_is_refused_however_it_is_written() {
        for text in [
            "SET ROLE admin",
            "set session authorization 'bob'",
            "SET SESSION ROLE admin",
            "SELECT 1; SET ROLE r",
            "SELECT set_config('role', 'r', false)",
            "select pg_catalog.set_config('ROLE', 'r', false)",
            "LISTEN events",
            "PREPARE p AS SELECT 1",
            "EXECUTE p",
            "CREATE TEMP TABLE t (a int)",
            "create global temporary table t (a int)",
            "CREATE OR REPLACE TEMP VIEW v AS SELECT 1",
            "SELECT 1 AS a INTO TEMP t",
            "select * into temporary table t from x",
            "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
            "SELECT pg_advisory_lock(1)",
            "select pg_try_advisory_lock_shared(1, 2)",
            "DO $$ BEGIN SET ROLE r; END $$",
            "DO $body$ BEGIN IF true THEN PERFORM pg_advisory_lock(7); END IF; END $body$",
            "DO $$ BEGIN EXECUTE 'SET ROLE r'; END $$",
            "DO $$ BEGIN CREATE TEMP TABLE t (a int); END $$",
            "/* hi */ LISTEN x",
            "DEALLOCATE ALL; SELECT 1",
        ] {
            assert!(refused(text), "{text}");
        }
        assert!(matches!(classify("DISCARD ALL", false), Verdict::Refuse(_)));
        assert!(matches!(
            classify("DEALLOCATE p", false),
            Verdict::Refuse(_)
        ));
    }

    #[test]
    fn ordinary_statements_pass_and_settings_are_noticed() {
        for text in [
            "SELECT 1",
            "UPDATE t SET role = 'x' WHERE a = 1",
            "SELECT 'SET ROLE r'",
            "-- SET ROLE r\nSELECT 1",
            "CREATE TABLE temp (a int)",
            "CREATE TABLE t (temp int)",
            "SELECT pg_advisory_xact_lock(1)",
            "SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;",
            "SELECT x INTO y FROM z",
            "DECLARE c CURSOR FOR SELECT 1",
            "INSERT INTO t VALUES ($1, $2)",
            "BEGIN; SET LOCAL work_mem = '64MB'; COMMIT",
            "DO $$ BEGIN EXECUTE 'SELECT 1'; END $$",
            "CREATE FUNCTION f() RETURNS void AS $$ SET ROLE r $$ LANGUAGE sql",
        ] {
            assert!(
                matches!(classify(text, true), Verdict::Pass { .. }),
                "{text}: {:?}",
                classify(text, true)
            );
        }
        for (text, settings) in [
            ("SELECT 1", false),
            (
                "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 1",
                false,
            ),
            ("SET search_path = x", true),
            ("set time zone 'UTC'", true),
            ("SET LOCAL work_mem = '1MB'", false),
            ("SELECT set_config('search_path', 'x', false)", true),
            ("RESET ALL", true),
            ("BEGIN; SET statement_timeout = 5; COMMIT", true),
            ("DO $$ BEGIN PERFORM 1; END $$", true),
            ("SELECT 1; SET application_name = 'a'", true),
        ] {
            assert_eq!(classify(text, true), Verdict::Pass { settings }, "{text}");
        }
    }

    #[test]
    fn deallocate_and_discard_all_alone_are_answered_by_pgtide() {
        assert_eq!(classify("DEALLOCATE ALL", true), Verdict::Deallocate(None));
        assert_eq!(
            classify("deallocate prepare all;", true),
            Verdict::Deallocate(None)
        );
        assert_eq!(
            classify("DEALLOCATE _pg3_0", true),
            Verdict::Deallocate(Some("_pg3_0".into()))
        );
        assert_eq!(
            classify("DEALLOCATE \"Mixed\"", true),
            Verdict::Deallocate(Some("Mixed".into()))
        );
        assert_eq!(classify("DISCARD ALL", true), Verdict::DiscardAll);
        assert_eq!(
            classify("DISCARD ALL; SELECT 1", true),
            Verdict::Pass { settings: true }
        );
        assert_eq!(
            classify("DISCARD PLANS", true),
            Verdict::Pass { settings: true }
        );
    }

    #[test]
    fn tokenizer_handles_quotes_comments_and_dollars() {
        let tokens =
            tokenize("SELECT E'a\\'b', \"Q\"\"x\", $t$ in $$ side $t$, $1 /* /* n */ */ -- c");
        assert_eq!(
            tokens,
            vec![
                Token::Word("select".into()),
                Token::Str("a'b".into()),
                Token::Punct(b','),
                Token::Ident("Q\"x".into()),
                Token::Punct(b','),
                Token::Dollar(" in $$ side ".into()),
                Token::Punct(b','),
                Token::Punct(b'$'),
            ]
        );
        // Unterminated quotes end at the end of the text, without a panic.
        for text in ["'abc", "\"abc", "$$abc", "/* abc", "E'\\"] {
            let _ = classify(text, true);
        }
    }
}
