#!lua name=presenced_v1

-- The Redis backend's functions (store::redis). Each write is one call, so it is one round trip
-- and atomic; every key one call touches shares one hash tag (a partition's `{p<n>}`, or the
-- subscriptions' `{s}`), as Cluster requires. Keys a function reads that are not declared are
-- built from a declared key of the same tag, so they live in the same slot.

-- A commit: compare-and-set the user's version, write the state, keep the partition's deadline
-- index, connected-client set and tenant set, append the change to the partition's stream and
-- announce it on the partition's channel (`<seq> <deadline_us>`: other nodes move their head and
-- wake their sweeper). A conflict returns the state stored now.
-- It also keeps the partition's user and session counts (for /metrics).
-- KEYS: user, due, log, seq, clients, tenant, this node's lease in the partition, counts
-- ARGV: expected, state, deadline_us|'', event|'', now_ms, maxlen, member, connected(1|0),
--       cutoff_ms, keep_at_least, channel, epoch|'' (no fencing), 'shard'|'plain' (channel kind),
--       sessions (how many the new state holds)
local function commit(keys, args)
  if args[12] ~= '' and redis.call('EXISTS', keys[7]) == 0 then
    return redis.error_reply('FENCED this node no longer holds its lease')
  end
  local stored = redis.call('HMGET', keys[1], 'v', 's', 'n')
  local version = tonumber(stored[1] or '0')
  if version ~= tonumber(args[1]) then
    return {0, version, stored[2] or false}
  end
  if version == 0 then
    redis.call('HINCRBY', keys[8], 'users', 1)
  end
  local sessions = tonumber(args[14])
  redis.call('HINCRBY', keys[8], 'sessions', sessions - tonumber(stored[3] or '0'))
  version = version + 1
  redis.call('HSET', keys[1], 'v', version, 's', args[2], 'n', sessions)
  if args[3] == '' then
    redis.call('ZREM', keys[2], args[7])
  else
    redis.call('ZADD', keys[2], args[3], args[7])
  end
  if args[8] == '1' then
    redis.call('SADD', keys[5], args[7])
  else
    redis.call('SREM', keys[5], args[7])
  end
  redis.call('SADD', keys[6], args[7])
  local seq = 0
  if args[4] ~= '' then
    seq = redis.call('INCR', keys[4])
    redis.call('XADD', keys[3], 'MAXLEN', '~', args[6], '0-' .. seq, 'e', args[4], 't', args[5])
    -- Age-based retention, a few entries per commit: amortised, never a long stall.
    local cutoff = tonumber(args[9])
    local keep = tonumber(args[10])
    for _ = 1, 8 do
      local first = redis.call('XRANGE', keys[3], '-', '+', 'COUNT', 1)[1]
      if not first or tonumber(first[2][4]) >= cutoff or redis.call('XLEN', keys[3]) <= keep then
        break
      end
      redis.call('XDEL', keys[3], first[1])
    end
  end
  if seq > 0 or args[3] ~= '' then
    redis.call(args[13] == 'plain' and 'PUBLISH' or 'SPUBLISH', args[11], seq .. ' ' .. args[3])
  end
  return {1, version, seq}
end

-- ---- node leases, judged by Redis's clock ----

local function redis_now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Take ('take') or renew ('renew') a node's lease in the node set: the one place a node is
-- alive or dead. A renewal of a lapsed (or forgotten) lease fails: the node was declared dead.
-- A node stopping cleanly leaves ('leave'): dead at once, so the others take over its work.
-- KEYS: nodes. ARGV: epoch, ttl_ms, take|renew|leave. Returns the lease's end (ms), or 0 if
-- lapsed or left.
-- Entries dead for an hour are forgotten.
local function node_lease(keys, args)
  local now = redis_now_ms()
  if args[3] == 'leave' then
    redis.call('ZREM', keys[1], args[1])
    return 0
  end
  if args[3] == 'renew' then
    local ends = redis.call('ZSCORE', keys[1], args[1])
    if not ends or tonumber(ends) <= now then
      return 0
    end
  end
  local ends = now + tonumber(args[2])
  redis.call('ZADD', keys[1], ends, args[1])
  redis.call('ZREMRANGEBYSCORE', keys[1], '-inf', now - 3600000)
  return ends
end

-- The epochs whose lease is live. KEYS: nodes.
local function live_nodes(keys, args)
  return redis.call('ZRANGE', keys[1], '(' .. redis_now_ms(), '+inf', 'BYSCORE')
end

-- Changes of one partition after sequence ARGV[1], at most ARGV[2].
-- KEYS: log, seq. Returns {1, head, id, event, id, event, ...} or {0, oldest} when the window
-- no longer holds every change after it.
local function read_log(keys, args)
  local after = tonumber(args[1])
  local head = tonumber(redis.call('GET', keys[2]) or '0')
  if after >= head then
    return {1, head}
  end
  local first = redis.call('XRANGE', keys[1], '-', '+', 'COUNT', 1)[1]
  local first_seq = head + 1
  if first then
    first_seq = tonumber(string.match(first[1], '^0%-(%d+)$'))
  end
  if after + 1 < first_seq then
    return {0, first_seq - 1}
  end
  local out = {1, head}
  local entries = redis.call('XRANGE', keys[1], '(0-' .. after, '+', 'COUNT', args[2])
  for _, entry in ipairs(entries) do
    out[#out + 1] = string.match(entry[1], '^0%-(%d+)$')
    out[#out + 1] = entry[2][2]
  end
  return out
end

-- Users' versions and states, in the order of KEYS. Returns {v, s, v, s, ...}.
local function load(keys, args)
  local out = {}
  for _, key in ipairs(keys) do
    local stored = redis.call('HMGET', key, 'v', 's')
    out[#out + 1] = stored[1] or '0'
    out[#out + 1] = stored[2] or ''
  end
  return out
end

-- The partition's sequence and the states of KEYS[2..], as of that sequence.
local function snapshot(keys, args)
  local out = {redis.call('GET', keys[1]) or '0'}
  for i = 2, #keys do
    out[#out + 1] = redis.call('HGET', keys[i], 's') or ''
  end
  return out
end

-- The partition's sequence and every user of one tenant with their states.
-- KEYS: seq, tenant. ARGV: the user keys' prefix (a user key is prefix .. member).
local function snapshot_tenant(keys, args)
  local out = {redis.call('GET', keys[1]) or '0'}
  for _, member in ipairs(redis.call('SMEMBERS', keys[2])) do
    local state = redis.call('HGET', args[1] .. member, 's')
    if state then
      out[#out + 1] = member
      out[#out + 1] = state
    end
  end
  return out
end

-- ---- subscriptions: every key under the tag `{s}` ----
-- KEYS[1] is the tag's prefix (ending in ':'); the names below hang off it.

local function sk(keys, name)
  return keys[1] .. name
end

local function join_positions(old, new)
  if not old then
    return new
  end
  local a, b, out = {}, {}, {}
  for n in string.gmatch(old, '[^,]+') do a[#a + 1] = tonumber(n) end
  for n in string.gmatch(new, '[^,]+') do b[#b + 1] = tonumber(n) end
  for i = 1, math.max(#a, #b) do
    out[i] = string.format('%d', math.max(a[i] or 0, b[i] or 0))
  end
  return table.concat(out, ',')
end

local function queue_notice(keys, notice)
  if notice == '' then
    return
  end
  local id = redis.call('INCR', sk(keys, 'nseq'))
  redis.call('HSET', sk(keys, 'ntc'), id, notice)
  redis.call('ZADD', sk(keys, 'nord'), id, id)
end

local function set_lifecycle(keys, id, at)
  if at == '' then
    redis.call('ZREM', sk(keys, 'life'), id)
  else
    redis.call('ZADD', sk(keys, 'life'), at, id)
  end
end

-- ARGV: id, record, lifecycle_ms|'', owner, application, per_owner, per_app, per_watched,
--       position, watched... Returns {1, version} or {0, kind, bound, which}.
local function sub_create(keys, args)
  local counts = sk(keys, 'cnt')
  local owner_n = tonumber(redis.call('HGET', counts, 'o:' .. args[4]) or '0')
  if owner_n >= tonumber(args[6]) then
    return {0, 'owner', args[6], ''}
  end
  local app_n = tonumber(redis.call('HGET', counts, 'a:' .. args[5]) or '0')
  if app_n >= tonumber(args[7]) then
    return {0, 'application', args[7], ''}
  end
  for i = 10, #args do
    local n = tonumber(redis.call('HGET', counts, 'w:' .. args[i]) or '0')
    if n >= tonumber(args[8]) then
      return {0, 'watched', args[8], args[i]}
    end
  end
  if redis.call('HEXISTS', sk(keys, 'rec'), args[1]) == 1 then
    return redis.error_reply('EXISTS a subscription with this id exists')
  end
  redis.call('HINCRBY', counts, 'o:' .. args[4], 1)
  redis.call('HINCRBY', counts, 'a:' .. args[5], 1)
  for i = 10, #args do
    redis.call('HINCRBY', counts, 'w:' .. args[i], 1)
  end
  redis.call('HSET', sk(keys, 'rec'), args[1], args[2])
  redis.call('HSET', sk(keys, 'ver'), args[1], 1)
  redis.call('ZADD', sk(keys, 'own:' .. args[4]), 0, args[1])
  redis.call('HSET', sk(keys, 'pos'), args[1], args[9])
  set_lifecycle(keys, args[1], args[3])
  return {1, 1}
end

-- ARGV: id, expected, record, lifecycle_ms|'', notice|''. Returns {1, version} or
-- {0, version|0, record|false}.
local function sub_replace(keys, args)
  local version = tonumber(redis.call('HGET', sk(keys, 'ver'), args[1]) or '0')
  if version == 0 or version ~= tonumber(args[2]) then
    return {0, version, redis.call('HGET', sk(keys, 'rec'), args[1]) or false}
  end
  version = version + 1
  redis.call('HSET', sk(keys, 'rec'), args[1], args[3])
  redis.call('HSET', sk(keys, 'ver'), args[1], version)
  set_lifecycle(keys, args[1], args[4])
  queue_notice(keys, args[5])
  return {1, version}
end

-- ARGV: id, expected, notice|'', owner, application, watched...
local function sub_remove(keys, args)
  local version = tonumber(redis.call('HGET', sk(keys, 'ver'), args[1]) or '0')
  if version == 0 or version ~= tonumber(args[2]) then
    return {0, version, redis.call('HGET', sk(keys, 'rec'), args[1]) or false}
  end
  local counts = sk(keys, 'cnt')
  redis.call('HINCRBY', counts, 'o:' .. args[4], -1)
  redis.call('HINCRBY', counts, 'a:' .. args[5], -1)
  for i = 6, #args do
    redis.call('HINCRBY', counts, 'w:' .. args[i], -1)
  end
  for _, name in ipairs({'rec', 'ver', 'pos', 'claim'}) do
    redis.call('HDEL', sk(keys, name), args[1])
  end
  redis.call('ZREM', sk(keys, 'own:' .. args[4]), args[1])
  redis.call('ZREM', sk(keys, 'life'), args[1])
  queue_notice(keys, args[3])
  return {1, 0}
end

-- Records with versions: ARGV are ids. Returns {id, version, record, ...} for those that exist.
local function sub_get(keys, args)
  local out = {}
  for _, id in ipairs(args) do
    local record = redis.call('HGET', sk(keys, 'rec'), id)
    if record then
      out[#out + 1] = id
      out[#out + 1] = redis.call('HGET', sk(keys, 'ver'), id)
      out[#out + 1] = record
    end
  end
  return out
end

local function sub_all(keys, args)
  return sub_get(keys, redis.call('HKEYS', sk(keys, 'rec')))
end

-- ARGV: owner, after|'', limit
local function sub_page(keys, args)
  local from = '-'
  if args[2] ~= '' then
    from = '(' .. args[2]
  end
  local ids = redis.call('ZRANGE', sk(keys, 'own:' .. args[1]), from, '+', 'BYLEX', 'LIMIT', 0, args[3])
  return sub_get(keys, ids)
end

-- ARGV: now_ms, limit
local function sub_due(keys, args)
  local ids = redis.call('ZRANGE', sk(keys, 'life'), '-inf', args[1], 'BYSCORE', 'LIMIT', 0, args[2])
  return sub_get(keys, ids)
end

-- Whether `consumer` may take `id` in the lease hash `hash` at `now`: nobody holds it, the
-- consumer itself does, or the holder's lease ran out.
local function lease_free(hash, id, consumer, now)
  local lease = redis.call('HGET', hash, id)
  if not lease then
    return true
  end
  local holder, ends = string.match(lease, '^(.*)|(%d+)$')
  return holder == consumer or tonumber(ends) <= now
end

-- Which of the live nodes leads a subscription's deliveries: rendezvous hashing, the highest
-- SHA-1 of (epoch, id). Nodes joining or leaving move only the subscriptions they lead or led.
local function leader_of(id, epochs)
  local best, best_weight = nil, nil
  for _, epoch in ipairs(epochs) do
    local weight = redis.sha1hex(epoch .. '/' .. id)
    if not best_weight or weight > best_weight then
      best, best_weight = epoch, weight
    end
  end
  return best
end

-- Lease the subscriptions this node leads (all of them when it names no node) that no other
-- consumer holds, and renew the consumer's own while the node leads them. One it no longer leads
-- is not renewed: the consumer stops sending it at its next refresh, well before the lease runs
-- out and the new leader takes it from the acknowledged position, so per-user order holds. One
-- left free for `takeover_ms` (its leader is not claiming: dead, or the nodes disagree for a
-- moment on who is live) is taken by any node.
-- One call walks one page of the subscriptions (HSCAN from `cursor`), so that a call's time stays
-- bounded however many subscriptions there are; the caller walks the pages.
-- ARGV: consumer, now_ms, until_ms, takeover_ms, epoch|'', cursor, page, live epochs...
-- Returns {next cursor ('0' after the last page), id, position, ...}.
local function claim(keys, args)
  local out = {}
  local now = tonumber(args[2])
  local takeover = tonumber(args[4])
  local epochs = {}
  for i = 8, #args do
    epochs[#epochs + 1] = args[i]
  end
  local claims = sk(keys, 'claim')
  local page = redis.call('HSCAN', sk(keys, 'pos'), args[6], 'COUNT', args[7])
  out[1] = page[1]
  local positions = page[2]
  for i = 1, #positions, 2 do
    local id = positions[i]
    local leads = args[5] == '' or #epochs == 0 or leader_of(id, epochs) == args[5]
    local lease = redis.call('HGET', claims, id)
    local holder, ends = '', 0
    if lease then
      local h, e = string.match(lease, '^(.*)|(%d+)$')
      holder, ends = h or '', tonumber(e or '0')
    end
    local take
    if holder == args[1] and ends > now then
      take = leads
    elseif holder ~= '' and ends > now then
      take = false
    else
      -- Free: never claimed (an empty holder records since when), or lapsed at `ends`.
      take = leads or (lease ~= false and ends + takeover <= now)
      if not take and not lease then
        redis.call('HSET', claims, id, '|' .. now)
      end
    end
    if take then
      redis.call('HSET', claims, id, args[1] .. '|' .. args[3])
      out[#out + 1] = id
      out[#out + 1] = positions[i + 1]
    end
  end
  return out
end

-- ARGV: consumer, ids... Drops the consumer's own claims on them.
local function release(keys, args)
  local claims = sk(keys, 'claim')
  for i = 2, #args do
    local lease = redis.call('HGET', claims, args[i])
    if lease and string.match(lease, '^(.*)|%d+$') == args[1] then
      redis.call('HDEL', claims, args[i])
    end
  end
  return 1
end

-- ARGV: id, position, id, position, ... Positions only move forward; unknown ids are ignored.
local function acknowledge(keys, args)
  for i = 1, #args, 2 do
    local old = redis.call('HGET', sk(keys, 'pos'), args[i])
    if old then
      redis.call('HSET', sk(keys, 'pos'), args[i], join_positions(old, args[i + 1]))
    end
  end
  return 1
end

-- ARGV: id, position, notice|''
local function skip(keys, args)
  local old = redis.call('HGET', sk(keys, 'pos'), args[1])
  if old then
    redis.call('HSET', sk(keys, 'pos'), args[1], join_positions(old, args[2]))
  end
  queue_notice(keys, args[3])
  return 1
end

-- ARGV: consumer, now_ms, until_ms, limit. Returns {id, notice, ...}, oldest first.
local function claim_notices(keys, args)
  local out = {}
  local now = tonumber(args[2])
  local limit = tonumber(args[4])
  for _, id in ipairs(redis.call('ZRANGE', sk(keys, 'nord'), 0, -1)) do
    if #out >= 2 * limit then
      break
    end
    if lease_free(sk(keys, 'nclaim'), id, args[1], now) then
      redis.call('HSET', sk(keys, 'nclaim'), id, args[1] .. '|' .. args[3])
      out[#out + 1] = id
      out[#out + 1] = redis.call('HGET', sk(keys, 'ntc'), id)
    end
  end
  return out
end

-- ARGV: notice ids
local function finish_notices(keys, args)
  for _, id in ipairs(args) do
    redis.call('HDEL', sk(keys, 'ntc'), id)
    redis.call('HDEL', sk(keys, 'nclaim'), id)
    redis.call('ZREM', sk(keys, 'nord'), id)
  end
  return 1
end

redis.register_function('pd_commit', commit)
redis.register_function('pd_node_lease', node_lease)
redis.register_function{function_name = 'pd_live_nodes', callback = live_nodes, flags = {'no-writes'}}
redis.register_function{function_name = 'pd_read_log', callback = read_log, flags = {'no-writes'}}
redis.register_function{function_name = 'pd_load', callback = load, flags = {'no-writes'}}
redis.register_function{function_name = 'pd_snapshot', callback = snapshot, flags = {'no-writes'}}
redis.register_function{function_name = 'pd_snapshot_tenant', callback = snapshot_tenant, flags = {'no-writes'}}
redis.register_function('pd_sub_create', sub_create)
redis.register_function('pd_sub_replace', sub_replace)
redis.register_function('pd_sub_remove', sub_remove)
redis.register_function{function_name = 'pd_sub_get', callback = sub_get, flags = {'no-writes'}}
redis.register_function{function_name = 'pd_sub_all', callback = sub_all, flags = {'no-writes'}}
redis.register_function{function_name = 'pd_sub_page', callback = sub_page, flags = {'no-writes'}}
redis.register_function{function_name = 'pd_sub_due', callback = sub_due, flags = {'no-writes'}}
redis.register_function('pd_claim', claim)
redis.register_function('pd_release', release)
redis.register_function('pd_acknowledge', acknowledge)
redis.register_function('pd_skip', skip)
redis.register_function('pd_claim_notices', claim_notices)
redis.register_function('pd_finish_notices', finish_notices)
