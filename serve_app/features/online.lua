-- The online half of the feature contract (serve_app/features/contract.py): one atomic call per
-- transaction or per label. online.py prepends the contract's constants as locals (RETENTION_MS,
-- WINDOWS_MS, LABEL_WINDOWS_MS, KEY_TTL_MS), so this file holds no copy of them and a contract change
-- changes the script's SHA. Numbers go out as strings ('%.17g') because Redis truncates Lua numbers to
-- integers in replies; '' means "no such event" (NaN in Python).
--
-- ARGV[1] = 'tx'
--   KEYS: customer history zset, merchant zset, transaction record hash, customer label zset,
--         merchant label zset
--   ARGV: 'tx', event 'transaction_id|ts_ms|amount|merchant_id|lat|lon' (lat/lon '' if none; this text
--         is also the customer zset member), customer_id
--   Returns {status, raw}: status 'new' | 'dup' | 'conflict' (id seen with other content), raw the
--   aggregates of RAW_NAMES as they were before this transaction, joined by ','.
-- ARGV[1] = 'label'
--   KEYS: transaction record hash, customer label zset, merchant label zset
--   ARGV: 'label', transaction_id, is_fraud ('0' | '1'), labelled_at_ms, customer_id, merchant_id
--   Returns 'recorded' | 'unchanged' | 'corrected' | 'unknown'.

local EVENT_PATTERN = '^([^|]+)|([^|]+)|([^|]+)|([^|]+)|([^|]*)|([^|]*)$'
local HISTORY_PATTERN = '^[^|]+|([^|]+)|([^|]+)|([^|]+)|(.*)$' -- ts, amount, merchant, 'lat|lon'

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

local function record_transaction()
  local cust_key, merch_key, rec_key, cust_labels, merch_labels = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
  local event, customer = ARGV[2], ARGV[3]
  local txid, ts_s, _, merchant = string.match(event, EVENT_PATTERN)
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

  -- Forget what no window can see any more (the offline side never looks further back either).
  local stale = '(' .. since
  redis.call('ZREMRANGEBYSCORE', cust_key, '-inf', stale)
  redis.call('ZREMRANGEBYSCORE', merch_key, '-inf', stale)
  redis.call('ZREMRANGEBYSCORE', cust_labels, '-inf', stale)
  redis.call('ZREMRANGEBYSCORE', merch_labels, '-inf', stale)

  -- Members ascend in time and the windows are nested, so window k holds a suffix of the history: note
  -- how many members (and how much amount) come before its start, and take differences at the end.
  local lows, before_count, before_sum = {}, {}, {}
  for k = 1, #windows do
    lows[k] = t - windows[k]
  end
  local k = #windows -- widest window first: its start is crossed first
  local seen_count, total = 0, 0
  local last_ts, geo_ts, geo_id, geo_at = nil, nil, nil, nil
  local at_merchant = 0
  local history = redis.call('ZRANGEBYSCORE', cust_key, since, until_t)
  for i = 1, #history do
    local hts_s, hamount_s, hmerchant, hgeo = string.match(history[i], HISTORY_PATTERN)
    local hts = tonumber(hts_s)
    while k >= 1 and hts >= lows[k] do
      before_count[k], before_sum[k] = seen_count, total
      k = k - 1
    end
    seen_count = seen_count + 1
    total = total + tonumber(hamount_s)
    last_ts = hts
    if hmerchant == merchant then
      at_merchant = at_merchant + 1
    end
    if hgeo ~= '|' then
      -- Equal timestamps: the larger transaction_id wins (member order is not id order: 'ab|' > 'abc|').
      if geo_ts == nil or hts > geo_ts then
        geo_ts, geo_id, geo_at = hts, nil, i
      else
        geo_id = geo_id or string.match(history[geo_at], '^[^|]+')
        local id = string.match(history[i], '^[^|]+')
        if id_after(id, geo_id) then
          geo_id, geo_at = id, i
        end
      end
    end
  end
  while k >= 1 do
    before_count[k], before_sum[k] = seen_count, total
    k = k - 1
  end
  local geo_lat, geo_lon = nil, nil
  if geo_at then
    geo_lat, geo_lon = string.match(history[geo_at], '|([^|]*)|([^|]*)$')
  end

  local raw = {}
  for w = 1, #windows do
    raw[#raw + 1] = fmt(seen_count - before_count[w])
  end
  for w = 1, #windows do
    raw[#raw + 1] = fmt(total - before_sum[w])
  end
  raw[#raw + 1] = fmt(last_ts)
  raw[#raw + 1] = fmt(geo_ts)
  raw[#raw + 1] = geo_lat or '' -- the stored text is the exact repr the client sent
  raw[#raw + 1] = geo_lon or ''
  raw[#raw + 1] = fmt(at_merchant)
  raw[#raw + 1] = fmt(redis.call('ZCOUNT', cust_labels, since, until_t))
  for w = 1, #windows do
    raw[#raw + 1] = fmt(redis.call('ZCOUNT', merch_key, fmt(lows[w]), until_t))
  end
  for w = 1, #label_windows do
    raw[#raw + 1] = fmt(redis.call('ZCOUNT', merch_labels, fmt(t - label_windows[w]), until_t))
  end
  local answer = table.concat(raw, ',')

  redis.call('ZADD', cust_key, ts_s, event)
  redis.call('ZADD', merch_key, ts_s, txid)
  redis.call('HSET', rec_key, 'c', customer, 'm', merchant, 'e', event, 'raw', answer)
  redis.call('PEXPIRE', cust_key, KEY_TTL_MS)
  redis.call('PEXPIRE', merch_key, KEY_TTL_MS)
  redis.call('PEXPIRE', rec_key, KEY_TTL_MS)
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
