"""Stock-client test of the WebSocket listener: nats-py (from PyPI) over its ws:// transport
(aiohttp) against a running Natrium with JetStream.

Usage: python3 nats_py_ws.py ws://HOST:PORT
Covers request-reply, headers, a subscription receiving a payload larger than one read, JetStream
publish with acks and KV. Prints "ws ok" and exits 0 on success.
"""

import asyncio
import sys

import nats
from nats.js.api import StreamConfig


async def main(url):
    assert url.startswith("ws://"), url
    nc = await nats.connect(url)

    async def echo(msg):
        await nc.publish(msg.reply, b"re:" + msg.data, headers=msg.headers)

    await nc.subscribe("svc.echo", cb=echo)
    reply = await nc.request("svc.echo", b"hi", timeout=5, headers={"X-Id": "7"})
    assert reply.data == b"re:hi", reply.data
    assert reply.headers and reply.headers.get("X-Id") == "7", reply.headers

    sub = await nc.subscribe("big")
    payload = bytes(range(256)) * 1000
    await nc.publish("big", payload)
    msg = await sub.next_msg(timeout=5)
    assert msg.data == payload, len(msg.data)

    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="WSPY", subjects=["wspy.>"]))
    for i in range(200):
        ack = await js.publish("wspy.a", str(i).encode())
        assert ack.seq == i + 1, ack

    kv = await js.create_key_value(bucket="pyws")
    await kv.put("k", b"v1")
    await kv.put("k", b"v2")
    entry = await kv.get("k")
    assert entry.value == b"v2" and entry.revision == 2, entry

    await nc.drain()
    print("ws ok")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
