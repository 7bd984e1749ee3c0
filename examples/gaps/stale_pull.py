# A pull request whose client is gone: nats-server drops it; does the server still hand it messages?
import asyncio, sys, nats
async def main(url):
    nc = await nats.connect(url); js = nc.jetstream()
    try: await js.delete_stream("STALE")
    except Exception: pass
    await js.add_stream(name="STALE", subjects=["stale.>"])
    await js.add_consumer("STALE", durable_name="c", ack_policy="explicit", ack_wait=2)
    a = await nats.connect(url)
    sub = await a.jetstream().pull_subscribe_bind("c", stream="STALE")
    async def pull():
        try: await sub.fetch(10, timeout=30)   # a 30 s pull request, then the client dies
        except Exception: pass
    t = asyncio.create_task(pull())
    await asyncio.sleep(0.3); await a.close(); await t
    for i in range(10): await js.publish("stale.x", b"x")
    await asyncio.sleep(0.3)
    i = await js.consumer_info("STALE", "c")
    print("after publish: num_pending", i.num_pending, "num_ack_pending", i.num_ack_pending)
    b = await nc.jetstream().pull_subscribe_bind("c", stream="STALE")
    loop = asyncio.get_running_loop(); t0 = loop.time()
    msgs = await b.fetch(10, timeout=5)
    print("new client got", len(msgs), "after %.1fs, delivered counts" % (loop.time() - t0), sorted({m.metadata.num_delivered for m in msgs}))
    await nc.close()
asyncio.run(main(sys.argv[1]))
