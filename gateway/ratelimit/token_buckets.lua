-- Several token buckets, taken from together or not at all, on Redis server time: one call held to
-- several limits (gateway/ratelimit/calls.py) in one round trip. Same arithmetic as token_bucket.lua,
-- which stays the script of a call held to one limit.
--
-- KEYS[i]  bucket i: a hash {tokens, ts}, as in token_bucket.lua
-- ARGV     four per key, in key order: rate (tokens per second), burst, cost, key TTL in seconds
--
-- Every bucket is refilled and checked first; only if each holds its cost is each cost taken. A
-- refusal by any bucket writes nothing at all, so a call one limit refuses spends no other's quota.
--
-- Returns one {allowed (0|1), remaining, "retry_after", "reset_after"} per key, in key order.
-- `allowed` says whether that bucket held its cost: the call went through only if all say 1. On a
-- refusal, `remaining` is what each bucket holds (nothing was taken from any).

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])

local levels = {}
local all = true
for i = 1, #KEYS do
  local base = (i - 1) * 4
  local rate = tonumber(ARGV[base + 1])
  local burst = tonumber(ARGV[base + 2])
  local cost = tonumber(ARGV[base + 3])
  local state = redis.call('HMGET', KEYS[i], 'tokens', 'ts')
  local tokens = tonumber(state[1])
  local last = tonumber(state[2])
  if tokens == nil or last == nil then
    tokens, last = burst, now
  end
  -- TIME can step back after a failover: never refill negatively.
  tokens = math.min(burst, tokens + math.max(0, now - last) * rate / 1000000)
  levels[i] = tokens
  if tokens < cost then
    all = false
  end
end

local replies = {}
for i = 1, #KEYS do
  local base = (i - 1) * 4
  local rate = tonumber(ARGV[base + 1])
  local burst = tonumber(ARGV[base + 2])
  local cost = tonumber(ARGV[base + 3])
  local tokens = levels[i]
  local allowed, retry_after = 0, 0
  if tokens >= cost then
    allowed = 1
  else
    retry_after = (cost - tokens) / rate
  end
  if all then
    tokens = tokens - cost
    redis.call('HSET', KEYS[i], 'tokens', string.format('%.17g', tokens), 'ts', string.format('%d', now))
    redis.call('EXPIRE', KEYS[i], tonumber(ARGV[base + 4]))
  end
  replies[i] = {
    allowed,
    math.floor(tokens),
    string.format('%.6f', retry_after),
    string.format('%.6f', (burst - tokens) / rate),
  }
end
return replies
