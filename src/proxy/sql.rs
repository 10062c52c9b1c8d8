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
//! Whatever slips through is caught after the transaction by the same read-back, and the
//! connection is closed instead of reused. A statement is read back when it calls anything but
//! a known side-effect-free built-in (a function of the user's may run SET ROLE, set_config or
//! DEALLOCATE inside), names a temporary table, or holds a DO block. What the text cannot show
//! at all, code run implicitly by a trigger, a view or a column default, is not read back: a
//! trigger that changes session state leaves it on the pooled connection, as it would through
//! PgBouncer.
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

/// The name a token stands for as an identifier: a word, lowercased, or a quoted identifier as
/// written (`"set_config"` is the same function as `set_config`; `"Set_Config"` is not).
fn name(token: Option<&Token>) -> &str {
    match token {
        Some(Token::Word(w) | Token::Ident(w)) => w,
        _ => "",
    }
}

const ADVISORY_LOCKS: [&str; 4] = [
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
];

/// Names that are not user code when `(` follows them: keywords, type names, and built-in
/// functions that change no session state. Sorted (binary search). A call of any other name
/// makes pgtide read the settings back after the transaction: the list only saves that work.
const KNOWN_BEFORE_PARENTHESIS: [&str; 277] = [
    "abs",
    "age",
    "all",
    "and",
    "any",
    "array",
    "array_agg",
    "array_append",
    "array_cat",
    "array_length",
    "array_position",
    "array_prepend",
    "array_remove",
    "array_to_string",
    "as",
    "asc",
    "avg",
    "between",
    "bigint",
    "bit",
    "bit_and",
    "bit_or",
    "bool_and",
    "bool_or",
    "boolean",
    "btrim",
    "by",
    "cardinality",
    "case",
    "cast",
    "ceil",
    "ceiling",
    "char",
    "char_length",
    "character",
    "character_length",
    "check",
    "chr",
    "clock_timestamp",
    "coalesce",
    "collate",
    "concat",
    "concat_ws",
    "conflict",
    "constraint",
    "count",
    "cube",
    "cume_dist",
    "current_database",
    "current_schema",
    "current_schemas",
    "current_setting",
    "currval",
    "date",
    "date_part",
    "date_trunc",
    "dec",
    "decimal",
    "decode",
    "default",
    "dense_rank",
    "desc",
    "distinct",
    "div",
    "do",
    "double",
    "else",
    "elsif",
    "encode",
    "end",
    "every",
    "except",
    "exclude",
    "exists",
    "exp",
    "extract",
    "filter",
    "first_value",
    "float",
    "floor",
    "for",
    "format",
    "from",
    "gen_random_uuid",
    "generate_series",
    "generate_subscripts",
    "generated",
    "greatest",
    "grouping",
    "having",
    "if",
    "ilike",
    "in",
    "include",
    "initcap",
    "int",
    "integer",
    "intersect",
    "interval",
    "is",
    "join",
    "json_agg",
    "json_array_elements",
    "json_array_elements_text",
    "json_array_length",
    "json_build_array",
    "json_build_object",
    "json_each",
    "json_each_text",
    "json_extract_path",
    "json_extract_path_text",
    "json_object_agg",
    "json_typeof",
    "jsonb_agg",
    "jsonb_array_elements",
    "jsonb_array_elements_text",
    "jsonb_array_length",
    "jsonb_build_array",
    "jsonb_build_object",
    "jsonb_each",
    "jsonb_each_text",
    "jsonb_extract_path",
    "jsonb_extract_path_text",
    "jsonb_insert",
    "jsonb_object_agg",
    "jsonb_path_query",
    "jsonb_pretty",
    "jsonb_set",
    "jsonb_strip_nulls",
    "jsonb_typeof",
    "key",
    "lag",
    "last_value",
    "lateral",
    "lead",
    "least",
    "left",
    "length",
    "like",
    "limit",
    "ln",
    "log",
    "lower",
    "lpad",
    "ltrim",
    "make_date",
    "make_interval",
    "make_time",
    "make_timestamp",
    "make_timestamptz",
    "max",
    "md5",
    "min",
    "mod",
    "nextval",
    "not",
    "now",
    "nth_value",
    "ntile",
    "null",
    "nullif",
    "num_nonnulls",
    "num_nulls",
    "numeric",
    "octet_length",
    "of",
    "offset",
    "on",
    "or",
    "order",
    "over",
    "overlay",
    "partition",
    "percent_rank",
    "percentile_cont",
    "percentile_disc",
    "pg_advisory_unlock",
    "pg_advisory_unlock_all",
    "pg_advisory_unlock_shared",
    "pg_advisory_xact_lock",
    "pg_advisory_xact_lock_shared",
    "pg_backend_pid",
    "pg_column_size",
    "pg_current_xact_id",
    "pg_database_size",
    "pg_notify",
    "pg_relation_size",
    "pg_size_pretty",
    "pg_sleep",
    "pg_table_size",
    "pg_total_relation_size",
    "pg_try_advisory_xact_lock",
    "pg_try_advisory_xact_lock_shared",
    "pg_typeof",
    "position",
    "power",
    "primary",
    "quote_ident",
    "quote_literal",
    "quote_nullable",
    "raise",
    "random",
    "rank",
    "real",
    "regexp_match",
    "regexp_matches",
    "regexp_replace",
    "regexp_split_to_array",
    "regexp_split_to_table",
    "repeat",
    "replace",
    "return",
    "returning",
    "reverse",
    "right",
    "rollup",
    "round",
    "row",
    "row_number",
    "row_to_json",
    "rows",
    "rpad",
    "rtrim",
    "select",
    "set",
    "sets",
    "setval",
    "sign",
    "similar",
    "smallint",
    "some",
    "split_part",
    "sqrt",
    "starts_with",
    "statement_timestamp",
    "stddev",
    "string_agg",
    "string_to_array",
    "strpos",
    "substr",
    "substring",
    "sum",
    "then",
    "time",
    "timeofday",
    "timestamp",
    "timestamptz",
    "to_char",
    "to_date",
    "to_hex",
    "to_json",
    "to_jsonb",
    "to_number",
    "to_timestamp",
    "transaction_timestamp",
    "translate",
    "trim",
    "trunc",
    "txid_current",
    "union",
    "unique",
    "unnest",
    "upper",
    "using",
    "values",
    "varbit",
    "varchar",
    "variance",
    "varying",
    "version",
    "when",
    "where",
    "while",
    "width_bucket",
    "window",
    "with",
    "within",
];

/// Words that name session state that cannot follow a client, in forms the refusals below do
/// not spell out (`WITH … SELECT … INTO TEMP`, `EXPLAIN ANALYZE CREATE TEMP TABLE …`): the
/// transaction is read back, and a connection left with a temporary table is closed.
const STATE_WORDS: [&str; 2] = ["temp", "temporary"];

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
            Token::Word(_) | Token::Ident(_) => {
                let w = name(Some(token));
                if w == "execute" && !top {
                    after_execute = true;
                }
                let starts = i == 0 || BLOCK_WORDS.contains(&word(statement.get(i - 1)));
                if starts && executed {
                    if let Some(what) = refused_at(&statement[i..], top) {
                        found.refusal.get_or_insert(what);
                    }
                }
                if starts && matches!(w, "set" | "reset" | "discard" | "call") {
                    let local = matches!(
                        word(statement.get(i + 1)),
                        "local" | "transaction" | "constraints"
                    );
                    found.settings |= !(w == "set" && local);
                }
                // Words that name session state: whatever they are doing here, the settings
                // and leaks are read back after the transaction.
                if STATE_WORDS.contains(&w) {
                    found.settings = true;
                }
                if executed
                    && (w == "pg_temp" || w.starts_with("pg_temp_"))
                    && statement.get(i + 1) == Some(&Token::Punct(b'.'))
                {
                    found.refusal.get_or_insert("temporary tables");
                }
                if statement.get(i + 1) == Some(&Token::Punct(b'(')) {
                    call(statement, i, executed, found);
                }
            }
            _ => {}
        }
    }
}

/// A name followed by `(` at `statement[i]`: a function call, or a keyword, a type or a table's
/// column list. Calls that change what cannot follow a client are refused; a call of anything
/// but a known side-effect-free built-in runs code pgtide cannot see into, so the transaction's
/// settings and leaks are read back after it.
fn call(statement: &[Token], i: usize, executed: bool, found: &mut Findings) {
    let w = name(statement.get(i));
    let before = statement.get(i.wrapping_sub(1)).filter(|_| i > 0);
    let qualifier = match before {
        Some(Token::Punct(b'.')) => Some(name(statement.get(i.wrapping_sub(2)).filter(|_| i > 1))),
        _ => None,
    };
    if w == "set_config" {
        found.settings = true;
        if let Some(Token::Str(setting)) = statement.get(i + 2) {
            let setting = setting.to_ascii_lowercase();
            if executed && (setting == "role" || setting == "session_authorization") {
                found
                    .refusal
                    .get_or_insert("SET ROLE and SET SESSION AUTHORIZATION");
            }
        }
        return;
    }
    if ADVISORY_LOCKS.contains(&w) {
        if executed {
            found
                .refusal
                .get_or_insert("session advisory locks (pg_advisory_xact_lock works)");
        }
        return;
    }
    // A table or alias with a column list (`INSERT INTO t (a, b)`, `AS x(a)`, `f() g(a)`).
    let table_context = matches!(
        before.map(|t| name(Some(t))),
        Some("into" | "table" | "references" | "copy" | "as" | "with" | "recursive" | "only")
    ) || before == Some(&Token::Punct(b')'));
    if table_context && qualifier.is_none() {
        return;
    }
    let built_in = matches!(qualifier, None | Some("pg_catalog"))
        && w.bytes().all(|b| !b.is_ascii_uppercase())
        && KNOWN_BEFORE_PARENTHESIS.binary_search(&w).is_ok();
    if !built_in {
        found.settings = true;
    }
}

/// Whether the statement starting here is one that cannot follow a client (`top`: SQL, where
/// EXECUTE runs a prepared statement; in PL/pgSQL it runs a string, scanned on its own).
fn refused_at(statement: &[Token], top: bool) -> Option<&'static str> {
    let w = |i: usize| word(statement.get(i));
    match w(0) {
        "set" => match (w(1), w(2)) {
            ("role" | "session_authorization", _)
            | ("session", "role" | "authorization" | "session_authorization") => {
                Some("SET ROLE and SET SESSION AUTHORIZATION")
            }
            _ => None,
        },
        // At the top they are answered by pgtide for the client (see `classify`); run as code
        // they would drop every client's statements on the shared connection.
        "deallocate" => Some("DEALLOCATE inside code"),
        "discard" if w(1) == "all" => Some("DISCARD ALL together with other statements"),
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
const NEEDLES: [&[u8]; 14] = [
    b"(",
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
    // Every simple query and Parse of a transaction-mode client passes here: one pass over the
    // text for all the words at once, case-insensitively (a search per word, window by window,
    // cost several microseconds per query).
    static SEARCH: std::sync::LazyLock<aho_corasick::AhoCorasick> =
        std::sync::LazyLock::new(|| {
            aho_corasick::AhoCorasick::builder()
                .ascii_case_insensitive(true)
                .build(NEEDLES)
                .expect("the needles make an automaton")
        });
    SEARCH.is_match(text)
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

/// A startup parameter (or `options=-c …`) that cannot follow a client through a
/// transaction-mode pool: a role or session user set at login would stay on the shared
/// connection (RESET ALL leaves them, and pg_settings does not show them).
pub fn refused_startup_setting(settings: &[(String, String)]) -> Option<String> {
    settings
        .iter()
        .any(|(name, _)| {
            let name = name.to_ascii_lowercase();
            name == "role" || name == "session_authorization"
        })
        .then(|| refusal("a role or session_authorization given at login"))
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
            // Quoted names are the same functions.
            "SELECT \"set_config\"('role', 'r', false)",
            "SELECT \"pg_advisory_lock\"(1)",
            "SELECT pg_catalog.\"pg_advisory_lock\"(1)",
            // The setting's own name, and the temporary schema by name.
            "SET session_authorization = 'bob'",
            "set session session_authorization to bob",
            "CREATE TABLE pg_temp.t (a int)",
            "SELECT 1 AS a INTO pg_temp.t",
            "create table PG_TEMP_3.t (a int)",
            // Run as code, they would drop other clients' statements on the connection.
            "DO $$ BEGIN EXECUTE 'DEALLOCATE ALL'; END $$",
            "DO $$ BEGIN DEALLOCATE ALL; END $$",
            "DO $$ BEGIN EXECUTE 'DISCARD ALL'; END $$",
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
    fn code_pgtide_cannot_see_into_is_read_back_after() {
        for text in [
            // A function of the user's may do anything a session can.
            "SELECT f()",
            "SELECT * FROM app.search(1)",
            "SELECT \"Count\"(1)",
            "SELECT myschema.count(1)",
            "INSERT INTO t VALUES (my_default())",
            "SELECT \"set_config\"('search_path', 'x', false)",
            "PERFORM 1; SELECT pg_catalog.set_config('search_path', 'x', false)",
            // Temporary tables in forms not refused by name.
            "WITH x AS (SELECT 1) SELECT * INTO TEMP t FROM x",
            "EXPLAIN ANALYZE CREATE TEMP TABLE t AS SELECT 1",
        ] {
            assert!(
                matches!(
                    classify(text, true),
                    Verdict::Pass { settings: true } | Verdict::Refuse(_)
                ),
                "{text}: {:?}",
                classify(text, true)
            );
            assert_ne!(
                classify(text, true),
                Verdict::Pass { settings: false },
                "{text}"
            );
        }
        // Keywords, types, table column lists and side-effect-free built-ins are not calls.
        for text in [
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 2, 3, 4, CURRENT_TIMESTAMP)",
            "SELECT count(*), max(a), coalesce(b, 0) FROM t WHERE c IN (1, 2) AND EXISTS (SELECT 1)",
            "SELECT pg_catalog.now(), $1::numeric(10, 2), CAST(x AS varchar(20))",
            "WITH RECURSIVE r(n) AS (VALUES (1) UNION ALL SELECT n + 1 FROM r) SELECT * FROM r",
            "SELECT * FROM generate_series(1, 3) g(x) JOIN t ON (t.a = g.x)",
            "INSERT INTO t (a) VALUES (1) ON CONFLICT (a) DO UPDATE SET a = excluded.a RETURNING (a)",
            "SELECT row_number() OVER (PARTITION BY a ORDER BY b) FROM t",
            "COPY t (a, b) FROM STDIN",
        ] {
            assert_eq!(classify(text, true), Verdict::Pass { settings: false }, "{text}");
        }
    }

    #[test]
    fn a_role_given_at_login_is_refused() {
        let setting = |name: &str| vec![(name.to_string(), "x".to_string())];
        assert!(refused_startup_setting(&setting("role")).is_some());
        assert!(refused_startup_setting(&setting("Session_Authorization")).is_some());
        assert!(refused_startup_setting(&setting("search_path")).is_none());
    }

    #[test]
    fn the_list_of_known_names_is_sorted_and_lowercase() {
        let mut sorted = KNOWN_BEFORE_PARENTHESIS.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted, KNOWN_BEFORE_PARENTHESIS.to_vec());
        assert!(KNOWN_BEFORE_PARENTHESIS
            .iter()
            .all(|w| *w == w.to_ascii_lowercase()));
        for call in ["set_config", "pg_advisory_lock", "pg_try_advisory_lock"] {
            assert!(
                KNOWN_BEFORE_PARENTHESIS.binary_search(&call).is_err(),
                "{call}"
            );
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
        assert!(refused("DISCARD ALL; SELECT 1"));
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
