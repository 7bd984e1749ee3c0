// Stock-client smoke test: nats.js (npm `nats` v2) against a running Natrium with JetStream.
// Usage: node nats_js_smoke.mjs nats://HOST:PORT (after `npm install` in this directory).
// Covers core request-reply, JetStream publish, a durable pull consumer (consume, explicit acks,
// wildcard filter), fetch, an ordered consumer, KV (history: an ordered push consumer created
// with an empty name) and the object store. Prints "smoke ok" on success.
import { connect, StringCodec, AckPolicy, DeliverPolicy } from "nats";
const sc = StringCodec();
const N = 2000;
const nc = await connect({ servers: process.argv[2] });
// core request-reply
const sub = nc.subscribe("svc.echo");
(async () => { for await (const m of sub) m.respond(sc.encode("re:" + sc.decode(m.data))); })();
const r = await nc.request("svc.echo", sc.encode("hi"), { timeout: 5000 });
if (sc.decode(r.data) !== "re:hi") throw new Error("echo");
const jsm = await nc.jetstreamManager();
await jsm.streams.add({ name: "SMK", subjects: ["smk.>"] });
const js = nc.jetstream();
for (let i = 0; i < N; i++) {
  const pa = await js.publish("smk.a", sc.encode(String(i)));
  if (pa.seq !== i + 1) throw new Error("seq " + pa.seq);
}
// pull consumer (consume API, explicit acks, wildcard filter)
await jsm.consumers.add("SMK", { durable_name: "P", ack_policy: AckPolicy.Explicit, filter_subject: "smk.>" });
const c = await js.consumers.get("SMK", "P");
let got = 0;
const iter = await c.consume({ max_messages: 300 });
for await (const m of iter) {
  if (Number(sc.decode(m.data)) !== got) throw new Error("order " + got);
  m.ack(); got++;
  if (got === N) break;
}
// fetch
await jsm.consumers.add("SMK", { durable_name: "F", ack_policy: AckPolicy.Explicit });
const f = await js.consumers.get("SMK", "F");
let fetched = 0;
while (fetched < N) {
  const batch = await f.fetch({ max_messages: 500, expires: 5000 });
  for await (const m of batch) { m.ack(); fetched++; }
}
// ordered consumer
const oc = await js.consumers.get("SMK");
const oiter = await oc.consume();
let seen = 0;
for await (const m of oiter) { if (Number(sc.decode(m.data)) !== seen) throw new Error("ordered"); seen++; if (seen === N) break; }
// KV
const kv = await js.views.kv("cfg", { history: 5, ttl: 60000 });
await kv.put("a", sc.encode("1")); await kv.put("a", sc.encode("2"));
const e = await kv.get("a"); if (sc.decode(e.value) !== "2") throw new Error("kv");
const h = await kv.history({ key: "a" }); let hn = 0; for await (const _ of h) hn++; if (hn !== 2) throw new Error("history " + hn);
// object store
const os = await js.views.os("files");
const data = new Uint8Array(300000).fill(121);
await os.putBlob({ name: "x" }, data);
const back = await os.getBlob("x"); if (back.length !== 300000) throw new Error("os");
await nc.drain();
console.log("smoke ok");
