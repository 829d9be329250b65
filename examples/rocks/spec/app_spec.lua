-- examples/rocks: a LuaRocks module (keystone.helpers) found through the
-- app's rocks_trees, in the app's sandbox. Install the rock first, as
-- app.lua says (`cargo xtask test` does):
--   (cd lua-rocks && luarocks --lua-version=5.1 --tree ../examples/rocks/lua_modules \
--      make keystone-helpers-0.1-1.rockspec)
local app = keystone.app("../app.lua")

describe("rocks app", function()
  it("answers JSON built by the rock's helper", function()
    local res = app:request { path = "/users/7" }
    assert.equal(200, res.status)
    assert.same({ id = 7, tags = { "a", "b" } }, res:json())
  end)

  it("escapes HTML with the rock's helper", function()
    local res = app:request { path = "/hello", query = { name = "<b>Ann</b>" } }
    assert.equal("text/html; charset=utf-8", res.headers["content-type"])
    assert.equal("<p>Hello, &lt;b&gt;Ann&lt;/b&gt;</p>", res.body)
  end)

  it("greets the world by default", function()
    assert.equal("<p>Hello, world</p>", app:request({ path = "/hello" }).body)
  end)
end)
