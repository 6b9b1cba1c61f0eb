"""A plain Python Celery worker app for celeryd's tests (`worker ctl` against Python).

    celery -A pyworker worker -P solo -n NAME -Q QUEUE
"""

import json
import os

from celery import Celery

app = Celery(
    "pyworker",
    broker=os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//"),
    backend="rpc://",
)
# On a Redis broker: kombu's transport options (a JSON object), e.g. a short visibility
# timeout for the tests of restores.
if os.environ.get("PYWORKER_TRANSPORT_OPTIONS"):
    app.conf.broker_transport_options = json.loads(os.environ["PYWORKER_TRANSPORT_OPTIONS"])


@app.task(name="py.add")
def add(x, y):
    return x + y
