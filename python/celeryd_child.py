"""celeryd's Python child: runs a Celery app's own tasks through Celery's own tracer
(`celery.app.trace.fast_trace_task`) for a parent that plays Celery's MainProcess.

The parent (the Rust worker) consumes, reserves, enforces limits and acks; this process only
initialises the app as a prefork child does (celery/concurrency/prefork.py
`process_initializer`) and runs one task at a time. Results, retries, chains, links, chords
and user hooks are Celery's own: this process writes them, through the app's backend.

Frames on the pipe, both ways: a u32 little-endian length, then the payload, which is a u32
little-endian JSON length, the JSON header, and a raw blob (the task body, passed through
unchanged). fds 0 and 1 are taken for the frames at start; fd 1 then points at stderr, so
nothing a task prints can corrupt the pipe.

    python celeryd_child.py --app proj --hostname celery@host [--loglevel INFO]
                            [--workdir DIR] [--no-main-signals]

Parent to child: {"op": "run", "seq", "task", "id", "headers", "properties",
"delivery_info"} + body; {"op": "report", the same fields, "kind": {"name": "time_limit"
(with "timeout") | "worker_lost" (with "how") | "rejected" | "revoked" | "expired" |
"terminated" (with "signum") | "not_registered"}} + body, for the cases where Celery's
MainProcess writes the result itself; {"op": "mark_revoked", "ids"} for a remote revoke of
tasks this worker does not run; {"op": "exit"}.
Child to parent: {"op": "ready", "pid", "celery_version", "hostname", "tasks", "conf"} once,
or {"op": "error", "error": traceback} when the app cannot be loaded; then {"op": "done",
"seq", "state", ...} per run, and {"op": "reported", "seq", "kind", "ack": "ack" | "reject" |
"requeue" | null, "events": [...]} per report.

With --fork-server the process is instead a fork server (the role of Celery's MainProcess
before it forks its pool): it loads the app once (imports its task modules, fires
`celeryd_init` and `worker_init`), freezes what it loaded for the garbage collector, says
`ready` (tasks, conf) on its control socket (fds 0 and 1), and then forks a child per
{"op": "fork", "seq"} frame that comes with a socket (SCM_RIGHTS): the child initialises as a
forked prefork child does and speaks the frames above on that socket, starting with a short
{"op": "ready", "pid"}. It answers {"op": "forked", "seq", "pid"} (or "fork_failed" with an
"error") and reports each child's end as {"op": "exited", "pid", "status"} (the raw wait
status). Forked children share the app's pages with it, copy on write.
"""

import argparse
import gc
import json
import logging
import os
import select
import signal
import socket
import struct
import sys
import time
import traceback

# The frame pipes, taken before anything can write to fd 1.
_IN = os.fdopen(os.dup(0), "rb", buffering=1 << 16)
_OUT_FD = os.dup(1)
os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
os.dup2(2, 1)
sys.stdout = sys.stderr

# What the parent needs to know of each task (python-child.md, section 7).
TASK_ATTRS = (
    "acks_late",
    "acks_on_failure_or_timeout",
    "reject_on_worker_lost",
    "ignore_result",
    "store_errors_even_if_ignored",
    "time_limit",
    "soft_time_limit",
    "rate_limit",
    "send_events",
    "max_retries",
    "default_retry_delay",
    "track_started",
)


def finite(obj):
    """`obj` with floats JSON has no words for (inf, nan: some Celery defaults) as strings."""
    if isinstance(obj, float) and (obj != obj or obj in (float("inf"), float("-inf"))):
        return repr(obj)
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def write_frame(header, blob=b""):
    data = json.dumps(header, default=repr).encode()
    payload = struct.pack("<I", len(data)) + data + blob
    frame = struct.pack("<I", len(payload)) + payload
    view = memoryview(frame)
    while view:
        n = os.write(_OUT_FD, view)
        view = view[n:]


def read_exact(n):
    data = _IN.read(n)
    if data is None or len(data) < n:
        return None
    return data


def read_frame():
    head = read_exact(4)
    if head is None:
        return None, b""
    (length,) = struct.unpack("<I", head)
    payload = read_exact(length)
    if payload is None or length < 4:
        return None, b""
    (json_len,) = struct.unpack("<I", payload[:4])
    header = json.loads(payload[4 : 4 + json_len])
    return header, payload[4 + json_len :]


def load_app(opts, fresh):
    """What Celery's MainProcess does before it starts its pool: find the app and import its
    task modules; in a fresh interpreter (no fork server), as a spawned prefork child does."""
    if fresh:
        os.environ["FORKED_BY_MULTIPROCESSING"] = "1"
    from celery import signals
    from celery.app import base as app_base
    from celery.app.utils import find_app
    from celery.utils.imports import cwd_in_path

    if fresh:
        app_base.USING_EXECV = True
    with cwd_in_path():
        app = find_app(opts.app)
    app.loader.init_worker()
    # As Celery's WorkController.setup_includes: a worker names its includes in the conf.
    app.conf.include = tuple(app.conf.include)
    if opts.main_signals:
        # Emulated: what users connect to them (the Django fixup's worker_init) runs once in
        # the fork server, as in Celery's MainProcess, or once per fresh child.
        signals.celeryd_init.send(
            sender=opts.hostname, instance=None, conf=app.conf, options={}
        )
        signals.worker_init.send(sender=None)
    return app


def init_child(app, opts):
    """Celery's prefork child initialiser (celery/concurrency/prefork.py), then billiard's
    signal set-up for a pool process."""
    from celery import platforms, signals
    from celery.app import trace
    from celery.worker import state as worker_state

    platforms.set_pdeathsig("SIGKILL")
    from celery import result

    result._set_task_join_will_block(True)
    platforms.signals.reset("SIGTERM", "SIGHUP", "SIGTTIN", "SIGTTOU", "SIGUSR1")
    platforms.signals.ignore("SIGINT")
    platforms.set_mp_process_title("celeryd", hostname=opts.hostname)
    app.loader.init_worker_process()
    app.log.setup(opts.loglevel, None, False, "WARNING", hostname=opts.hostname)
    trace.setup_worker_optimizations(app, opts.hostname)
    for name, task in app.tasks.items():
        task.__trace__ = trace.build_tracer(
            name, task, app.loader, opts.hostname, app=app
        )
    worker_state.reset_state()
    signals.worker_process_init.send(sender=opts.hostname)
    signal.signal(signal.SIGUSR1, soft_timeout)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # As in a billiard child: TERM (a hard time limit's first step, or a revoke's terminate)
    # raises SystemExit, so `finally` blocks and task_postrun still run before the KILL.
    signal.signal(signal.SIGTERM, exit_on_term)
    # What is loaded by now lives as long as the process: leave it out of every collection
    # (a full one would walk the whole app each time; after a fork it would also copy the
    # fork server's pages).
    gc.freeze()
    return app


def exit_on_term(signum, frame):
    raise SystemExit(128 + signum)


# True only while a task runs in the tracer: a soft limit (SIGUSR1) that comes at any other
# time is for a task that has already ended, and is dropped. The parent sends it before it
# writes the next task's frame, and Python runs a pending handler at the next function call
# after the read that brings that frame returns, i.e. before this is set again.
_IN_TASK = False


def soft_timeout(signum, frame):
    if not _IN_TASK:
        return
    from billiard.exceptions import SoftTimeLimitExceeded

    raise SoftTimeLimitExceeded()


def task_meta(app):
    tasks = {}
    for name, task in sorted(app.tasks.items()):
        meta = {attr: getattr(task, attr, None) for attr in TASK_ATTRS}
        request = getattr(task, "Request", None)
        meta["Request"] = request if isinstance(request, str) else repr(request)
        tasks[name] = meta
    return tasks


def conf_meta(app):
    """The settings the app changed from Celery's defaults (the parent maps the worker ones
    onto its own and names the rest), with the broker URL resolved and the queues spelt out."""
    conf = app.conf
    changed = conf.table(with_defaults=False, censored=False)
    out = {
        k: sorted(v, key=str) if isinstance(v, (set, frozenset)) else v
        for k, v in changed.items()
        if not callable(v)
    }
    if ";" in str(conf.broker_url or ""):
        # A failover list: all of it (kombu's as_uri would give the first URL only).
        out["broker_url"] = str(conf.broker_url)
    elif "broker_url" in changed or os.environ.get("CELERY_BROKER_URL"):
        # The real URL: the parent connects with it (the pipe is private; it masks it).
        try:
            out["broker_url"] = app.connection_for_write().as_uri(include_password=True)
        except Exception:  # a transport kombu cannot load here: the parent names it
            out["broker_url"] = str(conf.broker_url)
    if conf.task_queues:
        # As Celery's worker will declare them: app.amqp.queues has Celery's defaults filled
        # in (the default exchange, task_queue_max_priority).
        out["task_queues"] = [queue_meta(q) for q in app.amqp.queues.values()]
    if conf.beat_schedule:
        out["beat_schedule"] = {
            str(name): beat_entry_meta(entry) for name, entry in conf.beat_schedule.items()
        }
    return out


def beat_entry_meta(entry):
    """One `beat_schedule` entry as the parent's `[beat.schedule.<name>]` takes it: the
    schedule as `every` (seconds) or `crontab` (five fields), else `unsupported` naming it."""
    from datetime import timedelta

    from celery.schedules import crontab, schedule

    def field(v):
        if isinstance(v, (set, frozenset, list, tuple)):
            return ",".join(str(x) for x in sorted(v))
        return str(v)

    out = {
        "task": entry.get("task"),
        "args": list(entry.get("args") or ()),
        "kwargs": dict(entry.get("kwargs") or {}),
        "options": dict(entry.get("options") or {}),
    }
    when = entry.get("schedule")
    if isinstance(when, bool):
        out["unsupported"] = repr(when)
    elif isinstance(when, (int, float)):
        out["every"] = float(when)
    elif isinstance(when, timedelta):
        out["every"] = when.total_seconds()
    elif isinstance(when, crontab):
        out["crontab"] = " ".join(
            field(v)
            for v in (
                when._orig_minute,
                when._orig_hour,
                when._orig_day_of_month,
                when._orig_month_of_year,
                when._orig_day_of_week,
            )
        )
    elif isinstance(when, schedule):
        out["every"] = when.run_every.total_seconds()
        if getattr(when, "relative", False):
            out["unsupported"] = "schedule(relative=True)"
    else:
        out["unsupported"] = type(when).__name__ + " " + repr(when)
    return out


def queue_meta(q):
    """One kombu Queue as the parent's `[[task.queues]]` entry takes it."""
    def exchange_of(e):
        return (e.name, e.type) if e is not None else (None, None)

    name, kind = exchange_of(q.exchange)
    return {
        "name": q.name,
        "exchange": name,
        "exchange_type": kind,
        "routing_key": q.routing_key,
        "queue_arguments": q.queue_arguments,
        "bindings": [
            {
                "exchange": exchange_of(b.exchange)[0],
                "exchange_type": exchange_of(b.exchange)[1],
                "routing_key": b.routing_key,
                "arguments": b.arguments,
            }
            for b in q.bindings
        ],
        "durable": q.durable,
        "auto_delete": q.auto_delete,
        "exclusive": q.exclusive,
    }


def inspect_meta(app):
    """What `inspect conf` and `inspect report` answer with for this app, as Celery's own
    worker builds them (celery/worker/control.py)."""
    from kombu.utils.encoding import safe_repr
    from celery.utils.serialization import jsonify

    def table(with_defaults):
        # Censoring the unset default URLs makes kombu warn "No hostname was supplied":
        # noise at every start, for a table nobody asked for yet.
        quiet = logging.getLogger("kombu.connection")
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            return jsonify(
                app.conf.table(with_defaults=with_defaults),
                keyfilter=lambda k: isinstance(k, str) and not k.startswith("__"),
                unknown_type_filter=safe_repr,
            )
        except Exception as exc:  # a URL kombu cannot censor: the parent decides
            return {"error": "cannot list the configuration: %r" % (exc,)}
        finally:
            quiet.setLevel(level)

    try:
        report = app.bugreport()
    except Exception as exc:
        report = "bugreport failed: %r" % (exc,)
    return {"conf": table(False), "conf_defaults": table(True), "report": report}


def request_dict(frame, hostname):
    """The request dict MainProcess would build (celery/worker/request.py)."""
    headers = dict(frame.get("headers") or {})
    props = dict(frame.get("properties") or {})
    props["application_headers"] = dict(headers)
    info = frame.get("delivery_info") or {}
    req = headers
    req.update(
        properties=props,
        reply_to=props.get("reply_to"),
        correlation_id=props.get("correlation_id"),
        hostname=hostname,
        delivery_info={
            "exchange": info.get("exchange"),
            "routing_key": info.get("routing_key"),
            "priority": props.get("priority"),
            "redelivered": info.get("redelivered", False),
        },
    )
    return req


def outcome(failed, retval, runtime):
    from celery.exceptions import Ignore, Reject, Retry

    from billiard.einfo import ExceptionWithTraceback

    if not failed:
        return {"state": "SUCCESS", "retstr": retval, "runtime": runtime}
    exc = getattr(retval, "exception", None)
    if isinstance(exc, ExceptionWithTraceback):  # billiard's pickling wrapper
        exc = exc.exc
    info = {
        "exc_type": type(exc).__name__,
        "exc_module": type(exc).__module__,
        "exc_repr": repr(exc),
        "traceback": getattr(retval, "traceback", None),
        "internal": bool(getattr(retval, "internal", False)),
    }
    if isinstance(exc, Retry):
        return dict(info, state="RETRY", when=repr(getattr(exc, "when", None)))
    if isinstance(exc, Ignore):
        return dict(info, state="IGNORED")
    if isinstance(exc, Reject):
        return dict(info, state="REJECTED", requeue=bool(exc.requeue), reason=exc.reason)
    return dict(info, state="FAILURE")


class _Decision:
    """What Celery's Request decided, captured instead of done (the parent acts on it)."""

    def __init__(self):
        self.ack = None
        self.events = []
        self.enabled = True  # as an eventer

    def on_ack(self, logger, connection_errors):
        self.ack = self.ack or "ack"

    def on_reject(self, logger, connection_errors, requeue=False):
        self.ack = "requeue" if requeue else "reject"

    def send(self, type, **fields):
        self.events.append(dict(fields, type=type))


def _einfo(exc):
    from billiard.einfo import ExceptionInfo

    try:
        raise exc
    except BaseException:
        return ExceptionInfo()


def report(app, frame, body, hostname):
    """The cases where Celery's MainProcess writes a result itself (python-child.md,
    section 3): the task's own Request methods run here, so chords, errbacks, chain failure
    propagation and user hooks are Celery's; the ack/reject decision and the events are
    captured and returned for the parent to carry out. The hard-limit failure path runs
    once (Celery 5.7 runs it twice)."""
    from billiard.exceptions import TimeLimitExceeded, WorkerLostError
    from celery.app.task import Context
    from celery.exceptions import NotRegistered, Reject
    from kombu.message import Message
    from kombu.utils.imports import symbol_by_name

    kind = frame.get("kind") or {}
    name = kind.get("name")
    headers = dict(frame.get("headers") or {})
    headers.pop("compression", None)  # the body comes decompressed
    props = dict(frame.get("properties") or {})
    decision = _Decision()
    if name == "not_registered" or frame.get("task") not in app.tasks:
        context = Context(
            id=frame.get("id"),
            reply_to=props.get("reply_to"),
            correlation_id=props.get("correlation_id"),
        )
        app.backend.mark_as_failure(
            frame.get("id"), NotRegistered(frame.get("task")), request=context
        )
        return {"kind": "not_registered", "ack": "reject", "events": []}
    props["application_headers"] = dict(headers)
    info = frame.get("delivery_info") or {}
    message = Message(
        body=body,
        delivery_tag=0,
        content_type=props.get("content_type", "application/json"),
        content_encoding=props.get("content_encoding", "utf-8"),
        delivery_info=info,
        properties=props,
        headers=headers,
    )
    task = app.tasks[frame["task"]]
    request_cls = task.Request
    if isinstance(request_cls, str):
        request_cls = symbol_by_name(request_cls)
    req = request_cls(
        message,
        on_ack=decision.on_ack,
        on_reject=decision.on_reject,
        hostname=hostname,
        eventer=decision,
        app=app,
        task=task,
    )
    if name == "time_limit":
        req.on_failure(_einfo(TimeLimitExceeded(kind.get("timeout"))), return_ok=False)
    elif name == "worker_lost":
        how = kind.get("how") or "signal 9 (SIGKILL)"
        req.on_failure(_einfo(WorkerLostError(f"Worker exited prematurely: {how}.")))
    elif name == "rejected":
        req.on_failure(_einfo(Reject(kind.get("reason"), requeue=False)))
    elif name in ("revoked", "expired"):
        req._announce_revoked(name, False, None, name == "expired")
    elif name == "terminated":
        req._announce_revoked("terminated", True, str(kind.get("signum")), False)
    elif name == "internal":
        req.on_failure(_einfo(RuntimeError(kind.get("reason"))))
    else:
        return {"kind": name, "error": f"unknown report kind {name!r}"}
    return {"kind": name, "ack": decision.ack, "events": decision.events}


def mark_revoked(app, ids):
    """A remote revoke of tasks this worker is not running (Celery's worker/control.py
    `_revoke`): REVOKED in the backend, unless the task has a result already or another
    worker has started it."""
    from celery import states

    marked = []
    for task_id in ids:
        try:
            state = app.backend.get_state(task_id)
            if state in states.READY_STATES:
                continue
            if state not in (states.PENDING, states.RECEIVED, states.RETRY, states.REJECTED):
                continue
            app.backend.mark_as_revoked(task_id, reason="revoked", store_result=True)
            marked.append(task_id)
        except Exception as exc:
            import logging

            logging.getLogger("celery.worker.control").warning(
                "Failed to mark task %s as revoked in backend: %s", task_id, exc
            )
    return {"kind": "mark_revoked", "marked": marked}


def serve(app, opts):
    from celery import signals
    from celery.app import trace

    global _IN_TASK
    while True:
        frame, body = read_frame()
        if frame is None or frame.get("op") == "exit":
            break
        if frame.get("op") == "mark_revoked":
            out = mark_revoked(app, frame.get("ids") or [])
            write_frame(dict(out, op="reported", seq=frame.get("seq")))
            continue
        if frame.get("op") == "report":
            try:
                out = report(app, frame, body, opts.hostname)
            except BaseException as exc:
                out = {"kind": (frame.get("kind") or {}).get("name"), "error": repr(exc),
                       "traceback": traceback.format_exc()}
            write_frame(dict(out, op="reported", seq=frame.get("seq")))
            continue
        if frame.get("op") != "run":
            write_frame({"op": "done", "seq": frame.get("seq"), "state": "UNKNOWN_OP"})
            continue
        props = frame.get("properties") or {}
        req = request_dict(frame, opts.hostname)
        started = time.monotonic()
        _IN_TASK = True
        try:
            failed, retval, runtime = trace.fast_trace_task(
                frame["task"],
                frame["id"],
                req,
                body,
                props.get("content_type", "application/json"),
                props.get("content_encoding", "utf-8"),
            )
            _IN_TASK = False
            out = outcome(failed, retval, runtime)
        except (SystemExit, KeyboardInterrupt):
            write_frame({"op": "done", "seq": frame.get("seq"), "state": "EXIT"})
            raise
        except BaseException as exc:  # raised out of the tracer: nothing was stored
            out = {
                "state": "FAILURE",
                "escaped": True,
                "exc_type": type(exc).__name__,
                "exc_module": type(exc).__module__,
                "exc_repr": repr(exc),
                "traceback": traceback.format_exc(),
            }
        finally:
            _IN_TASK = False
        out.setdefault("runtime", time.monotonic() - started)
        write_frame(dict(out, op="done", seq=frame.get("seq")))
    signals.worker_process_shutdown.send(
        sender=opts.hostname, pid=os.getpid(), exitcode=0
    )


def hello(app, opts):
    """The `ready` frame of the first Python process: the app's tasks and configuration."""
    import celery

    return finite({
        "op": "ready",
        "pid": os.getpid(),
        "celery_version": celery.__version__,
        "hostname": opts.hostname,
        "tasks": task_meta(app),
        "conf": conf_meta(app),
        "inspect": inspect_meta(app),
    })


def use_link(fd):
    """Makes `fd` (a socket the fork server received for this child) the frame pipe."""
    global _IN, _OUT_FD
    _IN.close()
    os.close(_OUT_FD)
    _IN = os.fdopen(fd, "rb", buffering=1 << 16)
    _OUT_FD = os.dup(fd)


def forked_child(app, opts, fd, closing):
    """A child just forked by the fork server: never returns."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for other in closing:
            os.close(other)
        use_link(fd)
        os.setpgid(0, 0)
        try:
            init_child(app, opts)
            write_frame({"op": "ready", "pid": os.getpid()})
        except BaseException:
            write_frame({"op": "error", "error": traceback.format_exc()})
            code = 78
            return
        serve(app, opts)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stderr.flush()
        finally:
            os._exit(code)


def fork_server(app, opts):
    """Forks children on request (see the module's docstring) until the socket closes."""
    from celery import platforms

    platforms.set_pdeathsig("SIGKILL")
    platforms.set_mp_process_title("celeryd", info="fork server", hostname=opts.hostname)
    ctl = socket.socket(fileno=os.dup(_IN.fileno()))
    ctl.setblocking(True)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    os.set_blocking(wake_r, False)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    gc.freeze()  # the loaded app stays in shared pages: no collection touches it
    buf, fds = b"", []

    def reap():
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            write_frame({"op": "exited", "pid": pid, "status": status})

    while True:
        ready, _, _ = select.select([ctl, wake_r], [], [])
        if wake_r in ready:
            try:
                while os.read(wake_r, 512):
                    pass
            except BlockingIOError:
                pass
            reap()
        if ctl not in ready:
            continue
        data, got, _, _ = socket.recv_fds(ctl, 1 << 16, 16)
        fds.extend(got)
        if not data:
            break
        buf += data
        while len(buf) >= 4:
            (length,) = struct.unpack("<I", buf[:4])
            if len(buf) < 4 + length:
                break
            payload, buf = buf[4 : 4 + length], buf[4 + length :]
            (json_len,) = struct.unpack("<I", payload[:4])
            header = json.loads(payload[4 : 4 + json_len])
            if header.get("op") != "fork" or not fds:
                write_frame({"op": "fork_failed", "seq": header.get("seq"),
                             "error": "expected a fork frame with a socket"})
                continue
            fd = fds.pop(0)
            try:
                pid = os.fork()
            except OSError as exc:
                os.close(fd)
                write_frame({"op": "fork_failed", "seq": header.get("seq"),
                             "error": repr(exc)})
                continue
            if pid == 0:
                forked_child(app, opts, fd, [ctl.detach(), wake_r, wake_w] + fds)
            os.close(fd)
            write_frame({"op": "forked", "seq": header.get("seq"), "pid": pid})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--app", required=True)
    parser.add_argument("--hostname", required=True)
    parser.add_argument("--loglevel", default="WARNING")
    parser.add_argument("--workdir")
    parser.add_argument(
        "--no-main-signals", dest="main_signals", action="store_false"
    )
    parser.add_argument("--fork-server", action="store_true")
    opts = parser.parse_args()
    if opts.workdir:
        os.chdir(opts.workdir)
    try:
        app = load_app(opts, fresh=not opts.fork_server)
        if not opts.fork_server:
            init_child(app, opts)
        write_frame(hello(app, opts))
    except BaseException:
        write_frame({"op": "error", "error": traceback.format_exc()})
        return 78
    if opts.fork_server:
        fork_server(app, opts)
    else:
        serve(app, opts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
