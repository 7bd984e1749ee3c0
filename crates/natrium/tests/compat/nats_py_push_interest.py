"""nats-py push subscriptions against a Natrium whose push consumers never poll for interest.

Usage: python3 nats_py_push_interest.py nats://HOST:PORT
nats-py's js.subscribe creates the consumer first and subscribes to its deliver subject
afterwards, so the consumer starts with nobody listening. A plain push subscription and an
ordered consumer (their idle heartbeat and inactivity check a minute away, so no other tick
finds the interest) must each get the stored message within 10 s, and the ordered consumer a
new one after it. Prints
"push interest ok" and exits 0 on success.
"""

import asyncio
import sys

import nats
from nats.js.api import StreamConfig

WITHIN = 10


async def main(url):
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="PUSHI", subjects=["pushi.>"]))
    await js.publish("pushi.a", b"one")

    plain = await js.subscribe("pushi.a", inactive_threshold=60)
    msg = await plain.next_msg(timeout=WITHIN)
    assert msg.data == b"one", msg.data
    await plain.unsubscribe()

    ordered = await js.subscribe(
        "pushi.a", ordered_consumer=True, idle_heartbeat=60, inactive_threshold=60
    )
    msg = await ordered.next_msg(timeout=WITHIN)
    assert msg.data == b"one", msg.data
    await js.publish("pushi.a", b"two")
    msg = await ordered.next_msg(timeout=WITHIN)
    assert msg.data == b"two", msg.data
    await ordered.unsubscribe()

    await nc.close()
    print("push interest ok")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
