-- Keystone sandbox (trusted): builds the environment app chunks, handlers,
-- init_worker and pure-Lua modules run in. It holds no io, no os beyond
-- time/clock/date, no debug, no ffi, no jit, no package.loadlib, no
-- dofile/loadfile, no getfenv/setfenv, no newproxy, and load/loadstring
-- refuse bytecode. Each worker builds its own, so globals an app sets are per
-- worker. `--unsafe-lua` skips this file entirely.
--
-- `require` follows Lua 5.1's loaders (package.loaded, package.preload, the
-- Lua path, the C path, the all-in-one C loader) over search paths the engine
-- computes (the app's directory, rocks trees, LUA_PATH/LUA_CPATH or LuaJIT's
-- defaults). Pure-Lua modules are compiled from source into this
-- environment. C modules are opened with the real package.loadlib, captured
-- here and never exposed, and only when their name is allowed.
--
-- Returns `new_env(log, lua_templates, c_templates, allowed)`, which returns
-- the environment and `configure(lua_templates, c_templates, allowed)`: the
-- engine calls it again once the app table has named its own rocks trees and
-- C modules.
--
-- Trusted code here touches user-reachable tables (package.loaded,
-- package.preload) with rawget/rawset only, so no user metamethod ever runs
-- with a trusted value in hand.

local _G = _G
local loadstring, setfenv, type, error, pairs, ipairs, tostring, select, pcall =
    loadstring, setfenv, type, error, pairs, ipairs, tostring, select, pcall
local setmetatable, getmetatable, rawget, rawset = setmetatable, getmetatable, rawget, rawset
local concat = table.concat
local gsub, byte, find, match, format = string.gsub, string.byte, string.find, string.match, string.format
local io_open = io.open
local loadlib = package.loadlib
local real_require = require
local real_loaded = package.loaded
local collectgarbage = collectgarbage
local os_time, os_clock, os_date = os.time, os.clock, os.date

-- Bytes a reader function given to `load` may return in all: a bound, so a
-- reader that never ends fails instead of exhausting memory.
local LOAD_READER_BYTES_MAX = 64 * 1024 * 1024

local SAFE_GLOBALS = {
  "assert", "error", "ipairs", "next", "pairs", "pcall", "xpcall", "select", "tonumber",
  "tostring", "type", "unpack", "rawequal", "rawget", "rawset", "setmetatable",
  "getmetatable", "_VERSION",
}
local SAFE_LIBRARIES = { "string", "table", "math", "bit", "coroutine" }

-- LuaJIT built-in modules that are safe to hand out (they create tables).
local SAFE_BUILTIN_MODULES = { ["table.new"] = true, ["table.clear"] = true }

-- Why a built-in module is refused; `jit.*` is matched by prefix.
local REFUSED_MODULES = {
  ffi = "it reads and writes any memory",
  io = "it opens files",
  debug = "it reaches every function's upvalues and environment",
  jit = "it controls the compiler",
  ["string.buffer"] = "buffer:ref() hands out raw pointers",
}

local function copy(t)
  local out = {}
  for k, v in pairs(t) do out[k] = v end
  return out
end

-- A table that reads like `t` but refuses writes (for shared metatables).
local function read_only(t, what)
  return setmetatable({}, {
    __index = t,
    __newindex = function(_, k)
      error(what .. " is read-only in the Keystone sandbox (tried to set '" .. tostring(k) .. "')", 2)
    end,
    __metatable = false,
  })
end

local function read_file(path)
  local f = io_open(path, "rb")
  if not f then return nil end
  local text = f:read("*a")
  f:close()
  return text or ""
end

local function exists(path)
  local f = io_open(path, "rb")
  if not f then return false end
  f:close()
  return true
end

local function refusal(name)
  local why = REFUSED_MODULES[name]
  if why == nil and match(name, "^jit%.") then why = REFUSED_MODULES.jit end
  if why == nil then return nil end
  return "module '" .. name .. "' is not available in the Keystone sandbox (" .. why
      .. "); `keystone serve --unsafe-lua` turns the sandbox off"
end

-- Lua 5.1's luaopen_ symbol: text up to the first '-' dropped, dots as '_'.
local function open_symbol(name)
  local base = gsub(name, "^[^-]*%-", "")
  return "luaopen_" .. gsub(base, "%.", "_")
end

local function set_list(names)
  local set = {}
  for _, name in ipairs(names) do set[name] = true end
  return set
end

return function(log, lua_templates, c_templates, allowed_names)
  local env = {}
  for _, name in ipairs(SAFE_GLOBALS) do env[name] = _G[name] end
  for _, name in ipairs(SAFE_LIBRARIES) do env[name] = copy(_G[name]) end
  env.os = { time = os_time, clock = os_clock, date = os_date }
  env._G = env

  -- The string metatable is one per VM and its __index is the real `string`
  -- table the trusted side uses: user code sees a read-only stand-in whose
  -- __index is its own copy of the library.
  getmetatable("").__metatable = read_only({ __index = env.string }, "the string metatable")

  env.print = function(...)
    local parts = {}
    for i = 1, select("#", ...) do parts[i] = tostring((select(i, ...))) end
    log(concat(parts, "\t"))
  end

  env.collectgarbage = function(option)
    if option == "count" then return collectgarbage("count") end
    error("collectgarbage: only collectgarbage('count') is available in the Keystone sandbox", 2)
  end

  -- `chunk_env`: the environment the chunk runs in (LuaJIT's `load`
  -- takes one, and with `setfenv` gone it is the only way to choose it:
  -- template engines such as lua-resty-template rely on it); the
  -- sandbox's own when nil.
  local function load_text(text, name, chunk_env)
    if type(text) ~= "string" then
      return nil, "load: only source strings are accepted in the sandbox"
    end
    if byte(text, 1) == 27 then
      return nil, "load: bytecode is not allowed in the sandbox"
    end
    local f, err = loadstring(text, name)
    if not f then return nil, err end
    setfenv(f, chunk_env or env)
    return f
  end
  env.loadstring = function(text, name) return load_text(text, name) end
  env.load = function(chunk, name, mode, chunk_env)
    if mode ~= nil and type(mode) ~= "string" then
      error("bad argument #3 to 'load' (string expected, got " .. type(mode) .. ")", 2)
    end
    if mode ~= nil and not find(mode, "t", 1, true) then
      return nil, "load: mode '" .. mode .. "' allows no source text, and bytecode is not allowed in the sandbox"
    end
    if chunk_env ~= nil and type(chunk_env) ~= "table" then
      error("bad argument #4 to 'load' (table expected, got " .. type(chunk_env) .. ")", 2)
    end
    if type(chunk) == "function" then
      local parts, total = {}, 0
      while true do
        local piece = chunk()
        if piece == nil or piece == "" then break end
        if type(piece) ~= "string" then
          return nil, "load: reader function must return a string, got " .. type(piece)
        end
        total = total + #piece
        if total > LOAD_READER_BYTES_MAX then
          return nil, "load: reader returned more than " .. LOAD_READER_BYTES_MAX .. " bytes"
        end
        parts[#parts + 1] = piece
      end
      chunk = concat(parts)
      if name == nil then name = "=(load)" end
    end
    return load_text(chunk, name, chunk_env)
  end

  -- Search state, replaced by `configure`; `fixed` backs the read-only
  -- package.path/package.cpath strings user code sees.
  local search = { lua = lua_templates, c = c_templates, allowed = set_list(allowed_names) }
  local fixed = { path = concat(lua_templates, ";"), cpath = concat(c_templates, ";") }

  local loaded, preload = {}, {}
  local package = setmetatable({ loaded = loaded, preload = preload }, {
    __index = fixed,
    __newindex = function(t, k, v)
      if fixed[k] ~= nil then
        error("package." .. tostring(k) .. " is computed by keystone (the app's directory, "
          .. "--rocks-tree, rocks_trees, LUA_PATH/LUA_CPATH) and cannot be assigned", 2)
      end
      rawset(t, k, v)
    end,
    __metatable = false,
  })
  env.package = package
  for _, name in ipairs(SAFE_LIBRARIES) do loaded[name] = env[name] end
  loaded.os, loaded._G, loaded.package = env.os, env, package

  local LOADING = {} -- sentinel: the module is being loaded (catches cycles)

  -- First template in `templates` naming an existing file, or nil after
  -- adding one "no file" line per template to `tried`.
  local function search_path(templates, file_part, tried)
    local replacement = gsub(file_part, "%%", "%%%%")
    for i = 1, #templates do
      local path = gsub(templates[i], "%?", replacement)
      if exists(path) then return path end
      tried[#tried + 1] = "\n\tno file '" .. path .. "'"
    end
    return nil
  end

  local function lua_loader(name, path)
    local f, err = load_text(read_file(path), "@" .. path)
    if not f then
      error("error loading module '" .. name .. "' from file '" .. path .. "':\n\t" .. err, 0)
    end
    return f
  end

  local function c_loader(name, path)
    if not search.allowed[name] then
      error(format("module '%s' is a C module (%s) and the Keystone sandbox loads C modules "
        .. "only when allowed: add allow_c_modules = { %q } to the app table (it applies to "
        .. "init_worker and handlers) or pass --allow-c-module %s", name, path, name, name), 0)
    end
    local f, err = loadlib(path, open_symbol(name))
    if not f then
      error("error loading module '" .. name .. "' from file '" .. path .. "':\n\t" .. tostring(err), 0)
    end
    return f
  end

  -- Returns the loader for `name`, its file (or ":preload:"), and whether it
  -- is C; raises "not found" with every place tried.
  local function find_loader(name)
    local pre = rawget(preload, name)
    if pre ~= nil then return pre, ":preload:", false end
    if SAFE_BUILTIN_MODULES[name] then
      return function() return real_require(name) end, ":builtin:", false
    end
    local tried = { "\n\tno field package.preload['" .. name .. "']" }
    local file_part = gsub(name, "%.", "/")
    local path = search_path(search.lua, file_part, tried)
    if path then return lua_loader(name, path), path, false end
    path = search_path(search.c, file_part, tried)
    if path then return c_loader(name, path), path, true end
    local root = match(name, "^([^.]+)%.")
    if root then
      path = search_path(search.c, root, tried)
      if path and search.allowed[name] then
        local f = loadlib(path, open_symbol(name))
        if f then return f, path, true end
        tried[#tried + 1] = "\n\tno module '" .. name .. "' in file '" .. path .. "'"
      elseif path then
        tried[#tried + 1] = "\n\tC library '" .. path .. "' not tried for '" .. name
            .. "' (not in allow_c_modules)"
      end
    end
    error("module '" .. name .. "' not found:" .. concat(tried), 0)
  end

  env.require = function(name)
    if type(name) ~= "string" then
      error("require: module name must be a string, got " .. type(name), 2)
    end
    if find(name, "\0", 1, true) then error("require: module name contains a NUL byte", 2) end
    local value = rawget(loaded, name)
    if value == LOADING then error("loop loading module '" .. name .. "'", 2) end
    if value ~= nil then return value end
    local refused = refusal(name)
    if refused then error(refused, 2) end
    local ok, loader, where, is_c = pcall(find_loader, name)
    if not ok then error(loader, 2) end
    rawset(loaded, name, LOADING)
    local ran, result = pcall(loader, name, where)
    if not ran then
      rawset(loaded, name, nil)
      error(result, 0)
    end
    if result ~= nil then
      rawset(loaded, name, result)
    elseif rawget(loaded, name) == LOADING then
      -- A C module may have registered itself (luaL_register) instead.
      rawset(loaded, name, is_c and real_loaded[name] or true)
    end
    return rawget(loaded, name)
  end

  local function configure(lua_t, c_t, allowed)
    search.lua, search.c = lua_t, c_t
    fixed.path, fixed.cpath = concat(lua_t, ";"), concat(c_t, ";")
    for _, name in ipairs(allowed) do search.allowed[name] = true end
  end

  return env, configure
end
