//! `tidy`: the house rules (`../shared/STYLE.md`, "Keystone house rules")
//! that a machine can check, after rust-analyzer's `xtask/src/tidy.rs`.
//! Every rule is a pure function over file contents, so the tests below feed
//! them synthetic sources (as `layers.rs` does with graphs); [`run`] walks
//! the repository and prints each violation as `path:line: message`.
//!
//! The rules:
//! 1. The `unsafe` keyword appears only in the files [`UNSAFE_ALLOWED`]
//!    names (FFI, ring and exchange modules: house rule 5) or, until they
//!    move, in [`UNSAFE_PENDING`]; an entry that covers no file using
//!    `unsafe` is stale and fails too, so neither list outlives the code it
//!    excuses.
//! 2. Every `unsafe fn` (free, method, trait or `extern "C"`) and `unsafe
//!    trait` has a `# Safety` section in the doc comment right above it;
//!    every `unsafe impl` has a `// SAFETY:` comment above it. Methods of a
//!    trait impl inherit the trait's contract and are not checked. (Unsafe
//!    blocks are clippy's `undocumented_unsafe_blocks`, denied workspace-wide.)
//! 3. Each layer crate's `lib.rs` (or `main.rs`) says `Never depends on:`
//!    and agrees with the layer DAG: it names every forbidden layer crate
//!    (or says "any keystone crate" when nothing is allowed) and no allowed one.
//! 4. Every `.rs` file under `crates/*/src/` opens with a `//!` module doc.
//! 5. No test file has a `return;` or `return Ok(());` commented `// skip`,
//!    `// missing` or `// not installed`: a test whose tool is missing fails
//!    naming it, unless `KEYSTONE_SKIP_MISSING_TOOLS=1`
//!    (`keystone_tests::require_tool`).
//!
//! "`unsafe` as a word" is decided by [`lex`], a small Rust lexer that knows
//! comments (nested block ones too), string, raw-string, byte and char
//! literals, and lifetimes: `"unsafe"` in a string or `unsafe_lua` as a name
//! is not the keyword.

use std::fmt;
use std::fs;
use std::path::Path;

use anyhow::{bail, Context as _, Result};

use crate::layers::{Allowed, LAYER_DAG};

/// Files that may use `unsafe` because their job is FFI, the ring or the
/// exchange ABI (house rule 5): a path ending in `/` is a folder prefix,
/// anything else one exact file. Each entry says why.
pub const UNSAFE_ALLOWED: &[(&str, &str)] = &[
    (
        "crates/keystone-ringbuf/src/",
        "the slab mapping: one mmap split into buffers, madvise on release, \
         raw views into the region",
    ),
    (
        "crates/keystone-reactor/src/",
        "the io_uring proactor: submission entries carry raw buffer pointers \
         and fds the kernel uses until the completion",
    ),
    (
        "crates/keystone-exchange/src/",
        "the #[repr(C)] HttpExchange ABI: raw spans and pointers LuaJIT reads",
    ),
    (
        "crates/keystone-parser/src/request.rs",
        "picohttpparser FFI: phr_parse_request over the caller's bytes",
    ),
    (
        "crates/keystone-parser/src/chunked.rs",
        "picohttpparser FFI: phr_decode_chunked decodes in place",
    ),
    (
        "crates/keystone-parser/src/response.rs",
        "picohttpparser FFI: phr_parse_response over an upstream's bytes",
    ),
    (
        "crates/keystone-lua/src/abi.rs",
        "the Lua ABI: extern \"C\" functions the prelude calls with the exchange \
         pointer and Lua string bytes",
    ),
    (
        "crates/keystone-lua/src/lib.rs",
        "the Lua state: owns the boxed exchange the prelude points at and \
         closes the lua_State before freeing it",
    ),
    (
        "crates/keystone-lua/src/app.rs",
        "the Lua state: luaL_newstate / luaL_openlibs / lua_close and mlua's \
         Lua::get_or_init_from_ptr over LuaJIT's own allocator",
    ),
    (
        "crates/keystone-lua/src/cstack.rs",
        "the C stack under Lua: pthread_getattr_np reads the thread's stack \
         bounds for the check C functions that call back into Lua enter by",
    ),
    (
        "crates/keystone-lua/src/budget.rs",
        "the Lua state: lua_sethook from the watchdog's signal and the hook \
         that raises the budget error",
    ),
    (
        "crates/keystone-spec/src/state.rs",
        "the spec files' own Lua state: mlua's Lua::unsafe_new, so a spec's \
         res:json() can load lua-cjson",
    ),
    (
        "crates/keystone-server/src/sys.rs",
        "the process's own syscalls, in one module and never on a worker's \
         event loop: signal mask, sigtimedwait and the budget handler, \
         pthread_kill of a runaway handler, eventfd, CPU pinning, \
         malloc_trim, getrlimit, the start-up pipes, kill for `keystone reload`",
    ),
    (
        "crates/keystone-parser/tests/no_alloc.rs",
        "counting #[global_allocator] shim (GlobalAlloc is an unsafe trait)",
    ),
    (
        "crates/keystone-router/tests/no_alloc.rs",
        "counting #[global_allocator] shim (GlobalAlloc is an unsafe trait)",
    ),
    (
        "crates/keystone-files/tests/no_alloc.rs",
        "counting #[global_allocator] shim (GlobalAlloc is an unsafe trait)",
    ),
    (
        "crates/keystone-server/tests/support/counting.rs",
        "counting #[global_allocator] shim shared by the zero_alloc* proofs (GlobalAlloc is an unsafe trait)",
    ),
    (
        "benches/benches/micro.rs",
        "counting #[global_allocator] shim for allocations per request",
    ),
];

/// PENDING: files that use `unsafe` today although their job is not FFI,
/// the ring or the exchange. Allowed for now; each entry leaves this list
/// when its calls move behind a safe API, and tidy fails on an entry whose
/// file no longer needs it, so the list can only shrink.
pub const UNSAFE_PENDING: &[(&str, &str)] = &[
    // Tests, benches and developer tasks calling libc where std has no
    // safe equivalent; a shared safe wrapper would empty these.
    (
        "tests/src/lib.rs",
        "kill(2): SIGTERM to the server under test (std only sends SIGKILL)",
    ),
    ("tests/tests/receive.rs", "geteuid(2) and kill(2)"),
    (
        "crates/keystone-ebpf/tests/steering.rs",
        "geteuid(2): BPF tests need root",
    ),
    (
        "crates/keystone-ebpf/tests/observer.rs",
        "geteuid(2) and raw syscalls the observer must count",
    ),
    (
        "benches/src/bin/raw_uring.rs",
        "the raw io_uring baseline: pushes submission entries and calls listen(2)",
    ),
    (
        "xtask/src/debian.rs",
        "geteuid(2): install packages only as root",
    ),
    (
        "xtask/src/bench.rs",
        "sysconf, getrlimit/setrlimit for the load generators, kill(2) to stop strace",
    ),
];

/// Where tests are told to get a tool (or to skip), for messages.
pub const SKIP_MISSING_TOOLS: &str = "KEYSTONE_SKIP_MISSING_TOOLS";

/// A rule broken at one line of one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub path: String,
    /// 1-based.
    pub line: usize,
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.path, self.line, self.message)
    }
}

fn violation(path: &str, line: usize, message: impl Into<String>) -> Violation {
    Violation {
        path: path.to_owned(),
        line,
        message: message.into(),
    }
}

// ---------------------------------------------------------------------------
// The lexer.

/// What a [`Token`] is, as far as the rules care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    /// A word: keyword or identifier (`r#unsafe` keeps its `r#`).
    Ident,
    /// A string, raw-string, byte-string, C-string or char literal.
    Literal,
    /// A number (`0x1f`, `3u32`).
    Number,
    /// `'a`, `'static`, a loop label.
    Lifetime,
    /// One other byte: `{`, `;`, `(`.
    Punct,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Token<'a> {
    pub kind: TokenKind,
    pub text: &'a str,
    /// 1-based line of the token's first byte.
    pub line: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommentKind {
    /// `// ...` (and `//// ...`).
    Line,
    /// `/// ...`
    OuterDoc,
    /// `//! ...`
    InnerDoc,
    /// `/* ... */`, nested ones included.
    Block,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Comment<'a> {
    pub kind: CommentKind,
    /// The whole comment, markers included.
    pub text: &'a str,
    /// 1-based line where it starts.
    pub line: usize,
}

/// A source split into code tokens and comments.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lexed<'a> {
    pub tokens: Vec<Token<'a>>,
    pub comments: Vec<Comment<'a>>,
}

/// Bytes that continue a word. Non-ASCII bytes count as word bytes, so every
/// token boundary falls on an ASCII byte (a valid `str` boundary).
fn is_word_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_' || byte >= 0x80
}

/// Byte length of the UTF-8 character starting with `byte`.
fn utf8_len(byte: u8) -> usize {
    match byte {
        0xF0.. => 4,
        0xE0.. => 3,
        0xC0.. => 2,
        _ => 1,
    }
}

struct Lexer<'a> {
    source: &'a str,
    bytes: &'a [u8],
    at: usize,
    line: usize,
    out: Lexed<'a>,
}

impl<'a> Lexer<'a> {
    fn peek(&self, ahead: usize) -> Option<u8> {
        self.bytes.get(self.at + ahead).copied()
    }

    /// Moves to `end` (clamped to the source), counting newlines crossed.
    fn advance_to(&mut self, end: usize) {
        let end = end.min(self.bytes.len());
        debug_assert!(end >= self.at);
        self.line += self.bytes[self.at..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        self.at = end;
    }

    fn push_token(&mut self, kind: TokenKind, start: usize, line: usize) {
        let text = &self.source[start..self.at];
        self.out.tokens.push(Token { kind, text, line });
    }

    fn line_comment(&mut self) {
        let start = self.at;
        let line = self.line;
        let end = self.bytes[start..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(self.bytes.len(), |offset| start + offset);
        self.advance_to(end);
        let text = &self.source[start..end];
        let kind = if text.starts_with("//!") {
            CommentKind::InnerDoc
        } else if text.starts_with("///") && !text.starts_with("////") {
            CommentKind::OuterDoc
        } else {
            CommentKind::Line
        };
        self.out.comments.push(Comment { kind, text, line });
    }

    /// `/* ... */`, nesting as Rust does; an unterminated one runs to the end.
    fn block_comment(&mut self) {
        let start = self.at;
        let line = self.line;
        let mut depth = 0usize;
        let mut index = start;
        while index < self.bytes.len() {
            match (self.bytes[index], self.bytes.get(index + 1)) {
                (b'/', Some(b'*')) => {
                    depth += 1;
                    index += 2;
                }
                (b'*', Some(b'/')) => {
                    depth -= 1;
                    index += 2;
                    if depth == 0 {
                        break;
                    }
                }
                _ => index += 1,
            }
        }
        self.advance_to(index);
        let text = &self.source[start..self.at];
        self.out.comments.push(Comment {
            kind: CommentKind::Block,
            text,
            line,
        });
    }

    /// A `"..."` body starting at the opening quote (escapes skipped).
    fn quoted(&mut self, start: usize, line: usize) {
        let mut index = self.at + 1;
        while index < self.bytes.len() {
            match self.bytes[index] {
                b'\\' => index += 2,
                b'"' => {
                    index += 1;
                    break;
                }
                _ => index += 1,
            }
        }
        self.advance_to(index);
        self.push_token(TokenKind::Literal, start, line);
    }

    /// `r"..."`, `r#"..."#`: `self.at` is on the first `#` or the quote.
    fn raw_quoted(&mut self, start: usize, line: usize) {
        let hashes = self.bytes[self.at..]
            .iter()
            .take_while(|&&b| b == b'#')
            .count();
        let body = self.at + hashes + 1;
        let mut index = body;
        let end = loop {
            if index >= self.bytes.len() {
                break self.bytes.len();
            }
            if self.bytes[index] == b'"'
                && self.bytes[index + 1..]
                    .iter()
                    .take(hashes)
                    .filter(|&&b| b == b'#')
                    .count()
                    == hashes
            {
                break index + 1 + hashes;
            }
            index += 1;
        };
        self.advance_to(end);
        self.push_token(TokenKind::Literal, start, line);
    }

    /// At a `'`: a char literal (`'a'`, `'\n'`, `'\u{e9}'`, `'é'`) or a
    /// lifetime / label (`'a`, `'static`).
    fn quote(&mut self, start: usize, line: usize) {
        let after = self.at + 1;
        match self.bytes.get(after) {
            Some(b'\\') => {
                // Escape: skip the escaped byte, then up to the closing quote.
                let mut index = after + 2;
                while index < self.bytes.len() && self.bytes[index] != b'\'' {
                    if self.bytes[index] == b'\n' {
                        break;
                    }
                    index += 1;
                }
                self.advance_to(index + 1);
                self.push_token(TokenKind::Literal, start, line);
            }
            Some(&first) => {
                let close = after + utf8_len(first);
                if self.bytes.get(close) == Some(&b'\'') {
                    self.advance_to(close + 1);
                    self.push_token(TokenKind::Literal, start, line);
                } else {
                    let words = self.bytes[after..]
                        .iter()
                        .take_while(|&&b| is_word_byte(b))
                        .count();
                    self.advance_to(after + words);
                    self.push_token(TokenKind::Lifetime, start, line);
                }
            }
            None => {
                self.advance_to(after);
                self.push_token(TokenKind::Punct, start, line);
            }
        }
    }

    /// A word, which may turn out to prefix a literal (`b"`, `br#"`, `c"`,
    /// `r"`, `b'`) or be a raw identifier (`r#unsafe`).
    fn word(&mut self) {
        let start = self.at;
        let line = self.line;
        let words = self.bytes[start..]
            .iter()
            .take_while(|&&b| is_word_byte(b))
            .count();
        let word = &self.source[start..start + words];
        let next = self.bytes.get(start + words).copied();
        let after_next = self.bytes.get(start + words + 1).copied();
        let raw = matches!(word, "r" | "br" | "cr");
        match next {
            Some(b'"') if raw => {
                self.at = start + words;
                self.raw_quoted(start, line);
            }
            Some(b'#') if raw && matches!(after_next, Some(b'#' | b'"')) => {
                self.at = start + words;
                self.raw_quoted(start, line);
            }
            Some(b'#') if word == "r" && after_next.is_some_and(is_word_byte) => {
                let tail = self.bytes[start + 2..]
                    .iter()
                    .take_while(|&&b| is_word_byte(b))
                    .count();
                self.advance_to(start + 2 + tail);
                self.push_token(TokenKind::Ident, start, line);
            }
            Some(b'"') if matches!(word, "b" | "c") => {
                self.at = start + words;
                self.quoted(start, line);
            }
            Some(b'\'') if word == "b" => {
                self.at = start + words;
                self.quote(start, line);
                if let Some(last) = self.out.tokens.last_mut() {
                    last.kind = TokenKind::Literal;
                }
            }
            _ => {
                self.advance_to(start + words);
                self.push_token(TokenKind::Ident, start, line);
            }
        }
    }

    fn run(mut self) -> Lexed<'a> {
        while let Some(byte) = self.peek(0) {
            let start = self.at;
            let line = self.line;
            match (byte, self.peek(1)) {
                (b'/', Some(b'/')) => self.line_comment(),
                (b'/', Some(b'*')) => self.block_comment(),
                (b'"', _) => self.quoted(start, line),
                (b'\'', _) => self.quote(start, line),
                (b'0'..=b'9', _) => {
                    let digits = self.bytes[start..]
                        .iter()
                        .take_while(|&&b| is_word_byte(b))
                        .count();
                    self.advance_to(start + digits);
                    self.push_token(TokenKind::Number, start, line);
                }
                _ if is_word_byte(byte) => self.word(),
                _ if byte.is_ascii_whitespace() => self.advance_to(start + 1),
                _ => {
                    self.advance_to(start + 1);
                    self.push_token(TokenKind::Punct, start, line);
                }
            }
        }
        self.out
    }
}

/// Splits Rust source into code tokens and comments. Never fails: an
/// unterminated literal or comment runs to the end of the source.
pub fn lex(source: &str) -> Lexed<'_> {
    Lexer {
        source,
        bytes: source.as_bytes(),
        at: 0,
        line: 1,
        out: Lexed::default(),
    }
    .run()
}

// ---------------------------------------------------------------------------
// Rule 1: `unsafe` only where it is needed.

fn entry_matches(entry: &str, path: &str) -> bool {
    if entry.ends_with('/') {
        path.starts_with(entry)
    } else {
        path == entry
    }
}

/// Line of the first `unsafe` keyword in `lexed`, if any.
pub fn first_unsafe_line(lexed: &Lexed<'_>) -> Option<usize> {
    lexed
        .tokens
        .iter()
        .find(|token| token.kind == TokenKind::Ident && token.text == "unsafe")
        .map(|token| token.line)
}

/// Rule 1 for one file: `unsafe` at `line` in `path` must be covered by an
/// entry of `allowed` or `pending`.
pub fn check_unsafe_allowed(
    path: &str,
    unsafe_line: Option<usize>,
    allowed: &[(&str, &str)],
    pending: &[(&str, &str)],
) -> Option<Violation> {
    let line = unsafe_line?;
    let covered = allowed
        .iter()
        .chain(pending)
        .any(|(entry, _)| entry_matches(entry, path));
    if covered {
        return None;
    }
    Some(violation(
        path,
        line,
        "`unsafe` outside the FFI, ring and exchange modules (house rule 5): put it \
         behind a safe API in one of them, or add this file to UNSAFE_ALLOWED in \
         xtask/src/tidy.rs with the reason it needs `unsafe`",
    ))
}

/// Entries of `list` (named `list_name` in messages) that cover none of
/// `unsafe_paths` (the files using `unsafe`): stale, to be removed.
pub fn stale_entries(
    list_name: &str,
    list: &[(&str, &str)],
    unsafe_paths: &[&str],
) -> Vec<Violation> {
    list.iter()
        .filter(|(entry, _)| !unsafe_paths.iter().any(|path| entry_matches(entry, path)))
        .map(|(entry, _)| {
            violation(
                "xtask/src/tidy.rs",
                1,
                format!(
                    "{list_name} entry {entry:?} covers no file that uses `unsafe` any more: \
                     remove it"
                ),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Rule 2: `# Safety` above every `unsafe fn` and `unsafe trait`, `// SAFETY:`
// above every `unsafe impl`.

/// The doc-comment and plain-comment lines right above line `line` (1-based)
/// of `lines`, skipping attributes (multi-line ones too); stops at the first
/// blank or code line.
fn comments_above<'a>(lines: &[&'a str], line: usize) -> (Vec<&'a str>, Vec<&'a str>) {
    let mut docs = Vec::new();
    let mut comments = Vec::new();
    let mut index = line.saturating_sub(1);
    while index > 0 {
        index -= 1;
        let text = lines[index].trim();
        if let Some(doc) = text
            .strip_prefix("///")
            .filter(|_| !text.starts_with("////"))
        {
            docs.push(doc.trim());
        } else if let Some(comment) = text.strip_prefix("//") {
            comments.push(comment.trim());
        } else if text.starts_with("#[") {
            // A one-line attribute, or the first line of a multi-line one.
            continue;
        } else if text.ends_with(']') {
            // The last line of a multi-line attribute: up to its `#[`.
            let opening = (0..index).rev().take(16).find(|&above| {
                let above = lines[above].trim();
                above.starts_with("#[")
            });
            match opening {
                Some(opening) => index = opening,
                None => break,
            }
        } else {
            break;
        }
    }
    (docs, comments)
}

/// The kind of block each `{` opens, for telling trait-impl methods apart.
fn trait_impl_braces(tokens: &[Token<'_>]) -> Vec<bool> {
    let mut opens_trait_impl = vec![false; tokens.len()];
    for (index, token) in tokens.iter().enumerate() {
        if token.kind != TokenKind::Ident || token.text != "impl" {
            continue;
        }
        // An item `impl` follows the start, `}`, `;`, `{`, `]` or `unsafe`;
        // `-> impl Trait` and `x: impl Trait` are types.
        let item = index == 0 || matches!(tokens[index - 1].text, "}" | ";" | "{" | "]" | "unsafe");
        if !item {
            continue;
        }
        let Some(open) = tokens[index..].iter().position(|t| t.text == "{") else {
            continue;
        };
        let header = &tokens[index + 1..index + open];
        let is_trait_impl = header.iter().enumerate().any(|(at, t)| {
            t.kind == TokenKind::Ident
                && t.text == "for"
                && header.get(at + 1).is_none_or(|next| next.text != "<")
        });
        opens_trait_impl[index + open] = is_trait_impl;
    }
    opens_trait_impl
}

/// Rule 2 for one file.
pub fn check_unsafe_docs(path: &str, source: &str, lexed: &Lexed<'_>) -> Vec<Violation> {
    let lines: Vec<&str> = source.lines().collect();
    let tokens = &lexed.tokens;
    let opens_trait_impl = trait_impl_braces(tokens);
    // Innermost enclosing block first: is it a trait impl's?
    let mut blocks: Vec<bool> = Vec::new();
    let mut violations = Vec::new();
    for (index, token) in tokens.iter().enumerate() {
        match token.text {
            "{" => blocks.push(opens_trait_impl[index]),
            "}" => {
                blocks.pop();
            }
            _ => {}
        }
        if token.kind != TokenKind::Ident || token.text != "unsafe" {
            continue;
        }
        let word = |at: usize| tokens.get(at).map_or("", |t| t.text);
        let (docs, comments) = comments_above(&lines, token.line);
        let has_safety_section = docs.iter().any(|doc| doc.starts_with("# Safety"));
        match word(index + 1) {
            "impl" => {
                if !comments.iter().any(|c| c.starts_with("SAFETY:")) {
                    violations.push(violation(
                        path,
                        token.line,
                        "`unsafe impl` without a `// SAFETY:` comment above it saying \
                         why the contract holds",
                    ));
                }
            }
            "trait" => {
                if !has_safety_section {
                    violations.push(violation(
                        path,
                        token.line,
                        format!(
                            "`unsafe trait {}` without a `# Safety` section in its doc comment",
                            word(index + 2)
                        ),
                    ));
                }
            }
            _ => {
                let mut at = index + 1;
                if word(at) == "extern" {
                    at += 1;
                    if tokens.get(at).is_some_and(|t| t.kind == TokenKind::Literal) {
                        at += 1;
                    }
                }
                // `unsafe fn(..)` with no name is a pointer type.
                let named = tokens
                    .get(at + 1)
                    .is_some_and(|t| t.kind == TokenKind::Ident);
                let in_trait_impl = blocks.last() == Some(&true);
                if word(at) == "fn" && named && !in_trait_impl && !has_safety_section {
                    violations.push(violation(
                        path,
                        token.line,
                        format!(
                            "`unsafe fn {}` without a `# Safety` section in the doc comment \
                             above it (what the caller must guarantee)",
                            word(at + 1)
                        ),
                    ));
                }
            }
        }
    }
    violations
}

// ---------------------------------------------------------------------------
// Rule 3: `Never depends on:` agrees with the layer DAG.

const NEVER_MARKER: &str = "Never depends on:";

/// The clause after `Never depends on:` in the opening `//!` block of
/// `source`, with its 1-based line: up to the first sentence end or blank
/// `//!` line, parenthesised remarks dropped (they explain, they do not list).
pub fn never_depends_clause(source: &str) -> Option<(usize, String)> {
    let header: Vec<&str> = source
        .lines()
        .map_while(|line| line.trim_start().strip_prefix("//!"))
        .collect();
    let start = header.iter().position(|line| line.contains(NEVER_MARKER))?;
    let first = &header[start][header[start].find(NEVER_MARKER)? + NEVER_MARKER.len()..];
    let mut text = first.to_owned();
    for line in header[start + 1..]
        .iter()
        .take_while(|l| !l.trim().is_empty())
    {
        text.push(' ');
        text.push_str(line.trim());
    }
    let mut clause = String::new();
    let mut depth = 0usize;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            '.' if depth == 0 && chars.peek().is_none_or(|next| next.is_whitespace()) => break,
            _ if depth == 0 => clause.push(c),
            _ => {}
        }
    }
    Some((start + 1, clause.trim().to_owned()))
}

/// The crates a clause names, as full package names, in order; a name is
/// recognised with or without `keystone-` when it is one of `known`, and any
/// `keystone-*` word is a name (unknown ones are reported).
fn named_crates(clause: &str, known: &[&str]) -> Vec<String> {
    let lower = clause.to_ascii_lowercase();
    let mut names: Vec<String> = Vec::new();
    for word in lower.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_')) {
        let word = word.trim_matches('-');
        let full = if word.starts_with("keystone-") {
            word.to_owned()
        } else if known.contains(&format!("keystone-{word}").as_str()) {
            format!("keystone-{word}")
        } else if !word.is_empty() && known.contains(&word) {
            word.to_owned()
        } else {
            continue;
        };
        if !names.contains(&full) {
            names.push(full);
        }
    }
    names
}

fn says_any_keystone_crate(clause: &str) -> bool {
    let words: Vec<String> = clause
        .split_whitespace()
        .map(|word| word.to_ascii_lowercase())
        .collect();
    let joined = words.join(" ");
    joined.contains("any keystone crate") || joined.contains("any other keystone crate")
}

/// Rule 3 for crate `name`, whose root file `path` holds `source`. `dag` is
/// the layer DAG; the layer crates are those it gives an `Allowed::Only`.
/// The DAG only lists what is allowed, so naming a `keystone-*` crate it
/// does not know (one still being written) is no contradiction.
pub fn check_never_depends(
    path: &str,
    source: &str,
    name: &str,
    dag: &[(&str, Allowed)],
) -> Vec<Violation> {
    let Some((_, Allowed::Only(allowed))) = dag.iter().find(|(crate_name, _)| *crate_name == name)
    else {
        return Vec::new();
    };
    let layer_crates: Vec<&str> = dag
        .iter()
        .filter(|(_, rule)| matches!(rule, Allowed::Only(_)))
        .map(|(crate_name, _)| *crate_name)
        .collect();
    let known: Vec<&str> = dag.iter().map(|(crate_name, _)| *crate_name).collect();
    let Some((line, clause)) = never_depends_clause(source) else {
        return vec![violation(
            path,
            1,
            format!(
                "{name}: the opening `//!` doc has no `{NEVER_MARKER}` clause (house rule 1); \
                 name the crates the layer DAG forbids it"
            ),
        )];
    };
    let mut violations = Vec::new();
    let any_crate = says_any_keystone_crate(&clause);
    if any_crate && !allowed.is_empty() {
        violations.push(violation(
            path,
            line,
            format!(
                "{name}: `{NEVER_MARKER}` says any keystone crate, but the layer DAG allows [{}]",
                allowed.join(", ")
            ),
        ));
    }
    for named in named_crates(&clause, &known) {
        let message = if named == name {
            format!("{name}: `{NEVER_MARKER}` names the crate itself")
        } else if allowed.contains(&named.as_str()) {
            format!(
                "{name}: `{NEVER_MARKER}` names {named}, which the layer DAG allows \
                 (xtask/src/layers.rs)"
            )
        } else {
            continue;
        };
        violations.push(violation(path, line, message));
    }
    if !any_crate {
        let named = named_crates(&clause, &known);
        let missing: Vec<&str> = layer_crates
            .iter()
            .filter(|layer| **layer != name && !allowed.contains(layer))
            .filter(|layer| !named.iter().any(|n| n == **layer))
            .copied()
            .collect();
        if !missing.is_empty() {
            violations.push(violation(
                path,
                line,
                format!(
                    "{name}: `{NEVER_MARKER}` omits {}, which the layer DAG forbids it",
                    missing.join(", ")
                ),
            ));
        }
    }
    violations
}

// ---------------------------------------------------------------------------
// Rule 4: every file under crates/*/src opens with `//!`.

/// Rule 4 for one file.
pub fn check_module_doc(path: &str, source: &str) -> Option<Violation> {
    if source.starts_with("//!") {
        return None;
    }
    Some(violation(
        path,
        1,
        "does not open with a `//!` module doc line saying what the module is for",
    ))
}

// ---------------------------------------------------------------------------
// Rule 5: no test passes because a tool is missing.

/// Comment openings that mark an early return as a skip.
const SKIP_WORDS: &[&str] = &["skip", "missing", "not installed"];

/// Rule 5 for one test file: `return;` or `return Ok(());` commented
/// `// skip...`, `// missing...` or `// not installed...` on the same line.
pub fn check_skip_returns(path: &str, lexed: &Lexed<'_>) -> Vec<Violation> {
    let mut violations = Vec::new();
    for comment in &lexed.comments {
        if comment.kind != CommentKind::Line {
            continue;
        }
        let words = comment
            .text
            .trim_start_matches('/')
            .trim()
            .to_ascii_lowercase();
        if !SKIP_WORDS.iter().any(|skip| words.starts_with(skip)) {
            continue;
        }
        let code: Vec<&str> = lexed
            .tokens
            .iter()
            .filter(|token| token.line == comment.line)
            .map(|token| token.text)
            .collect();
        let returns = code.ends_with(&["return", ";"])
            || code.ends_with(&["return", "Ok", "(", "(", ")", ")", ";"]);
        if returns {
            violations.push(violation(
                path,
                comment.line,
                format!(
                    "test returns early (passes) when something is missing: fail naming \
                     the tool and how to get it (keystone_tests::require_tool), skipping \
                     only under {SKIP_MISSING_TOOLS}=1"
                ),
            ));
        }
    }
    violations
}

// ---------------------------------------------------------------------------
// The driver.

/// Top-level folders holding Rust the rules cover.
const ROOTS: &[&str] = &["crates", "tests", "benches", "xtask", "fuzz"];

/// Every `.rs` file under `dir`, as `/`-separated paths relative to `root`,
/// skipping `target` folders (build outputs, `fuzz/target` too).
fn rust_files(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .collect::<std::io::Result<_>>()?;
    entries.sort_by_key(|entry| entry.file_name());
    for entry in entries {
        let path = entry.path();
        let file_type = entry.file_type()?;
        if file_type.is_dir() {
            if entry.file_name() != "target" {
                rust_files(root, &path, out)?;
            }
        } else if file_type.is_file() && path.extension().is_some_and(|ext| ext == "rs") {
            let relative = path.strip_prefix(root).expect("walked below the root");
            let parts: Vec<_> = relative
                .components()
                .map(|part| part.as_os_str().to_string_lossy())
                .collect();
            out.push(parts.join("/"));
        }
    }
    Ok(())
}

/// `crates/<name>/src/...`.
fn is_crate_source(path: &str) -> bool {
    let mut parts = path.split('/');
    parts.next() == Some("crates") && parts.next().is_some() && parts.next() == Some("src")
}

/// `tests/...` or `crates/<name>/tests/...`.
fn is_test_file(path: &str) -> bool {
    let parts: Vec<&str> = path.split('/').collect();
    parts.first() == Some(&"tests")
        || (parts.first() == Some(&"crates") && parts.get(2) == Some(&"tests"))
}

/// All violations in the repository at `root`, in path order.
pub fn check_tree(root: &Path) -> Result<(usize, Vec<Violation>)> {
    let mut paths = Vec::new();
    for top in ROOTS {
        let dir = root.join(top);
        if dir.is_dir() {
            rust_files(root, &dir, &mut paths)?;
        }
    }
    let mut violations = Vec::new();
    let mut unsafe_paths: Vec<&str> = Vec::new();
    for path in &paths {
        let source =
            fs::read_to_string(root.join(path)).with_context(|| format!("reading {path}"))?;
        let lexed = lex(&source);
        let unsafe_line = first_unsafe_line(&lexed);
        if unsafe_line.is_some() {
            unsafe_paths.push(path);
        }
        violations.extend(check_unsafe_allowed(
            path,
            unsafe_line,
            UNSAFE_ALLOWED,
            UNSAFE_PENDING,
        ));
        violations.extend(check_unsafe_docs(path, &source, &lexed));
        if is_crate_source(path) {
            violations.extend(check_module_doc(path, &source));
        }
        if is_test_file(path) {
            violations.extend(check_skip_returns(path, &lexed));
        }
    }
    violations.extend(stale_entries(
        "UNSAFE_ALLOWED",
        UNSAFE_ALLOWED,
        &unsafe_paths,
    ));
    violations.extend(stale_entries(
        "UNSAFE_PENDING",
        UNSAFE_PENDING,
        &unsafe_paths,
    ));
    for (name, allowed) in LAYER_DAG {
        if !matches!(allowed, Allowed::Only(_)) {
            continue;
        }
        let candidates = [
            format!("crates/{name}/src/lib.rs"),
            format!("crates/{name}/src/main.rs"),
        ];
        let Some(path) = candidates.iter().find(|path| root.join(path).is_file()) else {
            violations.push(violation(
                "xtask/src/layers.rs",
                1,
                format!(
                    "{name} is in the layer DAG but crates/{name}/src has no lib.rs or main.rs"
                ),
            ));
            continue;
        };
        let source =
            fs::read_to_string(root.join(path)).with_context(|| format!("reading {path}"))?;
        violations.extend(check_never_depends(path, &source, name, LAYER_DAG));
    }
    Ok((paths.len(), violations))
}

/// `cargo xtask tidy`.
pub fn run(root: &Path) -> Result<()> {
    let (files, violations) = check_tree(root)?;
    if violations.is_empty() {
        println!(
            "tidy: {files} Rust files, {} unsafe entries allowed and {} pending, no violation",
            UNSAFE_ALLOWED.len(),
            UNSAFE_PENDING.len()
        );
        return Ok(());
    }
    for violation in &violations {
        println!("{violation}");
    }
    bail!("{} tidy violation(s)", violations.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(source: &str) -> Vec<&str> {
        lex(source)
            .tokens
            .iter()
            .filter(|token| token.kind == TokenKind::Ident)
            .map(|token| token.text)
            .collect()
    }

    fn messages(violations: &[Violation]) -> Vec<String> {
        violations.iter().map(ToString::to_string).collect()
    }

    // The lexer.

    #[test]
    fn lexer_skips_comments_and_strings() {
        let cases: &[(&str, &[&str])] = &[
            ("// unsafe\nfn a() {}", &["fn", "a"]),
            ("/// unsafe { }\nfn a() {}", &["fn", "a"]),
            ("/* unsafe /* nested unsafe */ still */ b", &["b"]),
            (r#"let s = "unsafe \" unsafe";"#, &["let", "s"]),
            (r##"let s = r#"unsafe " unsafe"#; x"##, &["let", "s", "x"]),
            (r#"let s = r"unsafe\"; y"#, &["let", "s", "y"]),
            (r#"f(b"unsafe", br"unsafe", c"unsafe")"#, &["f"]),
            ("let c = '\"'; unsafe", &["let", "c", "unsafe"]),
            ("let c = '\\''; unsafe", &["let", "c", "unsafe"]),
            ("let c = b'x'; d", &["let", "c", "d"]),
            ("let c = '\\u{1F600}'; e", &["let", "c", "e"]),
            ("let c = 'é'; f", &["let", "c", "f"]),
            (
                "fn g<'a>(x: &'a str) -> &'static str",
                &["fn", "g", "x", "str", "str"],
            ),
            (
                "unsafe_lua r#unsafe unsafe",
                &["unsafe_lua", "r#unsafe", "unsafe"],
            ),
        ];
        for (source, expected) in cases {
            assert_eq!(words(source), *expected, "{source:?}");
        }
    }

    #[test]
    fn lexer_counts_lines_across_comments_and_literals() {
        let source = "a\n/* one\ntwo */ b\n\"x\ny\" c\nr#\"\n\"# d\n// e\nf";
        let lexed = lex(source);
        let lines: Vec<(&str, usize)> = lexed
            .tokens
            .iter()
            .filter(|token| token.kind == TokenKind::Ident)
            .map(|token| (token.text, token.line))
            .collect();
        assert_eq!(lines, [("a", 1), ("b", 3), ("c", 5), ("d", 7), ("f", 9)]);
        let kinds: Vec<(CommentKind, usize)> = lexed
            .comments
            .iter()
            .map(|comment| (comment.kind, comment.line))
            .collect();
        assert_eq!(kinds, [(CommentKind::Block, 2), (CommentKind::Line, 8)]);
    }

    #[test]
    fn lexer_tells_comment_kinds_apart() {
        let lexed = lex("//! inner\n/// outer\n//// line\n// line\n");
        let kinds: Vec<CommentKind> = lexed.comments.iter().map(|c| c.kind).collect();
        assert_eq!(
            kinds,
            [
                CommentKind::InnerDoc,
                CommentKind::OuterDoc,
                CommentKind::Line,
                CommentKind::Line
            ]
        );
    }

    #[test]
    fn lexer_survives_unterminated_input() {
        for source in ["\"open", "/* open", "r#\"open", "'", "b'", "x // end"] {
            let _ = lex(source);
        }
    }

    // Rule 1.

    const ALLOWED: &[(&str, &str)] = &[
        ("crates/ring/src/", "ring"),
        ("crates/parser/src/ffi.rs", "FFI"),
    ];
    const PENDING: &[(&str, &str)] = &[("crates/server/src/worker.rs", "syscalls")];

    #[test]
    fn unsafe_outside_the_lists_fails() {
        let source = "//! x\n// unsafe in a comment\nfn f() { unsafe { g() } }\n";
        let line = first_unsafe_line(&lex(source));
        assert_eq!(line, Some(3));
        let violation = check_unsafe_allowed("crates/server/src/http.rs", line, ALLOWED, PENDING)
            .expect("http.rs is in neither list");
        assert!(violation
            .to_string()
            .starts_with("crates/server/src/http.rs:3: `unsafe` outside"));
    }

    #[test]
    fn unsafe_inside_the_lists_passes() {
        for path in [
            "crates/ring/src/lib.rs",
            "crates/ring/src/deep/mod.rs",
            "crates/parser/src/ffi.rs",
            "crates/server/src/worker.rs",
        ] {
            assert_eq!(check_unsafe_allowed(path, Some(1), ALLOWED, PENDING), None);
        }
        // An exact entry covers only that file.
        assert!(
            check_unsafe_allowed("crates/parser/src/ffi2.rs", Some(1), ALLOWED, PENDING).is_some()
        );
    }

    #[test]
    fn words_unsafe_in_strings_and_names_are_not_the_keyword() {
        let source = "//! x\nlet unsafe_lua = true; print(\"unsafe\"); // unsafe\n";
        assert_eq!(first_unsafe_line(&lex(source)), None);
        assert_eq!(
            check_unsafe_allowed("crates/server/src/cli.rs", None, ALLOWED, PENDING),
            None
        );
    }

    #[test]
    fn stale_entries_are_reported() {
        let stale = stale_entries("UNSAFE_PENDING", PENDING, &["crates/ring/src/lib.rs"]);
        assert_eq!(
            messages(&stale),
            [
                "xtask/src/tidy.rs:1: UNSAFE_PENDING entry \"crates/server/src/worker.rs\" covers \
              no file that uses `unsafe` any more: remove it"
            ]
        );
        assert!(
            stale_entries("UNSAFE_PENDING", PENDING, &["crates/server/src/worker.rs"]).is_empty()
        );
    }

    #[test]
    fn real_lists_are_well_formed() {
        for (entry, reason) in UNSAFE_ALLOWED.iter().chain(UNSAFE_PENDING) {
            assert!(!reason.trim().is_empty(), "{entry} needs a reason");
            assert!(!entry.starts_with('/') && !entry.contains('\\'), "{entry}");
        }
        for (entry, _) in UNSAFE_PENDING {
            assert!(
                !UNSAFE_ALLOWED
                    .iter()
                    .any(|(allowed, _)| entry_matches(allowed, entry)),
                "{entry} is already allowed"
            );
        }
    }

    // Rule 2.

    fn docs_violations(source: &str) -> Vec<String> {
        messages(&check_unsafe_docs("f.rs", source, &lex(source)))
    }

    #[test]
    fn unsafe_fn_without_safety_section_fails() {
        let source = "\
/// Reads a byte.
unsafe fn read(p: *const u8) -> u8 { unsafe { *p } }

/// Called by Lua.
#[no_mangle]
pub unsafe extern \"C\" fn find(p: *const u8) -> i32 { 0 }

impl Thing {
    unsafe fn method(&self) {}
}

trait Unchecked {
    unsafe fn get(&self) -> u8;
}
";
        assert_eq!(
            docs_violations(source),
            [
                "f.rs:2: `unsafe fn read` without a `# Safety` section in the doc comment above \
                 it (what the caller must guarantee)",
                "f.rs:6: `unsafe fn find` without a `# Safety` section in the doc comment above \
                 it (what the caller must guarantee)",
                "f.rs:9: `unsafe fn method` without a `# Safety` section in the doc comment \
                 above it (what the caller must guarantee)",
                "f.rs:13: `unsafe fn get` without a `# Safety` section in the doc comment above \
                 it (what the caller must guarantee)",
            ]
        );
    }

    #[test]
    fn unsafe_fn_with_safety_section_passes() {
        let source = "\
/// Reads a byte.
///
/// # Safety
/// `p` is readable.
#[inline]
#[cfg_attr(
    test,
    allow(dead_code)
)]
unsafe fn read(p: *const u8) -> u8 { unsafe { *p } }

/// # Safety
/// The prelude passes its exchange.
unsafe extern \"C-unwind\" fn hook(p: *const u8) {}

type FindFn = unsafe extern \"C\" fn(*const u8) -> i32;
fn takes(f: unsafe fn(u8)) {}

// SAFETY: the counter is atomic.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 { unsafe { System.alloc(layout) } }
}

impl<T> Send for Wrapper<T> where T: Send {
    unsafe fn ignored(&self) {}
}
";
        assert_eq!(docs_violations(source), Vec::<String>::new());
    }

    #[test]
    fn unsafe_impl_and_trait_need_their_notes() {
        let source = "\
/// Buffers the kernel may write.
unsafe trait IoBuf {}

/// A doc comment is not a SAFETY note.
unsafe impl Send for Ring {}

// SAFETY: only the worker thread touches it.
#[allow(clippy::non_send_fields_in_send_ty)]
unsafe impl Send for Slab {}

/// # Safety
/// The pointer stays valid until the completion.
unsafe trait Owned {}
";
        assert_eq!(
            docs_violations(source),
            [
                "f.rs:2: `unsafe trait IoBuf` without a `# Safety` section in its doc comment",
                "f.rs:5: `unsafe impl` without a `// SAFETY:` comment above it saying why the \
                 contract holds",
            ]
        );
    }

    #[test]
    fn unsafe_fn_in_a_string_or_after_a_blank_line_is_judged_as_written() {
        // A blank line detaches the doc comment (as a reader sees it).
        let source = "/// # Safety\n/// ok\n\nunsafe fn f() {}\nlet s = \"unsafe fn g()\";\n";
        assert_eq!(
            docs_violations(source),
            [
                "f.rs:4: `unsafe fn f` without a `# Safety` section in the doc comment above it \
              (what the caller must guarantee)"
            ]
        );
    }

    // Rule 3.

    const DAG: &[(&str, Allowed)] = &[
        ("keystone-ringbuf", Allowed::Only(&[])),
        ("keystone-parser", Allowed::Only(&["keystone-ringbuf"])),
        (
            "keystone-lua",
            Allowed::Only(&["keystone-parser", "keystone-ringbuf"]),
        ),
        (
            "keystone-server",
            Allowed::Only(&["keystone-ringbuf", "keystone-parser", "keystone-lua"]),
        ),
        ("keystone-tests", Allowed::Leaf),
        ("xtask", Allowed::Leaf),
    ];

    fn never(name: &str, source: &str) -> Vec<String> {
        messages(&check_never_depends("lib.rs", source, name, DAG))
    }

    #[test]
    fn clause_wraps_until_sentence_end_and_drops_remarks() {
        let source = "//! keystone-parser: marks structure.\n//!\n//! Never depends on: \
                      keystone-lua,\n//! server (layer 2 sees only ringbuf. Really). More \
                      about ringbuf.\n//! next line\nfn x() {}\n";
        assert_eq!(
            never_depends_clause(source),
            Some((3, "keystone-lua, server".to_owned()))
        );
        let stops_at_blank = "//! Never depends on: lua\n//! server\n//!\n//! ringbuf\n";
        assert_eq!(
            never_depends_clause(stops_at_blank),
            Some((1, "lua server".to_owned()))
        );
        // Only the opening `//!` block counts.
        assert_eq!(
            never_depends_clause("//! x\nfn a() {}\n//! Never depends on: y\n"),
            None
        );
    }

    #[test]
    fn clause_agreeing_with_the_dag_passes() {
        let cases = [
            (
                "keystone-parser",
                "//! p\n//! Never depends on: keystone-lua, `keystone-server`.\n",
            ),
            (
                "keystone-parser",
                "//! p\n//! Never depends on: lua or server (it sees ringbuf).\n",
            ),
            (
                "keystone-ringbuf",
                "//! r\n//! Never depends on: any other Keystone crate.\n",
            ),
            (
                "keystone-ringbuf",
                "//! r\n//! Never depends on: any keystone crate (lua, parser).\n",
            ),
            (
                "keystone-server",
                "//! s\n//! Never depends on: keystone-tests or xtask.\n",
            ),
            // A crate not in the DAG (still being written) is forbidden too.
            (
                "keystone-parser",
                "//! p\n//! Never depends on: lua, server, keystone-next.\n",
            ),
            // Leaves are not checked.
            ("xtask", "//! x\n"),
        ];
        for (name, source) in cases {
            assert_eq!(never(name, source), Vec::<String>::new(), "{source}");
        }
    }

    #[test]
    fn clause_disagreeing_with_the_dag_fails() {
        assert_eq!(
            never(
                "keystone-parser",
                "//! p\n//! Never depends on: keystone-lua.\n"
            ),
            [
                "lib.rs:2: keystone-parser: `Never depends on:` omits keystone-server, which the \
              layer DAG forbids it"
            ]
        );
        assert_eq!(
            never(
                "keystone-lua",
                "//! l\n//! Never depends on: keystone-ringbuf, server, keystone-cache.\n"
            ),
            [
                "lib.rs:2: keystone-lua: `Never depends on:` names keystone-ringbuf, which the \
                 layer DAG allows (xtask/src/layers.rs)",
            ]
        );
        assert_eq!(
            never(
                "keystone-lua",
                "//! l\n//! Never depends on: any other keystone crate.\n"
            ),
            [
                "lib.rs:2: keystone-lua: `Never depends on:` says any keystone crate, but the \
              layer DAG allows [keystone-parser, keystone-ringbuf]"
            ]
        );
        assert_eq!(
            never("keystone-ringbuf", "//! r\n//! Owns bytes.\n"),
            [
                "lib.rs:1: keystone-ringbuf: the opening `//!` doc has no `Never depends on:` \
              clause (house rule 1); name the crates the layer DAG forbids it"
            ]
        );
    }

    // Rule 4.

    #[test]
    fn module_doc_is_required() {
        assert_eq!(check_module_doc("a.rs", "//! Does a.\nfn a() {}\n"), None);
        assert_eq!(
            check_module_doc("a.rs", "use super::*;\n").map(|v| v.to_string()),
            Some(
                "a.rs:1: does not open with a `//!` module doc line saying what the module is for"
                    .to_owned()
            )
        );
        assert!(check_module_doc("a.rs", "\n//! late\n").is_some());
    }

    // Rule 5.

    #[test]
    fn commented_skip_returns_fail() {
        let source = "\
fn t() {
    if !wrk() {
        return; // skip: wrk is not installed
    }
    if !curl() { return Ok(()); // missing curl
    }
    if x { return;  //   Not installed here
    }
}
";
        let found: Vec<usize> = check_skip_returns("t.rs", &lex(source))
            .iter()
            .map(|v| v.line)
            .collect();
        assert_eq!(found, [3, 5, 7]);
    }

    #[test]
    fn other_returns_and_comments_pass() {
        let source = "\
fn t() {
    return; // done: the connection closed
    // skip the header
    let s = \"return; // skip\";
    return value; // skip
}
";
        assert_eq!(check_skip_returns("t.rs", &lex(source)), Vec::new());
    }

    // The driver.

    #[test]
    fn paths_are_classified() {
        assert!(is_crate_source("crates/keystone-lua/src/abi.rs"));
        assert!(!is_crate_source("crates/keystone-lua/tests/ctx.rs"));
        assert!(!is_crate_source("xtask/src/main.rs"));
        assert!(is_test_file("tests/tests/wrk.rs"));
        assert!(is_test_file("crates/keystone-lua/tests/modules.rs"));
        assert!(!is_test_file("crates/keystone-lua/src/lib.rs"));
        assert!(!is_test_file("benches/benches/micro.rs"));
    }
}
