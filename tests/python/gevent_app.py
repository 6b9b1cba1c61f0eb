"""The peer of celeryd's `-P async` in benches/async_pool.rs: Python Celery's own gevent pool
running the same-shaped task, `tasks.async_sleep(seconds)`, which yields to the hub for
`seconds` (gevent.sleep) and returns them, as celeryd's awaits a timer.

    celery -A gevent_app worker -P gevent -c 1000
"""

import os

import gevent
from celery import Celery

app = Celery(
    "gevent_app",
    broker=os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//"),
    backend=os.environ.get("RESULT_BACKEND", "rpc://"),
)


@app.task(name="tasks.async_sleep")
def async_sleep(seconds):
    gevent.sleep(seconds)
    return seconds
