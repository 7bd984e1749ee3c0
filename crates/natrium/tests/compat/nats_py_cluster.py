"""Stock-client cluster test: nats-py (from PyPI) against three clustered Natrium servers.

Usage: python3 nats_py_cluster.py nats://A nats://B nats://C
A client of A learns the other servers from INFO (connect_urls), messages and headers cross
the cluster, a queue group with members on every server gets each message once, and
request-reply works across servers. Prints "cluster ok" and exits 0 on success.
"""

import asyncio
import sys

import nats


async def main(a, b, c):
    na = await nats.connect(a, dont_randomize=True)
    nb = await nats.connect(b)
    nc = await nats.connect(c)
    known = set(na.discovered_servers_urls if hasattr(na, "discovered_servers_urls") else [])
    if not known:
        known = {f"{s.hostname}:{s.port}" for s in na.discovered_servers}
    for url in (b, c):
        hp = url.split("//", 1)[1]
        assert hp in known, f"{hp} not discovered: {known}"

    got = []
    done = asyncio.Event()

    async def on_msg(m):
        got.append((m.subject, m.data, m.headers))
        done.set()

    await nc.subscribe("orders.>", cb=on_msg)
    q = {"a": 0, "b": 0, "c": 0}
    seen = set()

    def member(name):
        async def cb(m):
            assert m.data not in seen, "twice"
            seen.add(m.data)
            q[name] += 1
        return cb

    for name, conn in (("a", na), ("b", nb), ("c", nc)):
        await conn.subscribe("jobs", queue="w", cb=member(name))

    async def svc(m):
        await m.respond(b"re:" + m.data)

    await nb.subscribe("svc.echo", cb=svc)
    for conn in (na, nb, nc):
        await conn.flush()
    # Interest crosses the cluster asynchronously.
    for _ in range(100):
        await na.publish("orders.probe", b"p")
        await na.flush()
        try:
            await asyncio.wait_for(done.wait(), 0.1)
            break
        except asyncio.TimeoutError:
            pass
    assert got, "no message crossed the cluster"
    got.clear()
    await na.publish("orders.eu", b"o1", headers={"Trace": "t1"})
    await na.flush()
    for _ in range(50):
        if got:
            break
        await asyncio.sleep(0.05)
    assert got[0] == ("orders.eu", b"o1", {"Trace": "t1"}), got

    await asyncio.sleep(0.3)
    for i in range(300):
        await na.publish("jobs", str(i).encode())
    await na.flush()
    for _ in range(100):
        if len(seen) == 300:
            break
        await asyncio.sleep(0.05)
    assert len(seen) == 300, (len(seen), q)
    assert all(v > 0 for v in q.values()), q

    r = await nc.request("svc.echo", b"hi", timeout=5)
    assert r.data == b"re:hi", r.data
    for conn in (na, nb, nc):
        await conn.close()
    print("cluster ok")


asyncio.run(main(*sys.argv[1:4]))
