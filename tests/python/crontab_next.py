"""Next run times of crontab schedules by Celery's own `crontab` (for tests/it/beat.rs, which
checks celeryd's against them). Reads JSON lines `{"expr", "tz", "last"}` on stdin (`expr` as
`crontab.from_string` takes it, `last` an ISO-8601 instant) and prints, for each, the instant
Celery's crontab runs next after `last` (ISO-8601, UTC), or the error."""

import json
import sys
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

from celery import Celery
from celery.schedules import crontab


def next_run(app, expr, last):
    minute, hour, day_of_month, month_of_year, day_of_week = expr.split()
    s = crontab(minute, hour, day_of_week, day_of_month, month_of_year, app=app)
    s.nowfun = lambda: last
    # The real time left (Celery computes it in UTC), added in real time, as beat sleeps it:
    # `last + remaining` would add it to the wall clock (Python's arithmetic between aware
    # datetimes of one zone).
    return last.astimezone(timezone.utc) + s.remaining_estimate(last)


def main():
    apps = {}
    for line in sys.stdin:
        q = json.loads(line)
        app = apps.get(q["tz"])
        if app is None:
            app = apps[q["tz"]] = Celery("crontab-check", set_as_current=False)
            app.conf.timezone = q["tz"]
            app.conf.enable_utc = True
        last = datetime.fromisoformat(q["last"]).astimezone(ZoneInfo(q["tz"]))
        try:
            out = next_run(app, q["expr"], last).astimezone(timezone.utc).isoformat()
        except Exception as e:  # the expression is refused: say so
            out = f"error: {e}"
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
