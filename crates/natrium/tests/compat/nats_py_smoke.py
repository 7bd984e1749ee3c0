"""Stock-client smoke test: nats-py (from PyPI) against a running Natrium with JetStream.

Usage: python3 nats_py_smoke.py nats://HOST:PORT
Covers core request-reply, JetStream publish, a durable pull consumer with explicit acks and a
wildcard filter (nats-py puts the filter in the create subject), an ordered consumer, a durable
push consumer, KV (history) and the object store. Prints "smoke ok" and exits 0 on success.
"""

import asyncio
import sys

import nats
from nats.js.api import StreamConfig

N = 2000


async def main(url):
    nc = await nats.connect(url)

    async def echo(msg):
        await msg.respond(b"re:" + msg.data)

    await nc.subscribe("svc.echo", cb=echo)
    reply = await nc.request("svc.echo", b"hi", timeout=5)
    assert reply.data == b"re:hi", reply.data

    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="SMK", subjects=["smk.>"]))
    for i in range(N):
        ack = await js.publish("smk.a", str(i).encode())
        assert ack.seq == i + 1, ack

    pull = await js.pull_subscribe("smk.>", durable="P")
    got = []
    while len(got) < N:
        for m in await pull.fetch(300, timeout=5):
            got.append(int(m.data))
            await m.ack()
    assert got == list(range(N)), "pull consumer order"

    ordered = await js.subscribe("smk.>", ordered_consumer=True)
    seen = [int((await ordered.next_msg(timeout=5)).data) for _ in range(N)]
    assert seen == list(range(N)), "ordered consumer order"

    push = await js.subscribe("smk.>", durable="PUSH", manual_ack=True)
    for i in range(N):
        m = await push.next_msg(timeout=5)
        assert int(m.data) == i
        await m.ack()

    kv = await js.create_key_value(bucket="cfg", history=5, ttl=60)
    await kv.put("a", b"1")
    await kv.put("a", b"2")
    assert (await kv.get("a")).value == b"2"
    assert len(await kv.history("a")) == 2

    obj = await js.create_object_store("files")
    await obj.put("x", b"y" * 300_000)
    assert (await obj.get("x")).data == b"y" * 300_000

    await nc.close()
    print("smoke ok")


asyncio.run(main(sys.argv[1]))
