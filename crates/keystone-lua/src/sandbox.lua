-- Keystone sandbox (trusted): builds the environment app chunks, handlers
-- and pure-Lua modules run in. It holds no io, no os beyond time/clock/date,
-- no debug, no ffi, no jit control, no package.loadlib, no dofile/loadfile,
-- and load/loadstring refuse bytecode. Each worker builds its own, so
-- globals an app sets are per worker.
--
-- Returns `new_env(log, search_path)`: `log(line)` receives print output,
-- `search_path` is the ';'-separated list of templates `require` tries.

local _G = _G
local loadstring, setfenv, type, error, pairs, tostring, select =
    loadstring, setfenv, type, error, pairs, tostring, select
local concat, sub, gsub, byte = table.concat, string.sub, string.gsub, string.byte
local io_open = io.open

local SAFE_GLOBALS = {
  "assert", "error", "ipairs", "next", "pairs", "pcall", "xpcall", "select", "tonumber",
  "tostring", "type", "unpack", "rawequal", "rawget", "rawset", "setmetatable",
  "getmetatable", "_VERSION", "newproxy",
}
local SAFE_LIBRARIES = { "string", "table", "math", "bit", "coroutine" }

local function copy(t)
  local out = {}
  for k, v in pairs(t) do out[k] = v end
  return out
end

local function read_file(path)
  local f = io_open(path, "rb")
  if not f then return nil end
  local text = f:read("*a")
  f:close()
  return text
end

return function(log, search_path)
  local env = {}
  for _, name in pairs(SAFE_GLOBALS) do env[name] = _G[name] end
  for _, name in pairs(SAFE_LIBRARIES) do env[name] = copy(_G[name]) end
  env.os = { time = os.time, clock = os.clock, date = os.date }
  env._G = env

  env.print = function(...)
    local parts = {}
    for i = 1, select("#", ...) do parts[i] = tostring((select(i, ...))) end
    log(concat(parts, "\t"))
  end

  local function load_text(text, name)
    if type(text) ~= "string" then
      return nil, "load: only source strings are accepted in the sandbox"
    end
    if byte(text, 1) == 27 then
      return nil, "load: bytecode is not allowed in the sandbox"
    end
    local f, err = loadstring(text, name)
    if not f then return nil, err end
    setfenv(f, env)
    return f
  end
  env.loadstring = load_text
  env.load = function(chunk, name)
    if type(chunk) == "function" then
      local parts = {}
      while true do
        local piece = chunk()
        if piece == nil or piece == "" then break end
        parts[#parts + 1] = piece
      end
      chunk = concat(parts)
    end
    return load_text(chunk, name)
  end

  local loaded = {}
  env.package = { loaded = loaded, path = search_path }
  env.require = function(name)
    if type(name) ~= "string" then error("require: module name must be a string", 2) end
    local cached = loaded[name]
    if cached ~= nil then return cached end
    local file_part = gsub(name, "%.", "/")
    local tried = {}
    for template in string.gmatch(env.package.path, "[^;]+") do
      local path = gsub(template, "%?", file_part)
      local text = read_file(path)
      if text then
        local f, err = load_text(text, "@" .. path)
        if not f then error("error loading module '" .. name .. "' from " .. path .. ":\n\t" .. err, 2) end
        local result = f(name, path)
        if result == nil then result = true end
        loaded[name] = result
        return result
      end
      tried[#tried + 1] = "\n\tno file '" .. path .. "'"
    end
    error("module '" .. name .. "' not found:" .. concat(tried), 2)
  end
  return env
end
