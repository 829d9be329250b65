//! The FFI surface the prelude calls: `extern "C"` functions handed to Lua
//! as function pointers (no symbol export needed), plus the layout table the
//! prelude checks its `ffi.cdef` against at start-up.

use std::mem::offset_of;

use keystone_exchange::{
    find_query_arg, HeaderError, HttpExchange, TlsFacts, TLS_CIPHER_NAMES, TLS_PROTOCOL_NAMES,
};
use mlua::{Lua, Table};

/// Reads `len` bytes at `ptr` that LuaJIT passed from a Lua string.
///
/// # Safety
/// `ptr` must point at `len` readable bytes for the duration of the call
/// (LuaJIT passes the string's data, alive across the call).
unsafe fn bytes<'a>(ptr: *const u8, len: usize) -> &'a [u8] {
    if len == 0 {
        return &[];
    }
    // SAFETY: guaranteed by the caller.
    unsafe { std::slice::from_raw_parts(ptr, len) }
}

/// # Safety
/// `ex` is the worker's exchange (the only pointer the prelude holds), and no
/// Rust reference to it is live while Lua runs (`LuaWorker::run` takes
/// `&mut self`).
unsafe fn exchange<'a>(ex: *mut HttpExchange) -> &'a mut HttpExchange {
    assert!(!ex.is_null());
    // SAFETY: guaranteed by the caller.
    unsafe { &mut *ex }
}

fn index_or_missing(found: Option<usize>) -> i32 {
    found.map_or(-1, |i| i as i32)
}

fn result_code(result: Result<(), HeaderError>) -> i32 {
    match result {
        Ok(()) => 0,
        Err(err) => err.code(),
    }
}

/// What [`find_header`] adds to the length of a value it joined into the
/// scratch: above any header index (at most `MAX_HEADERS_LIMIT`), so the
/// prelude tells an index from a joined length.
pub(crate) const HEADER_JOINED: i32 = 1 << 20;

/// The request header named `name` (ASCII case-insensitive): the index of
/// its line when one has it (the value is read in place), -1 when none
/// does. Several lines are one list (RFC 9110 §5.3, as nginx's `$http_*`
/// since 1.23): their non-empty values are joined with `, ` (`; ` for
/// `Cookie`, RFC 6265 §5.4) into the exchange's scratch, and
/// [`HEADER_JOINED`] plus the joined length is returned; when the list
/// does not fit the scratch (8 KiB), the first non-empty line's index.
///
/// # Safety
/// The prelude (`prelude.lua`, through `ks_find_fn`) guarantees:
/// - `ex` is the worker's exchange: the one address `LuaWorker` handed the
///   prelude at load, which stays valid for the life of the Lua state (the
///   state is closed before the exchange is freed).
/// - No Rust reference to that exchange is alive while Lua runs: Lua is
///   entered only at load and through `LuaWorker`'s `&mut self` methods
///   (`run`, `pull`, `pin_body`), so the `&mut HttpExchange` made here for
///   the call is the only one.
/// - `name` points at `len` readable bytes that stay alive for the call: the
///   data of a Lua string the prelude passes (LuaJIT keeps an argument
///   string alive across the call; `len == 0` never reads `name`).
unsafe extern "C" fn find_header(ex: *mut HttpExchange, name: *const u8, len: usize) -> i32 {
    // SAFETY: the prelude passes its exchange and a live Lua string.
    let (ex, name) = unsafe { (exchange(ex), bytes(name, len)) };
    let count = ex.header_count as usize;
    // SAFETY: `headers` holds `header_count` entries while bound.
    let header = |i: usize| unsafe { *ex.headers.add(i) };
    let named = |i: &usize| ex.request_bytes(header(*i).name).eq_ignore_ascii_case(name);
    let Some(first) = (0..count).find(named) else {
        return -1;
    };
    let mut lines = (first..count)
        .filter(named)
        .filter(|&i| !ex.request_bytes(header(i).value).is_empty());
    let (one, two) = match (lines.next(), lines.next()) {
        (Some(one), Some(two)) => (one, two),
        // One line with a value (among empty ones, perhaps), or only
        // empty ones.
        (one, _) => return one.unwrap_or(first) as i32,
    };
    let separator: &[u8] = if name.eq_ignore_ascii_case(b"cookie") {
        b"; "
    } else {
        b", "
    };
    // Joined on the stack first: the lines are read from the exchange the
    // scratch belongs to.
    let mut out = [0u8; keystone_exchange::SCRATCH_BYTES];
    let mut joined = 0;
    for (n, i) in [one, two].into_iter().chain(lines).enumerate() {
        let value = ex.request_bytes(header(i).value);
        let extra = if n == 0 { 0 } else { separator.len() };
        if joined + extra + value.len() > out.len() {
            return one as i32;
        }
        out[joined..joined + extra].copy_from_slice(&separator[..extra]);
        joined += extra;
        out[joined..joined + value.len()].copy_from_slice(value);
        joined += value.len();
    }
    ex.scratch[..joined].copy_from_slice(&out[..joined]);
    HEADER_JOINED + joined as i32
}

/// Index of the route parameter named `name`, -1 when the route has none.
///
/// # Safety
/// The prelude (`prelude.lua`, through `ks_find_fn`) guarantees:
/// - `ex` is the worker's exchange: the one address `LuaWorker` handed the
///   prelude at load, which stays valid for the life of the Lua state (the
///   state is closed before the exchange is freed).
/// - No Rust reference to that exchange is alive while Lua runs: Lua is
///   entered only at load and through `LuaWorker`'s `&mut self` methods
///   (`run`, `pull`, `pin_body`), so the `&mut HttpExchange` made here for
///   the call is the only one.
/// - `name` points at `len` readable bytes that stay alive for the call: the
///   data of a Lua string the prelude passes (LuaJIT keeps an argument
///   string alive across the call; `len == 0` never reads `name`).
unsafe extern "C" fn find_param(ex: *mut HttpExchange, name: *const u8, len: usize) -> i32 {
    // SAFETY: the prelude passes its exchange and a live Lua string.
    let (ex, name) = unsafe { (exchange(ex), bytes(name, len)) };
    index_or_missing(ex.param_index(name))
}

/// Decodes the query argument named `name` into the exchange's scratch and
/// returns its length, -1 when absent or when no request is bound.
///
/// # Safety
/// The prelude (`prelude.lua`, through `ks_find_fn`) guarantees:
/// - `ex` is the worker's exchange: the one address `LuaWorker` handed the
///   prelude at load, which stays valid for the life of the Lua state (the
///   state is closed before the exchange is freed).
/// - No Rust reference to that exchange is alive while Lua runs: Lua is
///   entered only at load and through `LuaWorker`'s `&mut self` methods
///   (`run`, `pull`, `pin_body`), so the `&mut HttpExchange` made here for
///   the call is the only one.
/// - `name` points at `len` readable bytes that stay alive for the call: the
///   data of a Lua string the prelude passes (LuaJIT keeps an argument
///   string alive across the call; `len == 0` never reads `name`).
/// - The prelude reads the result from `ex.scratch` before the next call
///   that writes scratch (the value lives there only until then).
unsafe extern "C" fn query_arg(ex: *mut HttpExchange, name: *const u8, len: usize) -> i32 {
    // SAFETY: the prelude passes its exchange and a live Lua string.
    let (ex, name) = unsafe { (exchange(ex), bytes(name, len)) };
    if !ex.is_bound() {
        return -1;
    }
    // SAFETY: while bound, `base` covers every span `bind` received,
    // including `query`; the bytes are not the scratch we write below.
    let query = unsafe {
        std::slice::from_raw_parts(ex.base.add(ex.query.offset as usize), ex.query.len as usize)
    };
    match find_query_arg(query, name, &mut ex.scratch) {
        Some(n) => n as i32,
        None => -1,
    }
}

/// Index of the upstream response header named `name` (ASCII
/// case-insensitive) while `ctx.on_response` runs, -1 when there is none.
///
/// # Safety
/// The prelude (`prelude.lua`, through `ks_find_fn`) guarantees:
/// - `ex` is the worker's exchange: the one address `LuaWorker` handed the
///   prelude at load, which stays valid for the life of the Lua state (the
///   state is closed before the exchange is freed).
/// - No Rust reference to that exchange is alive while Lua runs: Lua is
///   entered only at load and through `LuaWorker`'s `&mut self` methods
///   (`run`, `pull`, `pin_body`, `run_hook`), so the `&mut HttpExchange`
///   made here for the call is the only one.
/// - `name` points at `len` readable bytes that stay alive for the call: the
///   data of a Lua string the prelude passes (LuaJIT keeps an argument
///   string alive across the call; `len == 0` never reads `name`).
unsafe extern "C" fn find_upstream_header(
    ex: *mut HttpExchange,
    name: *const u8,
    len: usize,
) -> i32 {
    // SAFETY: the prelude passes its exchange and a live Lua string.
    let (ex, name) = unsafe { (exchange(ex), bytes(name, len)) };
    if !ex.has_upstream_response() {
        return -1;
    }
    index_or_missing(
        ex.upstream_response_headers()
            .position(|(header, _)| header.eq_ignore_ascii_case(name)),
    )
}

/// Writes the peer that answered (`ctx.upstream_addr`, nginx's
/// `$upstream_addr`: `ip:port`) into the scratch; its length, or -1 when no
/// upstream answer is shown.
///
/// # Safety
/// The prelude (`prelude.lua`, through `ks_find_fn`) guarantees:
/// - `ex` is the worker's exchange: the one address `LuaWorker` handed the
///   prelude at load, which stays valid for the life of the Lua state (the
///   state is closed before the exchange is freed).
/// - No Rust reference to that exchange is alive while Lua runs: Lua is
///   entered only at load and through `LuaWorker`'s `&mut self` methods, so
///   the `&mut HttpExchange` made here for the call is the only one.
/// - The prelude reads the result from `ex.scratch` before the next call
///   that writes scratch.
unsafe extern "C" fn upstream_addr(ex: *mut HttpExchange, _name: *const u8, _len: usize) -> i32 {
    // SAFETY: the prelude passes its exchange.
    let ex = unsafe { exchange(ex) };
    let Some(ip) = ex.upstream_peer.ip() else {
        return -1;
    };
    let addr = std::net::SocketAddr::new(ip, ex.upstream_peer.port);
    to_scratch(ex, addr)
}

/// Writes `value` into the exchange's scratch for the prelude to read;
/// its length, or -1 when it does not fit.
fn to_scratch(ex: &mut HttpExchange, value: impl std::fmt::Display) -> i32 {
    use std::io::Write;
    let mut cursor = std::io::Cursor::new(&mut ex.scratch[..]);
    if write!(cursor, "{value}").is_err() {
        return -1;
    }
    cursor.position() as i32
}

/// Finds the first request cookie named `name` (`ctx.cookies.NAME`) and
/// leaves its value's span in `ex.found`; returns 0, or -1 when absent or
/// when no request is bound.
///
/// # Safety
/// The prelude (`prelude.lua`, through `ks_find_fn`) guarantees:
/// - `ex` is the worker's exchange: the one address `LuaWorker` handed the
///   prelude at load, which stays valid for the life of the Lua state (the
///   state is closed before the exchange is freed).
/// - No Rust reference to that exchange is alive while Lua runs: Lua is
///   entered only at load and through `LuaWorker`'s `&mut self` methods
///   (`run`, `pull`, `pin_body`), so the `&mut HttpExchange` made here for
///   the call is the only one.
/// - `name` points at `len` readable bytes that stay alive for the call: the
///   data of a Lua string the prelude passes (LuaJIT keeps an argument
///   string alive across the call; `len == 0` never reads `name`).
/// - The prelude reads `ex.found` before its next call into the engine.
unsafe extern "C" fn find_cookie(ex: *mut HttpExchange, name: *const u8, len: usize) -> i32 {
    // SAFETY: the prelude passes its exchange and a live Lua string.
    let (ex, name) = unsafe { (exchange(ex), bytes(name, len)) };
    match ex.cookie(name) {
        Some(span) => {
            ex.found = span;
            0
        }
        None => -1,
    }
}

/// Index of the response header named `name` (ASCII case-insensitive) among
/// those policy set, -1 when there is none.
///
/// # Safety
/// The prelude (`prelude.lua`, through `ks_find_fn`) guarantees:
/// - `ex` is the worker's exchange: the one address `LuaWorker` handed the
///   prelude at load, which stays valid for the life of the Lua state (the
///   state is closed before the exchange is freed).
/// - No Rust reference to that exchange is alive while Lua runs: Lua is
///   entered only at load and through `LuaWorker`'s `&mut self` methods
///   (`run`, `pull`, `pin_body`), so the `&mut HttpExchange` made here for
///   the call is the only one.
/// - `name` points at `len` readable bytes that stay alive for the call: the
///   data of a Lua string the prelude passes (LuaJIT keeps an argument
///   string alive across the call; `len == 0` never reads `name`).
unsafe extern "C" fn response_header(ex: *mut HttpExchange, name: *const u8, len: usize) -> i32 {
    // SAFETY: the prelude passes its exchange and a live Lua string.
    let (ex, name) = unsafe { (exchange(ex), bytes(name, len)) };
    let found = ex.response_headers[..ex.response_header_count as usize]
        .iter()
        .position(|h| {
            ex.arena[h.name.offset as usize..h.name.end() as usize].eq_ignore_ascii_case(name)
        });
    index_or_missing(found)
}

/// Formats the client's IP address (nginx's `$remote_addr`), which the
/// engine captured at accept and bound with the request, into the
/// exchange's scratch; -1 when there is no peer. No syscall: the address is
/// plain data in the exchange.
///
/// # Safety
/// The prelude (`prelude.lua`, through `ks_find_fn`; `_name` and `_len` are
/// unused, it passes `nil, 0`) guarantees:
/// - `ex` is the worker's exchange: the one address `LuaWorker` handed the
///   prelude at load, which stays valid for the life of the Lua state (the
///   state is closed before the exchange is freed).
/// - No Rust reference to that exchange is alive while Lua runs: Lua is
///   entered only at load and through `LuaWorker`'s `&mut self` methods
///   (`run`, `pull`, `pin_body`), so the `&mut HttpExchange` made here for
///   the call is the only one.
unsafe extern "C" fn remote_addr(ex: *mut HttpExchange, _name: *const u8, _len: usize) -> i32 {
    // SAFETY: the prelude passes its exchange.
    let ex = unsafe { exchange(ex) };
    let Some(ip) = ex.peer.ip() else { return -1 };
    to_scratch(ex, ip)
}

/// Removes every response header named `name`; 0, or a negative
/// [`HeaderError`] code.
///
/// # Safety
/// The prelude (`prelude.lua`, through `ks_find_fn`) guarantees:
/// - `ex` is the worker's exchange: the one address `LuaWorker` handed the
///   prelude at load, which stays valid for the life of the Lua state (the
///   state is closed before the exchange is freed).
/// - No Rust reference to that exchange is alive while Lua runs: Lua is
///   entered only at load and through `LuaWorker`'s `&mut self` methods
///   (`run`, `pull`, `pin_body`), so the `&mut HttpExchange` made here for
///   the call is the only one.
/// - `name` points at `len` readable bytes that stay alive for the call: the
///   data of a Lua string the prelude passes (LuaJIT keeps an argument
///   string alive across the call; `len == 0` never reads `name`).
unsafe extern "C" fn remove_header(ex: *mut HttpExchange, name: *const u8, len: usize) -> i32 {
    // SAFETY: the prelude passes its exchange and a live Lua string.
    let (ex, name) = unsafe { (exchange(ex), bytes(name, len)) };
    result_code(ex.remove_header(name))
}

/// Sets request header `name` for the upstream to `value`, or removes it
/// when `value` is null (`ctx.upstream_headers[name] = nil`); 0, or a
/// negative [`HeaderError`] code.
///
/// # Safety
/// The prelude (`prelude.lua`, through `ks_set_fn`) guarantees:
/// - `ex` is the worker's exchange: the one address `LuaWorker` handed the
///   prelude at load, which stays valid for the life of the Lua state (the
///   state is closed before the exchange is freed).
/// - No Rust reference to that exchange is alive while Lua runs: Lua is
///   entered only at load and through `LuaWorker`'s `&mut self` methods
///   (`run`, `pull`, `pin_body`), so the `&mut HttpExchange` made here for
///   the call is the only one.
/// - `name` and a non-null `value` point at `name_len` and `value_len`
///   readable bytes that stay alive for the call: the data of Lua strings
///   the prelude passes (a zero length never reads its pointer); a null
///   `value` is never read.
unsafe extern "C" fn set_upstream_header(
    ex: *mut HttpExchange,
    name: *const u8,
    name_len: usize,
    value: *const u8,
    value_len: usize,
) -> i32 {
    // SAFETY: the prelude passes its exchange and live Lua strings.
    let (ex, name) = unsafe { (exchange(ex), bytes(name, name_len)) };
    // SAFETY: as above; null means a removal and is not read.
    let value = (!value.is_null()).then(|| unsafe { bytes(value, value_len) });
    result_code(ex.set_upstream_header(name, value))
}

/// Replaces the response headers named `name` with one `name: value`; 0, or a
/// negative [`HeaderError`] code.
///
/// # Safety
/// The prelude (`prelude.lua`, through `ks_set_fn`) guarantees:
/// - `ex` is the worker's exchange: the one address `LuaWorker` handed the
///   prelude at load, which stays valid for the life of the Lua state (the
///   state is closed before the exchange is freed).
/// - No Rust reference to that exchange is alive while Lua runs: Lua is
///   entered only at load and through `LuaWorker`'s `&mut self` methods
///   (`run`, `pull`, `pin_body`), so the `&mut HttpExchange` made here for
///   the call is the only one.
/// - `name` and `value` point at `name_len` and `value_len` readable bytes
///   that stay alive for the call: the data of two Lua strings the prelude
///   passes (LuaJIT keeps argument strings alive across the call; a zero
///   length never reads its pointer).
unsafe extern "C" fn set_header(
    ex: *mut HttpExchange,
    name: *const u8,
    name_len: usize,
    value: *const u8,
    value_len: usize,
) -> i32 {
    // SAFETY: the prelude passes its exchange and two live Lua strings.
    let (ex, name, value) =
        unsafe { (exchange(ex), bytes(name, name_len), bytes(value, value_len)) };
    result_code(ex.set_header(name, value))
}

/// Appends one `name: value` response header; 0, or a negative
/// [`HeaderError`] code.
///
/// # Safety
/// The prelude (`prelude.lua`, through `ks_set_fn`) guarantees:
/// - `ex` is the worker's exchange: the one address `LuaWorker` handed the
///   prelude at load, which stays valid for the life of the Lua state (the
///   state is closed before the exchange is freed).
/// - No Rust reference to that exchange is alive while Lua runs: Lua is
///   entered only at load and through `LuaWorker`'s `&mut self` methods
///   (`run`, `pull`, `pin_body`), so the `&mut HttpExchange` made here for
///   the call is the only one.
/// - `name` and `value` point at `name_len` and `value_len` readable bytes
///   that stay alive for the call: the data of two Lua strings the prelude
///   passes (LuaJIT keeps argument strings alive across the call; a zero
///   length never reads its pointer).
unsafe extern "C" fn add_header(
    ex: *mut HttpExchange,
    name: *const u8,
    name_len: usize,
    value: *const u8,
    value_len: usize,
) -> i32 {
    // SAFETY: the prelude passes its exchange and two live Lua strings.
    let (ex, name, value) =
        unsafe { (exchange(ex), bytes(name, name_len), bytes(value, value_len)) };
    result_code(ex.add_header(name, value))
}

type FindFn = unsafe extern "C" fn(*mut HttpExchange, *const u8, usize) -> i32;
type SetFn = unsafe extern "C" fn(*mut HttpExchange, *const u8, usize, *const u8, usize) -> i32;

fn pointer(f: usize) -> mlua::LightUserData {
    mlua::LightUserData(f as *mut std::ffi::c_void)
}

/// The function-pointer table handed to the prelude's `init`.
pub(crate) fn functions(lua: &Lua) -> mlua::Result<Table> {
    let table = lua.create_table()?;
    let finds: [(&str, FindFn); 10] = [
        ("remote_addr", remote_addr),
        ("find_upstream_header", find_upstream_header),
        ("upstream_addr", upstream_addr),
        ("find_cookie", find_cookie),
        ("find_header", find_header),
        ("find_param", find_param),
        ("query_arg", query_arg),
        ("response_header", response_header),
        ("remove_header", remove_header),
        ("wants_trace", wants_trace),
    ];
    for (name, f) in finds {
        table.set(name, pointer(f as usize))?;
    }
    let sets: [(&str, SetFn); 3] = [
        ("set_header", set_header),
        ("add_header", add_header),
        ("set_upstream_header", set_upstream_header),
    ];
    for (name, f) in sets {
        table.set(name, pointer(f as usize))?;
    }
    let room: extern "C" fn() -> i32 = crate::cstack::c_stack_room;
    table.set("c_stack_room", pointer(room as usize))?;
    Ok(table)
}

/// Whether the failure now raised in a handler (`message`, `len` bytes)
/// is reported with its traceback: 1 for the first failure at its site in
/// the error window, 0 for a repeat, which is only counted
/// (`errors::wants_trace`). The request's `METHOD /path` labels the site.
///
/// # Safety
/// The prelude's error handler (`prelude.lua`, through `ks_find_fn`)
/// guarantees:
/// - `ex` is the worker's exchange: the one address `LuaWorker` handed the
///   prelude at load, which stays valid for the life of the Lua state.
/// - `message..message + len` are the bytes of the error string, a live Lua
///   string for the duration of the call.
/// - No Rust reference to that exchange is alive while Lua runs (Lua is
///   entered only through `LuaWorker`'s `&mut self` methods).
unsafe extern "C" fn wants_trace(ex: *mut HttpExchange, message: *const u8, len: usize) -> i32 {
    // SAFETY: the prelude passes its exchange and a live Lua string.
    let (ex, message) = unsafe { (exchange(ex), bytes(message, len)) };
    let mut label = [0u8; 96];
    let mut label_len = 0;
    if ex.is_bound() {
        for part in [ex.request_bytes(ex.method), b" ", ex.request_bytes(ex.path)] {
            let take = part.len().min(label.len() - label_len);
            label[label_len..label_len + take].copy_from_slice(&part[..take]);
            label_len += take;
        }
    }
    i32::from(crate::errors::wants_trace(&label[..label_len], message))
}

/// Size and field offsets of [`HttpExchange`] (and of its [`TlsFacts`]),
/// checked by the prelude against its `ffi.cdef` so the two declarations
/// cannot drift, and the TLS names the prelude shows (`ctx.tls`).
pub(crate) fn layout(lua: &Lua) -> mlua::Result<Table> {
    let offsets = lua.create_table()?;
    let fields: [(&str, usize); 42] = [
        ("generation", offset_of!(HttpExchange, generation)),
        ("worker", offset_of!(HttpExchange, worker)),
        ("base", offset_of!(HttpExchange, base)),
        ("method", offset_of!(HttpExchange, method)),
        ("target", offset_of!(HttpExchange, target)),
        ("path", offset_of!(HttpExchange, path)),
        ("query", offset_of!(HttpExchange, query)),
        ("body", offset_of!(HttpExchange, body)),
        ("headers", offset_of!(HttpExchange, headers)),
        ("header_count", offset_of!(HttpExchange, header_count)),
        ("param_count", offset_of!(HttpExchange, param_count)),
        ("params", offset_of!(HttpExchange, params)),
        ("minor_version", offset_of!(HttpExchange, minor_version)),
        ("body_kind", offset_of!(HttpExchange, body_kind)),
        ("status", offset_of!(HttpExchange, status)),
        (
            "response_header_count",
            offset_of!(HttpExchange, response_header_count),
        ),
        ("arena_len", offset_of!(HttpExchange, arena_len)),
        ("body_ptr", offset_of!(HttpExchange, body_ptr)),
        ("body_len", offset_of!(HttpExchange, body_len)),
        (
            "response_headers",
            offset_of!(HttpExchange, response_headers),
        ),
        ("arena", offset_of!(HttpExchange, arena)),
        ("scratch", offset_of!(HttpExchange, scratch)),
        ("peer", offset_of!(HttpExchange, peer)),
        ("found", offset_of!(HttpExchange, found)),
        ("upstream", offset_of!(HttpExchange, upstream)),
        (
            "upstream_header_count",
            offset_of!(HttpExchange, upstream_header_count),
        ),
        (
            "upstream_path_len",
            offset_of!(HttpExchange, upstream_path_len),
        ),
        ("upstream_path", offset_of!(HttpExchange, upstream_path)),
        ("upstream_key", offset_of!(HttpExchange, upstream_key)),
        (
            "upstream_key_len",
            offset_of!(HttpExchange, upstream_key_len),
        ),
        (
            "upstream_headers",
            offset_of!(HttpExchange, upstream_headers),
        ),
        ("on_response", offset_of!(HttpExchange, on_response)),
        ("upstream_status", offset_of!(HttpExchange, upstream_status)),
        (
            "upstream_response_header_count",
            offset_of!(HttpExchange, upstream_response_header_count),
        ),
        ("upstream_base", offset_of!(HttpExchange, upstream_base)),
        (
            "upstream_response_headers",
            offset_of!(HttpExchange, upstream_response_headers),
        ),
        ("upstream_peer", offset_of!(HttpExchange, upstream_peer)),
        ("body_streamed", offset_of!(HttpExchange, body_streamed)),
        ("upstream_buffer", offset_of!(HttpExchange, upstream_buffer)),
        (
            "upstream_body_len",
            offset_of!(HttpExchange, upstream_body_len),
        ),
        ("upstream_body", offset_of!(HttpExchange, upstream_body)),
        ("tls", offset_of!(HttpExchange, tls)),
    ];
    for (name, offset) in fields {
        offsets.set(name, offset)?;
    }
    let tls_offsets = lua.create_table()?;
    let tls_fields: [(&str, usize); 5] = [
        ("version", offset_of!(TlsFacts, version)),
        ("cipher", offset_of!(TlsFacts, cipher)),
        ("sni_len", offset_of!(TlsFacts, sni_len)),
        ("sni", offset_of!(TlsFacts, sni)),
        ("offload", offset_of!(TlsFacts, offload)),
    ];
    for (name, offset) in tls_fields {
        tls_offsets.set(name, offset)?;
    }
    let layout = lua.create_table()?;
    layout.set("size", std::mem::size_of::<HttpExchange>())?;
    layout.set("tls_size", std::mem::size_of::<TlsFacts>())?;
    layout.set("tls_offsets", tls_offsets)?;
    layout.set("tls_protocols", lua.create_table_from(TLS_PROTOCOL_NAMES)?)?;
    layout.set("tls_ciphers", lua.create_table_from(TLS_CIPHER_NAMES)?)?;
    layout.set("upstream_buffer_max", keystone_upstream::BUFFERED_BODY_MAX)?;
    layout.set("header_joined", HEADER_JOINED)?;
    layout.set("offsets", offsets)?;
    Ok(layout)
}

/// Messages for the negative codes the header functions return.
pub(crate) fn messages(lua: &Lua) -> mlua::Result<Table> {
    let table = lua.create_table()?;
    for err in HeaderError::ALL {
        table.set(err.code(), err.message())?;
    }
    Ok(table)
}
