//! Where a Rust task's states go — the client's reply queue (`rpc://`), Redis (as Celery's
//! Redis backend stores them, through the [`Backend`](crate::backend::Backend) actor), or
//! nowhere — and what the consumer does after a task for its embed: the next chain step,
//! callbacks, errbacks, the rest of a failing chain, and its part of a chord.
//! With Python tasks (`-A`) none of this runs here: Celery's tracer in the child does it.

use std::sync::Arc;

use ractor::ActorRef;
use serde_json::{Value, json};
use time::OffsetDateTime;
use tracing::{debug, error};

use super::ConsumerState;
use crate::backend::redis_keys::chord_part;
use crate::backend::{BackendMessage, ChordPart, ChordReady};
use crate::protocol::canvas::{self, CanvasError, Embed, Outgoing, Sender};
use crate::protocol::{
    ExceptionInfo, Extended, ResultState, TaskRequest, result_body, stored_result,
};
use crate::settings::{BackendKind, Settings};
use crate::task::TaskSignal;
use crate::work::Reserved;

/// How results are kept, from `[result]` and `[task]`.
#[derive(Debug, Clone)]
pub struct Results {
    /// The backend.
    pub kind: BackendKind,
    /// The Redis backend actor, with `kind` Redis.
    pub backend: Option<ActorRef<BackendMessage>>,
    /// `result_extended`.
    pub extended: bool,
    /// `task_store_errors_even_if_ignored`.
    pub store_errors_even_if_ignored: bool,
    /// `task_ignore_result`.
    pub ignore_result: bool,
    /// This node (`worker` in extended results, `origin` of the messages it sends).
    pub hostname: String,
    /// `task_default_queue`, for signatures that name no queue.
    pub default_queue: String,
}

impl Results {
    /// From the settings; `backend` is the Redis actor when the backend is Redis.
    pub fn new(
        settings: &Settings,
        hostname: &str,
        backend: Option<ActorRef<BackendMessage>>,
    ) -> Self {
        Results {
            kind: settings.result.kind().unwrap_or(BackendKind::Rpc),
            backend,
            extended: settings.result.extended,
            store_errors_even_if_ignored: settings.task.store_errors_even_if_ignored,
            ignore_result: settings.task.ignore_result,
            hostname: hostname.to_owned(),
            default_queue: settings.task.default_queue.clone(),
        }
    }

    /// Whether a state of `req` is kept: not when its result is ignored (the message's
    /// `ignore_result`, else the task's registration `registered`, else the setting), except
    /// errors with `store_errors_even_if_ignored`.
    pub fn keeps(&self, req: &TaskRequest, registered: Option<bool>, is_error: bool) -> bool {
        let ignored = req
            .ignore_result
            .or(registered)
            .unwrap_or(self.ignore_result);
        !ignored || (is_error && self.store_errors_even_if_ignored)
    }
}

impl ConsumerState {
    /// Stores or sends state `st` of `r` unless its result is ignored.
    pub(super) async fn publish_state(
        &mut self,
        r: &Reserved,
        st: &ResultState,
        registered_ignore: Option<bool>,
        is_error: bool,
    ) {
        if self.results.keeps(&r.request, registered_ignore, is_error) {
            self.store_result(&r.request, st).await;
        }
    }

    /// Stores or sends state `st` of `req`, wherever the backend keeps results.
    pub(super) async fn store_result(&mut self, req: &TaskRequest, st: &ResultState) {
        let now = OffsetDateTime::now_utc();
        let (parent, group) = (req.parent_id.as_deref(), req.group.as_deref());
        match self.results.kind {
            BackendKind::Disabled => {}
            BackendKind::Rpc => {
                if let Some(queue) = req.result_queue() {
                    let body = result_body(&req.id, st, parent, group, now);
                    let (queue, cid) = (queue.to_owned(), req.correlation_id.clone());
                    self.publish(queue, cid, body).await;
                }
            }
            BackendKind::Redis(_) => {
                let ext = self.results.extended.then(|| Extended {
                    name: &req.task,
                    args: &req.args,
                    kwargs: &req.kwargs,
                    worker: &self.results.hostname,
                    retries: req.retries,
                    queue: Some(&req.delivery_info.routing_key),
                });
                let value = stored_result(&req.id, st, parent, group, now, ext.as_ref());
                self.to_backend(BackendMessage::Store {
                    task_id: req.id.clone(),
                    value,
                });
            }
        }
    }

    /// Stores a state for a task this worker does not run (a later step of a failed chain, a
    /// chord body that cannot run): by id only.
    async fn store_for(&mut self, task_id: &str, st: &ResultState, reply_to: Option<&str>) {
        let body = result_body(task_id, st, None, None, OffsetDateTime::now_utc());
        match self.results.kind {
            BackendKind::Disabled => {}
            BackendKind::Rpc => {
                if let Some(q) = reply_to.filter(|q| !q.is_empty()) {
                    self.publish(q.to_owned(), task_id.to_owned(), body).await;
                }
            }
            BackendKind::Redis(_) => self.to_backend(BackendMessage::Store {
                task_id: task_id.to_owned(),
                value: body,
            }),
        }
    }

    fn to_backend(&self, msg: BackendMessage) {
        match &self.results.backend {
            Some(b) => {
                if b.cast(msg).is_err() {
                    error!("The result backend actor is gone; a result is not stored.");
                }
            }
            None => error!("No result backend actor; a result is not stored."),
        }
    }

    /// After a success with `value`: its chord part, the next chain step and the callbacks.
    pub(super) async fn after_success(&mut self, req: &Arc<TaskRequest>, value: &Value) {
        let embed = Embed::of(req);
        if embed.is_empty() {
            return;
        }
        self.chord_part(req, &embed, "SUCCESS", value);
        let from = Sender::of(req, &self.results.hostname, &self.results.default_queue);
        let out = canvas::after_success(&embed, value, &from, OffsetDateTime::now_utc());
        self.send_all(&req.id, out).await;
    }

    /// After a failure with `exc`: its chord part, every later chain step marked FAILURE with
    /// the same exception, and the errbacks sent.
    pub(super) async fn after_failure(&mut self, req: &Arc<TaskRequest>, exc: &ExceptionInfo) {
        let embed = Embed::of(req);
        if embed.is_empty() {
            return;
        }
        self.chord_part(req, &embed, "FAILURE", &exc.to_json());
        let st = ResultState::Failure {
            exc: exc.clone(),
            traceback: None,
        };
        for id in canvas::failed_chain_ids(&embed) {
            self.store_for(&id, &st, req.result_queue()).await;
        }
        let from = Sender::of(req, &self.results.hostname, &self.results.default_queue);
        let out = canvas::errbacks(&embed, &from, OffsetDateTime::now_utc());
        self.send_all(&req.id, out).await;
    }

    /// A revoked task still counts towards its chord (as REVOKED, which fails the chord).
    pub(super) fn after_revoked(&mut self, req: &TaskRequest, reason: &str) {
        if req.group.is_none() {
            return; // not a chord part
        }
        let embed = Embed::of(req);
        let exc = ExceptionInfo::new("TaskRevokedError", "celery.exceptions", vec![json!(reason)]);
        self.chord_part(req, &embed, "REVOKED", &exc.to_json());
    }

    fn chord_part(&mut self, req: &TaskRequest, embed: &Embed, state: &str, result: &Value) {
        let (Some(body), Some(group)) = (&embed.chord, &req.group) else {
            return;
        };
        if !matches!(self.results.kind, BackendKind::Redis(_)) {
            error!(task_id = %req.id, group_id = %group,
                "Task {}[{}] is part of a chord, but chords need a result backend that counts \
                 them (redis://); its body is never called. Set [result] backend.",
                req.display_name(), req.id);
            return;
        }
        self.to_backend(BackendMessage::ChordPart(Box::new(ChordPart {
            group_id: group.clone(),
            task_id: req.id.clone(),
            group_index: req.group_index,
            part: chord_part(&req.id, state, result),
            body: body.clone(),
            root_id: req.root_id.clone().unwrap_or_else(|| req.id.clone()),
        })));
    }

    /// A chord's header is complete and this worker holds the claim: publish the body with
    /// the header's results, or fail it (`ChordError`) when a part failed; then release.
    pub(super) async fn on_chord_ready(&mut self, ready: ChordReady) {
        let from = Sender {
            task_id: &ready.task_id,
            root_id: &ready.root_id,
            hostname: &self.results.hostname.clone(),
            priority: None,
            default_queue: &self.results.default_queue.clone(),
        };
        let now = OffsetDateTime::now_utc();
        let body_id = ready
            .body
            .get("options")
            .and_then(|o| o.get("task_id"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        match &ready.results {
            Ok(results) => {
                let out = canvas::apply(&ready.body, Some(&json!(results)), &from, None, now);
                debug!(group_id = %ready.group_id, parts = results.len(), "Chord complete; its body is sent.");
                self.send_all(&ready.task_id, out).await;
            }
            Err((tid, exc)) => {
                let exc = canvas::chord_error(tid, exc);
                error!(group_id = %ready.group_id, "Chord {} raised: {}", ready.group_id, exc.repr());
                if let Some(id) = &body_id {
                    let st = ResultState::Failure {
                        exc: exc.clone(),
                        traceback: None,
                    };
                    self.store_for(id, &st, None).await;
                    // The body's own errbacks learn of it as errbacks do: by its id.
                    let body_embed = Embed {
                        errbacks: match ready.body.get("options").and_then(|o| o.get("link_error"))
                        {
                            Some(Value::Array(a)) => a.clone(),
                            Some(Value::Object(o)) => vec![Value::Object(o.clone())],
                            _ => Vec::new(),
                        },
                        ..Embed::default()
                    };
                    let body_from = Sender {
                        task_id: id,
                        ..from.clone()
                    };
                    let out = canvas::errbacks(&body_embed, &body_from, now);
                    self.send_all(id, out).await;
                }
            }
        }
        self.to_backend(BackendMessage::ChordCleanup {
            group_id: ready.group_id.clone(),
            token: ready.token.clone(),
        });
    }

    /// What a running Rust task asks: a state update stored as its result, or a task sent
    /// with it as parent.
    pub(super) async fn on_task_signal(&mut self, req: &Arc<TaskRequest>, signal: TaskSignal) {
        match signal {
            TaskSignal::UpdateState { state, meta_json } => {
                let meta = serde_json::from_str(&meta_json).unwrap_or(Value::Null);
                let st = ResultState::Custom { state, meta };
                if self.results.keeps(req, None, false) {
                    self.store_result(req, &st).await;
                }
            }
            TaskSignal::SendTask { signature_json } => {
                let sig: Value = serde_json::from_str(&signature_json).unwrap_or(Value::Null);
                let from = Sender::of(req, &self.results.hostname, &self.results.default_queue);
                let out = canvas::simple(&sig, None, &from, None, OffsetDateTime::now_utc());
                self.send_all(&req.id, vec![out]).await;
            }
        }
    }

    /// Publishes what a task's embed sends; whatever cannot be sent is logged with the id.
    async fn send_all(&mut self, task_id: &str, out: Vec<Result<Outgoing, CanvasError>>) {
        for item in out {
            let o = match item {
                Ok(o) => o,
                Err(e) => {
                    error!(task_id, "After task {task_id}: {e}; not carried out.");
                    continue;
                }
            };
            let sent = self
                .publish_on_side(&o.exchange, &o.routing_key, &o.message)
                .await;
            let name = o.message.headers["task"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            match sent {
                Ok(()) => {
                    debug!(task_id, sent = %o.message.id, "Sent {name}[{}] after {task_id}.", o.message.id)
                }
                Err(e) => {
                    error!(task_id, error = %e,
                        "After task {task_id}: cannot send {name}[{}]; it is not carried out.",
                        o.message.id);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{RawMessage, decode};

    fn req(ignore: Option<bool>) -> TaskRequest {
        let mut h = json!({"task": "t", "id": "i"});
        if let Some(i) = ignore {
            h["ignore_result"] = json!(i);
        }
        decode(RawMessage {
            headers: h.as_object().cloned().unwrap(),
            body: b"[[],{},{}]",
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn ignore_result_from_message_then_registration_then_setting() {
        let mut r = Results::new(&Settings::default(), "w@h", None);
        assert!(r.keeps(&req(None), None, false));
        assert!(!r.keeps(&req(None), Some(true), false), "registration");
        assert!(
            r.keeps(&req(Some(false)), Some(true), false),
            "the message wins"
        );
        assert!(
            !r.keeps(&req(Some(true)), None, true),
            "errors too, by default"
        );
        r.store_errors_even_if_ignored = true;
        assert!(r.keeps(&req(Some(true)), None, true));
        r.ignore_result = true;
        assert!(!r.keeps(&req(None), None, false), "the setting");
    }
}
