"""Drive a worker through the real, unmodified Python Celery client (for celeryd's tests).

Sends tasks by name with `send_task` (no task module is imported) to the broker in AMQP_URL,
with the rpc:// result backend, waits for the results and prints one JSON line:

    call NAME --args JSON --kwargs JSON [--queue Q | --exchange X --routing-key K]
         [--timeout S] [--countdown S]
         [--expires S] [--time-limit S] [--soft-time-limit S] [--count N] [--no-wait] [--task-id ID]
         [--stamp NAME=VALUE ...]
    broadcast METHOD [--arguments JSON] [--destination NODE ...] [--pattern P --matcher M]
         [--timeout S]
    events --seconds S

For one task: {"id", "state", "result" | "exc_type", "exc_module", "exc_message", "exc_args"};
with --count N a list of those; with --no-wait just {"id": ..., "ids": [every id]}. Exit 3 on timeout.
`broadcast` prints the list of replies `app.control.broadcast(..., reply=True)` returns.
`events` prints READY once its receiver (Celery's own `app.events.Receiver`, as `celery events`
and Flower use) is consuming, then one JSON line per event for S seconds.
"""

import argparse
import json
import os
import sys

from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeout


def outcome(res, timeout):
    value = res.get(timeout=timeout, propagate=False)
    out = {"id": res.id, "state": res.state}
    if isinstance(value, BaseException):
        out.update(
            exc_type=type(value).__name__,
            exc_module=type(value).__module__,
            exc_message=str(value),
            exc_args=json.loads(json.dumps(list(value.args), default=repr)),
        )
    else:
        out["result"] = value
    return out


def capture_events(app, seconds):
    import socket
    import threading

    def show(event):
        print(json.dumps(event), flush=True)

    with app.connection() as conn:
        recv = app.events.Receiver(conn, handlers={"*": show})
        ready = recv.on_consume_ready

        def announce(*args, **kwargs):
            ready(*args, **kwargs)
            print("READY", flush=True)

        recv.on_consume_ready = announce
        threading.Timer(seconds, lambda: setattr(recv, "should_stop", True)).start()
        try:
            recv.capture(limit=None, timeout=seconds + 5, wakeup=False)
        except socket.timeout:
            pass
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    call = sub.add_parser("call")
    call.add_argument("name")
    call.add_argument("--args", default="[]")
    call.add_argument("--kwargs", default="{}")
    call.add_argument("--queue")
    call.add_argument("--exchange")
    call.add_argument("--routing-key")
    call.add_argument("--timeout", type=float, default=30.0)
    call.add_argument("--countdown", type=float)
    call.add_argument("--expires", type=float)
    call.add_argument("--time-limit", type=float)
    call.add_argument("--soft-time-limit", type=float)
    call.add_argument("--count", type=int, default=1)
    call.add_argument("--no-wait", action="store_true")
    call.add_argument("--task-id")
    call.add_argument("--stamp", action="append", default=[])
    cast = sub.add_parser("broadcast")
    cast.add_argument("method")
    cast.add_argument("--arguments", default="{}")
    cast.add_argument("--destination", action="append")
    cast.add_argument("--pattern")
    cast.add_argument("--matcher")
    cast.add_argument("--timeout", type=float, default=1.0)
    events = sub.add_parser("events")
    events.add_argument("--seconds", type=float, default=10.0)
    opts = parser.parse_args()

    app = Celery(
        "celeryd-tests",
        broker=os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//"),
        backend="rpc://",
    )
    if opts.command == "events":
        return capture_events(app, opts.seconds)
    if opts.command == "broadcast":
        replies = app.control.broadcast(
            opts.method,
            arguments=json.loads(opts.arguments),
            destination=opts.destination,
            pattern=opts.pattern,
            matcher=opts.matcher,
            reply=True,
            timeout=opts.timeout,
        )
        print(json.dumps(replies))
        return 0
    options = {}
    if opts.stamp:
        stamps = dict(s.split("=", 1) for s in opts.stamp)
        options["stamped_headers"] = list(stamps)
        options.update(stamps)
    if opts.queue:
        options["queue"] = opts.queue
    if opts.exchange is not None:
        options["exchange"] = opts.exchange
    if opts.routing_key is not None:
        options["routing_key"] = opts.routing_key
    if opts.countdown is not None:
        options["countdown"] = opts.countdown
    if opts.expires is not None:
        options["expires"] = opts.expires
    if opts.time_limit is not None:
        options["time_limit"] = opts.time_limit
    if opts.soft_time_limit is not None:
        options["soft_time_limit"] = opts.soft_time_limit
    if opts.task_id:
        options["task_id"] = opts.task_id
    args, kwargs = json.loads(opts.args), json.loads(opts.kwargs)
    sent = [app.send_task(opts.name, args, kwargs, **options) for _ in range(opts.count)]
    if opts.no_wait:
        print(json.dumps({"id": sent[0].id, "ids": [r.id for r in sent]}))
        return 0
    try:
        results = [outcome(r, opts.timeout) for r in sent]
    except CeleryTimeout:
        print(f"timed out after {opts.timeout}s waiting for {opts.name}", file=sys.stderr)
        return 3
    print(json.dumps(results[0] if opts.count == 1 else results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
