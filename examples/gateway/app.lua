-- A gateway: Lua decides who passes and where a request goes; the engine
-- carries it to the backend. Its spec (spec/app_spec.lua) points the pool
-- at a fake, so `keystone test` needs no backend at all.
--
--   keystone serve examples/gateway/app.lua      # backends on :9001, :9002
--   curl -s -H 'Authorization: Bearer s3cret' localhost:8080/api/orders/7
return {
  upstreams = {
    orders = {
      peers = { "127.0.0.1:9001", "127.0.0.1:9002" },
      connect_timeout = 2, read_timeout = 30,
      retries = 1,
    },
  },

  routes = {
    ["GET /health"] = function(ctx)
      ctx.body = "ok"
    end,

    ["* /api/{*rest}"] = function(ctx)
      if ctx.request.headers["authorization"] ~= "Bearer s3cret" then
        ctx.status = 401
        ctx.headers["WWW-Authenticate"] = 'Bearer realm="api"'
        ctx.body = "who are you?\n"
        return                                  -- answered here, never proxied
      end
      ctx.upstream = "orders"
      -- Setting the path replaces the client's path and query: keep the query.
      local query = ctx.query
      ctx.upstream_path = "/v1/" .. ctx.params.rest .. (query ~= "" and "?" .. query or "")
      ctx.upstream_headers["X-User"] = "alice"
      ctx.upstream_headers["Authorization"] = nil   -- the backend never sees the token
      ctx.on_response = function(ctx)
        ctx.headers["X-Gateway"] = "keystone"
      end
    end,
  },
}
