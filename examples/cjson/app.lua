-- An app using a C module in the sandbox: lua-cjson (Debian: apt-get
-- install lua-cjson, which installs /usr/lib/x86_64-linux-gnu/lua/5.1/cjson.so,
-- on LuaJIT's default C path).
--
--   keystone serve examples/cjson/app.lua
--   curl -s localhost:8080/json                       # {"message":"Hello, World!"}
--   curl -s -d '[1,{"a":true}]' localhost:8080/echo   # [1,{"a":true}]
--
-- The sandbox loads a C module only when it is allowed, here by
-- `allow_c_modules`. That field is read once this chunk has returned, so
-- cjson is required in init_worker. A require at the top of the file needs
-- the flag instead: `keystone serve --allow-c-module cjson examples/cjson/app.lua`.
local cjson

return {
  allow_c_modules = { "cjson" },

  init_worker = function()
    cjson = require "cjson"
  end,

  routes = {
    ["GET /json"] = function(ctx)
      ctx.headers["Content-Type"] = "application/json"
      ctx.body = cjson.encode({ message = "Hello, World!" })
    end,

    ["POST /echo"] = function(ctx)
      local ok, value = pcall(cjson.decode, ctx.request.body)
      if not ok then
        ctx.status = 400
        ctx.body = "invalid JSON\n"
        return
      end
      ctx.headers["Content-Type"] = "application/json"
      ctx.body = cjson.encode(value)
    end,
  },
}
