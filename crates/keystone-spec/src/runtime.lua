-- Keystone spec runtime: the Lua half of `keystone test`, a busted-like test
-- runner for Keystone apps. Rust owns I/O, the command line and the engine:
-- it creates a plain LuaJIT state, fills the global `keystone` table (app,
-- _begin_test, _end_test, _clock), runs this chunk, then drives the module it
-- returns: M.load(path) once per spec file, M.run{filter, on_result} once.
-- This file defines the busted globals (describe, it, assert, ...),
-- keystone.json_decode/json_encode/null, the keystone.Response and
-- keystone.Headers metatables, and turns each test into a result table.

local keystone = keystone
local type, tostring, tonumber, select, pairs, ipairs = type, tostring, tonumber, select, pairs, ipairs
local error, pcall, xpcall, require = error, pcall, xpcall, require
local rawget, rawset, setmetatable, getmetatable = rawget, rawset, setmetatable, getmetatable
local find, match, gmatch, gsub, sub, byte, char, format, lower =
  string.find, string.match, string.gmatch, string.gsub, string.sub, string.byte, string.char, string.format, string.lower
local concat, insert, sort = table.concat, table.insert, table.sort
local floor, huge = math.floor, math.huge
local getinfo, traceback = debug.getinfo, debug.traceback

-- Traceback lines from this file start with this; they are dropped.
local RUNTIME = "\t" .. getinfo(1, "S").short_src .. ":"

---------------------------------------------------------------- values ----

local LIMIT = 200 -- bytes of a string shown in a message
local null

local function num_str(v)
  if v == floor(v) and v > -2 ^ 53 and v < 2 ^ 53 then return format("%.0f", v) end
  local s
  for digits = 14, 17 do
    s = format("%." .. digits .. "g", v)
    if tonumber(s) == v then break end
  end
  return s
end

-- Cuts s to at most n bytes without splitting a UTF-8 sequence.
local function cut(s, n)
  if #s <= n then return s end
  while n > 0 and (byte(s, n + 1) or 0) >= 0x80 and byte(s, n + 1) < 0xC0 do n = n - 1 end
  return sub(s, 1, n)
end

local ESC = { ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t", ['"'] = '\\"', ["\\"] = "\\\\" }
-- Whether s is UTF-8 (well-formed sequences of 2-4 bytes; no range checks).
local function utf8ish(s)
  local i, n = 1, #s
  while i <= n do
    local c = byte(s, i)
    local len = c < 0x80 and 1 or c >= 0xF0 and c < 0xF8 and 4 or c >= 0xE0 and 3 or c >= 0xC2 and c < 0xE0 and 2 or 0
    if len == 0 then return false end
    for j = i + 1, i + len - 1 do
      local d = byte(s, j)
      if not d or d < 0x80 or d >= 0xC0 then return false end
    end
    i = i + len
  end
  return true
end
local function quote(s)
  -- Bytes that are no UTF-8 (a binary body) are shown as \ddd, so two
  -- different binary strings never print alike.
  local class = utf8ish(s) and '[%z\1-\31"\\\127]' or '[%z\1-\31"\\\127-\255]'
  local body = gsub(cut(s, LIMIT), class, function(c) return ESC[c] or format("\\%03d", byte(c)) end)
  if #s > LIMIT then return '"' .. body .. '…" (' .. #s .. " bytes)" end
  return '"' .. body .. '"'
end

local ORDER = { number = 1, string = 2, boolean = 3 }
local function key_lt(a, b)
  local ta, tb = type(a), type(b)
  if ta ~= tb then
    local oa, ob = ORDER[ta] or 9, ORDER[tb] or 9
    if oa ~= ob then return oa < ob end
    return ta < tb
  end
  if ta == "number" or ta == "string" then return a < b end
  return tostring(a) < tostring(b)
end

local function sorted_keys(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  sort(keys, key_lt)
  return keys
end

local function is_ident(k) return type(k) == "string" and find(k, "^[%a_][%w_]*$") ~= nil end

local fmt
local function fmt_table(t, depth, seen)
  if seen[t] then return "<cycle>" end
  if depth > 3 then return "{…}" end
  seen[t] = true
  local items, nexti = {}, 1
  for i, k in ipairs(sorted_keys(t)) do
    if i > 30 then items[#items + 1] = "…"; break end
    local v = fmt(rawget(t, k), depth + 1, seen)
    if k == nexti then
      nexti = nexti + 1
      items[#items + 1] = v
    else
      items[#items + 1] = (is_ident(k) and k or "[" .. fmt(k, depth + 1, seen) .. "]") .. " = " .. v
    end
  end
  seen[t] = nil
  return "{" .. concat(items, ", ") .. "}"
end

-- One-line rendering of any value for failure messages.
function fmt(v, depth, seen)
  if v == null then return "null" end
  local t = type(v)
  if t == "string" then return quote(v) end
  if t == "number" then return num_str(v) end
  if t ~= "table" then return tostring(v) end
  local s = fmt_table(v, depth or 1, seen or {})
  if not depth and #s > LIMIT + 100 then s = cut(s, LIMIT + 100) .. "…" end
  return s
end

local function key_path(k)
  if is_ident(k) then return "." .. k end
  if type(k) == "number" then return "[" .. num_str(k) .. "]" end
  return "[" .. fmt(k) .. "]"
end

-- Deep comparison: nil when equal, else the path of the first difference
-- ("" when the values themselves differ) and the two values there. Cycle-safe.
local function diff(e, a, seen)
  if e == a then return nil end
  if type(e) ~= "table" or type(a) ~= "table" then return "", e, a end
  local se = seen[e]
  if se and se[a] then return nil end
  if not se then se = {}; seen[e] = se end
  se[a] = true
  for _, k in ipairs(sorted_keys(e)) do
    local p, x, y = diff(rawget(e, k), rawget(a, k), seen)
    if p then return key_path(k) .. p, x, y end
  end
  for _, k in ipairs(sorted_keys(a)) do
    if rawget(e, k) == nil then return key_path(k), nil, rawget(a, k) end
  end
  return nil
end

------------------------------------------------------------------ JSON ----

local cjson_ok, cjson = pcall(require, "cjson")
if cjson_ok and type(cjson) == "table" then
  cjson = cjson.new and cjson.new() or cjson
  null = cjson.null
else
  cjson = nil
  null = setmetatable({}, { __tostring = function() return "null" end })
end
keystone.null = null

local function bad(what, pos) error(format("invalid JSON: %s at character %d", what, pos), 0) end

local function utf8(cp)
  if cp < 0x80 then return char(cp) end
  if cp < 0x800 then return char(0xC0 + floor(cp / 0x40), 0x80 + cp % 0x40) end
  if cp < 0x10000 then return char(0xE0 + floor(cp / 0x1000), 0x80 + floor(cp / 0x40) % 0x40, 0x80 + cp % 0x40) end
  return char(0xF0 + floor(cp / 0x40000), 0x80 + floor(cp / 0x1000) % 0x40, 0x80 + floor(cp / 0x40) % 0x40, 0x80 + cp % 0x40)
end

local UNESC = { ['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f", n = "\n", r = "\r", t = "\t" }
local function read_string(s, pos) -- pos: the opening quote
  local parts, i = {}, pos + 1
  while true do
    local j = find(s, '["\\%z\1-\31]', i)
    if not j then bad("unterminated string", pos) end
    if j > i then parts[#parts + 1] = sub(s, i, j - 1) end
    local c = sub(s, j, j)
    if c == '"' then return concat(parts), j + 1 end
    if c ~= "\\" then bad("control character in string", j) end
    local e = sub(s, j + 1, j + 1)
    if e == "u" then
      local cp = tonumber(match(s, "^%x%x%x%x", j + 2) or "", 16)
      if not cp then bad("invalid unicode escape", j) end
      i = j + 6
      if cp >= 0xD800 and cp <= 0xDBFF then
        local lo = tonumber(match(s, "^\\u(%x%x%x%x)", i) or "", 16)
        if not lo or lo < 0xDC00 or lo > 0xDFFF then bad("invalid unicode surrogate pair", j) end
        cp, i = 0x10000 + (cp - 0xD800) * 0x400 + (lo - 0xDC00), i + 6
      elseif cp >= 0xDC00 and cp <= 0xDFFF then
        bad("invalid unicode surrogate pair", j)
      end
      parts[#parts + 1] = utf8(cp)
    elseif UNESC[e] then
      parts[#parts + 1], i = UNESC[e], j + 2
    else
      bad("invalid escape", j)
    end
  end
end

local function skip(s, pos) return find(s, "[^ \t\r\n]", pos) or #s + 1 end

local read_value
local function read_number(s, pos)
  local int = match(s, "^-?%d+", pos)
  if not int or find(int, "^-?0%d") then bad("invalid number", pos) end
  local e = pos + #int
  local frac = match(s, "^%.%d+", e)
  if frac then e = e + #frac elseif sub(s, e, e) == "." then bad("invalid number", pos) end
  local exp = match(s, "^[eE][-+]?%d+", e)
  if exp then e = e + #exp elseif find(s, "^[eE]", e) then bad("invalid number", pos) end
  return tonumber(sub(s, pos, e - 1)), e
end

local function read_list(s, pos, depth, close, item) -- pos: after the opener
  if depth > 1000 then bad("too deeply nested", pos) end
  pos = skip(s, pos)
  if sub(s, pos, pos) == close then return pos + 1 end
  while true do
    pos = skip(s, item(skip(s, pos)))
    local c = sub(s, pos, pos)
    if c == close then return pos + 1 end
    if c ~= "," then bad(c == "" and "unexpected end of input" or "expected ',' or '" .. close .. "'", pos) end
    pos = pos + 1
  end
end

local LITERALS = { ["true"] = true, ["false"] = false }
function read_value(s, pos, depth)
  local c = sub(s, pos, pos)
  if c == "{" then
    local obj = {}
    return obj, read_list(s, pos + 1, depth + 1, "}", function(p)
      if sub(s, p, p) ~= '"' then bad("expected a string key", p) end
      local k, v
      k, p = read_string(s, p)
      p = skip(s, p)
      if sub(s, p, p) ~= ":" then bad("expected ':'", p) end
      v, p = read_value(s, skip(s, p + 1), depth + 1)
      obj[k] = v
      return p
    end)
  elseif c == "[" then
    local arr = {}
    return arr, read_list(s, pos + 1, depth + 1, "]", function(p)
      local v
      v, p = read_value(s, p, depth + 1)
      arr[#arr + 1] = v
      return p
    end)
  elseif c == '"' then
    return read_string(s, pos)
  elseif c == "-" or find(c, "^%d") then
    return read_number(s, pos)
  end
  local word = match(s, "^%a+", pos)
  if word == "null" then return null, pos + 4 end
  if LITERALS[word] ~= nil then return LITERALS[word], pos + #word end
  bad(c == "" and "unexpected end of input" or "unexpected character", pos)
end

function keystone.json_decode(text)
  if type(text) ~= "string" then error("invalid JSON: expected a string, got " .. type(text), 0) end
  if cjson then
    local ok, v = pcall(cjson.decode, text)
    if not ok then error("invalid JSON: " .. tostring(v), 0) end
    return v
  end
  local v, pos = read_value(text, skip(text, 1), 0)
  pos = skip(text, pos)
  if pos <= #text then bad("trailing garbage", pos) end
  return v
end

local JESC = { ['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f", ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t" }
local function json_string(s)
  return '"' .. gsub(s, '[%z\1-\31"\\]', function(c) return JESC[c] or format("\\u%04x", byte(c)) end) .. '"'
end

local function encode(v, stack)
  local t = type(v)
  if v == nil or v == null then return "null" end
  if t == "boolean" then return tostring(v) end
  if t == "string" then return json_string(v) end
  if t == "number" then
    if v ~= v or v == huge or v == -huge then error("json_encode: cannot encode " .. tostring(v), 0) end
    return num_str(v)
  end
  if t ~= "table" then error("json_encode: cannot encode a " .. t, 0) end
  if stack[v] then error("json_encode: cannot encode a cyclic table", 0) end
  stack[v] = true
  local keys, items = sorted_keys(v), {}
  local array = #keys > 0 -- keys exactly 1..n
  for i, k in ipairs(keys) do
    if k ~= i then array = false; break end
  end
  for i, k in ipairs(keys) do
    local kt = type(k)
    if array then
      items[i] = encode(rawget(v, k), stack)
    elseif kt == "string" or kt == "number" then
      items[i] = json_string(kt == "number" and num_str(k) or k) .. ":" .. encode(rawget(v, k), stack)
    else
      error("json_encode: cannot encode a " .. kt .. " key", 0)
    end
  end
  stack[v] = nil
  return (array and "[%s]" or "{%s}"):format(concat(items, ","))
end

-- Always the bundled encoder: sorted keys make request bodies deterministic.
function keystone.json_encode(value) return encode(value, {}) end

keystone.Headers = {
  __index = function(t, k) if type(k) == "string" then return rawget(t, lower(k)) end end,
  __newindex = function(t, k, v) rawset(t, type(k) == "string" and lower(k) or k, v) end,
}
keystone.Response = { __index = { json = function(self)
  local ok, value = pcall(keystone.json_decode, self.body)
  if ok then return value end
  -- Say what came instead: an HTML error page is the usual surprise.
  local body = tostring(self.body or "")
  local snippet = #body > 120 and sub(body, 1, 120) .. "…" or body
  error(format("res:json(): %s (status %s, Content-Type %s, body %s)",
    gsub(tostring(value), "^.-:%d+: ", ""), tostring(self.status),
    tostring(self.headers and self.headers["content-type"]), quote(snippet)), 2)
end } }

----------------------------------------------------------- spec state ----

local FAIL = { __tostring = function(e) return e.message end }
local PENDING = { __tostring = function(e) return "pending: " .. tostring(e.message) end }

local files = {}       -- loaded spec files, in load order
local spec_paths = {}  -- short_src of a spec chunk -> its path
local loading          -- the file whose chunk is running, if any
local current_file     -- the file being loaded or run
local current_block    -- the describe block being declared
local running = false  -- inside a test (hooks included)

-- "path:line", line of the innermost frame of the current spec file.
local function spec_location()
  local source = current_file and current_file.source
  local level = 2
  while true do
    local info = getinfo(level, "Sl")
    if not info then return nil end
    if info.source == source then return current_file.path .. ":" .. info.currentline, info.currentline end
    level = level + 1
  end
end

local function fail(text, msg)
  if msg ~= nil then text = tostring(msg) .. ": " .. text end
  error(setmetatable({ message = text, location = (spec_location()) }, FAIL), 0)
end

-- The traceback without this file's frames or the runner below the xpcall.
local GLUE = "[keystone-spec glue]:"
local function clean_traceback(tb)
  local lines, out = {}, {}
  for l in gmatch(tb, "[^\n]+") do lines[#lines + 1] = l end
  for i, l in ipairs(lines) do
    if find(l, "[C]: in function 'xpcall'", 1, true) and find(lines[i + 1] or RUNTIME, RUNTIME, 1, true) then break end
    -- The glue's frames (and the `error` it raises with) are no user code.
    local glue = find(l, GLUE, 1, true)
      or (find(l, "[C]: in function 'error'", 1, true) and find(lines[i + 1] or "", GLUE, 1, true))
    if not glue and not find(l, RUNTIME, 1, true) and l ~= "\t(tail call): ?" then out[#out + 1] = l end
  end
  return #out > 1 and concat(out, "\n") or nil
end

local function on_error(e)
  local mt = getmetatable(e)
  if mt == FAIL or mt == PENDING then return e end
  local text = type(e) == "string" and e or (type(mt) == "table" and mt.__tostring) and tostring(e) or fmt(e)
  local first, rest = match(text, "^([^\n]*)\n?(.*)$")
  local f, l = match(first, "^(.-):(%d+): ")
  local tb = clean_traceback(traceback("", 2))
  return {
    message = first,
    location = f and spec_paths[f] and spec_paths[f] .. ":" .. l or spec_location(),
    details = rest ~= "" and (rest .. (tb and "\n" .. tb or "")) or tb,
  }
end

-- nil when fn returns; else a FAIL or PENDING object, or an error record.
local function protect(fn)
  local ok, e = xpcall(fn, on_error)
  if not ok then return e end
end

------------------------------------------------------------ assertions ----

local function callable(f)
  local mt = getmetatable(f)
  return type(f) == "function" or (type(f) == "table" and type(mt) == "table" and mt.__call ~= nil)
end

local function err_text(e)
  local mt = getmetatable(e)
  if mt == FAIL or mt == PENDING then return e.message end
  return type(e) == "string" and e or tostring(e)
end
local function show_err(e) return type(e) == "table" and getmetatable(e) ~= FAIL and fmt(e) or fmt(err_text(e)) end

local function error_is(e, expected)
  if expected == nil then return true end
  if type(expected) ~= "string" then return diff(expected, e, {}) == nil end
  local s = err_text(e)
  return s == expected or gsub(s, "^.-:%d+: ", "", 1) == expected
end

-- Trailing arguments of matches/error_matches: init, plain, message.
local function match_opts(...)
  local init, plain, msg
  for i = 1, select("#", ...) do
    local v = select(i, ...)
    if type(v) == "number" and init == nil then init = v
    elseif type(v) == "boolean" and plain == nil then plain = v
    elseif v ~= nil and msg == nil then msg = v end
  end
  return init, plain, msg
end

local function eq_hint(e, a)
  if type(e) == "string" and type(a) == "string" and (#e > LIMIT or #a > LIMIT) then
    local i = 1
    while i <= #e and byte(e, i) == byte(a, i) do i = i + 1 end
    return " (first difference at byte " .. i .. ")"
  end
  if type(e) == "table" and type(a) == "table" and diff(e, a, {}) == nil then return " (different tables, same contents)" end
  return ""
end

-- def.check(negated, args...) -> ok, failure text [, custom message];
-- def.n: number of arguments, the custom message follows them.
local defs = {}
defs.equal = { n = 2, check = function(neg, e, a)
  if (e == a) ~= neg then return true end
  if neg then return false, "expected: not " .. fmt(e) .. ", actual: " .. fmt(a) end
  return false, "expected: " .. fmt(e) .. ", actual: " .. fmt(a) .. eq_hint(e, a)
end }
defs.same = { n = 2, check = function(neg, e, a)
  local path, x, y = diff(e, a, {})
  if (path == nil) ~= neg then return true end
  local fe, fa = fmt(e), fmt(a)
  if neg then return false, "expected: not " .. fe .. ", actual: " .. fa end
  if path == "" then return false, "expected: " .. fe .. ", actual: " .. fa end
  -- Long tables are cut short: then also show the values that differ.
  local there = (#fe > LIMIT or #fa > LIMIT) and ": " .. fmt(x) .. " vs " .. fmt(y) or ""
  return false, "expected: " .. fe .. ", actual: " .. fa .. " (first difference at " .. path .. there .. ")"
end }
defs.near = { n = 3, check = function(neg, e, a, tol)
  if type(e) ~= "number" or type(a) ~= "number" or type(tol) ~= "number" then
    return false, "near needs numbers, got " .. fmt(e) .. ", " .. fmt(a) .. ", " .. fmt(tol)
  end
  if (e - a <= tol and a - e <= tol) ~= neg then return true end
  return false, "expected: " .. (neg and "not " or "") .. fmt(e) .. " ± " .. fmt(tol) .. ", actual: " .. fmt(a)
end }

local function unary(test, pos, negmsg)
  return { n = 1, check = function(neg, v)
    if (not not test(v)) ~= neg then return true end
    return false, format(neg and negmsg or pos, fmt(v))
  end }
end
defs.truthy = unary(function(v) return v end, "expected a truthy value, actual: %s", "expected a falsy value, actual: %s")
defs.falsy = unary(function(v) return not v end, "expected a falsy value, actual: %s", "expected a truthy value, actual: %s")
defs["true"] = unary(function(v) return v == true end, "expected: true, actual: %s", "expected: not true, actual: %s")
defs["false"] = unary(function(v) return v == false end, "expected: false, actual: %s", "expected: not false, actual: %s")
defs["nil"] = unary(function(v) return v == nil end, "expected: nil, actual: %s", "expected: not nil, actual: %s")
for _, t in ipairs({ "number", "string", "table", "function", "boolean", "userdata" }) do
  defs[t] = unary(function(v) return type(v) == t end, "expected a " .. t .. ", actual: %s", "expected: not a " .. t .. ", actual: %s")
end

defs.matches = { check = function(neg, pattern, s, ...)
  local init, plain, msg = match_opts(...)
  if type(s) == "number" then s = tostring(s) end
  if type(pattern) ~= "string" then return false, "expected a pattern string, got " .. fmt(pattern), msg end
  if type(s) ~= "string" then return false, "expected a string matching " .. fmt(pattern) .. ", actual: " .. fmt(s), msg end
  local ok, found = pcall(find, s, pattern, init, plain)
  if not ok then return false, "invalid pattern " .. fmt(pattern) .. ": " .. tostring(found), msg end
  if (found ~= nil) ~= neg then return true end
  return false, "expected a string " .. (neg and "not " or "") .. "matching " .. fmt(pattern) .. ", actual: " .. fmt(s), msg
end }

defs.error = { n = 2, min = 1, check = function(neg, f, expected)
  if not callable(f) then return false, "expected a function, actual: " .. fmt(f) end
  local ok, e = pcall(f)
  local want = expected ~= nil and " " .. fmt(expected) or ""
  if (not ok and error_is(e, expected)) ~= neg then return true end
  if neg then return false, "expected no error" .. want .. ", actual error: " .. show_err(e) end
  if ok then return false, "expected an error" .. want .. ", none was raised" end
  return false, "expected error: " .. fmt(expected) .. ", actual error: " .. show_err(e)
end }

defs.error_matches = { check = function(neg, f, pattern, ...)
  local init, plain, msg = match_opts(...)
  if not callable(f) then return false, "expected a function, actual: " .. fmt(f), msg end
  if type(pattern) ~= "string" then return false, "expected a pattern string, got " .. fmt(pattern), msg end
  local ok, e = pcall(f)
  local hit = false
  if not ok then
    local pok, found = pcall(find, err_text(e), pattern, init, plain)
    if not pok then return false, "invalid pattern " .. fmt(pattern) .. ": " .. tostring(found), msg end
    hit = found ~= nil
  end
  if hit ~= neg then return true end
  if ok then return false, "expected an error matching " .. fmt(pattern) .. ", none was raised", msg end
  return false, "expected an error " .. (neg and "not " or "") .. "matching " .. fmt(pattern) .. ", actual error: " .. show_err(e), msg
end }

local ALIASES = { equals = "equal", match = "matches", errors = "error", raises = "error",
  matches_error = "error_matches", error_match = "error_matches" }
local FILLERS = { is = true, are = true, has = true, have = true, was = true, does = true, to = true, be = true }
local NEGATORS = { ["not"] = true, no = true }

local chains, cache = {}, { [false] = {}, [true] = {} }
-- assert.<key>: a chain (assert.is, assert.is_not) or an assertion function.
local function resolve(key, neg)
  local words = {}
  for w in gmatch(lower(tostring(key)), "[^_]+") do
    if NEGATORS[w] then neg = not neg elseif not FILLERS[w] then words[#words + 1] = w end
  end
  local name = concat(words, "_")
  if name == "" then return chains[neg] end
  name = ALIASES[name] or name
  local def = defs[name]
  if not def then return nil end
  local f = cache[neg][name]
  if not f then
    f = function(...)
      -- luassert's rule: a missing argument is a mistake in the test, not a nil.
      local least = def.min or def.n
      if least and select("#", ...) < least then
        fail("assert." .. name .. " takes " .. least .. " argument" .. (least > 1 and "s" or "")
          .. ", got " .. select("#", ...))
      end
      local ok, text, msg = def.check(neg, ...)
      if not ok then
        if def.n then msg = select(def.n + 1, ...) end
        fail(text, msg)
      end
    end
    cache[neg][name] = f
  end
  return f
end

for _, neg in ipairs({ false, true }) do
  chains[neg] = setmetatable({}, {
    __index = function(_, k) return resolve(k, neg) or error("unknown assertion: assert." .. tostring(k), 2) end,
    -- assert(v, msg): Lua's assert, failing the test like any assertion.
    __call = function(_, v, msg, ...)
      if v then return v, msg, ... end
      fail(msg ~= nil and tostring(msg) or "assertion failed!")
    end,
  })
end

---------------------------------------------------------- declarations ----

local function new_block(name, parent, file)
  return { name = name, parent = parent, file = file, before = {}, after = {}, setup = {}, teardown = {} }
end

local function declaring(what)
  if running then error(what .. "() cannot be called inside a running test", 3) end
  if not loading then error(what .. "() can only be called while a spec file loads", 3) end
end

local function describe(name, fn)
  declaring("describe")
  if type(fn) ~= "function" then error("describe(" .. fmt(name) .. ") needs a function", 2) end
  local parent = current_block
  current_block = new_block(tostring(name), parent, loading)
  fn()
  current_block = parent
end

local function add_test(name, fn)
  local parts, b = { tostring(name) }, current_block
  while b.parent do insert(parts, 1, b.name); b = b.parent end
  local _, line = spec_location()
  local tests = loading.tests
  tests[#tests + 1] = { file = loading, block = current_block, name = concat(parts, " "), line = line or 0, fn = fn, pending = fn == nil }
end

local function it(name, fn)
  declaring("it")
  if fn ~= nil and not callable(fn) then error("it(" .. fmt(name) .. ") needs a function", 2) end
  add_test(name, fn)
end

local function pending(name, fn)
  if running and fn == nil then
    error(setmetatable({ message = name ~= nil and tostring(name) or nil, location = (spec_location()) }, PENDING), 0)
  end
  declaring("pending")
  add_test(name, nil)
end

-- busted's `finally(fn)`: inside a test, fn runs once the test ends,
-- whether it passed or not (before the after_each hooks).
local finalizers = nil
local function finally(fn)
  if not running or finalizers == nil then error("finally() is called inside a test", 2) end
  if not callable(fn) then error("finally() needs a function", 2) end
  finalizers[#finalizers + 1] = fn
end

local function hook(kind, what)
  return function(fn)
    declaring(what)
    if not callable(fn) then error(what .. "() needs a function", 2) end
    local list = current_block[kind]
    list[#list + 1] = fn
  end
end

local globals = {
  describe = describe, context = describe, it = it, test = it, pending = pending, assert = chains[false],
  -- Every test already gets a fresh app; busted's insulate/expose only
  -- scope the spec's own globals, which these blocks share like describe.
  insulate = describe, expose = describe, finally = finally,
  before_each = hook("before", "before_each"), after_each = hook("after", "after_each"),
  setup = hook("setup", "setup"), teardown = hook("teardown", "teardown"),
}
globals.lazy_setup, globals.strict_setup = globals.setup, globals.setup
globals.lazy_teardown, globals.strict_teardown = globals.teardown, globals.teardown
for k, v in pairs(globals) do _G[k] = v end

---------------------------------------------------------------- module ----

local M = {}

function M.load(path)
  local file = { path = path, source = "@" .. path, dir = match(path, "^(.*)[/\\]") or ".", tests = {} }
  if file.dir == "" then file.dir = "/" end
  local chunk, err = loadfile(path)
  if not chunk then return false, err end
  spec_paths[getinfo(chunk, "S").short_src] = path
  loading, current_file, current_block = file, file, new_block("", nil, file)
  keystone._spec_dir = file.dir
  local e = protect(chunk)
  loading, current_block = nil, nil
  if e then
    local msg = tostring(e.message)
    if e.location and sub(msg, 1, #e.location + 1) ~= e.location .. ":" then msg = e.location .. ": " .. msg end
    return false, msg .. (e.details and "\n" .. e.details or "")
  end
  files[#files + 1] = file
  return true
end

function M.reset()
  files, spec_paths = {}, {}
end

-- Lua's own pattern checks, done up front: string.find only meets a
-- malformed part of a pattern when matching gets that far.
local function pattern_error(p)
  local i, n, depth = 1, #p, 0
  while i <= n do
    local c = sub(p, i, i)
    if c == "%" then
      local d = sub(p, i + 1, i + 1)
      if d == "" then return "malformed pattern (ends with '%')" end
      if d == "b" and i + 3 > n then return "missing arguments to '%b'" end
      if d == "f" and sub(p, i + 2, i + 2) ~= "[" then return "missing '[' after '%f' in pattern" end
      i = i + (d == "b" and 4 or 2)
    elseif c == "[" then
      i = i + 1
      if sub(p, i, i) == "^" then i = i + 1 end
      repeat
        if i > n then return "malformed pattern (missing ']')" end
        i = i + (sub(p, i, i) == "%" and 2 or 1)
      until sub(p, i, i) == "]"
      i = i + 1
    else
      if c == "(" then depth = depth + 1 elseif c == ")" then depth = depth - 1 end
      if depth < 0 then return "invalid pattern capture" end
      i = i + 1
    end
  end
  if depth > 0 then return "unfinished capture" end
end

-- Records failure e (from protect) on r unless r already failed.
local function apply(r, e, hook_name)
  if not e or r.status ~= "passed" then return end
  local mt = getmetatable(e)
  r.status = mt == FAIL and "failed" or mt == PENDING and "pending" or "error"
  r.message = e.message ~= nil and tostring(e.message) or nil
  if hook_name and r.status ~= "pending" then r.message = hook_name .. " failed: " .. (r.message or "") end
  r.location, r.details = e.location, e.details
end

local function run_test(t, index, last, state)
  local r = { file = t.file.path, name = t.name, line = t.line, status = "passed", log = {}, time = 0 }
  if t.pending then r.status = "pending"; return r end
  local chain, b = {}, t.block
  while b do insert(chain, 1, b); b = b.parent end
  keystone._spec_dir = t.file.dir
  current_file = t.file
  local t0 = keystone._clock()
  keystone._begin_test()
  running = true
  for _, blk in ipairs(chain) do -- setups, once per block, outermost first
    local s = state[blk]
    if not s then
      s = {}
      state[blk] = s
      -- What a setup sets up (an upstream fake) outlasts this test.
      keystone._set_scope(false)
      for _, fn in ipairs(blk.setup) do
        s.failure = protect(fn)
        if s.failure then break end
      end
      keystone._set_scope(true)
    end
    if s.failure then apply(r, s.failure, "setup"); break end
  end
  if r.status == "passed" then
    for _, blk in ipairs(chain) do
      for _, fn in ipairs(blk.before) do
        if r.status == "passed" then apply(r, protect(fn), "before_each") end
      end
    end
    finalizers = {}
    if r.status == "passed" then apply(r, protect(t.fn)) end
    local registered = finalizers
    finalizers = nil
    for k = #registered, 1, -1 do apply(r, protect(registered[k]), "finally") end
    for j = #chain, 1, -1 do
      for _, fn in ipairs(chain[j].after) do apply(r, protect(fn), "after_each") end
    end
  end
  -- Teardowns of the blocks this test ends. A failing one is reported
  -- apart, as busted does ("<block> teardown"): the test passed or failed
  -- on its own.
  local torn
  for j = #chain, 1, -1 do
    local blk = chain[j]
    if last[blk] == index and state[blk] then
      local names, b = {}, blk
      while b.parent do insert(names, 1, b.name); b = b.parent end
      insert(names, "teardown")
      local tr = { file = t.file.path, name = concat(names, " "), line = t.line, status = "passed", log = {}, time = 0 }
      keystone._set_scope(false)
      for _, fn in ipairs(blk.teardown) do
        local before = tr.status
        apply(tr, protect(fn), "teardown")
        if before == "passed" and tr.status ~= "passed" then tr.line = getinfo(fn, "S").linedefined end
      end
      keystone._set_scope(true)
      if tr.status == "pending" then tr.status = "passed" end
      if tr.status ~= "passed" then
        if not tr.location then tr.location = t.file.path .. ":" .. tr.line end
        torn = torn or {}
        torn[#torn + 1] = tr
      end
    end
  end
  running = false
  r.log = keystone._end_test() or {}
  r.time = keystone._clock() - t0
  if r.status ~= "passed" and not r.location then r.location = t.file.path .. ":" .. t.line end
  return r, torn
end

function M.run(options)
  options = options or {}
  local filter, on_result = options.filter, options.on_result
  -- A filter matches a name that contains it as plain text, or that its
  -- Lua pattern matches when it is a valid one: "GET /users (cached)"
  -- and "^users .*json" both do what they say.
  if filter ~= nil and type(filter) ~= "string" then
    error("invalid --filter: expected a string", 0)
  end
  local as_pattern = filter ~= nil and pattern_error(filter) == nil
  local selected = {}
  for _, file in ipairs(files) do
    for _, t in ipairs(file.tests) do
      local hit = filter == nil or find(t.name, filter, 1, true)
      if not hit and as_pattern then
        local ok, found = pcall(find, t.name, filter)
        hit = ok and found
      end
      if hit then selected[#selected + 1] = t end
    end
  end
  local last = {} -- block -> index of its last test that runs
  for i, t in ipairs(selected) do
    if not t.pending then
      local b = t.block
      while b do last[b] = i; b = b.parent end
    end
  end
  local results, state = {}, {}
  for i, t in ipairs(selected) do
    local r, torn = run_test(t, i, last, state)
    results[#results + 1] = r
    if on_result then on_result(r) end
    for _, tr in ipairs(torn or {}) do
      results[#results + 1] = tr
      if on_result then on_result(tr) end
    end
  end
  return results
end

return M
