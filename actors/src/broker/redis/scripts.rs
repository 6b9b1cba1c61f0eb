//! The server-side steps that must be atomic, as Lua scripts (EVALSHA, loaded on first use).
//!
//! - [`FETCH`]: pops up to `n` messages over the lists in kombu's order and records each in
//!   `unacked` / `unacked_index` in the same step, so a worker that dies at any point
//!   leaves every message either in its list or in `unacked` (kombu's BRPOP then HSET loses
//!   one that arrives in between). Within a priority step the queues take one message each
//!   in turn. An item that is not an envelope with a delivery tag is returned unrecorded,
//!   for the worker to log and drop.
//! - [`RESTORE`]: puts a message recorded in `unacked` back on its lists and removes the
//!   record, only if the record is still the one read (another worker may have restored it).
//! - [`RENEW`]: moves the lease time of messages the worker still holds to now, for those
//!   still recorded (`ZADD XX`): no `restore_visible` hands them out again.
//! - [`UNLOCK`]: releases the restore lock if it is still ours.

/// KEYS: `unacked`, `unacked_index`, then the lists step by step (`ARGV[3]` per step).
/// ARGV: now (seconds, float), the most to fetch, lists per step. Returns a flat list of
/// (list key, item, recorded 1/0).
pub const FETCH: &str = r#"
local now, n, per = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local out, count = {}, 0
local steps = (#KEYS - 2) / per
for s = 0, steps - 1 do
  local live = {}
  for j = 1, per do live[j] = KEYS[2 + s * per + j] end
  while #live > 0 and count < n do
    local more = {}
    for _, key in ipairs(live) do
      if count >= n then break end
      local item = redis.call('RPOP', key)
      if item then
        count = count + 1
        local recorded = 0
        local ok, env = pcall(cjson.decode, item)
        if ok and type(env) == 'table' and type(env.properties) == 'table'
            and type(env.properties.delivery_tag) == 'string' then
          local tag = env.properties.delivery_tag
          local info = env.properties.delivery_info
          local ex, rk = '', ''
          if type(info) == 'table' then
            if type(info.exchange) == 'string' then ex = info.exchange end
            if type(info.routing_key) == 'string' then rk = info.routing_key end
          end
          redis.call('HSET', KEYS[1], tag,
            '[' .. item .. ', ' .. cjson.encode(ex) .. ', ' .. cjson.encode(rk) .. ']')
          redis.call('ZADD', KEYS[2], now, tag)
          recorded = 1
        end
        out[#out + 1] = key
        out[#out + 1] = item
        out[#out + 1] = recorded
        more[#more + 1] = key
      end
    end
    live = more
  end
  if count >= n then break end
end
return out
"#;

/// KEYS: `unacked`, `unacked_index`, then the lists to push to. ARGV: the tag, the record
/// as read, the message to push (marked redelivered), `1` to push at the back (LPUSH: a
/// requeue) or `0` at the front (RPUSH: a restore, fetched next). Returns 1 when restored.
pub const RESTORE: &str = r#"
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
for i = 3, #KEYS do
  if ARGV[4] == '1' then
    redis.call('LPUSH', KEYS[i], ARGV[3])
  else
    redis.call('RPUSH', KEYS[i], ARGV[3])
  end
end
return 1
"#;

/// KEYS: `unacked_index`. ARGV: now, then tags. Returns how many were still recorded.
pub const RENEW: &str = r#"
local n = 0
for i = 2, #ARGV do
  n = n + redis.call('ZADD', KEYS[1], 'XX', 'CH', ARGV[1], ARGV[i])
end
return n
"#;

/// KEYS: the lock. ARGV: our token. Deletes it only if it is still ours.
pub const UNLOCK: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;
