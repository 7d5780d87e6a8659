-- One token bucket, taken from atomically on Redis server time (gateway/ratelimit/redis.py).
--
-- KEYS[1]  the bucket: a hash {tokens, ts}; tokens may be fractional, ts is microseconds of Redis TIME
-- ARGV[1]  refill rate, tokens per second
-- ARGV[2]  burst: the bucket's size; a bucket nobody has touched is full
-- ARGV[3]  cost: tokens this request takes (at most burst, checked by the caller)
-- ARGV[4]  key TTL in seconds: at least burst / rate, the time a bucket takes to refill from empty,
--          so an expired key and a full bucket are the same thing (Traefik's 2 s TTL hands an idle
--          client a full bucket early when burst >> rate)
--
-- Returns {allowed (0|1), remaining whole tokens, retry_after seconds, reset_after seconds}. The
-- seconds are strings: Redis truncates Lua numbers to integers on the way out.

local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])

-- The server's clock, not the gateway's: replicas with skewed clocks must not mint tokens. Scripts
-- may call TIME since Redis 5 (effects replication); Redis 7 only replicates effects.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])

local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local last = tonumber(state[2])
if tokens == nil or last == nil then
  tokens, last = burst, now
end
-- TIME can step back after a failover to a replica with a slower clock: never refill negatively.
local elapsed = math.max(0, now - last)
tokens = math.min(burst, tokens + elapsed * rate / 1000000)

local allowed, retry_after = 0, 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
  -- %.17g keeps every bit of the fraction (tostring keeps 14 digits); %d keeps ts exact.
  redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'ts', string.format('%d', now))
  redis.call('EXPIRE', KEYS[1], ttl)
else
  -- A refusal changes nothing stored: {tokens, ts} still describes the bucket, and a flood of
  -- refused requests costs Redis no writes.
  retry_after = (cost - tokens) / rate
end

return {
  allowed,
  math.floor(tokens),
  string.format('%.6f', retry_after),
  string.format('%.6f', (burst - tokens) / rate),
}
