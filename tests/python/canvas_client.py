"""Canvases and Redis-stored results of Rust tasks, through the real Python Celery client.

Environment: AMQP_URL (broker), RESULT_BACKEND (redis://…), QUEUE (where celeryd consumes),
PY_QUEUE (where a Python worker consumes, for mixed chords). Each command prints one JSON
line:

    chain            chain(add(1, 2), add(3)) -> its result
    link             add(2, 2) linked to add(10) -> both results
    link_error       fail('boom') with link_error echo() -> the failure and the errback's result
    chain_failure    chain(fail('x'), add(1)) -> the states of both steps
    group            group(add(i, i) for i in range(5)) -> the results
    chord_rust_head  chord(add(i, i) on celeryd)(proj.tsum on the Python worker)
    chord_py_head    chord(proj.add(i, i) on the Python worker)(tasks.echo on celeryd)
    chord_failure    chord([add(1, 1), fail('bad')])(echo) -> the body's state and exception
    progress         tasks.progress(5): the PROGRESS metas seen while it runs, its result
    task_sends_task  tasks.send_add(2, 3): the sent task's result and parent
    states           FAILURE, RETRY, REVOKED, TimeLimitExceeded, WorkerLostError as the client
                     reads them from Redis
    send N           N add(i, 1) sent without touching Redis -> their ids
    collect IDS S    the results of the tasks IDS (JSON list), waiting up to S seconds each
"""

import json
import os
import sys
import time

from celery import Celery, chain, chord, group, signature

app = Celery(
    "canvas_client",
    broker=os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//"),
    backend=os.environ["RESULT_BACKEND"],
)
app.conf.task_default_queue = os.environ["QUEUE"]
app.conf.result_extended = True
QUEUE = os.environ["QUEUE"]
PY_QUEUE = os.environ.get("PY_QUEUE", QUEUE)
TIMEOUT = 30


def rust(name, *args, **options):
    return signature(name, args=args, app=app, queue=QUEUE, **options)


def python(name, *args):
    return signature(name, args=args, app=app, queue=PY_QUEUE)


def failure(res):
    value = res.get(timeout=TIMEOUT, propagate=False)
    return {
        "state": res.state,
        "exc_type": type(value).__name__,
        "exc_module": type(value).__module__,
        "exc": str(value),
    }


def wait_state(res, want, seconds=TIMEOUT):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if res.state == want:
            return res.state
        time.sleep(0.05)
    return res.state


def main(argv):
    cmd = argv[0]
    if cmd == "chain":
        res = chain(rust("tasks.add", 1, 2), rust("tasks.add", 3)).apply_async()
        out = {"result": res.get(timeout=TIMEOUT), "parent": res.parent.get(timeout=TIMEOUT)}
        out["parent_id"] = app.backend.get_task_meta(res.id).get("parent_id")
        out["first_id"] = res.parent.id
    elif cmd == "link":
        cb = rust("tasks.add", 10)
        cb.freeze()
        res = rust("tasks.add", 2, 2).apply_async(link=cb)
        out = {"result": res.get(timeout=TIMEOUT),
               "callback": app.AsyncResult(cb.id).get(timeout=TIMEOUT)}
    elif cmd == "link_error":
        eb = rust("tasks.echo")
        eb.freeze()
        res = rust("tasks.fail", "boom").apply_async(link_error=eb)
        out = failure(res)
        out["errback"] = app.AsyncResult(eb.id).get(timeout=TIMEOUT)
        out["id"] = res.id
    elif cmd == "chain_failure":
        res = chain(rust("tasks.fail", "x"), rust("tasks.add", 1)).apply_async()
        out = {"last": failure(res), "first": failure(res.parent)}
    elif cmd == "group":
        res = group(rust("tasks.add", i, i) for i in range(5)).apply_async()
        res.save()
        restored = app.GroupResult.restore(res.id)
        out = {"result": res.get(timeout=TIMEOUT), "restored": restored.get(timeout=TIMEOUT)}
    elif cmd == "chord_rust_head":
        res = chord(rust("tasks.add", i, i) for i in range(6))(python("proj.tsum"))
        out = {"result": res.get(timeout=TIMEOUT)}
    elif cmd == "chord_py_head":
        res = chord(python("proj.add", i, i) for i in range(4))(rust("tasks.echo"))
        out = {"result": res.get(timeout=TIMEOUT)}
    elif cmd == "chord_failure":
        res = chord([rust("tasks.add", 1, 1), rust("tasks.fail", "bad")])(rust("tasks.echo"))
        out = failure(res)
    elif cmd == "states":
        out = {"failure": failure(rust("tasks.fail", "boom").apply_async())}
        retrying = rust("tasks.retry_in", 1, 30).apply_async()
        out["retry"] = wait_state(retrying, "RETRY")
        retrying.revoke()
        revoked = rust("tasks.sleep", 0.1, countdown=3).apply_async()
        revoked.revoke()
        out["revoked"] = failure(revoked)
        out["time_limit"] = failure(rust("tasks.spin", 10, time_limit=0.5).apply_async())
        out["lost"] = failure(rust("tasks.crash").apply_async())
        ok = rust("tasks.add", 20, 22).apply_async()
        out["success"] = ok.get(timeout=TIMEOUT)
        meta = app.backend.get_task_meta(ok.id)
        out["extended"] = {k: meta.get(k) for k in ("name", "args", "worker", "queue")}
    elif cmd == "progress":
        res = rust("tasks.progress", 5, 0.3).apply_async()
        seen = []
        deadline = time.time() + TIMEOUT
        while not res.ready() and time.time() < deadline:
            if res.state == "PROGRESS" and res.info not in seen:
                seen.append(res.info)
            time.sleep(0.05)
        out = {"result": res.get(timeout=TIMEOUT), "seen": seen}
    elif cmd == "task_sends_task":
        res = rust("tasks.send_add", 2, 3, QUEUE).apply_async()
        child_id = res.get(timeout=TIMEOUT)
        child = app.AsyncResult(child_id)
        out = {"child": child.get(timeout=TIMEOUT), "parent_id": app.backend.get_task_meta(child_id).get("parent_id"), "id": res.id}
    elif cmd == "preset_success":
        # A SUCCESS already stored for ID (a duplicate of a task that succeeded elsewhere).
        task_id = argv[1]
        app.backend.client.set(
            app.backend.get_key_for_task(task_id),
            json.dumps({"status": "SUCCESS", "result": 1, "task_id": task_id}),
        )
        out = {"id": rust("tasks.fail", "late", task_id=task_id).apply_async().id}
    elif cmd == "meta":
        app.backend._cache.clear()
        out = app.backend.get_task_meta(argv[1])
        out = {"status": out.get("status"), "result": out.get("result")}
    elif cmd == "send":
        # Sent without the Redis backend (which the client needs to send), so that it works
        # while Redis is down; the worker stores the results in Redis all the same.
        sender = Celery("sender", broker=app.conf.broker_url, backend="rpc://")
        ids = [
            sender.send_task("tasks.add", (i, 1), queue=QUEUE, ignore_result=False).id
            for i in range(int(argv[1]))
        ]
        out = {"ids": ids}
    elif cmd == "collect":
        ids = json.loads(argv[1])
        out = {"results": [app.AsyncResult(i).get(timeout=float(argv[2])) for i in ids]}
    else:
        raise SystemExit(f"unknown command {cmd}")
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
