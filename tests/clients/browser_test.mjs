// Debian's Chromium, driven by playwright-core, loads browser/index.html,
// which talks MQTT over WebSocket to roost with MQTT.js's browser bundle.
// Env: ROOST_WS_PORT, ROOST_TCP_PORT, RUN_ID, ROOST_ARTIFACTS.
// Prints one "ok - NAME" / "not ok - NAME: why" line per check.
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import mqtt from 'mqtt';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const env = process.env;
const prefix = `roost/${env.RUN_ID}/browser`;
const CHROMIUM = '/usr/bin/chromium';
const WAIT_MS = 20_000;

// Nothing below may hang the suite.
setTimeout(() => {
  console.log('not ok - browser suite finished in time');
  process.exit(1);
}, 120_000).unref();

let failed = 0;
function check(name, cond, why) {
  if (cond) console.log(`ok - ${name}`);
  else {
    failed++;
    console.log(`not ok - ${name}: ${why}`);
  }
}

const types = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8' };
// Serves this folder read-only (the page and node_modules' bundle), nothing above it.
const server = http.createServer((req, res) => {
  const file = path.join(here, decodeURIComponent(new URL(req.url, 'http://x').pathname));
  if (!file.startsWith(here + path.sep) || !fs.existsSync(file) || !fs.statSync(file).isFile()) {
    res.writeHead(404).end();
    return;
  }
  res.writeHead(200, { 'content-type': types[path.extname(file)] ?? 'application/octet-stream' });
  fs.createReadStream(file).pipe(res);
});
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const page_url = `http://127.0.0.1:${server.address().port}/browser/index.html?port=${env.ROOST_WS_PORT}&prefix=${encodeURIComponent(prefix)}`;

// A client on plain TCP sees what the browser publishes: the browser's
// messages really went through the broker to a different transport.
const observer = await mqtt.connectAsync(`mqtt://127.0.0.1:${env.ROOST_TCP_PORT}`, {
  clientId: `browser-observer-${env.RUN_ID}`,
  reconnectPeriod: 0,
  connectTimeout: 10_000,
});
const observed = [];
observer.on('message', (topic, payload, packet) => observed.push({ topic, payload: payload.toString(), qos: packet.qos }));
await observer.subscribeAsync(`${prefix}/#`, { qos: 1 });

const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'roost-chromium-'));
let context;
const consoleLines = [];
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    timeout: WAIT_MS,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
    viewport: { width: 900, height: 480 },
  });
  const page = context.pages()[0] ?? (await context.newPage());
  page.on('console', (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => consoleLines.push(`pageerror: ${e.message}`));
  await page.goto(page_url, { timeout: WAIT_MS });

  check('browser loads the MQTT.js bundle', await page.evaluate(() => typeof mqtt !== 'undefined'), 'global mqtt missing');

  let waitError = null;
  try {
    await page.waitForFunction(() => window.results.done || window.results.error, null, { timeout: WAIT_MS });
  } catch (e) {
    waitError = e.message.split('\n')[0];
  }
  const results = await page.evaluate(() => window.results);
  const why = results.error ?? waitError ?? '';
  check('browser connects over ws', results.connected, `not connected ${why}`);
  check('browser sees no error', !results.error && !waitError, why);

  const find = (t) => results.messages.find((m) => m.topic === `${prefix}/${t}`);
  const expect = (name, t, want) => {
    const m = find(t);
    check(name, m && JSON.stringify(m) === JSON.stringify({ topic: `${prefix}/${t}`, ...want }), `got ${JSON.stringify(m)}`);
  };
  expect('browser qos0 round trip', 'qos0', { payload: 'hello at most once', qos: 0, retain: false });
  expect('browser qos1 round trip', 'qos1', { payload: 'hello at least once', qos: 1, retain: false });
  expect('browser retained message arrives flagged retained', 'retained', { payload: 'kept for later', qos: 1, retain: true });

  const table = await page.locator('#messages').innerText();
  check(
    'browser page shows the round-tripped messages',
    ['hello at most once', 'hello at least once', 'kept for later'].every((p) => table.includes(p)),
    `table text: ${JSON.stringify(table)}`,
  );

  // Bounded wait for the observer: its messages may trail the browser's.
  for (let i = 0; i < 100 && observed.length < 3; i++) await new Promise((r) => setTimeout(r, 50));
  const seen = observed.map((m) => `${m.topic.slice(prefix.length + 1)}:${m.qos}`).sort().join(' ');
  check('browser publishes reach a tcp subscriber', seen === 'qos0:0 qos1:1 retained:1', `observer saw ${seen}`);

  fs.mkdirSync(env.ROOST_ARTIFACTS, { recursive: true });
  const shot = path.join(env.ROOST_ARTIFACTS, 'browser.png');
  await page.screenshot({ path: shot, timeout: WAIT_MS });
  check('browser screenshot saved', fs.statSync(shot).size > 1000, `${shot} is empty`);

  // Leave nothing retained behind.
  await observer.publishAsync(`${prefix}/retained`, '', { qos: 1, retain: true });
} catch (e) {
  failed++;
  console.log(`not ok - browser run: ${e.message.split('\n')[0]}`);
} finally {
  if (failed && consoleLines.length) console.log(`page console:\n  ${consoleLines.join('\n  ')}`);
  await context?.close().catch(() => {});
  await observer.endAsync(true).catch(() => {});
  server.close();
  fs.rmSync(profile, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
