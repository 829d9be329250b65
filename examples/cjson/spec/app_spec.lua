-- examples/cjson: lua-cjson inside the sandbox, allowed by the app table.
local app = keystone.app("../app.lua")

describe("cjson app", function()
  it("encodes JSON with cjson", function()
    local res = app:request { path = "/json" }
    assert.equal(200, res.status)
    assert.same({ message = "Hello, World!" }, res:json())
  end)

  it("echoes what it decodes", function()
    local res = app:request { method = "POST", path = "/echo", body = '[1,{"a":true}]' }
    assert.equal(200, res.status)
    assert.same({ 1, { a = true } }, res:json())
  end)

  it("answers 400 to a body that is not JSON", function()
    local res = app:request { method = "POST", path = "/echo", body = "{nope" }
    assert.equal(400, res.status)
    assert.equal("invalid JSON\n", res.body)
  end)
end)
