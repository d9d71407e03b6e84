-- One budget's state (runner.pacing.state.BudgetState) in a Redis hash, every operation one call of
-- this script: atomic on the server, on the server's clock (TIME), so machines need no shared clock.
--
-- KEYS[1]: the budget's hash. KEYS[2]: the salt its name was made with (runner:salt).
-- ARGV[1]: the operation. ARGV[2]: the key's TTL in ms (every call renews it: a budget nobody uses
-- for that long is gone). ARGV[3]: the SHA-1 of the caller's salt. ARGV[4]: the caller's waiter id
-- (one per process and budget). ARGV[5..]: the operation's arguments.
--
-- A salt that is missing or not the caller's (Redis restarted without persistence, or flushed)
-- answers the error RUNNER_SALT and changes nothing: the caller sets the salt again (or adopts the
-- one another process set first), renames its budgets and restores what it knew.
--
-- Fields, per kind k in {r (requests), t (tokens)}: k_pm (per-minute limit), k_src (its source),
-- k_cap (bucket capacity), k_lvl (level at k_ts, may be negative: debt), k_ts (server seconds).
-- hold: server seconds before which nothing is admitted. factor: the calibration factor.
-- moved: where the budget went (see the answer below).
-- q:<waiter>: "arrival expires tokens" of a process refused admission and waiting (the queue).
--
-- Admission is FIFO across processes: a caller is taken only when the budget will hold what every
-- waiter ahead of it (earlier arrival) asked for as well as its own request, so a process asking
-- for large requests is not starved by others asking for small ones. A refused caller is told to
-- ask again within POLL_S and its place expires GRACE_S after that, so a process that dies while
-- waiting holds nothing back for more than a few seconds: a place in the queue only makes later
-- arrivals wait their turn.
--
-- A caller whose request fits within RESERVE_S is admitted at once and told to send it in that
-- many seconds (send_in): the budget is taken now, in order, so it need not ask again (one round
-- trip per admission however tightly the budget binds). A process that dies before sending loses
-- that one request's budget once (the server never sees it: the budget is under-, never
-- over-spent); one that stops gives it back (refund).
--
-- Every call answers the state after it:
--   {r_pm, r_src, r_cap, r_lvl, t_pm, t_src, t_cap, t_lvl, factor, wait, r_bound, t_bound,
--    send_in, moved}
-- moved: the model name the budget went to (a process found it to be the key's: `move`), or ''.
-- as strings ('' for a kind without a limit): Lua numbers would be truncated to integers.

local key, op, ttl = KEYS[1], ARGV[1], tonumber(ARGV[2])
local salt = redis.call('GET', KEYS[2])
if not salt or redis.sha1hex(salt) ~= ARGV[3] then
  return redis.error_reply('RUNNER_SALT the salt of the budget names is gone or not ours')
end
local waiter = 'q:' .. ARGV[4]
local EPSILON = 1e-9 -- runner.pacing.bucket.TIME_EPSILON_S
local POLL_S, GRACE_S, RESERVE_S = 1.0, 2.0, 2.0
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1e6

local s = {}
local raw = redis.call('HGETALL', key)
for i = 1, #raw, 2 do s[raw[i]] = raw[i + 1] end
local dirty = {}

local function num(field) return tonumber(s[field]) end
local function put(field, value)
  if type(value) == 'number' then value = string.format('%.17g', value) end
  s[field] = value
  dirty[#dirty + 1] = field
end

-- The level of kind k now (refilled since k_ts, never above capacity); nil without a limit.
local function level(k)
  local pm = num(k .. '_pm')
  if not pm then return nil end
  local cap, lvl, ts = num(k .. '_cap'), num(k .. '_lvl'), num(k .. '_ts')
  if now > ts then
    lvl = math.min(cap, lvl + (now - ts) * pm / 60)
    put(k .. '_lvl', lvl)
    put(k .. '_ts', now)
  end
  return lvl
end

-- Seconds until amount fits kind k (an amount above capacity fits when full, unless exact); 0
-- without a limit.
local function wait_for(k, amount, exact)
  local lvl = level(k)
  if not lvl then return 0 end
  local need = amount
  if not exact then need = math.min(amount, num(k .. '_cap')) end
  local wait = (need - lvl) / (num(k .. '_pm') / 60)
  if wait > EPSILON then return wait end
  return 0
end

local wait, r_bound, t_bound, send_in = 0, 0, 0, 0
local kind = ARGV[5]

if op == 'admit' then
  local tokens = tonumber(ARGV[5])
  -- The queue: drop expired places; count what the waiters ahead of this caller asked for.
  local mine = s[waiter]
  local my_arrival = now
  if mine then my_arrival = tonumber(string.match(mine, '^(%S+)')) end
  local ahead_n, ahead_t, stale = 0, 0, {}
  for field, value in pairs(s) do
    if string.sub(field, 1, 2) == 'q:' then
      local arrival, expires, need = string.match(value, '^(%S+) (%S+) (%S+)$')
      arrival, expires, need = tonumber(arrival), tonumber(expires), tonumber(need)
      if expires < now then
        stale[#stale + 1] = field
      elseif field ~= waiter and (arrival < my_arrival or (arrival == my_arrival and field < waiter)) then
        ahead_n = ahead_n + 1
        ahead_t = ahead_t + need
      end
    end
  end
  for _, field in ipairs(stale) do s[field] = nil end
  if #stale > 0 then redis.call('HDEL', key, unpack(stale)) end
  local r_wait, t_wait
  if ahead_n == 0 then
    r_wait, t_wait = wait_for('r', 1), wait_for('t', tokens)
  else -- behind others: their requests first, and no rounding down to the capacity
    r_wait, t_wait = wait_for('r', ahead_n + 1, true), wait_for('t', ahead_t + tokens, true)
  end
  wait = math.max((num('hold') or 0) - now, r_wait, t_wait)
  if r_wait > EPSILON then r_bound = 1 end
  if t_wait > EPSILON then t_bound = 1 end
  if wait > RESERVE_S then
    wait = math.min(wait, POLL_S)
    put(waiter, string.format('%.17g %.17g %.17g', my_arrival, now + wait + GRACE_S, tokens))
  else -- taken now; sent in `wait` seconds (a reservation, after everything taken before it)
    if wait > EPSILON then send_in = wait end
    wait = 0
    if num('r_pm') then put('r_lvl', num('r_lvl') - 1) end
    if num('t_pm') then put('t_lvl', num('t_lvl') - tokens) end
    if mine then
      s[waiter] = nil
      redis.call('HDEL', key, waiter)
    end
  end
elseif op == 'set_limit' then
  local pm, src, cap = tonumber(ARGV[6]), ARGV[7], tonumber(ARGV[8])
  -- A user's number never overrides what the server said (a late joiner's --rpm, say).
  if not (src == 'user' and s[kind .. '_src'] == 'server') then
    local lvl = level(kind)
    if lvl then lvl = math.min(lvl, cap) else lvl = cap end
    put(kind .. '_pm', pm)
    put(kind .. '_src', src)
    put(kind .. '_cap', cap)
    put(kind .. '_lvl', lvl)
    put(kind .. '_ts', now)
  end
elseif op == 'refund' then -- an admission taken but never sent: back into the buckets
  for k, amount in pairs({r = 1, t = tonumber(ARGV[5])}) do
    local lvl = level(k)
    if lvl then put(k .. '_lvl', math.min(num(k .. '_cap'), lvl + amount)) end
  end
elseif op == 'lower' then
  local lvl = level(kind)
  if lvl then put(kind .. '_lvl', math.min(lvl, tonumber(ARGV[6]))) end
elseif op == 'set_level' then
  local lvl = level(kind)
  if lvl then put(kind .. '_lvl', math.min(num(kind .. '_cap'), tonumber(ARGV[6]))) end
elseif op == 'hold' then
  local untill = now + tonumber(ARGV[5])
  if untill > (num('hold') or 0) then put('hold', untill) end
elseif op == 'set_factor' then
  put('factor', tonumber(ARGV[5]))
elseif op == 'move' then -- the budget is the key's, kept under this model name from now on
  put('moved', ARGV[5])
elseif op == 'leave' then -- a process done with this budget gives up its place in the queue
  if s[waiter] then
    s[waiter] = nil
    redis.call('HDEL', key, waiter)
  end
elseif op ~= 'read' then
  return redis.error_reply('unknown operation ' .. op)
end

if #dirty > 0 then
  local args = {}
  for _, field in ipairs(dirty) do
    args[#args + 1] = field
    args[#args + 1] = s[field]
  end
  redis.call('HSET', key, unpack(args))
end
if redis.call('EXISTS', key) == 1 then redis.call('PEXPIRE', key, ttl) end

local function out(field) return s[field] or '' end
local function lvl_out(k)
  local lvl = level(k)
  if lvl then return string.format('%.17g', lvl) end
  return ''
end
return {out('r_pm'), out('r_src'), out('r_cap'), lvl_out('r'),
        out('t_pm'), out('t_src'), out('t_cap'), lvl_out('t'),
        out('factor'), string.format('%.17g', wait), r_bound, t_bound,
        string.format('%.17g', send_in), out('moved')}
