--- keystone.helpers: small pure-Lua helpers for Keystone apps.
--
-- Runs inside Keystone's sandbox (it needs only `string`, `table` and
-- `math`) and in any Lua 5.1/LuaJIT. Installed with LuaRocks:
--
--   luarocks --lua-version=5.1 --tree lua_modules make keystone-helpers-0.1-1.rockspec
--
-- then found through `rocks_trees = { "lua_modules" }` in the app table or
-- `keystone serve --rocks-tree lua_modules`.
local format, byte, gsub = string.format, string.byte, string.gsub
local concat, sort = table.concat, table.sort
local floor, huge = math.floor, math.huge
local type, pairs, ipairs, tostring, error, next, select, setmetatable =
    type, pairs, ipairs, tostring, error, next, select, setmetatable

local M = { _VERSION = "0.1" }

-- Tables nested deeper than this are refused (a bound, and cycles end here).
local JSON_DEPTH_MAX = 64

local JSON_ESCAPES = {
  ['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f",
  ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t",
}

local function json_escape_char(c)
  return JSON_ESCAPES[c] or format("\\u%04x", byte(c))
end

--- Escapes `s` for use inside a JSON string literal (without the quotes).
function M.json_escape(s)
  return (gsub(tostring(s), '[%c"\\]', json_escape_char))
end

local encode

local function encode_number(n)
  if n ~= n or n == huge or n == -huge then
    error("keystone.helpers.json: cannot encode " .. tostring(n), 0)
  end
  if floor(n) == n and n > -2^53 and n < 2^53 then return format("%d", n) end
  return format("%.17g", n)
end

local function is_array(t)
  local n = #t
  if n == 0 then return next(t) == nil end
  local count = 0
  for _ in pairs(t) do count = count + 1 end
  return count == n
end

local function encode_table(t, depth)
  if depth > JSON_DEPTH_MAX then
    error("keystone.helpers.json: tables nested deeper than " .. JSON_DEPTH_MAX, 0)
  end
  local out = {}
  if is_array(t) and #t > 0 then
    for i, v in ipairs(t) do out[i] = encode(v, depth + 1) end
    return "[" .. concat(out, ",") .. "]"
  end
  local keys = {}
  for k in pairs(t) do
    if type(k) ~= "string" then
      error("keystone.helpers.json: object keys must be strings, got " .. type(k), 0)
    end
    keys[#keys + 1] = k
  end
  sort(keys)
  for i, k in ipairs(keys) do
    out[i] = '"' .. M.json_escape(k) .. '":' .. encode(t[k], depth + 1)
  end
  return "{" .. concat(out, ",") .. "}"
end

function encode(v, depth)
  local tv = type(v)
  if tv == "string" then return '"' .. M.json_escape(v) .. '"' end
  if tv == "number" then return encode_number(v) end
  if tv == "boolean" then return tostring(v) end
  if v == nil or v == M.null then return "null" end
  if tv == "table" then return encode_table(v, depth) end
  error("keystone.helpers.json: cannot encode a " .. tv, 0)
end

--- A value that encodes as JSON `null` (a Lua table cannot hold nil).
M.null = setmetatable({}, { __tostring = function() return "null" end })

--- Encodes `value` as JSON: strings, finite numbers, booleans, `nil` and
--- `M.null`, arrays (sequences) and objects (string keys, sorted, so the
--- output is stable). An empty table is `{}`.
function M.json(value)
  return encode(value, 0)
end

local HTML_ESCAPES = {
  ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;", ['"'] = "&quot;", ["'"] = "&#39;",
}

--- Escapes `s` for HTML text and attribute values.
function M.html_escape(s)
  return (gsub(tostring(s), "[&<>\"']", HTML_ESCAPES))
end

--- Route entries for one path: `resource("/users/{id}", { GET = f,
--- DELETE = g })` returns `{ ["GET /users/{id}"] = f, ["DELETE /users/{id}"] = g }`.
function M.resource(path, methods)
  local routes = {}
  for method, handler in pairs(methods) do
    if type(method) ~= "string" or type(handler) ~= "function" then
      error("keystone.helpers.resource: methods must map a method name to a function", 2)
    end
    routes[method .. " " .. path] = handler
  end
  return routes
end

--- Merges route tables into one; a key defined twice is an error naming it.
function M.routes(...)
  local merged = {}
  for i = 1, select("#", ...) do
    for key, handler in pairs((select(i, ...))) do
      if merged[key] ~= nil then
        error("keystone.helpers.routes: route '" .. key .. "' is defined twice", 2)
      end
      merged[key] = handler
    end
  end
  return merged
end

--- A JSON response in one call: sets status (default 200), Content-Type and
--- the body. State only, no I/O.
function M.json_response(ctx, value, status)
  ctx.status = status or 200
  ctx.headers["Content-Type"] = "application/json"
  ctx.body = encode(value, 0)
end

return M
