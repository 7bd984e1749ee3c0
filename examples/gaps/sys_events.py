# System events: nats-server publishes CONNECT/DISCONNECT per client and CLIENT.AUTH.ERR for a
# failed login in the system account; run against a server started with sys_events.conf.
import asyncio, sys, nats
async def main(url):
    s = await nats.connect(url, user="sys", password="sys")
    got = []
    async def cb(m): got.append(m.subject)
    await s.subscribe("$SYS.SERVER.*.CLIENT.AUTH.ERR", cb=cb)
    await s.subscribe("$SYS.ACCOUNT.*.CONNECT", cb=cb)
    await s.subscribe("$SYS.ACCOUNT.*.DISCONNECT", cb=cb)
    await s.flush()
    try:
        await nats.connect(url, user="a", password="wrong", max_reconnect_attempts=0, allow_reconnect=False)
    except Exception as e:
        pass
    ok = await nats.connect(url, user="a", password="a"); await ok.close()
    await asyncio.sleep(1)
    print(sorted(set(got)))
    await s.close()
asyncio.run(main(sys.argv[1]))
