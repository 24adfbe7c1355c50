-- wrk script for the harness. With an argument (a file of JWTs, one per line) every request carries the next
-- token in turn, so the tokens rotate across tenants; a second argument "POST" sends small JSON writes instead
-- of GETs. Reports one JSON line with what the harness records.
local tokens = {}
local i = 0
local method = "GET"
local body = nil

init = function(args)
  if args[1] and args[1] ~= "-" then
    for line in io.lines(args[1]) do tokens[#tokens + 1] = line end
  end
  if args[2] == "POST" then
    method = "POST"
    body = '{"op":"write"}'
  end
end

request = function()
  local headers = {}
  if body then headers["Content-Type"] = "application/json" end
  if #tokens == 0 then return wrk.format(method, "/", headers, body) end
  i = (i % #tokens) + 1
  headers["Authorization"] = "Bearer " .. tokens[i]
  return wrk.format(method, "/", headers, body)
end

done = function(summary, latency, requests)
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"errors":%d,"non2xx":%d,"p50_us":%d,"p99_us":%d}\n',
    summary.requests, summary.duration,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status, latency:percentile(50), latency:percentile(99)))
end
