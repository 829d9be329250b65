-- keystone.helpers: small pure-Lua helpers for Keystone apps (JSON encoding
-- and escaping, HTML escaping, route tables). Built from this directory,
-- offline, with:
--
--   luarocks --lua-version=5.1 --tree TREE make keystone-helpers-0.1-1.rockspec
--
-- `luarocks make` builds from the working copy; `source.url` is only what
-- `luarocks pack`/`install` from a server would fetch.
rockspec_format = "3.0"
package = "keystone-helpers"
version = "0.1-1"
source = {
   url = "git+file:///keystone/lua-rocks",
}
description = {
   summary = "Small pure-Lua helpers for Keystone apps",
   detailed = [[
keystone.helpers runs inside Keystone's Lua sandbox (it needs only string,
table and math): json(value) with sorted object keys, json_escape(s),
html_escape(s), resource(path, { GET = f, ... }) and routes(...) to build
route tables, json_response(ctx, value, status).
]],
   license = "MIT OR Apache-2.0",
}
dependencies = {
   "lua >= 5.1",
}
build = {
   type = "builtin",
   modules = {
      ["keystone.helpers"] = "src/keystone/helpers.lua",
   },
}
