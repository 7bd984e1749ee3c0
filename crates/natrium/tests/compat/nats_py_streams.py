"""Stock-client test of stream features as nats-py sends them (nats-py from PyPI).

Usage: python3 nats_py_streams.py nats://HOST:PORT
Covers a mirror and sources (with subject transforms) configured through nats-py's
StreamConfig/StreamSource, their info (lag), a stream subject transform, republish, per-message
TTLs (nats-py's msg_ttl), subject delete markers, counters (Nats-Incr, the PubAck's val) and a
KV bucket whose republish nats-py configures, and one with limit markers (a key's TTL
running out reaches its watcher as a purge). Prints "streams ok" and exits 0 on success.
"""

import asyncio
import sys

import nats
from nats.js.api import (
    KeyValueConfig,
    RePublish,
    StreamConfig,
    StreamSource,
    SubjectTransform,
)


async def until(cond, what, tries=100):
    for _ in range(tries):
        if await cond():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("never: " + what)


async def main(url):
    nc = await nats.connect(url)
    js = nc.jetstream()

    # A mirror and a source with a transform.
    await js.add_stream(StreamConfig(name="ORIG", subjects=["orig.>"]))
    for i in range(5):
        await js.publish(f"orig.{i}", str(i).encode())
    await js.add_stream(StreamConfig(name="MIR", mirror=StreamSource(name="ORIG")))
    await js.add_stream(
        StreamConfig(
            name="SRC",
            sources=[
                StreamSource(
                    name="ORIG",
                    subject_transforms=[SubjectTransform(src="orig.*", dest="copy.$1")],
                )
            ],
        )
    )

    async def mirrored():
        si = await js.stream_info("MIR")
        return si.state.messages == 5 and si.mirror is not None and si.mirror.lag == 0

    await until(mirrored, "mirror caught up")

    async def sourced():
        return (await js.stream_info("SRC")).state.messages == 5

    await until(sourced, "source caught up")
    m = await js.get_msg("SRC", seq=3)
    assert m.subject == "copy.2", m.subject
    assert m.headers["Nats-Stream-Source"].startswith("ORIG 3 "), m.headers

    # Subject transform and republish.
    await js.add_stream(
        StreamConfig(
            name="TR",
            subjects=["tr.>"],
            subject_transform=SubjectTransform(src="tr.*", dest="moved.{{wildcard(1)}}"),
            republish=RePublish(src="moved.>", dest="seen.>"),
        )
    )
    seen = await nc.subscribe("seen.>")
    await js.publish("tr.x", b"t")
    m = await js.get_msg("TR", seq=1)
    assert m.subject == "moved.x", m.subject
    rp = await seen.next_msg(timeout=5)
    assert rp.subject == "seen.x", rp.subject
    assert rp.headers["Nats-Stream"] == "TR" and rp.headers["Nats-Sequence"] == "1", rp.headers

    # Per-message TTLs as nats-py sends them, and subject delete markers.
    await js.add_stream(
        StreamConfig(
            name="TTL",
            subjects=["ttl.>"],
            allow_msg_ttl=True,
            max_age=1.0,
            subject_delete_marker_ttl=1.0,
        )
    )
    await js.publish("ttl.keep", b"k", msg_ttl=3600)
    await js.publish("ttl.gone", b"g", msg_ttl=1)

    async def marker():
        try:
            m = await js.get_last_msg("TTL", "ttl.gone")
        except nats.js.errors.NotFoundError:
            return False
        return m.headers is not None and m.headers.get("Nats-Marker-Reason") == "MaxAge"

    await until(marker, "a delete marker for ttl.gone", tries=50)

    # Counters.
    await js.add_stream(StreamConfig(name="CNT", subjects=["cnt.>"], allow_msg_counter=True))
    ack = await js.publish("cnt.a", b"", headers={"Nats-Incr": "40"})
    ack = await js.publish("cnt.a", b"", headers={"Nats-Incr": "2"})
    assert ack.val == "42", ack

    # KV with a republish (nats-py puts it in the bucket's stream config).
    kv = await js.create_key_value(
        KeyValueConfig(bucket="cfg", republish=RePublish(src="$KV.cfg.>", dest="kvrp.>"))
    )
    rps = await nc.subscribe("kvrp.>")
    await kv.put("a", b"1")
    rp = await rps.next_msg(timeout=5)
    assert rp.subject == "kvrp.a", rp.subject
    assert rp.data == b"1"

    # A KV bucket with limit markers: nats-py asks $JS.API.INFO for API level 1 first.
    info = await js.account_info()
    assert info.api.level == 2, info.api
    lm = await js.create_key_value(KeyValueConfig(bucket="lm", limit_marker_ttl=1.0))
    assert (await lm.status()).marker_ttl == 1.0
    w = await lm.watch("k")
    first = await w.updates(timeout=5)
    assert first is None, first  # nothing yet: the end of the initial values
    await lm.create("k", b"v", msg_ttl=1.0)
    put = await w.updates(timeout=5)
    assert put.operation is None and put.value == b"v", put
    gone = await w.updates(timeout=5)
    assert gone.operation == "PURGE", gone
    await w.stop()

    await nc.close()
    print("streams ok")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
