"""A Python Celery app of celeryd's own, for the Python child (`python/celeryd_child.py`)."""

import os

from celery import Celery

app = Celery(
    "proj",
    broker=os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//"),
    backend=os.environ.get("RESULT_BACKEND", "rpc://"),
)


class Boom(Exception):
    """The app's own exception class: a client must get it back."""


@app.task(name="proj.add")
def add(x, y):
    print("a task writing to stdout must not break the pipe")
    return x + y


@app.task(name="proj.boom")
def boom(text):
    raise Boom(text)


@app.task(name="proj.whoami", bind=True)
def whoami(self):
    r = self.request
    return {"id": r.id, "hostname": r.hostname, "delivery_info": r.delivery_info}


@app.task(name="proj.slow", acks_late=True, time_limit=30, soft_time_limit=5)
def slow(seconds):
    import time

    time.sleep(seconds)
    return seconds
