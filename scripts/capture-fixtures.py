"""Capture task messages exactly as Python Celery publishes them, into tests/fixtures/.

Run with the interop virtualenv's python (scripts/ensure-python.sh) against a running RabbitMQ:
    $(scripts/ensure-python.sh) scripts/capture-fixtures.py
Each message is sent to a fresh queue, taken off it with a raw basic.get, and saved with its
AMQP properties, application headers and body; the queue is deleted afterwards.
"""

import base64
import datetime
import json
import os
import pathlib
import uuid

import amqp
from celery import Celery, chain, group, signature

BROKER = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures"


def grab(queue):
    conn = amqp.Connection(host="127.0.0.1:5672", userid="guest", password="guest")
    conn.connect()
    ch = conn.channel()
    msg = ch.basic_get(queue, no_ack=True)
    ch.queue_delete(queue)
    ch.exchange_delete(queue)
    conn.close()
    return msg


def save(name, description, msg, binary=False):
    props = {k: msg.properties.get(k) for k in (
        "content_type", "content_encoding", "correlation_id", "reply_to", "delivery_mode",
        "priority", "expiration") if msg.properties.get(k) is not None}
    record = {"description": description, "properties": props,
              "headers": msg.properties.get("application_headers") or {}}
    if binary:
        record["body_base64"] = base64.b64encode(msg.body).decode()
    else:
        body = msg.body
        record["body"] = body.decode("utf-8") if isinstance(body, bytes) else body
    (OUT / f"{name}.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    print("captured", name)


def capture(name, description, send, protocol=2, binary=False):
    app = Celery("capture", broker=BROKER, backend="rpc://")
    app.conf.task_protocol = protocol
    queue = f"fixture-capture-{uuid.uuid4().hex}"
    with app.connection_for_write() as conn:
        send(app, queue, conn)
    save(name, description, grab(queue), binary)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    capture("v2_add", "send_task('tasks.add', (2, 3))",
            lambda app, q, c: app.send_task("tasks.add", (2, 3), queue=q, connection=c))
    capture("v2_full_options",
            "send_task('tasks.add', (2, 3), {'z': 1}, countdown=10, expires=60, link=tasks.cb(1), "
            "link_error=tasks.err(), priority=5, time_limit=30, soft_time_limit=20)",
            lambda app, q, c: app.send_task(
                "tasks.add", (2, 3), {"z": 1}, countdown=10, expires=60,
                link=signature("tasks.cb", (1,)), link_error=signature("tasks.err"),
                priority=5, time_limit=30, soft_time_limit=20, queue=q, connection=c))
    capture("v2_shadow", "send_task('tasks.add', (2, 3), shadow='my.shadow')",
            lambda app, q, c: app.send_task("tasks.add", (2, 3), shadow="my.shadow", queue=q,
                                            connection=c))
    capture("v2_kwargs_unicode", "kwargs with non-ASCII text and a nested dict",
            lambda app, q, c: app.send_task("tasks.echo", (), {"text": "héllo ✓", "n": {"a": [1, None]}},
                                            queue=q, connection=c))
    eta = datetime.datetime(2026, 11, 24, 12, 0, 0, 123456, tzinfo=datetime.timezone.utc)
    capture("v2_eta_datetime", "send_task('tasks.add', (2, 3), eta=aware datetime in the past)",
            lambda app, q, c: app.send_task("tasks.add", (2, 3), eta=eta, queue=q, connection=c))
    capture("v2_group_member", "first message of group(tasks.add(1, 1), tasks.add(2, 2))",
            lambda app, q, c: group(signature("tasks.add", (1, 1)),
                                    signature("tasks.add", (2, 2))).apply_async(queue=q))
    capture("v2_chain", "first message of chain(add(1, 2), add(3), add(4))",
            lambda app, q, c: chain(signature("tasks.add", (1, 2), app=app),
                                    signature("tasks.add", (3,), app=app),
                                    signature("tasks.add", (4,), app=app)).apply_async(queue=q))
    capture("v2_uuid_arg", "an argument kombu wraps in a __type__/__value__ envelope",
            lambda app, q, c: app.send_task("tasks.echo", (uuid.UUID(int=1),), queue=q,
                                            connection=c))
    capture("v2_gzip", "send_task('tasks.add', (2, 3), compression='gzip') (zlib body)",
            lambda app, q, c: app.send_task("tasks.add", (2, 3), compression="gzip", queue=q,
                                            connection=c), binary=True)
    capture("v1_add", "task_protocol=1: send_task('tasks.add', (2, 3))",
            lambda app, q, c: app.send_task("tasks.add", (2, 3), queue=q, connection=c), protocol=1)


if __name__ == "__main__":
    main()
