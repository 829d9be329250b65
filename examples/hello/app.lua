-- The bundled example app: `keystone serve` without an APP serves this.
-- Handlers assign state to ctx; they never perform I/O.
return {
  routes = {
    ["GET /"] = function(ctx)
      ctx.body = "Hello, World!"
    end,

    ["GET /json"] = function(ctx)
      ctx.headers["Content-Type"] = "application/json"
      ctx.body = '{"message":"Hello, World!"}'
    end,

    ["GET /users/{id}"] = function(ctx)
      ctx.headers["Content-Type"] = "application/json"
      ctx.body = '{"id":' .. ctx.params.id .. '}'
    end,
  },
}
