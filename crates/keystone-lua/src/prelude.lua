-- Keystone engine prelude: trusted code, run once per worker in the real
-- globals before any user code. It builds `ctx` over the HttpExchange ABI
-- with LuaJIT's FFI (as lua-resty-core does for ngx.*), so field reads
-- compile into plain loads. User code never sees `ffi`: everything it needs
-- is captured here as upvalues.
--
-- Returns `init(ex_addr, fns, layout, messages)`, which returns
-- `dispatch(index)`, `register(handlers)`, `pin(slot, keep)` and
-- `pull(slot)` (the sandbox is built by sandbox.lua, not here).

local ffi = require("ffi")
local debug_traceback = debug.traceback
local setmetatable, rawget, rawset, type, tostring, tonumber, error, xpcall, pairs, ipairs, select =
    setmetatable, rawget, rawset, type, tostring, tonumber, error, xpcall, pairs, ipairs, select
local concat = table.concat
local floor = math.floor
local format = string.format
-- HeaderError::InvalidContentLength's code; its message names the value
-- (which passed the value check, so it holds no control bytes).
local BAD_CONTENT_LENGTH = -6
-- Integers up to 2^53 are exact in a double; within it a number header is
-- written in plain digits (tostring would give "1e+15" from 10^15).
local EXACT_INTEGER_MAX = 2 ^ 53
local ffi_string = ffi.string

ffi.cdef [[
typedef struct { uint32_t offset; uint32_t len; } ks_span;
typedef struct { ks_span name; ks_span value; } ks_header;
typedef struct { const char *name_ptr; uint32_t name_len; ks_span value; uint32_t _pad; } ks_param;
typedef struct { uint16_t family; uint16_t port; uint8_t addr[16]; } ks_peer;
typedef struct { uint16_t version; uint16_t cipher; uint16_t sni_len; char sni[255]; uint8_t offload; } ks_tls;
typedef struct {
  uint32_t generation;
  uint32_t worker;
  const char *base;
  ks_span method;
  ks_span target;
  ks_span path;
  ks_span query;
  ks_span body;
  const ks_header *headers;
  uint32_t header_count;
  uint32_t param_count;
  ks_param params[8];
  uint16_t minor_version;
  uint16_t body_kind;
  uint32_t status;
  uint32_t response_header_count;
  uint32_t arena_len;
  const char *body_ptr;
  uint64_t body_len;
  ks_header response_headers[64];
  char arena[8192];
  char scratch[8192];
  ks_peer peer;
  ks_span found;
  uint32_t upstream;
  uint32_t upstream_header_count;
  uint32_t upstream_path_len;
  const char *upstream_path;
  const char *upstream_key;
  uint32_t upstream_key_len;
  ks_header upstream_headers[32];
  uint32_t on_response;
  uint32_t upstream_status;
  uint32_t upstream_response_header_count;
  const char *upstream_base;
  const ks_header *upstream_response_headers;
  ks_peer upstream_peer;
  uint32_t body_streamed;
  uint32_t upstream_buffer;
  uint32_t upstream_body_len;
  const char *upstream_body;
  ks_tls tls;
} HttpExchange;
typedef int32_t (*ks_find_fn)(HttpExchange *, const char *, size_t);
typedef int32_t (*ks_set_fn)(HttpExchange *, const char *, size_t, const char *, size_t);
]]

-- C library functions that call back into Lua nest on the thread's C
-- stack, which LuaJIT does not bound (cstack.rs): recursion through one
-- (`f` calling `s:gsub(".", f)`) would run off the stack and end the
-- process. Each is replaced, in the real globals and so for the sandbox's
-- copies and the string methods alike, by an entry that first asks the
-- engine whether the C stack has room (`room() == 1`); when not, it is a
-- Lua error, a 500 like any other. Coroutine resumes are bounded by count
-- too (as PUC Lua's LUAI_MAXCCALLS does): each nests a few hundred bytes,
-- and thousands of nested coroutines unwinding one error through
-- `coroutine.wrap` would spend the handler's budget on the message.
local COROUTINE_NESTING_MAX = 200
local function guard_c_calls(room)
  local gsub, raw_format, sort = string.gsub, string.format, table.sort
  local co_create, co_resume = coroutine.create, coroutine.resume
  local function overflow(what)
    error("C stack overflow (" .. what .. " nested too deeply)", 3)
  end
  string.gsub = function(s, pattern, repl, n)
    local kind = type(repl)
    if kind ~= "string" and kind ~= "number" and room() == 0 then overflow("string.gsub") end
    return gsub(s, pattern, repl, n)
  end
  string.format = function(fmt, ...)
    if select("#", ...) > 0 and room() == 0 then overflow("string.format") end
    return raw_format(fmt, ...)
  end
  table.sort = function(t, comp)
    if room() == 0 then overflow("table.sort") end
    return sort(t, comp)
  end
  local resuming = 0
  local function resumed(...)
    resuming = resuming - 1
    return ...
  end
  local function resume(co, ...)
    if type(co) ~= "thread" then
      error("bad argument #1 to 'resume' (coroutine expected, got " .. type(co) .. ")", 2)
    end
    if resuming >= COROUTINE_NESTING_MAX or room() == 0 then
      return false, "C stack overflow (coroutine.resume nested too deeply)"
    end
    resuming = resuming + 1
    return resumed(co_resume(co, ...))
  end
  coroutine.resume = resume
  -- coroutine.wrap over the guarded resume; an error inside propagates as
  -- the real wrap's does (a string with the caller's position prepended,
  -- any other value as it is).
  local function wrapped(ok, ...)
    if ok then return ... end
    local message = ...
    if type(message) == "string" then error(message, 2) end
    error(message, 0)
  end
  coroutine.wrap = function(f)
    local co = co_create(f)
    return function(...) return wrapped(resume(co, ...)) end
  end
end

return function(ex_addr, fns, layout, messages)
  guard_c_calls(ffi.cast("int (*)(void)", fns.c_stack_room))
  -- The Rust side passes its own layout; refuse to run on a mismatch rather
  -- than read the wrong bytes.
  assert(ffi.sizeof("HttpExchange") == layout.size,
    "HttpExchange size mismatch: prelude " .. ffi.sizeof("HttpExchange") .. ", engine " .. layout.size)
  for field, offset in pairs(layout.offsets) do
    assert(ffi.offsetof("HttpExchange", field) == offset, "HttpExchange offset mismatch for " .. field)
  end
  assert(ffi.sizeof("ks_tls") == layout.tls_size,
    "TlsFacts size mismatch: prelude " .. ffi.sizeof("ks_tls") .. ", engine " .. layout.tls_size)
  for field, offset in pairs(layout.tls_offsets) do
    assert(ffi.offsetof("ks_tls", field) == offset, "TlsFacts offset mismatch for " .. field)
  end

  local ex = ffi.cast("HttpExchange *", ex_addr)
  local UPSTREAM_BUFFER_MAX = layout.upstream_buffer_max
  -- keystone_exchange's names by version and by cipher suite id (the
  -- engine's tables, so the two cannot differ); 0 is a cleartext version.
  local TLS_CLEARTEXT = 0
  local tls_protocols, tls_ciphers = layout.tls_protocols, layout.tls_ciphers
  local find_header = ffi.cast("ks_find_fn", fns.find_header)
  local find_param = ffi.cast("ks_find_fn", fns.find_param)
  local query_arg = ffi.cast("ks_find_fn", fns.query_arg)
  local find_cookie = ffi.cast("ks_find_fn", fns.find_cookie)
  local find_upstream_header = ffi.cast("ks_find_fn", fns.find_upstream_header)
  local upstream_addr = ffi.cast("ks_find_fn", fns.upstream_addr)
  local response_header = ffi.cast("ks_find_fn", fns.response_header)
  local remote_addr = ffi.cast("ks_find_fn", fns.remote_addr)
  local remove_header = ffi.cast("ks_find_fn", fns.remove_header)
  local wants_trace = ffi.cast("ks_find_fn", fns.wants_trace)
  local set_header = ffi.cast("ks_set_fn", fns.set_header)
  local set_upstream_header = ffi.cast("ks_set_fn", fns.set_upstream_header)
  local add_header = ffi.cast("ks_set_fn", fns.add_header)

  local BODY_INLINE, BODY_FILE, BODY_STREAM = 0, 1, 2 -- keystone_exchange::BodyKind
  local handlers = {}
  local current_body
  -- True while a ctx.on_response runs (its ctx.body is a string or nil).
  local in_on_response = false
  -- Proxying: the pool names (index + 1 is what ex.upstream holds), and the
  -- strings handed to the engine, kept alive until the next dispatch.
  local upstream_index, upstream_names = {}, {}
  local cur_upstream_path, cur_upstream_key, cur_upstream_headers
  -- ctx.on_response: the function set by the last handler, and those the
  -- engine keeps (by connection) until the upstream's head arrives.
  local cur_on_response, last_on_response
  -- The run (a count `begin` keeps) and the exchange generation the live
  -- proxies belong to: a proxy is live while it was made in this run and
  -- the exchange has not expired since.
  local runs, cur_generation = 0, nil
  local hooks = {}

  local function expired()
    error("exchange expired: ctx is valid only while its handler runs (a stream generator"
      .. " or a ctx kept for later must copy what it needs first: local path = ctx.path)", 3)
  end

  local function span(s)
    return ffi_string(ex.base + s.offset, s.len)
  end

  local function check_name(what, k)
    if type(k) ~= "string" then
      error(what .. " keys must be strings, got " .. type(k), 3)
    end
  end

  -- `upstream`: the error is of a ctx.upstream_headers write (a request
  -- header for the backend), else of ctx.headers.
  local function header_error(code, name, value, upstream)
    local got = ""
    if code == BAD_CONTENT_LENGTH then got = ", got '" .. tostring(value) .. "'" end
    local message = messages[code] or "response header error"
    if upstream then
      message = "ctx.upstream_headers: " .. message:gsub("response header", "request header")
    end
    error(message .. " (header '" .. tostring(name) .. "'" .. got .. ")", 3)
  end

  -- A view proxy (ctx.headers, ctx.params, ...) is a table made on each
  -- access, tagged at [1] (inside the table's own allocation, as ctx is)
  -- with the run it was made in; nothing keeps it. Where the handler's
  -- trace uses it and lets it go (`ctx.params.id`), LuaJIT sinks the
  -- allocation: the proxy costs no allocation at all. A proxy kept past
  -- its run fails its check, as ctx does past its exchange.
  local function proxy(mt)
    return setmetatable({ runs }, mt)
  end

  local function read_only(what)
    return function(_, k)
      error(what .. " is read-only (tried to set '" .. tostring(k) .. "')", 2)
    end
  end

  -- A read-only proxy whose fields `find` locates (an engine function
  -- returning an index or a length, negative when absent) and `read` turns
  -- into a string.
  local function lookup_mt(what, find, read)
    return {
      __metatable = false, -- getmetatable(ctx) reveals nothing, setmetatable fails
      __index = function(t, k)
        if rawget(t, 1) ~= runs or cur_generation ~= ex.generation then expired() end
        check_name(what, k)
        local i = find(ex, k, #k)
        if i < 0 then return nil end
        return read(i)
      end,
      __newindex = read_only(what),
    }
  end

  local params_mt = lookup_mt("ctx.params", find_param, function(i) return span(ex.params[i].value) end)
  local args_mt = lookup_mt("ctx.args", query_arg, function(n) return ffi_string(ex.scratch, n) end)
  local cookies_mt = lookup_mt("ctx.cookies", find_cookie, function() return span(ex.found) end)
  -- A header's line read in place, or (several lines) their list joined
  -- in the scratch: find_header's HEADER_JOINED plus its length.
  local HEADER_JOINED = layout.header_joined
  local request_headers_mt =
    lookup_mt("ctx.request.headers", find_header, function(i)
      if i >= HEADER_JOINED then return ffi_string(ex.scratch, i - HEADER_JOINED) end
      return span(ex.headers[i].value)
    end)

  local request_fields = {
    method = function() return span(ex.method) end,
    path = function() return span(ex.path) end,
    query = function() return span(ex.query) end,
    target = function() return span(ex.target) end,
    -- nil for a body larger than --max-body-bytes: it is not buffered and
    -- streams upstream if the handler proxies the request.
    body = function()
      if ex.body_streamed ~= 0 then return nil end
      return span(ex.body)
    end,
    version = function() return ex.minor_version == 0 and "1.0" or "1.1" end,
    headers = function()
      return proxy(request_headers_mt)
    end,
  }

  -- ctx.tls: the client connection's TLS facts, read from the exchange on
  -- each access (a name only when asked for).
  local tls_fields = {
    sni = function()
      local n = ex.tls.sni_len
      if n == 0 then return nil end
      return ffi_string(ex.tls.sni, n)
    end,
    protocol = function() return tls_protocols[ex.tls.version] end,
    cipher = function() return tls_ciphers[ex.tls.cipher] end,
  }

  local tls_mt = {
    __metatable = false,
    __index = function(t, k)
      if rawget(t, 1) ~= runs or cur_generation ~= ex.generation then expired() end
      local f = tls_fields[k]
      if f then return f() end
      return nil
    end,
    __newindex = read_only("ctx.tls"),
  }

  local request_mt = {
    __metatable = false, -- getmetatable(ctx) reveals nothing, setmetatable fails
    __index = function(t, k)
      if rawget(t, 1) ~= runs or cur_generation ~= ex.generation then expired() end
      local f = request_fields[k]
      if f then return f() end
      return nil
    end,
    __newindex = read_only("ctx.request"),
  }

  local function set_one(name, value, what)
    local tv = type(value)
    if tv == "number" then
      if value == floor(value) and value >= -EXACT_INTEGER_MAX and value <= EXACT_INTEGER_MAX then
        value = format("%d", value)
      else
        value = tostring(value)
      end
    elseif tv ~= "string" then
      error((what or "ctx.headers") .. "['" .. name .. "'] must be a string, number, list of strings or nil, got " .. tv, 3)
    end
    return value
  end

  local headers_mt = {
    __metatable = false, -- getmetatable(ctx) reveals nothing, setmetatable fails
    __index = function(t, k)
      if rawget(t, 1) ~= runs or cur_generation ~= ex.generation then expired() end
      check_name("ctx.headers", k)
      local i = response_header(ex, k, #k)
      if i < 0 then return nil end
      local h = ex.response_headers[i]
      return ffi_string(ex.arena + h.value.offset, h.value.len)
    end,
    __newindex = function(t, k, v)
      if rawget(t, 1) ~= runs or cur_generation ~= ex.generation then expired() end
      check_name("ctx.headers", k)
      local rc, value
      if v == nil then
        rc = remove_header(ex, k, #k)
      elseif type(v) == "table" then
        rc = remove_header(ex, k, #k)
        for _, item in ipairs(v) do
          if rc < 0 then break end
          value = set_one(k, item)
          rc = add_header(ex, k, #k, value, #value)
        end
      else
        value = set_one(k, v)
        rc = set_header(ex, k, #k, value, #value)
      end
      if rc < 0 then header_error(rc, k, value) end
    end,
  }

  local function response_headers()
    return proxy(headers_mt)
  end

  -- ctx.upstream_headers: request headers set (or, with nil, removed) for
  -- the upstream. Write-only but for what policy itself set.
  local upstream_headers_mt = {
    __metatable = false,
    __index = function(t, k)
      if t ~= cur_upstream_headers or cur_generation ~= ex.generation then expired() end
      check_name("ctx.upstream_headers", k)
      return rawget(t, "\0" .. k:lower())
    end,
    __newindex = function(t, k, v)
      if t ~= cur_upstream_headers or cur_generation ~= ex.generation then expired() end
      check_name("ctx.upstream_headers", k)
      local rc
      if type(v) == "table" then
        -- A list goes as one field, its values joined as RFC 9110 §5.3
        -- combines repeated fields (`Cookie` with "; ", RFC 6265 §5.4);
        -- an empty list removes the field, as nil does.
        local parts = {}
        for i, item in ipairs(v) do parts[i] = set_one(k, item, "ctx.upstream_headers") end
        if #parts == 0 then
          v = nil
        else
          v = concat(parts, k:lower() == "cookie" and "; " or ", ")
        end
      end
      if v == nil then
        rc = set_upstream_header(ex, k, #k, nil, 0)
      else
        local value = set_one(k, v, "ctx.upstream_headers")
        rc = set_upstream_header(ex, k, #k, value, #value)
        v = value
      end
      if rc < 0 then header_error(rc, k, v, true) end
      rawset(t, "\0" .. k:lower(), v)
    end,
  }

  local upstream_response_headers_mt = lookup_mt("ctx.upstream_response.headers",
    find_upstream_header, function(i)
      local h = ex.upstream_response_headers[i]
      return ffi_string(ex.upstream_base + h.value.offset, h.value.len)
    end)
  local upstream_response_mt = {
    __metatable = false,
    __index = function(t, k)
      if rawget(t, 1) ~= runs or cur_generation ~= ex.generation then expired() end
      if k == "status" then return ex.upstream_status end
      -- The whole body, when the handler set ctx.upstream_buffer.
      if k == "body" then
        if ex.upstream_body == nil then return nil end
        return ffi_string(ex.upstream_body, ex.upstream_body_len)
      end
      if k == "headers" then
        return proxy(upstream_response_headers_mt)
      end
      return nil
    end,
    __newindex = read_only("ctx.upstream_response"),
  }

  local function check_target(what, v)
    if type(v) ~= "string" then
      error(what .. " must be a string, got " .. type(v), 4)
    end
    return v
  end

  local getters = {
    method = request_fields.method,
    path = request_fields.path,
    query = request_fields.query,
    target = request_fields.target,
    worker = function() return ex.worker end,
    -- "https" on an encrypted client connection (nginx's $scheme).
    scheme = function()
      if ex.tls.version == TLS_CLEARTEXT then return "http" end
      return "https"
    end,
    -- nil on a cleartext connection, else a read-only view of its TLS.
    tls = function()
      if ex.tls.version == TLS_CLEARTEXT then return nil end
      return proxy(tls_mt)
    end,
    remote_addr = function()
      local n = remote_addr(ex, nil, 0)
      if n < 0 then return nil end
      return ffi_string(ex.scratch, n)
    end,
    status = function() return ex.status end,
    body = function() return current_body end,
    headers = response_headers,
    params = function()
      return proxy(params_mt)
    end,
    args = function()
      return proxy(args_mt)
    end,
    cookies = function()
      return proxy(cookies_mt)
    end,
    upstream = function()
      if ex.upstream == 0 then return nil end
      return upstream_names[ex.upstream]
    end,
    upstream_path = function() return cur_upstream_path end,
    on_response = function() return cur_on_response end,
    -- Only while ctx.on_response runs: the upstream's answer and its peer.
    upstream_response = function()
      if ex.upstream_base == nil then return nil end
      return proxy(upstream_response_mt)
    end,
    upstream_addr = function()
      local n = upstream_addr(ex, nil, 0)
      if n < 0 then return nil end
      return ffi_string(ex.scratch, n)
    end,
    upstream_key = function() return cur_upstream_key end,
    upstream_buffer = function()
      if ex.upstream_buffer == 0 then return nil end
      return ex.upstream_buffer
    end,
    upstream_headers = function()
      if not cur_upstream_headers then cur_upstream_headers = proxy(upstream_headers_mt) end
      return cur_upstream_headers
    end,
    request = function()
      return proxy(request_mt)
    end,
  }

  local setters = {
    status = function(v)
      local n = tonumber(v)
      if n == nil or n ~= floor(n) or n < 200 or n > 999 then
        -- 1xx are interim responses the engine sends itself, never final.
        error("ctx.status must be an integer from 200 to 999, got " .. tostring(v), 3)
      end
      ex.status = n
    end,
    body = function(v)
      local tv = type(v)
      if tv == "number" then v = tostring(v); tv = "string" end
      local kind, bytes = BODY_INLINE, v
      if tv == "table" then
        bytes = rawget(v, "file")
        if type(bytes) ~= "string" or bytes == "" then
          error("ctx.body as a table must be { file = \"relative/path\" }", 3)
        end
        kind = BODY_FILE
      elseif tv == "function" then
        kind, bytes = BODY_STREAM, nil
      elseif tv ~= "string" and tv ~= "nil" then
        error("ctx.body must be a string, { file = path }, a generator function or nil, got " .. tv, 3)
      end
      if in_on_response and kind ~= BODY_INLINE then
        -- The upstream's head is answered from the send path: a string
        -- replaces its body; files and generators are a handler's.
        error("ctx.body in ctx.on_response must be a string or nil, got " .. (tv == "table" and "{ file = ... }" or "a generator function"), 3)
      end
      -- The string (or generator) stays referenced as `current_body`, so
      -- the pointer handed to the engine stays valid.
      current_body = (kind == BODY_FILE) and bytes or v
      ex.body_kind = kind
      if bytes == nil then
        ex.body_ptr = nil
        ex.body_len = 0
      else
        ex.body_ptr = bytes
        ex.body_len = #bytes
      end
    end,
    upstream = function(v)
      if v == nil then ex.upstream = 0 return end
      local index = upstream_index[v]
      if index == nil then
        local known = concat(upstream_names, ", ")
        if known == "" then known = "none: the app table declares no upstreams" end
        error("ctx.upstream: no upstream named '" .. tostring(v) .. "' (known: " .. known .. ")", 3)
      end
      ex.upstream = index
    end,
    on_response = function(v)
      if v ~= nil and type(v) ~= "function" then
        error("ctx.on_response must be a function(ctx) or nil, got " .. type(v), 3)
      end
      cur_on_response = v
      ex.on_response = v and 1 or 0
    end,
    upstream_path = function(v)
      if v == nil then
        cur_upstream_path, ex.upstream_path, ex.upstream_path_len = nil, nil, 0
        return
      end
      check_target("ctx.upstream_path", v)
      -- A target the engine writes as is: origin-form, visible ASCII.
      if v:sub(1, 1) ~= "/" or v:find("[%z\1-\32\127-\255]") then
        error("ctx.upstream_path must start with '/' and hold only visible ASCII (percent-encode the rest), got '" .. v .. "'", 3)
      end
      cur_upstream_path = v
      ex.upstream_path = v
      ex.upstream_path_len = #v
    end,
    upstream_buffer = function(v)
      if v == nil then ex.upstream_buffer = 0 return end
      if type(v) ~= "number" or v ~= floor(v) or v < 1 or v > UPSTREAM_BUFFER_MAX then
        error("ctx.upstream_buffer must be a whole number of bytes from 1 to "
          .. UPSTREAM_BUFFER_MAX .. ", got " .. tostring(v), 3)
      end
      ex.upstream_buffer = v
    end,
    upstream_key = function(v)
      if type(v) == "number" then v = tostring(v) end
      if v == nil then
        cur_upstream_key, ex.upstream_key, ex.upstream_key_len = nil, nil, 0
        return
      end
      check_target("ctx.upstream_key", v)
      cur_upstream_key = v
      ex.upstream_key = v
      ex.upstream_key_len = #v
    end,
    headers = function(v)
      if type(v) ~= "table" then
        error("ctx.headers can only be assigned a table of headers, got " .. type(v), 3)
      end
      local h = response_headers()
      for name in pairs(v) do h[name] = v[name] end
    end,
  }

  local ctx_mt = {
    __metatable = false, -- getmetatable(ctx) reveals nothing, setmetatable fails
    __index = function(ctx, k)
      if rawget(ctx, 1) ~= ex.generation then expired() end
      local f = getters[k]
      if f then return f() end
      return nil
    end,
    __newindex = function(ctx, k, v)
      if rawget(ctx, 1) ~= ex.generation then expired() end
      local f = setters[k]
      if not f then
        error("ctx has no writable field '" .. tostring(k) .. "'", 2)
      end
      f(v)
    end,
  }

  -- A failure's traceback is built only when it will be written: the
  -- engine reports the first failure at a site (handler and file:line) in
  -- its error window and only counts the repeats.
  local function traceback(err)
    local message = tostring(err)
    if wants_trace(ex, message, #message) == 0 then return message end
    return debug_traceback(message, 1)
  end

  -- The body of the last request stays referenced until the next dispatch,
  -- so the engine can copy it from `ex.body_ptr` after `dispatch` returns;
  -- a body too large to copy is pinned under a key until it has been sent.
  local last_body
  local pinned = {}

  -- Forgets the last run's body, proxies and proxying strings before a run
  -- over the exchange as bound now.
  local function begin()
    current_body = nil
    cur_upstream_path, cur_upstream_key, cur_upstream_headers = nil, nil, nil
    cur_on_response = nil
    runs = runs + 1
    cur_generation = ex.generation
  end

  -- Runs handler `index` for the request bound in the exchange. Returns
  -- true (the response is in the exchange), or false and the error with
  -- its traceback. Returns no Lua values to the engine on success, so the
  -- call costs the engine no allocation.
  local function dispatch(index)
    begin()
    -- ctx holds its generation at [1]: a one-slot array part lives inside
    -- the table's own allocation, where a private table key would need a
    -- hash part of its own (criterion round-trip/plaintext, 5 alternating
    -- runs: medians 603 → 473 ns). Once dispatch's trace has the handler
    -- inside, ctx does not escape it and is sunk: no allocation at all.
    -- Field names never reach [1], so the index is private in practice.
    local ctx = setmetatable({ ex.generation }, ctx_mt)
    local ok, err = xpcall(handlers[index], traceback, ctx)
    last_body = current_body
    current_body = nil
    last_on_response = cur_on_response
    cur_on_response = nil
    if not ok then
      return false, err
    end
    return true
  end

  -- The handlers, and the app's upstream pool names in the engine's order
  -- (sorted): ctx.upstream = names[i] stores i.
  local function register(list, pools)
    handlers = list
    upstream_index, upstream_names = {}, {}
    for i, name in ipairs(pools) do
      upstream_index[name] = i
      upstream_names[i] = name
    end
  end

  local pulled = {}

  -- pin(key, true) keeps the last body (a string, or a stream generator)
  -- alive under `key`; pin(key, false) lets it and its last chunk go.
  local function pin(key, keep)
    if keep then
      pinned[key] = last_body
    else
      pinned[key], pulled[key] = nil, nil
    end
  end

  -- Calls the generator pinned under `key` once. Returns 1 with the chunk
  -- in ex.body_ptr/body_len (kept alive until the next pull), 0 at the end
  -- of the stream, or -1 and the error (traceback included).
  local function pull(key)
    local generator = pinned[key]
    -- Nothing pinned is an engine bug (a pull on the wrong state); ending
    -- the stream cleanly would pass a cut body off as complete.
    if generator == nil then return -1, "no stream is pinned under this key" end
    local ok, chunk = xpcall(generator, traceback)
    if ok and type(chunk) == "number" then chunk = tostring(chunk) end
    if not ok or type(chunk) ~= "string" then
      pinned[key], pulled[key] = nil, nil
      if not ok then return -1, chunk end
      if chunk == nil then return 0 end
      return -1, "stream generator must return a string or nil, got " .. type(chunk)
    end
    pulled[key] = chunk
    ex.body_ptr = chunk
    ex.body_len = #chunk
    return 1
  end

  -- respond(key, "pin") keeps the last handler's ctx.on_response under
  -- `key`; respond(key, "drop") lets it go; respond(key, "run") calls it
  -- with a fresh ctx over the bound request and the upstream's answer.
  -- Returns true, or false and the error (traceback included).
  local function respond(key, action)
    if action == "pin" then
      hooks[key] = last_on_response
      return true
    end
    local hook = hooks[key]
    hooks[key] = nil
    if action ~= "run" then return true end
    if hook == nil then return false, "no ctx.on_response is kept for this request" end
    begin()
    local ctx = setmetatable({ ex.generation }, ctx_mt)
    in_on_response = true
    local ok, err = xpcall(hook, traceback, ctx)
    in_on_response = false
    last_body = current_body
    current_body = nil
    if not ok then return false, err end
    return true
  end

  return dispatch, register, pin, pull, respond
end
