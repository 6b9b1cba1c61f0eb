use super::*;
use crate::protocol::{RawMessage, decode};

fn request(embed: Value) -> TaskRequest {
    let h = json!({"task": "tasks.add", "id": "t1", "root_id": "r0"});
    let body = serde_json::to_vec(&json!([[1, 2], {}, embed])).unwrap();
    decode(RawMessage {
        headers: h.as_object().cloned().unwrap(),
        body: &body,
        ..Default::default()
    })
    .unwrap()
}

fn sig(name: &str, args: Value, options: Value) -> Value {
    json!({"task": name, "args": args, "kwargs": {}, "options": options,
           "subtask_type": null, "immutable": false})
}

fn body(o: &Outgoing) -> Value {
    serde_json::from_slice(&o.message.body).unwrap()
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

#[test]
fn the_next_chain_step_gets_the_result_and_the_rest_of_the_chain() {
    let step2 = sig("tasks.add", json!([3]), json!({"task_id": "s2"}));
    let step3 = sig(
        "tasks.add",
        json!([4]),
        json!({"task_id": "s3", "queue": "q3"}),
    );
    // Celery's order: the next step last.
    let req = request(json!({"chain": [step3.clone(), step2], "callbacks": null}));
    let embed = Embed::of(&req);
    let from = Sender::of(&req, "w@h", "celery");
    let out: Vec<Outgoing> = after_success(&embed, &json!(3), &from, now())
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(out.len(), 1);
    let o = &out[0];
    assert_eq!(
        (o.exchange.as_str(), o.routing_key.as_str()),
        ("", "celery")
    );
    assert_eq!(o.message.id, "s2");
    assert_eq!(o.message.headers["parent_id"], "t1");
    assert_eq!(o.message.headers["root_id"], "r0");
    assert_eq!(o.message.headers["origin"], "w@h");
    let b = body(o);
    assert_eq!(b[0], json!([3, 3]), "the result first");
    assert_eq!(b[2]["chain"], json!([step3]));
    // The last step: no chain left, its own queue.
    let req = request(json!({"chain": [step3]}));
    let from = Sender::of(&req, "w@h", "celery");
    let out = after_success(&Embed::of(&req), &json!(6), &from, now());
    let o = out[0].as_ref().unwrap();
    assert_eq!(o.routing_key, "q3");
    assert_eq!(body(o)[2]["chain"], Value::Null);
}

#[test]
fn callbacks_get_the_result_unless_immutable_and_errbacks_get_the_id() {
    let mut frozen = sig(
        "tasks.echo",
        json!(["x"]),
        json!({"countdown": 5, "priority": 7}),
    );
    frozen["immutable"] = json!(true);
    let cb = sig("tasks.add", json!([10]), json!({}));
    let eb = sig(
        "proj.on_error",
        json!([]),
        json!({"exchange": "ex", "routing_key": "rk"}),
    );
    let req = request(json!({"callbacks": [cb, frozen], "errbacks": [eb]}));
    let embed = Embed::of(&req);
    let from = Sender::of(&req, "w@h", "celery");
    let t = now();
    let out: Vec<Outgoing> = after_success(&embed, &json!(3), &from, t)
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(body(&out[0])[0], json!([3, 10]));
    assert_eq!(body(&out[1])[0], json!(["x"]), "immutable: its own args");
    assert_eq!(out[1].message.priority, 7);
    let eta = parse_iso(out[1].message.headers["eta"].as_str().unwrap()).unwrap();
    assert!((eta - t).as_seconds_f64() > 4.9);
    let out = errbacks(&embed, &from, t);
    let o = out[0].as_ref().unwrap();
    assert_eq!((o.exchange.as_str(), o.routing_key.as_str()), ("ex", "rk"));
    assert_eq!(body(o)[0], json!(["t1"]));
}

#[test]
fn a_failing_step_names_the_chain_ids_and_groups_fan_out() {
    let req = request(json!({"chain": [
        sig("c", json!([]), json!({"task_id": "c3"})),
        sig("b", json!([]), json!({})),
        sig("a", json!([]), json!({"task_id": "c1"})),
    ]}));
    assert_eq!(failed_chain_ids(&Embed::of(&req)), ["c1", "c3"]);
    let group = json!({"task": "celery.group", "subtask_type": "group", "options": {"task_id": "g1"},
        "kwargs": {"tasks": [sig("x", json!([]), json!({})), sig("y", json!([]), json!({}))]}});
    let from = Sender::of(&req, "w@h", "celery");
    let out = apply(&group, Some(&json!(1)), &from, None, now());
    assert_eq!(out.len(), 2);
    let second = out[1].as_ref().unwrap();
    assert_eq!(second.message.headers["group"], "g1");
    assert_eq!(second.message.headers["group_index"], 1);
    let chord = json!({"task": "celery.chord", "subtask_type": "chord", "options": {}});
    assert_eq!(
        apply(&chord, None, &from, None, now()),
        vec![Err(CanvasError::Unsupported("chord".into()))]
    );
    assert!(matches!(
        simple(&json!({"args": []}), None, &from, None, now()),
        Err(CanvasError::NotASignature(_))
    ));
}

#[test]
fn chord_errors_read_as_celerys() {
    let exc = json!({"exc_type": "ValueError", "exc_message": ["boom"], "exc_module": "builtins"});
    let e = chord_error("t9", &exc);
    assert_eq!(e.exc_type, "ChordError");
    assert_eq!(
        e.exc_message,
        vec![json!("Dependency t9 raised ValueError('boom')")]
    );
}
