"""What Celery's own tracer costs by itself, for benches/compare.rs: one process set up as a
pool child (tracers built, `worker_state` reset), running `tasks.noop` of the bench app through
`celery.app.trace.fast_trace_task` with an rpc:// result, and nothing else around it (no frames,
no parent, no second process).

Prints one JSON line: `warm_cpu_us`, the CPU time per task back to back (what any worker that
runs Celery's tracer spends in its children, at the least, per task of a drain), and
`idle_p50_us`, the median wall time of one traced task in a process that sleeps between tasks
(what a round trip on an idle worker pays for the tracer, at the least: caches and the CPU go
cold while it sleeps).

    python tracer_floor.py [TASKS]
"""

import json
import os
import sys
import time
import uuid

from celery.app import trace
from celery.worker import state as worker_state

from celeryd_app import app

HOSTNAME = "tracer-floor@localhost"


def setup():
    app.loader.init_worker()
    app.loader.init_worker_process()
    trace.setup_worker_optimizations(app, HOSTNAME)
    for name, task in app.tasks.items():
        task.__trace__ = trace.build_tracer(name, task, app.loader, HOSTNAME, app=app)
    worker_state.reset_state()
    reply = f"tracer-floor-{uuid.uuid4().hex}"
    with app.connection_for_write() as conn:
        conn.default_channel.queue_declare(reply, auto_delete=True, exclusive=False)
    return reply


def request(task_id, reply):
    """A request dict shaped as a worker hands one to its child (one no-op task)."""
    headers = {
        "lang": "py",
        "task": "tasks.noop",
        "id": task_id,
        "root_id": task_id,
        "parent_id": None,
        "group": None,
        "retries": 0,
        "eta": None,
        "expires": None,
        "timelimit": [None, None],
        "argsrepr": "()",
        "kwargsrepr": "{}",
        "origin": "tracer-floor",
        "ignore_result": False,
    }
    properties = {
        "correlation_id": task_id,
        "reply_to": reply,
        "content_type": "application/json",
        "content_encoding": "utf-8",
        "delivery_mode": 2,
        "priority": 0,
        "application_headers": dict(headers),
    }
    return dict(
        headers,
        properties=properties,
        reply_to=reply,
        correlation_id=task_id,
        hostname=HOSTNAME,
        delivery_info={"exchange": "", "routing_key": "tracer-floor", "priority": 0,
                       "redelivered": False},
    )


BODY = json.dumps([[], {}, {"callbacks": None, "errbacks": None, "chain": None,
                            "chord": None}]).encode()


def traced(reply):
    task_id = str(uuid.uuid4())
    req = request(task_id, reply)
    started = time.perf_counter()
    failed, _, _ = trace.fast_trace_task("tasks.noop", task_id, req, BODY,
                                         "application/json", "utf-8")
    if failed:
        raise SystemExit("tasks.noop failed in the tracer")
    return time.perf_counter() - started


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    reply = setup()
    for _ in range(200):  # warm up: connection, producer pool, caches
        traced(reply)
    cpu = time.process_time()
    for _ in range(n):
        traced(reply)
    warm_cpu_us = (time.process_time() - cpu) * 1e6 / n
    idle = []
    for _ in range(max(n // 4, 50)):
        time.sleep(0.002)
        idle.append(traced(reply))
    idle.sort()
    print(json.dumps({"warm_cpu_us": round(warm_cpu_us, 1),
                      "idle_p50_us": round(idle[len(idle) // 2] * 1e6, 1)}))
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
