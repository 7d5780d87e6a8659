-- Leases on token buckets (gateway/ratelimit/lease.py): a gateway takes the tokens of several calls
-- in one round trip and spends them itself, instead of one EVALSHA per call. Same buckets, clock and
-- refill arithmetic as token_bucket.lua. A round trip takes what the calls waiting for it need
-- (`want`, spent as soon as the answer arrives, like a plain take) and, while the bucket holds
-- plenty, a few tokens more for later calls (`extra`). Only the extras are a lease, and one rule
-- keeps a lease from ever letting more through than the bucket would: tokens out on live leases
-- count against the burst. A bucket refills only up to burst minus what is leased, so the tokens in
-- Redis plus the extras held by gateways never exceed the burst. A lease's extras count until it
-- ends, spent or not, so what leasing gets wrong is on the safe side: a little less let through.
--
-- KEYS[i]  bucket i: a hash {tokens, ts} as in token_bucket.lua, plus one field per live lease,
--          "l:<holder>" = "<extra tokens leased> <expiry, microseconds of TIME>"
-- ARGV[1]  the holder: one gateway process
-- ARGV[2]  how long a lease lives, microseconds
-- ARGV[3]  share: a lease's extras are at most this fraction of what the bucket holds beyond `want`
-- then seven per key, in key order:
--          rate, burst, key TTL (seconds, as token_bucket.lua),
--          least (the cost of one call: holding less than this is a refusal),
--          want (the cost of every call waiting for this round trip),
--          extra (the most tokens to lease beyond `want`),
--          unused (tokens of the holder's current lease it gives back: that lease ends here)
--
-- A holder has one lease per bucket; a round trip ends the old one (its unused tokens come back). A
-- lease that expires ends by itself: its extras stop counting against the burst and the bucket
-- refills past them at its rate (the holder stopped spending them earlier, on a clock that started
-- before Redis's). Every bucket is checked first; tokens are granted on every bucket or on none, so a
-- call one limit refuses takes nothing from the other's.
--
-- Returns one {granted, remaining, "retry_after", "reset_after"} per key, in key order: granted (want
-- and extras together) is 0 on every key when any refused; remaining is what the bucket holds
-- afterwards (whole tokens); retry_after is above 0 only for the buckets that held less than `least`.

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local holder = 'l:' .. ARGV[1]
local lease_us = tonumber(ARGV[2])
local share = tonumber(ARGV[3])

local levels, params = {}, {}
local all = true
for i = 1, #KEYS do
  local base = 3 + (i - 1) * 7
  local p = {}
  for k = 1, 7 do
    p[k] = tonumber(ARGV[base + k])
  end
  params[i] = p
  local rate, burst, least, unused = p[1], p[2], p[4], p[7]
  local fields = redis.call('HGETALL', KEYS[i])
  local tokens, last
  local held, mine = 0, 0 -- extras on others' live leases, on this holder's
  for j = 1, #fields, 2 do
    local name, value = fields[j], fields[j + 1]
    if name == 'tokens' then
      tokens = tonumber(value)
    elseif name == 'ts' then
      last = tonumber(value)
    else
      local count, expiry = string.match(value, '^(%d+) (%d+)$')
      count, expiry = tonumber(count), tonumber(expiry)
      if count == nil or expiry <= now then
        redis.call('HDEL', KEYS[i], name)
      elseif name == holder then
        mine = count
      else
        held = held + count
      end
    end
  end
  if tokens == nil or last == nil then
    tokens, last = burst - held - mine, now
  end
  -- Refilled up to the burst less every live lease; TIME can step back: never refill negatively.
  local cap = burst - held - mine
  if tokens < cap then
    tokens = math.min(cap, tokens + math.max(0, now - last) * rate / 1000000)
  end
  -- This holder's lease ends: what it did not spend comes back (never more than it was lent).
  if mine > 0 then
    tokens = tokens + math.min(unused, mine)
  end
  levels[i] = tokens
  if tokens < least then
    all = false
  end
end

local replies = {}
for i = 1, #KEYS do
  local rate, burst, ttl, least, want, extra = unpack(params[i], 1, 6)
  local tokens = levels[i]
  local granted, retry_after = 0, 0
  local leased = 0
  if all then
    granted = math.min(math.floor(tokens), want)
    leased = math.max(0, math.min(extra, math.floor((tokens - granted) * share)))
    granted = granted + leased
    tokens = tokens - granted
  elseif tokens < least then
    retry_after = (least - tokens) / rate
  end
  redis.call('HSET', KEYS[i], 'tokens', string.format('%.17g', tokens), 'ts', string.format('%d', now))
  if leased > 0 then
    redis.call('HSET', KEYS[i], holder, string.format('%d %d', leased, now + lease_us))
  else
    redis.call('HDEL', KEYS[i], holder)
  end
  redis.call('EXPIRE', KEYS[i], math.max(ttl, math.ceil(lease_us / 1000000) + 1))
  replies[i] = {
    granted,
    math.floor(tokens),
    string.format('%.6f', retry_after),
    string.format('%.6f', (burst - tokens) / rate),
  }
end
return replies
