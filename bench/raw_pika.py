"""Raw baseline: pika publish (no confirms) and consume (prefetch 1000, manual ack).

Runs without eventlet, as a load generator would. Prints one JSON line.
Usage: python bench/raw_pika.py [AMQP_URI] [COUNT]
"""

from __future__ import annotations

import json
import sys
import time

import pika

BODY = b"x" * 217  # the size ARCHITECTURE.md's baseline used


def main() -> None:
    uri = sys.argv[1] if len(sys.argv) > 1 else "amqp://guest:guest@127.0.0.1:5672/%2F"
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 20000
    conn = pika.BlockingConnection(pika.URLParameters(uri))
    channel = conn.channel()
    queue = "bench.raw-pika"
    channel.queue_delete(queue)
    channel.queue_declare(queue, durable=True)
    props = pika.BasicProperties(delivery_mode=2, content_type="application/json")
    start = time.perf_counter()
    for _ in range(count):
        channel.basic_publish("", queue, BODY, props)
    # Publishes are asynchronous: wait until the broker has them all before stopping the clock.
    while channel.queue_declare(queue, durable=True, passive=True).method.message_count < count:
        conn.process_data_events(0.001)
    publish_rate = count / (time.perf_counter() - start)

    channel.basic_qos(prefetch_count=1000)
    received = 0
    start = time.perf_counter()
    for method, _props, _body in channel.consume(queue, inactivity_timeout=5):
        if method is None:
            break
        received += 1
        channel.basic_ack(method.delivery_tag)
        if received == count:
            break
    consume_rate = received / (time.perf_counter() - start)
    channel.cancel()
    channel.queue_delete(queue)
    conn.close()
    print(json.dumps({"pika_publish_per_s": round(publish_rate),
                      "pika_consume_per_s": round(consume_rate), "messages": count}))


if __name__ == "__main__":
    main()
