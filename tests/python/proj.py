"""A Python Celery app of celeryd's own, run by `worker -A proj` in the tests
(tests/it/python_tasks.rs) and by the Python child on its own (tests/it/python_child.rs).

Environment: AMQP_URL (broker), RESULT_BACKEND (rpc://, redis://…, db+postgresql://…),
PROJ_CONF (JSON merged into app.conf, for the configuration tests), PROJ_QUEUES (task_queues
as JSON, see below), PROJ_BEAT (beat_schedule as JSON, see below)."""

import json
import os
import signal
import time

from celery import Celery, signals
from celery.exceptions import Ignore, Reject, SoftTimeLimitExceeded

app = Celery(
    "proj",
    broker=os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//"),
    backend=os.environ.get("RESULT_BACKEND", "rpc://"),
)
app.conf.update(json.loads(os.environ.get("PROJ_CONF") or "{}"))
if os.environ.get("PROJ_QUEUES"):
    # task_queues, which JSON cannot spell: [{"name", "exchange", "type", "routing_key",
    # "arguments"}, ...] as kombu Queues.
    from kombu import Exchange, Queue

    app.conf.task_queues = [
        Queue(
            q["name"],
            Exchange(q["exchange"], type=q.get("type", "direct")),
            routing_key=q.get("routing_key", q["name"]),
            queue_arguments=q.get("arguments"),
        )
        for q in json.loads(os.environ["PROJ_QUEUES"])
    ]

if os.environ.get("PROJ_BEAT"):
    # beat_schedule, which JSON cannot spell: {name: {"task", "every": seconds (a timedelta)
    # | "number": seconds | "crontab": {field: spec} | "solar": [event, lat, lon], "args",
    # "kwargs", "options"}}.
    from datetime import timedelta

    from celery.schedules import crontab, solar

    def _schedule(e):
        if "every" in e:
            return timedelta(seconds=e["every"])
        if "number" in e:
            return e["number"]
        if "crontab" in e:
            return crontab(**e["crontab"])
        return solar(*e["solar"])

    app.conf.beat_schedule = {
        name: {
            "task": e["task"],
            "schedule": _schedule(e),
            "args": tuple(e.get("args", ())),
            "kwargs": e.get("kwargs", {}),
            "options": e.get("options", {}),
        }
        for name, e in json.loads(os.environ["PROJ_BEAT"]).items()
    }

# What fired where: the tests read it back through proj.signals_seen.
_SEEN = []


@signals.worker_process_init.connect
def _process_init(**kwargs):
    _SEEN.append("worker_process_init")


@signals.worker_init.connect
def _worker_init(**kwargs):
    _SEEN.append("worker_init")


class Boom(Exception):
    """The app's own exception class: a client must get it back."""


@app.task(name="proj.add")
def add(x, y):
    print("a task writing to stdout must not break the pipe")
    return x + y


@app.task(name="proj.tsum")
def tsum(values):
    return sum(values)


@app.task(name="proj.boom")
def boom(text):
    raise Boom(text)


@app.task(name="proj.whoami", bind=True)
def whoami(self):
    r = self.request
    return {
        "id": r.id,
        "hostname": r.hostname,
        "delivery_info": r.delivery_info,
        "retries": r.retries,
        "pid": os.getpid(),
    }


@app.task(name="proj.signals_seen")
def signals_seen():
    return _SEEN


@app.task(name="proj.slow", acks_late=True, time_limit=30, soft_time_limit=5)
def slow(seconds):
    time.sleep(seconds)
    return seconds


@app.task(name="proj.retry_once", bind=True, default_retry_delay=0.1, max_retries=3)
def retry_once(self):
    if self.request.retries < 1:
        raise self.retry(exc=Boom("again"))
    return self.request.retries


@app.task(name="proj.retry_later", bind=True, max_retries=3)
def retry_later(self, times, countdown):
    if self.request.retries < times:
        raise self.retry(exc=Boom("later"), countdown=countdown)
    return self.request.retries


_MARKS = []


def marks():
    """The Redis client proj.mark counts in (MARK_REDIS, default db 5), one per process."""
    if not _MARKS:
        import redis

        _MARKS.append(redis.Redis.from_url(os.environ.get("MARK_REDIS", "redis://127.0.0.1:6379/5")))
    return _MARKS[0]


@app.task(name="proj.mark", bind=True, acks_late=True, ignore_result=True)
def mark(self, run, n):
    """Counts each run of task `n` of `run`, and which worker ran it (the fleet tests)."""
    r = marks()
    r.hincrby("mark:%s" % run, n, 1)
    r.hincrby("mark:%s:by" % run, self.request.hostname, 1)


@app.task(
    name="proj.autoretry",
    bind=True,
    autoretry_for=(KeyError,),
    retry_kwargs={"max_retries": 2, "countdown": 0.1},
)
def autoretry(self):
    if self.request.retries < 2:
        raise KeyError("not yet")
    return "retried %d times" % self.request.retries


@app.task(name="proj.reject")
def reject():
    raise Reject("not for me", requeue=False)


@app.task(name="proj.ignore")
def ignore():
    raise Ignore()


@app.task(name="proj.progress", bind=True)
def progress(self):
    self.update_state(state="PROGRESS", meta={"done": 1})
    time.sleep(1.5)
    return "finished"


@app.task(name="proj.spawn")
def spawn(x, y, queue):
    return add.apply_async((x, y), queue=queue).id


@app.task(name="proj.hard", time_limit=1)
def hard():
    try:
        time.sleep(10)
    finally:
        print("proj.hard: finally ran")


@app.task(name="proj.soft", soft_time_limit=0.5)
def soft():
    try:
        time.sleep(5)
    except SoftTimeLimitExceeded:
        return "soft limit caught"
    return "no soft limit"


@app.task(name="proj.die")
def die():
    os.kill(os.getpid(), signal.SIGKILL)


@app.task(name="proj.die_once", bind=True, acks_late=True, reject_on_worker_lost=True)
def die_once(self):
    if not self.request.delivery_info.get("redelivered"):
        os.kill(os.getpid(), signal.SIGKILL)
    return "redelivered"


@app.task(name="proj.sleep")
def sleep(seconds):
    time.sleep(seconds)
    return seconds


_HELD = []


@app.task(name="proj.hog")
def hog(mib):
    """Keeps `mib` MiB resident in this child (for max_memory_per_child)."""
    _HELD.append(bytearray(b"x" * (mib << 20)))
    return mib


@app.task(name="proj.rated", rate_limit="2/s")
def rated():
    return time.time()


@app.task(name="proj.errback")
def errback(task_id):
    """A link_error callback (sent as a task, with the failed task's id)."""
    return "errback for %s" % task_id
