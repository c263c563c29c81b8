-- The online half of the feature contract (serve_app/features/contract.py): one atomic call per
-- transaction or per label. online.py prepends the contract's constants as locals (RETENTION_MS,
-- WINDOWS_MS, LABEL_WINDOWS_MS, KEY_TTL_MS), so this file holds no copy of them and a contract change
-- changes the script's SHA. Numbers go out as strings ('%.17g') because Redis truncates Lua numbers to
-- integers in replies; '' means "no such event" (NaN in Python).
--
-- ARGV[1] = 'tx'
--   KEYS: customer history zset, merchant zset, transaction record hash, customer label zset,
--         merchant label zset, customer running-sum hash, customer located-events zset,
--         customer-at-merchant zset
--   ARGV: 'tx', event 'transaction_id|ts_ms|amount|merchant_id|lat|lon' (lat/lon '' if none; this text
--         is also the customer zset member), customer_id
--   Returns {status, raw}: status 'new' | 'dup' | 'conflict' (id seen with other content), raw the
--   aggregates of RAW_NAMES as they were before this transaction, joined by ','.
-- ARGV[1] = 'label'
--   KEYS: transaction record hash, customer label zset, merchant label zset
--   ARGV: 'label', transaction_id, is_fraud ('0' | '1'), labelled_at_ms, customer_id, merchant_id
--   Returns 'recorded' | 'unchanged' | 'corrected' | 'unknown'.
--
-- Cost: O(log n) in the customer's history for a transaction that arrives in time order. Nothing walks the
-- history: counts are ZCOUNTs; window sums are differences of a running sum kept per event (the sum of the
-- customer's amounts up to and including it, in zset order) in a hash; the merchant and location lookups
-- have sets of their own. A late transaction adds its amount to the running sum of each later event.

local EVENT_PATTERN = '^([^|]+)|([^|]+)|([^|]+)|([^|]+)|([^|]*)|([^|]*)$'
local HISTORY_PATTERN = '^[^|]+|([^|]+)|([^|]+)|([^|]+)|(.*)$' -- ts, amount, merchant, 'lat|lon'
-- Running-sum hash fields besides the transaction ids; '|' never occurs in an id, so they cannot collide.
local BASE = '|base' -- running sum of every event trimmed from the history
local LEGACY = '|legacy' -- the history predates the sums: per-merchant sets are built on first use
local HDEL_CHUNK = 1000 -- arguments per HDEL (Lua's unpack has a limit)

local function fmt(x)
  if x == nil then
    return ''
  end
  return string.format('%.17g', x)
end

-- Byte order, as the contract demands: Lua's own string '<' follows the server's locale (strcoll).
local function id_after(a, b)
  local n = math.min(#a, #b)
  for i = 1, n do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then
      return x > y
    end
  end
  return #a > #b
end

local function id_of(member)
  return string.match(member, '^[^|]+')
end

-- A history written before the running sums existed (or whose sums were lost): build them, once.
local function adopt_history(cust_key, sums_key, located_key)
  if redis.call('EXISTS', sums_key) == 1 then
    return
  end
  local members = redis.call('ZRANGE', cust_key, 0, -1)
  if #members == 0 then
    return
  end
  local running = 0
  for i = 1, #members do
    local hts_s, hamount_s, _, hgeo = string.match(members[i], HISTORY_PATTERN)
    running = running + tonumber(hamount_s)
    redis.call('HSET', sums_key, id_of(members[i]), fmt(running))
    if hgeo ~= '|' then
      redis.call('ZADD', located_key, hts_s, members[i])
    end
  end
  redis.call('HSET', sums_key, BASE, '0', LEGACY, '1')
end

-- For an adopted history, the customer's events at this merchant, from the history, the first time.
local function adopt_merchant(cust_key, sums_key, pair_key, merchant)
  local mark = '|m|' .. merchant
  if redis.call('HEXISTS', sums_key, LEGACY) == 0 or redis.call('HEXISTS', sums_key, mark) == 1 then
    return
  end
  local members = redis.call('ZRANGE', cust_key, 0, -1)
  for i = 1, #members do
    local hts_s, _, hmerchant = string.match(members[i], HISTORY_PATTERN)
    if hmerchant == merchant then
      redis.call('ZADD', pair_key, hts_s, id_of(members[i]))
    end
  end
  redis.call('HSET', sums_key, mark, '1')
end

-- Forget what no window can see any more; the running sum of the last forgotten event becomes the base.
local function trim(cust_key, sums_key, stale)
  local old = redis.call('ZRANGEBYSCORE', cust_key, '-inf', stale)
  if #old == 0 then
    return
  end
  local base = redis.call('HGET', sums_key, id_of(old[#old]))
  local ids = {}
  for i = 1, #old do
    ids[#ids + 1] = id_of(old[i])
    if #ids == HDEL_CHUNK or i == #old then
      redis.call('HDEL', sums_key, unpack(ids))
      ids = {}
    end
  end
  redis.call('HSET', sums_key, BASE, base or '0')
  redis.call('ZREMRANGEBYSCORE', cust_key, '-inf', stale)
end

local function record_transaction()
  local cust_key, merch_key, rec_key, cust_labels, merch_labels = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
  local sums_key, located_key, pair_key = KEYS[6], KEYS[7], KEYS[8]
  local event, customer = ARGV[2], ARGV[3]
  local txid, ts_s, amount_s, merchant, lat = string.match(event, EVENT_PATTERN)
  if not txid then
    return redis.error_reply('malformed transaction event')
  end

  -- Idempotency: a seen id returns the answer it got the first time and changes nothing.
  local seen = redis.call('HMGET', rec_key, 'raw', 'c', 'e')
  if seen[1] then
    if seen[2] == customer and seen[3] == event then
      return {'dup', seen[1]}
    end
    return {'conflict', seen[1]}
  end

  local t = tonumber(ts_s)
  local windows, label_windows = WINDOWS_MS, LABEL_WINDOWS_MS
  local since = fmt(t - RETENTION_MS)
  local until_t = '(' .. ts_s -- exclusive: events at the same timestamp are not history

  adopt_history(cust_key, sums_key, located_key)
  adopt_merchant(cust_key, sums_key, pair_key, merchant)
  -- Forget what no window can see any more (the offline side never looks further back either).
  local stale = '(' .. since
  trim(cust_key, sums_key, stale)
  redis.call('ZREMRANGEBYSCORE', located_key, '-inf', stale)
  redis.call('ZREMRANGEBYSCORE', pair_key, '-inf', stale)
  redis.call('ZREMRANGEBYSCORE', merch_key, '-inf', stale)
  redis.call('ZREMRANGEBYSCORE', cust_labels, '-inf', stale)
  redis.call('ZREMRANGEBYSCORE', merch_labels, '-inf', stale)

  -- Everything left in the customer's set before t is history: the trim removed what is older.
  local base = tonumber(redis.call('HGET', sums_key, BASE) or '0')
  local function sum_before(bound) -- running sum of the last event with a score below `bound`
    local last = redis.call('ZREVRANGEBYSCORE', cust_key, bound, '-inf', 'LIMIT', 0, 1)
    if #last == 0 then
      return base
    end
    return tonumber(redis.call('HGET', sums_key, id_of(last[1])))
  end
  local lows = {}
  for k = 1, #windows do
    lows[k] = t - windows[k]
  end
  local total = sum_before(until_t)
  local last = redis.call('ZREVRANGEBYSCORE', cust_key, until_t, '-inf', 'WITHSCORES', 'LIMIT', 0, 1)
  local last_ts = last[2] and tonumber(last[2]) or nil

  -- The latest located event; equal timestamps: the larger transaction_id wins (member order is not id
  -- order: 'ab|' > 'abc|').
  local geo_ts, geo_lat, geo_lon = nil, nil, nil
  local top = redis.call('ZREVRANGEBYSCORE', located_key, until_t, '-inf', 'WITHSCORES', 'LIMIT', 0, 1)
  if top[1] then
    local tied = redis.call('ZRANGEBYSCORE', located_key, top[2], top[2])
    local chosen = tied[1]
    for i = 2, #tied do
      if id_after(id_of(tied[i]), id_of(chosen)) then
        chosen = tied[i]
      end
    end
    geo_ts = tonumber(top[2])
    geo_lat, geo_lon = string.match(chosen, '|([^|]*)|([^|]*)$')
  end

  local raw = {}
  for w = 1, #windows do
    raw[#raw + 1] = fmt(redis.call('ZCOUNT', cust_key, fmt(lows[w]), until_t))
  end
  for w = 1, #windows do
    raw[#raw + 1] = fmt(total - sum_before('(' .. fmt(lows[w])))
  end
  raw[#raw + 1] = fmt(last_ts)
  raw[#raw + 1] = fmt(geo_ts)
  raw[#raw + 1] = geo_lat or '' -- the stored text is the exact repr the client sent
  raw[#raw + 1] = geo_lon or ''
  raw[#raw + 1] = fmt(redis.call('ZCOUNT', pair_key, '-inf', until_t))
  raw[#raw + 1] = fmt(redis.call('ZCOUNT', cust_labels, since, until_t))
  for w = 1, #windows do
    raw[#raw + 1] = fmt(redis.call('ZCOUNT', merch_key, fmt(lows[w]), until_t))
  end
  for w = 1, #label_windows do
    raw[#raw + 1] = fmt(redis.call('ZCOUNT', merch_labels, fmt(t - label_windows[w]), until_t))
  end
  local answer = table.concat(raw, ',')

  -- The new event's running sum, and the amount added to every event after it (none when in order).
  local amount = tonumber(amount_s)
  redis.call('ZADD', cust_key, ts_s, event)
  local rank = redis.call('ZRANK', cust_key, event)
  local before = base
  if rank > 0 then
    local previous = redis.call('ZRANGE', cust_key, rank - 1, rank - 1)[1]
    before = tonumber(redis.call('HGET', sums_key, id_of(previous)) or base)
  end
  redis.call('HSET', sums_key, txid, fmt(before + amount))
  local later = redis.call('ZRANGE', cust_key, rank + 1, -1)
  for i = 1, #later do
    local id = id_of(later[i])
    redis.call('HSET', sums_key, id, fmt(tonumber(redis.call('HGET', sums_key, id)) + amount))
  end
  if lat ~= '' then
    redis.call('ZADD', located_key, ts_s, event)
  end
  redis.call('ZADD', pair_key, ts_s, txid)
  redis.call('ZADD', merch_key, ts_s, txid)
  redis.call('HSET', rec_key, 'c', customer, 'm', merchant, 'e', event, 'raw', answer)
  for _, key in ipairs({cust_key, sums_key, located_key, pair_key, merch_key, rec_key}) do
    redis.call('PEXPIRE', key, KEY_TTL_MS)
  end
  return {'new', answer}
end

local function record_label()
  local rec_key, cust_labels, merch_labels = KEYS[1], KEYS[2], KEYS[3]
  local txid, flag, labelled_at, customer, merchant = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
  local seen = redis.call('HMGET', rec_key, 'c', 'm', 'label')
  if not seen[1] then
    return 'unknown'
  end
  if seen[1] ~= customer or seen[2] ~= merchant then
    return redis.error_reply('label keys do not belong to transaction ' .. txid)
  end
  if seen[3] == flag then
    return 'unchanged'
  end
  redis.call('HSET', rec_key, 'label', flag, 'labelled_at', labelled_at)
  redis.call('PEXPIRE', rec_key, KEY_TTL_MS) -- a labelled transaction stays correctable as long as it counts
  if flag == '1' then
    redis.call('ZADD', cust_labels, labelled_at, txid)
    redis.call('ZADD', merch_labels, labelled_at, txid)
    redis.call('PEXPIRE', cust_labels, KEY_TTL_MS)
    redis.call('PEXPIRE', merch_labels, KEY_TTL_MS)
  else
    redis.call('ZREM', cust_labels, txid)
    redis.call('ZREM', merch_labels, txid)
  end
  if seen[3] then
    return 'corrected'
  end
  return 'recorded'
end

if ARGV[1] == 'tx' then
  return record_transaction()
elseif ARGV[1] == 'label' then
  return record_label()
end
return redis.error_reply('unknown mode ' .. tostring(ARGV[1]))
