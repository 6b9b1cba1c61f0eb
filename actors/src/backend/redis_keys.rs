//! Celery's Redis result backend, as data: key names, stored values, the chord counting
//! scripts' keys and arguments, and reading a finished chord's header results. Pure; the
//! [`super::Backend`] actor sends what these build.

use serde_json::{Value, json};

/// `celery-task-meta-<id>`: a task's result (also the pub/sub channel clients wait on).
pub fn task_key(task_id: &str) -> String {
    format!("celery-task-meta-{task_id}")
}

/// `celery-taskset-meta-<group id><suffix>`: a group's saved result (no suffix) and its chord
/// counters (`.j` results, `.t` size changes, `.s` size, `.d` parts seen, `.c` claim).
pub fn group_key(group_id: &str, suffix: &str) -> String {
    format!("celery-taskset-meta-{group_id}{suffix}")
}

/// The status a stored value holds (`PENDING` when there is none or it cannot be read).
pub fn stored_status(value: Option<&[u8]>) -> String {
    value
        .and_then(|v| serde_json::from_slice::<Value>(v).ok())
        .and_then(|v| v.get("status")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| "PENDING".to_owned())
}

/// One chord header part as the backend records it: `[1, task id, state, result]`.
pub fn chord_part(task_id: &str, state: &str, result: &Value) -> Vec<u8> {
    serde_json::to_vec(&json!([1, task_id, state, result])).unwrap_or_default()
}

/// The states a chord does not survive (Celery's `PROPAGATE_STATES`).
pub fn propagates(state: &str) -> bool {
    matches!(state, "FAILURE" | "REVOKED")
}

/// A finished chord's header results in order, or the first part that failed: `(task id,
/// stored exception)`.
pub fn chord_results(parts: &[Vec<u8>]) -> Result<Vec<Value>, (String, Value)> {
    let mut out = Vec::with_capacity(parts.len());
    for raw in parts {
        let part: Value = serde_json::from_slice(raw).unwrap_or(Value::Null);
        let tid = part[1].as_str().unwrap_or_default().to_owned();
        let state = part[2].as_str().unwrap_or_default();
        if propagates(state) {
            return Err((tid, part[3].clone()));
        }
        out.push(part[3].clone());
    }
    Ok(out)
}

/// Stores a task's result unless a SUCCESS is stored already (a lost or duplicated task must
/// not overwrite it, as Celery checks before it writes), with an expiry when one is given,
/// and publishes it on the key's channel for clients waiting by pub/sub. One round trip.
/// KEYS: the task key. ARGV: the value, the expiry in seconds (0: none). Returns 1 when
/// stored, 0 when a SUCCESS was kept.
pub const STORE_SCRIPT: &str = r"
local held = redis.call('GET', KEYS[1])
if held then
  local ok, meta = pcall(cjson.decode, held)
  if ok and type(meta) == 'table' and meta['status'] == 'SUCCESS' then
    return 0
  end
end
local ttl = tonumber(ARGV[2])
if ttl > 0 then
  redis.call('SETEX', KEYS[1], ttl, ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
";

/// Records a chord header part once (keyed on task id and header position, so a redelivered
/// part counts once) unless the chord is finished already; refreshes the expiry of the
/// chord's keys; and, when every part is in, takes the dispatch claim atomically so that
/// exactly one worker — celeryd or Celery's — publishes the body. Returns `{parts recorded
/// (-1: chord already done), size changes, size, claimed (1/0)}`. The keys and arguments are
/// those of Celery 5.7's Redis backend, so both kinds of worker count one chord together.
///
/// KEYS: `.j`, `.t`, `.s`, `.d`, the group key, `.c`. ARGV: task id, encoded part, ordered
/// (1: a sorted set by header index), header index (`+inf` when unknown), chord expiry,
/// group expiry, claim expiry (seconds), claim token.
pub const PART_SCRIPT: &str = r"
if redis.call('GET', KEYS[6]) == 'done' then
  return {-1, 0, 0, 0}
end
local seen = ARGV[1] .. ':' .. ARGV[4]
if redis.call('SISMEMBER', KEYS[4], seen) == 0 then
  if ARGV[3] == '1' then
    redis.call('ZADD', KEYS[1], ARGV[4], ARGV[2])
  else
    redis.call('RPUSH', KEYS[1], ARGV[2])
  end
  redis.call('SADD', KEYS[4], seen)
end
local count
if ARGV[3] == '1' then
  count = redis.call('ZCOUNT', KEYS[1], '-inf', '+inf')
else
  count = redis.call('LLEN', KEYS[1])
end
local ttl = tonumber(ARGV[5])
if ttl > 0 then
  for i = 1, 4 do
    redis.call('EXPIRE', KEYS[i], ttl)
  end
  local group_ttl = tonumber(ARGV[6])
  if group_ttl > 0 then
    redis.call('EXPIRE', KEYS[5], group_ttl)
  end
end
local diff = redis.call('GET', KEYS[2])
local size = redis.call('GET', KEYS[3])
local got = 0
if size and count == tonumber(size) + tonumber(diff or 0) then
  if redis.call('SET', KEYS[6], ARGV[8], 'NX', 'EX', tonumber(ARGV[7])) then
    got = 1
  end
end
return {count, diff, size, got}
";

/// After the body is published: when the claim is still this worker's, deletes the chord's
/// counters and leaves a `done` marker (so a late duplicate part neither counts again nor
/// publishes the body twice). KEYS: `.c`, `.j`, `.t`, `.s`, `.d`. ARGV: claim token, how long
/// the marker stays (seconds). Returns 1 when cleaned, 0 when the claim was lost.
pub const CLEANUP_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5])
local keep = tonumber(ARGV[2])
if keep and keep > 0 then
  redis.call('SET', KEYS[1], 'done', 'EX', keep)
end
return 1
";

/// Seconds a dispatch claim holds (Celery: twice the join timeout, at least 5).
pub const CLAIM_SECONDS: u64 = 6;
/// Seconds the `done` marker stays after a chord finished (Celery: at least 300).
pub const DONE_SECONDS: u64 = 300;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_celerys() {
        assert_eq!(task_key("a-b"), "celery-task-meta-a-b");
        assert_eq!(group_key("g", ".j"), "celery-taskset-meta-g.j");
        assert_eq!(group_key("g", ""), "celery-taskset-meta-g");
    }

    #[test]
    fn a_stored_status_is_read() {
        let body = br#"{"status":"SUCCESS","result":3,"task_id":"t"}"#;
        assert_eq!(stored_status(Some(body)), "SUCCESS");
        assert_eq!(stored_status(Some(b"not json")), "PENDING");
        assert_eq!(stored_status(None), "PENDING");
    }

    #[test]
    fn chord_parts_in_order_or_the_first_failure() {
        let parts = vec![
            chord_part("a", "SUCCESS", &json!(1)),
            chord_part("b", "SUCCESS", &json!([2])),
        ];
        assert_eq!(chord_results(&parts), Ok(vec![json!(1), json!([2])]));
        let exc = json!({"exc_type": "ValueError", "exc_message": ["x"]});
        let parts = vec![
            chord_part("a", "SUCCESS", &json!(1)),
            chord_part("b", "FAILURE", &exc),
        ];
        assert_eq!(chord_results(&parts), Err(("b".into(), exc)));
    }
}
