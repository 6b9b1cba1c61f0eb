"""Drives `worker -A proj` with Celery's own client API (canvases included), importing the
test app (tests/python/proj.py) as a client would. Prints one JSON object of what it saw:

    proj_client.py SCENARIO [--queue Q] [--timeout S]

Scenarios: basic, retry, group, canvas, chord, states, limits, lost, reject, revoke, eta,
unregistered, pids, rated (canvas, chord and states need a backend other than rpc://);
`send --task NAME --args JSON` (prints the id) and `wait --id ID` (with a result backend
other than rpc://, which returns results only to their sender); `mark --run R --count N`
(N proj.mark tasks, counted in Redis: how often each ran, and by which worker). Each value is an observation (a result, a state, an exception's class), never a
verdict: the Rust tests compare them with what Celery's own worker gives."""

import argparse
import json
import sys
import time

from celery import chain, chord, group
from celery.result import AsyncResult

import proj


def exc_of(res, timeout):
    try:
        value = res.get(timeout=timeout)
        return {"value": value}
    except Exception as exc:  # the app's own classes come back as themselves
        return {"exc": type(exc).__name__, "module": type(exc).__module__, "text": str(exc)}


def wait_state(res, states, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if res.state in states:
            return res.state
        time.sleep(0.05)
    return res.state


def basic(q, t):
    who = proj.whoami.apply_async(queue=q).get(timeout=t)
    return {
        "add": proj.add.apply_async((2, 3), queue=q).get(timeout=t),
        "boom": exc_of(proj.boom.apply_async(("bad",), queue=q), t),
        "whoami": who,
        "signals": proj.signals_seen.apply_async(queue=q).get(timeout=t),
    }


def retry(q, t):
    return {
        "retry_once": proj.retry_once.apply_async(queue=q).get(timeout=t),
        "autoretry": proj.autoretry.apply_async(queue=q).get(timeout=t),
    }


def canvas(q, t):
    linked = proj.add.apply_async((1, 1), link=proj.add.s(10).set(queue=q), queue=q)
    linked.get(timeout=t)
    child = linked.children[0] if linked.children else None
    err_id = "errback-%s" % time.time()
    failed = proj.boom.apply_async(
        ("for errback",), link_error=proj.errback.s().set(task_id=err_id, queue=q), queue=q
    )
    return {
        "chain": chain(proj.add.s(1, 2).set(queue=q), proj.add.s(3).set(queue=q))
        .apply_async()
        .get(timeout=t),
        "link": child.get(timeout=t) if child else None,
        "group": group(proj.add.s(i, i) for i in range(3)).apply_async(queue=q).get(timeout=t),
        "link_error_failed": exc_of(failed, t),
        "link_error": AsyncResult(err_id, app=proj.app).get(timeout=t),
    }


def group_(q, t):
    # The one canvas rpc:// can return to the client (Celery's own worker neither returns a
    # chain's or a link's result through rpc://: the worker sends those tasks).
    return {"group": group(proj.add.s(i, i) for i in range(3)).apply_async(queue=q).get(timeout=t)}


def chord_(q, t):
    header = [proj.add.s(i, i).set(queue=q) for i in range(4)]
    return {"chord": chord(header)(proj.tsum.s().set(queue=q)).get(timeout=t)}


def states(q, t):
    p = proj.progress.apply_async(queue=q)
    seen = wait_state(p, {"PROGRESS"}, t)
    meta = p.info if seen == "PROGRESS" else None
    spawned = proj.spawn.apply_async((1, 2, q), queue=q).get(timeout=t)
    return {
        "progress_state": seen,
        "progress_meta": meta,
        "progress": p.get(timeout=t),
        "spawned": AsyncResult(spawned, app=proj.app).get(timeout=t),
    }


def limits(q, t):
    return {
        "hard": exc_of(proj.hard.apply_async(queue=q), t),
        "soft": proj.soft.apply_async(queue=q).get(timeout=t),
        "after": proj.add.apply_async((1, 1), queue=q).get(timeout=t),
    }


def lost(q, t):
    return {
        "die": exc_of(proj.die.apply_async(queue=q), t),
        "die_once": proj.die_once.apply_async(queue=q).get(timeout=t),
    }


def reject(q, t):
    r = proj.reject.apply_async(queue=q)
    i = proj.ignore.apply_async(queue=q)
    after = proj.add.apply_async((2, 2), queue=q).get(timeout=t)
    return {"reject": exc_of(r, t), "ignore_state": i.state, "after": after}


def revoke(q, t):
    later = proj.add.apply_async((1, 1), countdown=60, queue=q)
    time.sleep(1)
    later.revoke()
    # Delivered at once, held for its ETA, expired by then.
    expired = proj.add.apply_async((1, 1), countdown=3, expires=1.5, queue=q)
    running = proj.sleep.apply_async((30,), queue=q)
    wait_state(running, {"STARTED"}, 3)
    time.sleep(1)
    running.revoke(terminate=True)
    return {
        "eta": wait_state(later, {"REVOKED"}, t),
        "expired": wait_state(expired, {"REVOKED"}, t),
        "terminated": wait_state(running, {"REVOKED"}, t),
        "after": proj.add.apply_async((3, 3), queue=q).get(timeout=t),
    }


def revoke_reserved(q, t):
    """Revoked while reserved: both children busy, the task waits in the worker."""
    busy = [proj.sleep.apply_async((2,), queue=q) for _ in range(2)]
    time.sleep(0.5)
    waiting = proj.add.apply_async((5, 5), queue=q)
    time.sleep(0.5)
    waiting.revoke()
    return {
        "reserved": wait_state(waiting, {"REVOKED"}, t),
        "busy": [r.get(timeout=t) for r in busy],
    }


def eta(q, t):
    sent = time.time()
    v = proj.add.apply_async((4, 4), countdown=1.5, queue=q).get(timeout=t)
    return {"eta": v, "waited": time.time() - sent}


def unregistered(q, t):
    r = proj.app.send_task("proj.nope", queue=q)
    return {"unregistered": exc_of(r, t)}


def revoke_elsewhere(q, t, node=None):
    """A remote revoke of tasks this worker does not run: pending ones become REVOKED, one
    another worker started keeps its state."""
    import uuid

    b = proj.app.backend
    started, pending = str(uuid.uuid4()), str(uuid.uuid4())
    b.store_result(started, {"hostname": "other@host"}, "STARTED")
    replies = proj.app.control.revoke(
        [started, pending], destination=[node], reply=True, timeout=10, limit=1
    )
    return {"replies": len(replies), "started": b.get_state(started), "pending": b.get_state(pending)}


def pickle(q, t):
    """A pickled task message: run when the app accepts pickle, refused (rejected) when not."""
    r = proj.add.apply_async((20, 22), serializer="pickle", queue=q)
    try:
        return {"id": r.id, "result": r.get(timeout=t)}
    except Exception as exc:
        return {"id": r.id, "exc": type(exc).__name__}


def pids(q, t):
    return {"pids": [proj.whoami.apply_async(queue=q).get(timeout=t)["pid"] for _ in range(3)]}


def rated(q, t):
    sent = [proj.rated.apply_async(queue=q) for _ in range(4)]
    return {"times": sorted(r.get(timeout=t) for r in sent)}


def send(q, t, task=None, args="[]", countdown=None):
    options = {"countdown": countdown} if countdown is not None else {}
    return {"id": proj.app.send_task(task, json.loads(args), queue=q, **options).id}


def mark(q, t, run=None, count=0):
    """Sends `count` proj.mark tasks of `run` on one connection, waits (up to `t`) until each
    ran, and reports how often they ran and where."""
    r = proj.marks()
    with proj.app.producer_or_acquire() as producer:
        for n in range(count):
            proj.mark.apply_async((run, n), queue=q, producer=producer)
    deadline = time.time() + t
    while time.time() < deadline and r.hlen("mark:%s" % run) < count:
        time.sleep(0.2)
    time.sleep(1)  # a duplicate would come late: give it a moment
    runs = [int(v) for v in r.hvals("mark:%s" % run)]
    by = {k.decode(): int(v) for k, v in r.hgetall("mark:%s:by" % run).items()}
    r.delete("mark:%s" % run, "mark:%s:by" % run)
    return {"distinct": len(runs), "runs": sum(runs), "by": by}


def wait(q, t, id=None):
    return {"result": AsyncResult(id, app=proj.app).get(timeout=t)}


SCENARIOS = {
    "basic": basic,
    "retry": retry,
    "canvas": canvas,
    "chord": chord_,
    "group": group_,
    "states": states,
    "limits": limits,
    "lost": lost,
    "reject": reject,
    "revoke": revoke,
    "eta": eta,
    "revoke_reserved": revoke_reserved,
    "unregistered": unregistered,
    "pids": pids,
    "pickle": pickle,
    "revoke_elsewhere": revoke_elsewhere,
    "rated": rated,
    "send": send,
    "wait": wait,
    "mark": mark,
}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("scenario", choices=sorted(SCENARIOS))
    p.add_argument("--queue", default="celery")
    p.add_argument("--timeout", type=float, default=30)
    p.add_argument("--task", help="send: the task name")
    p.add_argument("--args", default="[]", help="send: its arguments (JSON list)")
    p.add_argument("--id", help="wait: the task id")
    p.add_argument("--countdown", type=float, help="send: a countdown in seconds")
    p.add_argument("--node", help="revoke_elsewhere: the worker's node name")
    p.add_argument("--run", help="mark: a name for the run")
    p.add_argument("--count", type=int, default=0, help="mark: how many tasks")
    a = p.parse_args()
    extra = {
        "send": {"task": a.task, "args": a.args, "countdown": a.countdown},
        "wait": {"id": a.id},
        "revoke_elsewhere": {"node": a.node},
        "mark": {"run": a.run, "count": a.count},
    }
    out = SCENARIOS[a.scenario](a.queue, a.timeout, **extra.get(a.scenario, {}))
    print(json.dumps(out, default=repr))
    return 0


if __name__ == "__main__":
    sys.exit(main())
