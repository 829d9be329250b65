-- examples/gateway: who passes, and what the backend receives. The pool's
-- peers are replaced by a fake: it sees the request exactly as the engine
-- re-serializes it for a backend, and its answer goes back through the
-- engine's upstream client.
local app = keystone.app("../app.lua")

describe("gateway", function()
  it("turns away a request without the token, never reaching the backend", function()
    app:upstream("orders", function()
      error("the backend must not be called")
    end)
    local res = app:request { path = "/api/orders/7" }
    assert.equal(401, res.status)
    assert.equal('Bearer realm="api"', res.headers["www-authenticate"])
  end)

  it("proxies with the path rewritten and the token removed", function()
    local seen
    app:upstream("orders", function(req)
      seen = req
      return { status = 200, headers = { ["Content-Type"] = "application/json" }, body = '{"id":7}' }
    end)
    local res = app:request {
      path = "/api/orders/7",
      query = "full=1",
      headers = { Authorization = "Bearer s3cret", Connection = "keep-alive, X-Drop", ["X-Drop"] = "1" },
      remote_addr = "203.0.113.9",
    }
    assert.equal(200, res.status)
    assert.same({ id = 7 }, res:json())
    assert.equal("keystone", res.headers["x-gateway"])
    assert.equal("/v1/orders/7", seen.path)
    assert.equal("full=1", seen.query)
    assert.equal("alice", seen.headers["x-user"])
    assert.is_nil(seen.headers["authorization"])
    assert.is_nil(seen.headers["x-drop"])           -- named by Connection: hop-by-hop
    assert.equal("203.0.113.9", seen.headers["x-forwarded-for"])
  end)

  it("forwards a request body", function()
    app:upstream("orders", function(req)
      assert.equal("POST", req.method)
      return { status = 201, body = req.body }
    end)
    local res = app:request {
      method = "POST", path = "/api/orders",
      headers = { Authorization = "Bearer s3cret" }, json = { item = "book" },
    }
    assert.equal(201, res.status)
    assert.same({ item = "book" }, res:json())
  end)

  it("answers 502 when the backend closes without an answer", function()
    app:upstream("orders", function() return nil end)
    local res = app:request { path = "/api/orders/7", headers = { Authorization = "Bearer s3cret" } }
    assert.equal(502, res.status)
  end)

  it("answers 502 when the pool has no fake (nothing is reachable)", function()
    local res = app:request { path = "/api/orders/7", headers = { Authorization = "Bearer s3cret" } }
    assert.equal(502, res.status)
  end)
end)
