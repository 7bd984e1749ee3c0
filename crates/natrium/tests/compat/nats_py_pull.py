"""Pull consumers, acks and KV watches as nats-py runs them, against a running Natrium.

Usage: python3 nats_py_pull.py nats://HOST:PORT
- A worker that fetches (3, timeout=30) and disconnects leaves no request behind: a second
  worker's fetch gets the messages published afterwards.
- ack_sync of a message, and a second synchronous ack of it, are both answered.
- A fetch with heartbeats on an idle consumer times out as a fetch timeout, not a hang.
- KV watch: the initial None marker after the current values (and at once on an empty bucket),
  then live updates, deletes and purges in order.
Prints "pull ok" and exits 0 on success.
"""

import asyncio
import sys

import nats
from nats.js.api import StreamConfig
from nats.js.errors import FetchTimeoutError
from nats.js.kv import KV_DEL, KV_PURGE


async def dead_worker(url):
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="WQ", subjects=["wq.>"]))

    gone = await nats.connect(url)
    gone_js = gone.jetstream()
    sub = await gone_js.pull_subscribe("wq.>", durable="workers")
    fetch = asyncio.ensure_future(sub.fetch(3, timeout=30))
    await asyncio.sleep(0.5)
    fetch.cancel()
    await gone.close()
    # Let the server see the connection go (a message published before that would still be
    # delivered to the dead request, with nats-server too).
    await asyncio.sleep(0.5)

    for i in range(3):
        await js.publish("wq.job", f"j{i}".encode())
    live = await js.pull_subscribe("wq.>", durable="workers")
    msgs = await live.fetch(3, timeout=5)
    assert [m.data for m in msgs] == [b"j0", b"j1", b"j2"], [m.data for m in msgs]

    # A synchronous ack is answered, and so is a second one of the same message.
    await msgs[0].ack_sync(timeout=2)
    again = await nc.request(msgs[0].reply, b"+ACK", timeout=2)
    assert again.data == b"", again.data
    for m in msgs[1:]:
        await m.ack_sync(timeout=2)

    # Heartbeats on an idle fetch: a fetch timeout, in time.
    try:
        await live.fetch(1, timeout=2, heartbeat=0.5)
        raise AssertionError("nothing to fetch")
    except (FetchTimeoutError, asyncio.TimeoutError):
        pass
    await nc.close()


async def kv_watch(url):
    nc = await nats.connect(url)
    js = nc.jetstream()
    kv = await js.create_key_value(bucket="watched", history=5)

    # Empty bucket: the marker comes at once.
    w = await kv.watchall()
    first = await asyncio.wait_for(w.updates(), 5)
    assert first is None, first
    await kv.put("a", b"1")
    e = await asyncio.wait_for(w.updates(), 5)
    assert (e.key, e.value) == ("a", b"1"), e
    await kv.delete("a")
    e = await asyncio.wait_for(w.updates(), 5)
    assert (e.key, e.operation) == ("a", KV_DEL), e
    await kv.put("b", b"2")
    await kv.purge("b")
    e = await asyncio.wait_for(w.updates(), 5)
    assert (e.key, e.value) == ("b", b"2"), e
    e = await asyncio.wait_for(w.updates(), 5)
    assert (e.key, e.operation) == ("b", KV_PURGE), e
    await w.stop()

    # Current values first, then the marker.
    await kv.put("c", b"3")
    await kv.put("c", b"4")
    w = await kv.watchall()
    seen = []
    while True:
        e = await asyncio.wait_for(w.updates(), 5)
        if e is None:
            break
        seen.append((e.key, e.value, e.operation))
    assert seen == [("a", b"", KV_DEL), ("b", b"", KV_PURGE), ("c", b"4", None)], seen
    await w.stop()
    assert sorted(await kv.keys()) == ["c"]
    hist = await kv.history("c")
    assert [h.value for h in hist] == [b"3", b"4"]
    await nc.close()


async def main(url):
    await dead_worker(url)
    await kv_watch(url)
    print("pull ok")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
