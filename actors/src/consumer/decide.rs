//! What to do with a decoded request: a pure function of the request, what the worker knows,
//! and the time.

use time::OffsetDateTime;

use crate::protocol::TaskRequest;
use crate::work::RevokeReason;

/// The routing decision for one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Hand it to the pool now.
    Execute,
    /// Hold it in the scheduler until its ETA.
    Schedule(OffsetDateTime),
    /// Do not run it: REVOKED result with this reason (`revoked`, `expired`), ack.
    Revoke(RevokeReason),
    /// Unknown task name: FAILURE `NotRegistered`, reject without requeue.
    NotRegistered,
}

/// Decides, in Celery's order: unknown name, then revoked or expired, then ETA.
pub fn decide(req: &TaskRequest, registered: bool, revoked: bool, now: OffsetDateTime) -> Decision {
    if !registered {
        return Decision::NotRegistered;
    }
    if revoked {
        return Decision::Revoke(RevokeReason::Revoked);
    }
    if req.expires.is_some_and(|e| e <= now) {
        return Decision::Revoke(RevokeReason::Expired);
    }
    match req.eta {
        Some(eta) if eta > now => Decision::Schedule(eta),
        _ => Decision::Execute,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{RawMessage, decode};
    use serde_json::json;
    use time::Duration;

    fn req(eta: Option<OffsetDateTime>, expires: Option<OffsetDateTime>) -> TaskRequest {
        let iso = |t: Option<OffsetDateTime>| {
            t.map_or(json!(null), |t| json!(crate::protocol::time::format_iso(t)))
        };
        let h = json!({"task": "t", "id": "i", "eta": iso(eta), "expires": iso(expires)});
        let raw = RawMessage {
            headers: h.as_object().cloned().unwrap(),
            body: b"[[],{},{}]",
            ..Default::default()
        };
        decode(raw).unwrap()
    }

    #[test]
    fn decides_in_celery_order() {
        let now = OffsetDateTime::now_utc();
        let later = now + Duration::seconds(10);
        let earlier = now - Duration::seconds(10);
        assert_eq!(
            decide(&req(None, None), true, false, now),
            Decision::Execute
        );
        assert_eq!(
            decide(&req(None, None), false, true, now),
            Decision::NotRegistered
        );
        assert_eq!(
            decide(&req(None, None), true, true, now),
            Decision::Revoke(RevokeReason::Revoked)
        );
        assert_eq!(
            decide(&req(None, Some(earlier)), true, false, now),
            Decision::Revoke(RevokeReason::Expired)
        );
        assert!(matches!(
            decide(&req(Some(later), None), true, false, now),
            Decision::Schedule(_)
        ));
        assert_eq!(
            decide(&req(Some(earlier), Some(later)), true, false, now),
            Decision::Execute
        );
    }
}
