"""Lua scripts of the Redis engine (spec 08 §8.3), run with EVALSHA (EVAL again on NOSCRIPT).

Epochs are passed in (decimal unix seconds computed by the caller) rather than read with
TIME inside the script, so the scripts stay deterministic for replication on Redis 5.
A new epoch also deletes a leftover stream: its entry IDs belong to the old epoch and
would make XADD of offset 1 fail.
"""

# KEYS: stream, meta, PUB/SUB channel.
# ARGV: publication, history_size, history_ttl, meta_ttl, new epoch.
PUBLISH = """
local epoch = redis.call('hget', KEYS[2], 'e')
if not epoch then
  epoch = ARGV[5]
  redis.call('hset', KEYS[2], 'e', epoch)
  redis.call('del', KEYS[1])
end
local offset = redis.call('hincrby', KEYS[2], 's', 1)
if tonumber(ARGV[4]) > 0 then
  redis.call('expire', KEYS[2], ARGV[4])
end
redis.call('xadd', KEYS[1], 'MAXLEN', ARGV[2], offset .. '-0', 'd', ARGV[1])
redis.call('expire', KEYS[1], ARGV[3])
redis.call('publish', KEYS[3], '__p1:' .. offset .. ':' .. epoch .. '__' .. ARGV[1])
return {offset, epoch}
"""

# KEYS: stream, meta.
# ARGV: new epoch, meta_ttl, start ID, end ID, count (0 none, -1 all), reverse ('1'/'0').
HISTORY = """
local epoch = redis.call('hget', KEYS[2], 'e')
if not epoch then
  epoch = ARGV[1]
  redis.call('hset', KEYS[2], 'e', epoch, 's', 0)
  redis.call('del', KEYS[1])
end
local top = redis.call('hget', KEYS[2], 's') or '0'
if tonumber(ARGV[2]) > 0 then
  redis.call('expire', KEYS[2], ARGV[2])
end
local entries = {}
local count = tonumber(ARGV[5])
local cmd = 'xrange'
if ARGV[6] == '1' then cmd = 'xrevrange' end
if count > 0 then
  entries = redis.call(cmd, KEYS[1], ARGV[3], ARGV[4], 'COUNT', count)
elseif count < 0 then
  entries = redis.call(cmd, KEYS[1], ARGV[3], ARGV[4])
end
return {top, epoch, entries}
"""

# KEYS: presence data, presence expire. ARGV: client, info, expire_at, ttl.
PRESENCE_ADD = """
redis.call('zadd', KEYS[2], ARGV[3], ARGV[1])
redis.call('hset', KEYS[1], ARGV[1], ARGV[2])
redis.call('expire', KEYS[1], ARGV[4])
redis.call('expire', KEYS[2], ARGV[4])
return 1
"""

# KEYS: presence data, presence expire. ARGV: client.
PRESENCE_REMOVE = """
redis.call('hdel', KEYS[1], ARGV[1])
redis.call('zrem', KEYS[2], ARGV[1])
return 1
"""

# KEYS: presence data, presence expire. ARGV: now (unix seconds).
PRESENCE_GET = """
local expired = redis.call('zrangebyscore', KEYS[2], '0', ARGV[1])
if #expired > 0 then
  for _, member in ipairs(expired) do
    redis.call('hdel', KEYS[1], member)
  end
  redis.call('zremrangebyscore', KEYS[2], '0', ARGV[1])
end
return redis.call('hgetall', KEYS[1])
"""

ALL = {"publish": PUBLISH, "history": HISTORY, "presence_add": PRESENCE_ADD,
       "presence_remove": PRESENCE_REMOVE, "presence_get": PRESENCE_GET}
