"""A plain Python Celery worker app for celeryd's tests (`worker ctl` against Python).

    celery -A pyworker worker -P solo -n NAME -Q QUEUE
"""

import os

from celery import Celery

app = Celery(
    "pyworker",
    broker=os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//"),
    backend="rpc://",
)


@app.task(name="py.add")
def add(x, y):
    return x + y
