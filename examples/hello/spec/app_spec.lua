-- The bundled example app's behaviour, run by `keystone test examples/hello/spec`
-- (or `keystone test` from examples/hello): each request goes through the real
-- engine in memory — parser, router, the app's sandboxed Lua state, response
-- builder — with no socket and no server.
local app = keystone.app("../app.lua")

describe("hello", function()
  it("says hello at /", function()
    local res = app:request { path = "/" }
    assert.equal(200, res.status)
    assert.equal("Hello, World!", res.body)
    assert.equal("13", res.headers["Content-Length"])
  end)

  it("answers JSON at /json", function()
    local res = app:request { path = "/json" }
    assert.equal("application/json", res.headers["content-type"])
    assert.same({ message = "Hello, World!" }, res:json())
  end)

  it("returns a user as JSON", function()
    local res = app:request { method = "GET", path = "/users/7" }
    assert.equal(200, res.status)
    assert.same({ id = 7 }, res:json())
  end)

  it("answers HEAD like GET, without the body", function()
    local res = app:request { method = "HEAD", path = "/" }
    assert.equal(200, res.status)
    assert.equal("13", res.headers["content-length"])
    assert.equal("", res.body)
  end)

  it("says 404 for an unknown path and 405 with Allow for a wrong method", function()
    assert.equal(404, app:request({ path = "/nope" }).status)
    local res = app:request { method = "DELETE", path = "/json" }
    assert.equal(405, res.status)
    assert.matches("GET", res.headers["allow"])
  end)

  it("frames pipelined requests in order", function()
    local res = app:request { raw = "GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /users/1 HTTP/1.1\r\nHost: a\r\n\r\n" }
    assert.equal("Hello, World!", res.body)
    assert.matches('{"id":1}$', res.rest)
  end)

  it("refuses a request without Host with 400", function()
    local res = app:request { raw = "GET / HTTP/1.1\r\n\r\n" }
    assert.equal(400, res.status)
  end)
end)
