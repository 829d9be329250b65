-- An app using a LuaRocks module: keystone.helpers, the rock in lua-rocks/,
-- installed into a tree next to this file and found through `rocks_trees`.
--
--   (cd lua-rocks && luarocks --lua-version=5.1 --tree ../examples/rocks/lua_modules \
--      make keystone-helpers-0.1-1.rockspec)
--   keystone serve examples/rocks/app.lua
--   curl -s localhost:8080/users/7          # {"id":7,"tags":["a","b"]}
--
-- The app table's `rocks_trees` is known only once this chunk has returned,
-- so the module is required in init_worker (and could be in handlers). A
-- require at the top of the file would need the tree on the command line:
-- `keystone serve --rocks-tree examples/rocks/lua_modules examples/rocks/app.lua`.
local helpers

return {
  rocks_trees = { "lua_modules" }, -- relative to this file's directory

  init_worker = function(worker)
    helpers = require "keystone.helpers"
    print("worker " .. worker .. ": keystone.helpers " .. helpers._VERSION)
  end,

  routes = {
    ["GET /users/{id}"] = function(ctx)
      local id = tonumber(ctx.params.id) or ctx.params.id
      helpers.json_response(ctx, { id = id, tags = { "a", "b" } })
    end,

    ["GET /hello"] = function(ctx)
      ctx.headers["Content-Type"] = "text/html; charset=utf-8"
      ctx.body = "<p>Hello, " .. helpers.html_escape(ctx.args.name or "world") .. "</p>"
    end,
  },
}
