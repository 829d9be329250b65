-- `cargo xtask bench`'s in-process row: how many requests a second
-- `app:request` runs through the whole engine (the bundled example app,
-- its router and Lua state, the response builder, the response parsed back
-- into `res`). Run by `keystone test benches/spec`, pinned to one core.
local app = keystone.app("../../examples/hello/app.lua")
local N = tonumber(os.getenv("KEYSTONE_SPEC_BENCH_REQUESTS")) or 100000

describe("app:request throughput", function()
  it("answers GET /users/{id} " .. N .. " times", function()
    local request = { path = "/users/7" }
    for _ = 1, N do
      local res = app:request(request)
      if res.status ~= 200 then
        assert.equal(200, res.status)
      end
    end
  end)
end)
