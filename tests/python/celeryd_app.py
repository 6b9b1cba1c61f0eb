"""The names of the stock celeryd binary's tasks, declared for Python tools (Flower's rate-limit
and time-limit buttons only accept task names its own app knows). The bodies never run here:
celeryd runs the Rust tasks of these names.

    celery -A celeryd_app flower
"""

import os

from celery import Celery

app = Celery(
    "celeryd_app",
    broker=os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//"),
    backend=os.environ.get("RESULT_BACKEND", "rpc://"),
)


def _declared(*args, **kwargs):
    """Runs in celeryd, not here."""


for _name in ("noop", "add", "echo", "sleep", "spin", "fail", "crash", "hog"):
    app.task(name=f"tasks.{_name}")(_declared)
