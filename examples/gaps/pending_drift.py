# num_pending drift repro: a caught-up pull consumer, messages published one by one while it
# waits; after every message is delivered and acked, consumer info should say num_pending 0.
import asyncio, sys, nats
async def main(url):
    nc = await nats.connect(url)
    js = nc.jetstream()
    try: await js.delete_stream("DRIFT")
    except Exception: pass
    await js.add_stream(name="DRIFT", subjects=["drift.>"])
    sub = await js.pull_subscribe("drift.>", durable="c", stream="DRIFT")
    async def consume():
        got = 0
        while got < 2000:
            try:
                msgs = await sub.fetch(100, timeout=2)
            except asyncio.TimeoutError:
                continue
            for m in msgs:
                await m.ack(); got += 1
    task = asyncio.create_task(consume())
    for i in range(2000):
        await js.publish(f"drift.{i%7}", b"x")
    await task
    await asyncio.sleep(0.5)
    info = await js.consumer_info("DRIFT", "c")
    print("delivered", info.delivered.stream_seq, "ack_floor", info.ack_floor.stream_seq, "num_pending", info.num_pending, "num_ack_pending", info.num_ack_pending)
    await nc.close()
asyncio.run(main(sys.argv[1]))
