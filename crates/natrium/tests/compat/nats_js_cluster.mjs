// Stock-client cluster test: nats.js (npm `nats` v2) against three clustered Natrium servers.
// Usage: node nats_js_cluster.mjs nats://A nats://B nats://C
// A client of A learns the others from INFO (connect_urls), messages and headers cross the
// cluster, a queue group with members on every server gets each message once, request-reply
// works across servers. Prints "cluster ok" on success.
import { connect, StringCodec, headers } from "nats";
const sc = StringCodec();
const [a, b, c] = process.argv.slice(2, 5);
const na = await connect({ servers: a });
const nb = await connect({ servers: b });
const nc = await connect({ servers: c });
const urls = na.info.connect_urls || [];
for (const u of [b, c]) {
  const hp = u.split("//")[1];
  if (!urls.includes(hp)) throw new Error(`${hp} not in ${urls}`);
}
const got = [];
(async () => { for await (const m of nc.subscribe("orders.>")) got.push(m); })();
const seen = new Set();
const counts = { a: 0, b: 0, c: 0 };
for (const [name, conn] of [["a", na], ["b", nb], ["c", nc]]) {
  (async () => {
    for await (const m of conn.subscribe("jobs", { queue: "w" })) {
      const k = sc.decode(m.data);
      if (seen.has(k)) throw new Error("twice " + k);
      seen.add(k); counts[name]++;
    }
  })();
}
(async () => { for await (const m of nb.subscribe("svc.echo")) m.respond(sc.encode("re:" + sc.decode(m.data))); })();
for (const conn of [na, nb, nc]) await conn.flush();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
for (let i = 0; i < 100 && got.length === 0; i++) {
  na.publish("orders.probe", sc.encode("p"));
  await na.flush();
  await sleep(100);
}
if (got.length === 0) throw new Error("no message crossed the cluster");
got.length = 0;
const h = headers();
h.set("Trace", "t1");
na.publish("orders.eu", sc.encode("o1"), { headers: h });
await na.flush();
for (let i = 0; i < 50 && got.length === 0; i++) await sleep(50);
if (got.length !== 1 || got[0].subject !== "orders.eu" || got[0].headers.get("Trace") !== "t1") {
  throw new Error("headers across the cluster");
}
await sleep(300);
for (let i = 0; i < 300; i++) na.publish("jobs", sc.encode(String(i)));
await na.flush();
for (let i = 0; i < 100 && seen.size < 300; i++) await sleep(50);
if (seen.size !== 300) throw new Error(`queue: ${seen.size} ${JSON.stringify(counts)}`);
if (!Object.values(counts).every((n) => n > 0)) throw new Error(JSON.stringify(counts));
const r = await nc.request("svc.echo", sc.encode("hi"), { timeout: 5000 });
if (sc.decode(r.data) !== "re:hi") throw new Error("echo");
for (const conn of [na, nb, nc]) await conn.close();
console.log("cluster ok");
