"""Publishes one task message whose headers nest an array DEPTH levels deep (py-amqp, which
encodes recursively: run with a raised recursion limit in a thread with a large stack).

usage: deep_headers.py QUEUE DEPTH   (AMQP_URL names the broker)
"""

import os
import sys
import threading
from urllib.parse import urlparse

import amqp


def publish(queue, depth):
    url = urlparse(os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//"))
    value = None
    for _ in range(depth):
        value = [value]
    conn = amqp.Connection(
        f"{url.hostname}:{url.port or 5672}",
        userid=url.username or "guest",
        password=url.password or "guest",
    )
    conn.connect()
    channel = conn.channel()
    headers = {"task": "tasks.add", "id": f"deep-{depth}", "x-deep": value}
    message = amqp.Message(
        b"[[1, 2], {}, {}]", content_type="application/json", application_headers=headers
    )
    channel.basic_publish(message, exchange="", routing_key=queue)
    conn.close()
    print(f"published deep-{depth}", flush=True)


def main():
    sys.setrecursionlimit(10_000_000)
    threading.stack_size(1 << 29)
    worker = threading.Thread(target=publish, args=(sys.argv[1], int(sys.argv[2])))
    worker.start()
    worker.join()


if __name__ == "__main__":
    main()
