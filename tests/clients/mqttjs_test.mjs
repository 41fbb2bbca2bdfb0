// MQTT.js (the npm package "mqtt", 5.x) against a running roost.
// Env: ROOST_TCP_PORT, ROOST_WS_PORT, optional ROOST_TLS_PORT, ROOST_WSS_PORT,
// ROOST_CA, and RUN_ID. Prints one "ok - NAME" / "not ok - NAME: why" line per
// check, for protocol versions 4 (3.1.1) and 5 over TCP and WebSocket (and
// TLS/WSS when given).
import fs from 'node:fs';
import { createRequire } from 'node:module';
import mqtt from 'mqtt';

const WAIT_MS = 10_000;
const env = process.env;
const RUN = env.RUN_ID;
const ca = env.ROOST_CA ? fs.readFileSync(env.ROOST_CA) : undefined;
const version = createRequire(import.meta.url)('mqtt/package.json').version;
if (!version.startsWith('5.')) throw new Error(`mqtt ${version}, expected 5.x`);

const urls = {
  tcp: `mqtt://127.0.0.1:${env.ROOST_TCP_PORT}`,
  ws: `ws://127.0.0.1:${env.ROOST_WS_PORT}/mqtt`,
};
if (ca) {
  urls.tls = `mqtts://127.0.0.1:${env.ROOST_TLS_PORT}`;
  urls.wss = `wss://127.0.0.1:${env.ROOST_WSS_PORT}/mqtt`;
}

class Check extends Error {}

let nextId = 0;
const open = [];

function within(promise, what) {
  let timer;
  const limit = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Check(`timed out: ${what}`)), WAIT_MS);
  });
  return Promise.race([promise, limit]).finally(() => clearTimeout(timer));
}

async function connect(transport, protocolVersion, extra = {}) {
  const client = await within(
    mqtt.connectAsync(urls[transport], {
      clientId: `mqttjs-${RUN}-${nextId++}`,
      protocolVersion,
      // A lost connection here is always on purpose; reconnecting would hide
      // what the test is looking at.
      reconnectPeriod: 0,
      connectTimeout: WAIT_MS,
      ca,
      ...extra,
    }),
    `CONNACK over ${transport}`,
  );
  open.push(client);
  client.inbox = [];
  client.waiters = [];
  client.on('message', (topic, payload, packet) => {
    const msg = { topic, payload: payload.toString(), qos: packet.qos, retain: packet.retain, properties: packet.properties };
    const waiter = client.waiters.shift();
    if (waiter) waiter(msg);
    else client.inbox.push(msg);
  });
  return client;
}

function nextMessage(client) {
  if (client.inbox.length) return Promise.resolve(client.inbox.shift());
  return within(new Promise((resolve) => client.waiters.push(resolve)), 'message');
}

async function subscribe(client, topic, qos) {
  const granted = await within(client.subscribeAsync(topic, { qos }), `SUBACK for ${topic}`);
  if (granted.length !== 1 || granted[0].qos !== qos) {
    throw new Check(`SUBACK for ${topic}: ${JSON.stringify(granted)}, wanted QoS ${qos}`);
  }
}

// Resolves once the broker acknowledged (PUBACK, or PUBCOMP for QoS 2).
function publish(client, topic, payload, opts) {
  return within(client.publishAsync(topic, payload, opts), `ack of QoS ${opts.qos} publish`);
}

async function closeAll() {
  await Promise.all(open.splice(0).map((c) => within(c.endAsync(true), 'end').catch(() => {})));
}

function same(got, want, what) {
  const g = JSON.stringify(got);
  const w = JSON.stringify(want);
  if (g !== w) throw new Check(`${what}: got ${g}, wanted ${w}`);
}

const topic = (name) => `roost/${RUN}/mqttjs/${name}`;

async function checkQos(transport, v, qos) {
  const t = topic(`${transport}/v${v}/qos${qos}`);
  const sub = await connect(transport, v);
  const pub = await connect(transport, v);
  await subscribe(sub, t, 2);
  await publish(pub, t, `qos${qos}`, { qos });
  const m = await nextMessage(sub);
  same([m.topic, m.payload, m.qos, m.retain], [t, `qos${qos}`, qos, false], 'delivery');
}

async function checkRetained(transport, v) {
  const t = topic(`${transport}/v${v}/retained`);
  const pub = await connect(transport, v);
  await publish(pub, t, 'kept', { qos: 1, retain: true });
  const late = await connect(transport, v);
  await subscribe(late, t, 1);
  const m = await nextMessage(late);
  same([m.topic, m.payload, m.qos, m.retain], [t, 'kept', 1, true], 'late subscriber');
  await publish(late, t, '', { qos: 1, retain: true });
}

async function checkWill(transport, v) {
  const t = topic(`${transport}/v${v}/will`);
  const watcher = await connect(transport, v);
  await subscribe(watcher, t, 1);
  const victim = await connect(transport, v, { will: { topic: t, payload: Buffer.from('gone'), qos: 1, retain: false } });
  // The socket goes away without DISCONNECT, as when a client crashes.
  victim.stream.destroy();
  const m = await nextMessage(watcher);
  same([m.topic, m.payload, m.qos], [t, 'gone', 1], 'will');
}

async function checkV5Properties(transport) {
  const t = topic(`${transport}/v5/props`);
  const sub = await connect(transport, 5);
  const pub = await connect(transport, 5);
  await subscribe(sub, t, 1);
  await publish(pub, t, 'five', { qos: 1, properties: { userProperties: { colour: 'blue' }, contentType: 'text/plain' } });
  const m = await nextMessage(sub);
  same([m.properties?.userProperties, m.properties?.contentType], [{ colour: 'blue' }, 'text/plain'], 'properties');
}

const checks = [];
for (const transport of Object.keys(urls)) {
  const plain = transport === 'tcp' || transport === 'ws';
  for (const v of [4, 5]) {
    if (plain) {
      for (const qos of [0, 1, 2]) checks.push([`mqttjs ${transport} v${v} qos${qos} round trip`, () => checkQos(transport, v, qos)]);
      checks.push([`mqttjs ${transport} v${v} retained`, () => checkRetained(transport, v)]);
      checks.push([`mqttjs ${transport} v${v} will on destroyed socket`, () => checkWill(transport, v)]);
    } else {
      checks.push([`mqttjs ${transport} v${v} qos2 round trip`, () => checkQos(transport, v, 2)]);
    }
  }
  if (plain) checks.push([`mqttjs ${transport} v5 user property and content type`, () => checkV5Properties(transport)]);
}

let failed = 0;
for (const [name, run] of checks) {
  try {
    await run();
    console.log(`ok - ${name}`);
  } catch (e) {
    failed++;
    console.log(`not ok - ${name}: ${e instanceof Check ? e.message : e?.stack ?? e}`);
  } finally {
    await closeAll();
  }
}
process.exit(failed ? 1 : 0);
