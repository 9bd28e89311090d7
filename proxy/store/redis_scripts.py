"""The Lua scripts of the Redis store (:mod:`proxy.store.redis`): each one check-and-change, run
atomically by Redis. KEYS and ARGV of each are as its caller in the store passes them."""

PUT_TOKEN = """
redis.call('HSET', KEYS[1], 'record', ARGV[1], 'exp', ARGV[2], 'used', '0')
redis.call('PEXPIREAT', KEYS[1], ARGV[3])
return 1
"""

CONSUME_TOKEN = """
local h = redis.call('HMGET', KEYS[1], 'record', 'exp', 'used')
if not h[1] then return {'unknown'} end
if tonumber(h[2]) <= tonumber(ARGV[1]) then return {'expired'} end
if h[3] == '1' then return {'used'} end
redis.call('HSET', KEYS[1], 'used', '1')
return {'ok', h[1]}
"""

RATE_HIT = """
local limit, win, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local start = tonumber(redis.call('HGET', KEYS[1], 'start') or ARGV[3])
local count = tonumber(redis.call('HGET', KEYS[1], 'count') or '0')
if now >= start + win then start = now; count = 0 end
local retry = start + win - now
if count >= limit then return {0, 0, tostring(retry)} end
redis.call('HSET', KEYS[1], 'start', string.format('%.6f', start), 'count', count + 1)
redis.call('PEXPIREAT', KEYS[1], math.ceil((start + win) * 1000))
return {1, limit - count - 1, tostring(retry)}
"""

SLOT_ACQUIRE = """
local limit, now = tonumber(ARGV[1]), tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[4])
local exists = redis.call('ZSCORE', KEYS[1], ARGV[2])
local n = redis.call('ZCARD', KEYS[1])
if (not exists) and n >= limit then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, 0, tostring(tonumber(first[2]) - now)}
end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
local ttl = redis.call('PTTL', KEYS[1])
local want = math.ceil((tonumber(ARGV[3]) - now) * 1000)
if ttl < want then redis.call('PEXPIRE', KEYS[1], want) end
return {1, limit - redis.call('ZCARD', KEYS[1]), '0'}
"""

SEED = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'balance', ARGV[1], 'held', 0, 'spent', 0)
end
return 1
"""

# Every script that may create an account creates a missing one from its initial credits (the
# last ARGV) and says so: a Redis that lost its data behaves as after a gateway restart.
ENSURE_ACCOUNT = """
local function ensure_account(key, initial)
  if redis.call('EXISTS', key) == 1 then return 0 end
  redis.call('HSET', key, 'balance', initial, 'held', 0, 'spent', 0)
  return 1
end
"""

GRANT = ENSURE_ACCOUNT + """
local seeded = ensure_account(KEYS[1], ARGV[2])
return {redis.call('HINCRBY', KEYS[1], 'balance', ARGV[1]), seeded}
"""

# KEYS: account, hold, hold-expiry index, settled set; ARGV: job, want, expires_at, meta, minimum, initial
OPEN = ENSURE_ACCOUNT + """
local function open_hold()
  if redis.call('SISMEMBER', KEYS[4], ARGV[1]) == 1 then return {0, 0} end
  local seeded = ensure_account(KEYS[1], ARGV[6])
  local acct = redis.call('HMGET', KEYS[1], 'balance', 'held')
  local avail = tonumber(acct[1] or '0') - tonumber(acct[2] or '0')
  if avail <= 0 or avail < tonumber(ARGV[5]) then return {0, seeded} end
  local g = math.min(tonumber(ARGV[2]), avail)
  redis.call('HINCRBY', KEYS[1], 'held', g)
  redis.call('HSET', KEYS[2], 'amount', g, 'metered', 0, 'input_tokens', 0, 'output_tokens', 0,
             'expires_at', ARGV[3], 'meta', ARGV[4])
  redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
  return {g, seeded}
end
"""

OPEN_HOLD = OPEN + """
if redis.call('EXISTS', KEYS[2]) == 1 then return {tonumber(redis.call('HGET', KEYS[2], 'amount')), 0} end
return open_hold()
"""

# as OPEN_HOLD's, ARGV[4] (meta) '' when a lost hold is not to be opened again
GROW_HOLD = OPEN + """
if redis.call('EXISTS', KEYS[2]) == 0 then
  if ARGV[4] == '' then return {0, 0} end
  return open_hold()  -- lost with the store's data
end
local seeded = ensure_account(KEYS[1], ARGV[6])
local acct = redis.call('HMGET', KEYS[1], 'balance', 'held')
local avail = tonumber(acct[1] or '0') - tonumber(acct[2] or '0')
local g = math.max(0, math.min(tonumber(ARGV[2]), avail))
redis.call('HINCRBY', KEYS[1], 'held', g)
redis.call('HINCRBY', KEYS[2], 'amount', g)
redis.call('HSET', KEYS[2], 'expires_at', ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
return {g, seeded}
"""

CHECKPOINT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'metered', ARGV[2], 'input_tokens', ARGV[3], 'output_tokens', ARGV[4],
           'expires_at', ARGV[5])
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[1])
return 1
"""

SETTLE = ENSURE_ACCOUNT + """
if redis.call('SISMEMBER', KEYS[4], ARGV[1]) == 1 then return false end
local seeded = ensure_account(KEYS[1], ARGV[6])
local entry = cjson.decode(ARGV[3])
local h = redis.call('HGETALL', KEYS[2])
local hold = {}
for i = 1, #h, 2 do hold[h[i]] = h[i + 1] end
local amount = 0
if hold['amount'] then
  amount = tonumber(hold['amount'])
  local base = cjson.decode(hold['meta'])
  base['input_tokens'] = tonumber(hold['input_tokens'])
  base['output_tokens'] = tonumber(hold['output_tokens'])
  for k, v in pairs(entry) do base[k] = v end
  entry = base
end
local charge
if ARGV[2] == '' then charge = tonumber(hold['metered'] or '0') else charge = tonumber(ARGV[2]) end
entry['job_id'] = ARGV[1]
entry['owner'] = ARGV[5]
entry['credits'] = charge
if entry['ended_at'] == nil or entry['ended_at'] == cjson.null then entry['ended_at'] = tonumber(ARGV[4]) end
local held = tonumber(redis.call('HGET', KEYS[1], 'held') or '0')
redis.call('HINCRBY', KEYS[1], 'held', 0 - math.min(amount, math.max(held, 0)))  -- never below 0; never -0
redis.call('HINCRBY', KEYS[1], 'balance', 0 - charge)
redis.call('HINCRBY', KEYS[1], 'spent', charge)
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('SADD', KEYS[4], ARGV[1])
local encoded = cjson.encode(entry)
redis.call('ZADD', KEYS[5], entry['ended_at'], encoded)
redis.call('HSET', KEYS[6], ARGV[1], encoded)
if ARGV[7] ~= '' then  -- a completed run: its flow's recent usage, newest first
  redis.call('LPUSH', KEYS[7], ARGV[7])
  redis.call('LTRIM', KEYS[7], 0, tonumber(ARGV[8]) - 1)
end
return {encoded, seeded}
"""


# KEYS: records (id -> JSON), hashes (sha256 -> id), order (id by version), version; ARGV: id, sha256, JSON
PUT_KEY = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 'id_taken' end
if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 1 then return 'hash_taken' end
local v = redis.call('INCR', KEYS[4])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[3], v, ARGV[1])
return 'ok'
"""

# KEYS as PUT_KEY's; ARGV: id
DELETE_KEY = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
redis.call('HDEL', KEYS[2], cjson.decode(raw)['sha256'])
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('INCR', KEYS[4])
return 1
"""
