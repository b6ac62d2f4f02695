// End-to-end tests of the admin dashboard (GET / on the admin port) in
// headless Chromium (Debian's /usr/bin/chromium, driven by playwright-core;
// no browser is downloaded), against the real server binary with live
// traffic from examples/traffic.rs. Run through tests/browser/run.sh.
//
// Every wait is on a condition (page content or API state), never a sleep.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const TARGET = process.env.CARGO_TARGET_DIR ? resolve(process.env.CARGO_TARGET_DIR) : `${REPO}/target`;
const SERVER_BIN = process.env.DYCONIT_BIN || `${TARGET}/debug/dyconit-chat`;
const TRAFFIC_BIN = process.env.TRAFFIC_BIN || `${TARGET}/debug/examples/traffic`;
const SHOTS = process.env.SCREENSHOT_DIR || TARGET;
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const TOKEN = 'browser-suite-token';
// Bounds so loose that nothing is rejected until a test tightens one.
const LOOSE = 100000;
// examples/traffic.rs: 4 readers, 2 writers, 1 slow client, 1 visitor that comes and goes.
const STEADY_CLIENTS = 7;

/** A child process whose output is kept (and shown when a test fails). */
function launch(bin, args, name) {
  const child = spawn(bin, args, { env: { ...process.env, NO_COLOR: '1' }, stdio: ['ignore', 'pipe', 'pipe'] });
  child.output = '';
  const keep = (d) => {
    child.output += d.toString();
    if (child.output.length > 200000) child.output = child.output.slice(-100000);
  };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  child.exited = new Promise((res) => child.on('exit', (code, signal) => res({ code, signal })));
  child.name = name;
  return child;
}

async function stop(child) {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 10000);
  await child.exited;
  clearTimeout(timer);
}

/** Polls `fn` until it returns a truthy value (which it returns). */
async function waitFor(what, fn, timeoutMs = 20000, everyMs = 100) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}; last: ${last instanceof Error ? last.stack : JSON.stringify(last)}`);
    }
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

const server = { proc: null, grpc: null, admin: null };
let traffic = null;

async function startServer() {
  const listen = server.grpc || '127.0.0.1:0';
  const adminListen = server.admin || '127.0.0.1:0';
  const proc = launch(SERVER_BIN, [
    'serve', '--listen', listen, '--admin-listen', adminListen, '--admin-token', TOKEN,
    '--staleness', '500ms', '--numerical', String(LOOSE), '--order', String(LOOSE),
    '--ack-timeout', '5s', '--log', 'info', '--storage', 'memory',
  ], 'server');
  server.proc = proc;
  const line = await waitFor('the server to report its addresses', () => {
    if (proc.exitCode !== null) throw new Error(`server exited: ${proc.output}`);
    return /grpc_addr=(\S+)\s+admin_addr=(\S+)/.exec(proc.output.replace(/\x1b\[[0-9;]*m/g, ''));
  }, 30000, 50);
  server.grpc = line[1];
  server.admin = line[2];
  await waitFor('/readyz', async () => (await fetch(`${adminUrl()}/readyz`)).ok, 10000, 50);
}

function startTraffic() {
  traffic = launch(TRAFFIC_BIN, [
    '--url', `http://${server.grpc}`, '--readers', '4', '--writers', '2', '--rate', '10',
    '--threads', ',general,ops', '--slow-ack-ms', '3000', '--churn-seconds', '4', '--seconds', '240',
  ], 'traffic');
}

const adminUrl = () => `http://${server.admin}`;

async function api(path, { method = 'GET', body, token } = {}) {
  const headers = { 'Content-Type': 'application/json' };
  if (token) headers.Authorization = `Bearer ${token}`;
  const r = await fetch(`${adminUrl()}${path}`, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await r.json();
  return { status: r.status, data };
}

const stats = async () => (await api('/api/v1/stats')).data;
const bounds = async () => (await api('/api/v1/bounds')).data;

// ---------------------------------------------------------------- browser

let browser;
let context;
let page;
let phase = 'load';
const consoleErrors = []; // { phase, text }
const pageErrors = [];

function watch(p) {
  p.on('console', (m) => { if (m.type() === 'error') consoleErrors.push({ phase, text: m.text() }); });
  p.on('pageerror', (e) => pageErrors.push({ phase, text: String(e && e.stack ? e.stack : e) }));
}

/** The number shown in the element `selector` (commas dropped), or NaN. */
async function shownNumber(p, selector) {
  const text = await p.locator(selector).textContent();
  return Number(text.replace(/,/g, '').trim());
}

async function waitForLive(p) {
  await p.locator('#conn[data-state="live"]').waitFor({ timeout: 20000 });
}

/** Waits until every chart has drawn at least `points` samples. */
async function waitForCharts(p, points = 3) {
  await waitFor(`charts with ${points} samples`, () => p.evaluate((n) => {
    const ids = ['chart-committed', 'chart-delivered', 'chart-rejections', 'chart-latency',
      'chart-lag-messages', 'chart-lag-seconds'];
    return ids.every((id) => {
      const path = document.querySelector(`#${id} path.series`);
      return path && (path.getAttribute('d').match(/L/g) || []).length >= n - 1;
    });
  }, points));
}

before(async () => {
  mkdirSync(SHOTS, { recursive: true });
  await startServer();
  startTraffic();
  await waitFor(`${STEADY_CLIENTS} traffic clients`, async () => (await stats()).clients_active >= STEADY_CLIENTS, 30000);
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    // Playwright gives each launch a fresh, temporary --user-data-dir.
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  context = await browser.newContext({ viewport: { width: 1366, height: 900 } });
  page = await context.newPage();
  watch(page);
});

after(async () => {
  if (browser) await browser.close();
  await stop(traffic);
  await stop(server.proc);
});

/** On failure, the processes' last output helps more than the assertion. */
function tail(child) {
  return child ? `\n--- ${child.name} (last lines) ---\n${child.output.split('\n').slice(-15).join('\n')}` : '';
}

async function explain(fn) {
  try {
    await fn();
  } catch (e) {
    e.message += tail(server.proc) + tail(traffic);
    throw e;
  }
}

// ------------------------------------------------------------------ tests

test('the page loads under live traffic and draws every part without console errors', () => explain(async () => {
  phase = 'load';
  const response = await page.goto(`${adminUrl()}/`);
  assert.equal(response.status(), 200);
  assert.match(response.headers()['content-type'], /^text\/html/);
  await waitForLive(page);
  // Rates need two samples; the charts a few more.
  await waitFor('a positive message rate', async () => (await shownNumber(page, '#kpi-accepted-rate')) > 0);
  await waitFor('a positive delivery rate', async () => (await shownNumber(page, '#kpi-delivered-rate')) > 0);
  await waitForCharts(page, 4);
  for (const heading of ['Now', 'Rejections per second by reason', 'Last two minutes', 'Bounds',
    'Recent bound changes', 'Laggiest clients', 'Dropped clients by reason']) {
    assert.ok(await page.getByRole('heading', { name: heading, exact: true }).isVisible(), `heading ${heading}`);
  }
  // Latency and lag are drawn against their bounds: a dashed line, or a
  // note at the top when the bound is far above the data (numerical here).
  assert.equal(await page.locator('#chart-latency path.bound').count(), 1, 'the staleness line');
  assert.match(await page.locator('#chart-latency .bound-label').textContent(), /^staleness 500 ms$/);
  assert.match(await page.locator('#chart-lag-seconds .bound-label').textContent(), /^timeout 5\.00 s/);
  assert.match(await page.locator('#chart-lag-messages .bound-label').textContent(), /^numerical 100,000 ↑ \(far above\)$/);
  // Every chart is an image with a text description of its latest values.
  const desc = await page.locator('#chart-latency desc').textContent();
  assert.match(desc, /p99 .*ms.*staleness bound \(default\) 500 ms/);
  // The client list needs the admin token (the server has one): the page
  // says so and asks for it.
  const unlock = page.getByRole('button', { name: 'Enter admin token' });
  await unlock.waitFor();
  assert.match(await page.locator('#clients tbody').textContent(), /needs the admin token/);
  await unlock.click();
  const dialog = page.getByRole('dialog');
  await dialog.waitFor();
  assert.match(await dialog.textContent(), /to list its clients/);
  await page.getByLabel('Admin token', { exact: true }).fill(TOKEN);
  await page.keyboard.press('Enter');
  await dialog.waitFor({ state: 'hidden' });
  // The laggiest clients: the slow client leads, its markup-like name shown as text.
  const firstRow = page.locator('#clients tbody tr').first();
  await waitFor('the slow client at the top of the laggards', async () => (await firstRow.locator('td.name').textContent()) === '<i>slow</i>');
  assert.equal(await page.locator('#clients i').count(), 0, 'a client name was rendered as HTML');
  assert.match(await firstRow.locator('th code').textContent(), /^user-[0-9a-f]{8}$/);
  const lag = Number(await firstRow.locator('td').nth(1).textContent());
  assert.ok(lag >= 0);
  // The bounds table shows the defaults the server runs with.
  const defaultRow = page.locator('#bounds tbody tr[data-key="default"]');
  assert.deepEqual(await defaultRow.locator('td').allTextContents(), ['500ms', String(LOOSE), String(LOOSE), 'Edit']);
  assert.deepEqual(consoleErrors, [], 'console errors while loading');
  assert.deepEqual(pageErrors, [], 'uncaught errors in the page');
}));

test('the policy panel shows each policy, its state and what it does now', () => explain(async () => {
  phase = 'policies';
  await page.goto(`${adminUrl()}/`);
  await waitForLive(page);
  assert.ok(await page.getByRole('heading', { name: 'Policies', exact: true }).isVisible());
  const cells = async (key) => page.locator(`#policy-${key} td`).allTextContents();
  // The server starts with every policy off.
  assert.deepEqual(await cells('load'), ['Off', "operator's bounds", '–']);
  assert.deepEqual(await cells('interest'), ['Off', 'every client gets every thread at its own bounds', '–']);
  assert.deepEqual(await cells('size'), ['Off', "operator's bounds", '–']);
  // The load policy switched on through the API: the panel follows, with
  // the scale in force.
  const on = await api('/api/v1/policies/load', { method: 'PUT', body: { enabled: true }, token: TOKEN });
  assert.equal(on.status, 200);
  try {
    await waitFor('the panel to show the load policy on', async () => {
      const [state, output] = await cells('load');
      return state === 'On' && /^bounds ×\d/.test(output);
    });
  } finally {
    const off = await api('/api/v1/policies/load', { method: 'PUT', body: { enabled: false }, token: TOKEN });
    assert.equal(off.status, 200);
  }
  await waitFor('the panel to show it off again', async () => (await cells('load'))[0] === 'Off');
}));

test('the client counts it shows match /api/v1/stats as clients come and go', () => explain(async () => {
  phase = 'counts';
  const seen = new Set();
  // The visitor of the traffic generator comes and goes: see both counts.
  await waitFor('the page to agree with the API at both client counts', async () => {
    const shown = await shownNumber(page, '#kpi-connected');
    const shownActive = await shownNumber(page, '#kpi-active');
    const s = await stats();
    const again = await shownNumber(page, '#kpi-connected');
    if (shown === s.clients_connected && again === shown && shownActive === s.clients_active) seen.add(shown);
    return seen.has(STEADY_CLIENTS) && seen.has(STEADY_CLIENTS + 1);
  }, 30000, 150);
  const total = Number(await page.locator('#clients-total').textContent());
  assert.ok(total === STEADY_CLIENTS || total === STEADY_CLIENTS + 1, `clients total ${total}`);
}));

test('tightening a bound makes rejections per second appear on the page', () => explain(async () => {
  phase = 'tighten';
  const before = (await stats()).rejections.numerical;
  assert.equal(await page.locator('#rej-numerical td.recent').textContent(), '0');
  const r = await api('/api/v1/bounds/default', { method: 'PUT', body: { numerical: 3 }, token: TOKEN });
  assert.equal(r.status, 200, JSON.stringify(r.data));
  await waitFor('NUMERICAL_ERRORs at the server', async () => (await stats()).rejections.numerical > before);
  await waitFor('a numerical rejection rate on the page', async () => (await shownNumber(page, '#rej-numerical td.recent')) > 0);
  assert.ok(await shownNumber(page, '#kpi-rejected-rate') > 0);
  await waitFor('the change listed', async () => /numerical 100000 → 3/.test(await page.locator('#changes tbody tr').first().textContent()));
  // And back: the rate falls to zero again.
  const back = await api('/api/v1/bounds/default', { method: 'PUT', body: { numerical: LOOSE }, token: TOKEN });
  assert.equal(back.status, 200);
  await waitFor('the numerical rejection rate back at zero', async () => (await page.locator('#rej-numerical td.recent').textContent()) === '0');
}));

test('editing a bound in the page asks for the token, refuses a wrong one visibly, then applies', () => explain(async () => {
  phase = 'token';
  const ordersBefore = (await stats()).rejections.order;
  // Start without the token the client list was shown with.
  await page.getByRole('button', { name: 'Forget admin token' }).click();
  assert.equal(await page.evaluate(() => sessionStorage.getItem('dyconit-admin-token')), null);
  await page.getByRole('button', { name: 'Edit default bounds' }).click();
  const order = page.getByLabel('Order, default bounds', { exact: true });
  await order.fill('0');
  await order.press('Enter');
  const dialog = page.getByRole('dialog');
  await dialog.waitFor();
  assert.match(await dialog.textContent(), /needs the admin token/);
  await page.getByLabel('Admin token', { exact: true }).fill('not-the-token');
  await page.getByRole('button', { name: 'Use token' }).click();
  await waitFor('the refusal shown', async () => /refused/.test(await page.locator('#token-msg').textContent()));
  assert.ok(await page.locator('#token-msg').isVisible());
  assert.equal(await page.getByRole('heading', { name: 'Admin token refused' }).count(), 1);
  await page.screenshot({ path: `${SHOTS}/dashboard-token-refused.png` });
  // The wrong token changed nothing.
  assert.equal((await bounds()).default.order, LOOSE);
  await page.getByLabel('Admin token', { exact: true }).fill(TOKEN);
  await page.keyboard.press('Enter');
  await dialog.waitFor({ state: 'hidden' });
  await waitFor('order 0 at the API', async () => (await bounds()).default.order === 0);
  // The server behaves accordingly: writers who have not seen every commit are refused.
  await waitFor('ORDER_ERRORs at the server', async () => (await stats()).rejections.order > ordersBefore);
  await waitFor('an order rejection rate on the page', async () => (await shownNumber(page, '#rej-order td.recent')) > 0);
  const defaultRow = page.locator('#bounds tbody tr[data-key="default"]');
  assert.equal(await defaultRow.locator('td').nth(2).textContent(), '0');
  const change = await page.locator('#changes tbody tr').first().textContent();
  assert.match(change, /order 100000 → 0/);
  assert.match(change, /\(token\)/);
  assert.equal(await page.evaluate(() => sessionStorage.getItem('dyconit-admin-token')), TOKEN);
  assert.ok(await page.getByRole('button', { name: 'Forget admin token' }).isVisible());
}));

test("the API's validation errors are shown in place, on the field they name", () => explain(async () => {
  phase = 'validation';
  const edit = page.getByRole('button', { name: 'Edit default bounds' });
  await edit.click();
  const numerical = page.getByLabel('Numerical, default bounds', { exact: true });
  for (const [typed, message] of [
    ['abc', 'numerical must be a non-negative integer, got "abc"'],
    ['0', 'numerical 0 is outside 1..=1000000'],
  ]) {
    await numerical.fill(typed);
    await page.getByRole('button', { name: 'Save' }).click();
    const error = page.locator('tr.error-row .error');
    await waitFor(`the error "${message}"`, async () => (await error.textContent()) === message);
    assert.ok(await error.isVisible());
    assert.equal(await error.getAttribute('role'), 'alert');
    assert.equal(await numerical.getAttribute('aria-invalid'), 'true');
    assert.equal(await page.evaluate(() => document.activeElement.getAttribute('aria-label')), 'Numerical, default bounds');
  }
  await page.getByLabel('Staleness, default bounds', { exact: true }).fill('2h');
  await numerical.fill('64');
  await page.getByRole('button', { name: 'Save' }).click();
  await waitFor('the staleness error', async () => /staleness .* above the maximum of 1h/.test(await page.locator('tr.error-row .error').textContent()));
  assert.equal(await page.getByLabel('Staleness, default bounds', { exact: true }).getAttribute('aria-invalid'), 'true');
  // Escape cancels; focus returns to the row's Edit button. Nothing changed.
  await page.keyboard.press('Escape');
  await waitFor('the row back in view mode', async () => (await page.locator('#bounds tr.editing').count()) === 0);
  assert.equal(await page.evaluate(() => document.activeElement.getAttribute('aria-label')), 'Edit default bounds');
  const b = await bounds();
  assert.equal(b.default.numerical, LOOSE);
  assert.equal(b.default.staleness_ms, 500);
}));

test('a thread override is added with the keyboard alone, edited and removed', () => explain(async () => {
  phase = 'threads';
  await page.getByLabel('Thread id', { exact: true }).focus();
  await page.keyboard.type('ops');
  await page.keyboard.press('Tab');
  await page.keyboard.type('200ms');
  await page.keyboard.press('Tab');
  await page.keyboard.type('50');
  await page.keyboard.press('Enter');
  const ops = async () => (await bounds()).threads.find((t) => t.thread === 'ops');
  const added = await waitFor('the ops override at the API', ops);
  assert.deepEqual(added.override, { staleness: '200ms', numerical: 50, order: null });
  assert.equal(added.effective.order, 0, 'order follows the default');
  const row = page.locator('#bounds tbody tr[data-key="thread:ops"]');
  await row.waitFor();
  assert.match(await row.locator('td').nth(2).textContent(), /^0 \(default\)$/);
  assert.equal(await page.getByLabel('Thread id', { exact: true }).inputValue(), '', 'the form is cleared');
  // Edit: the override is replaced with what the row holds.
  await page.getByRole('button', { name: 'Edit thread ops' }).click();
  await page.getByLabel('Numerical, thread ops', { exact: true }).fill('60');
  await page.getByLabel('Order, thread ops', { exact: true }).fill('5');
  await page.getByRole('button', { name: 'Save' }).click();
  await waitFor('numerical 60 and order 5 for ops', async () => {
    const t = await ops();
    return t && t.override.numerical === 60 && t.override.order === 5 && t.override.staleness === '200ms';
  });
  await waitFor('the row updated', async () => (await row.locator('td').nth(1).textContent()) === '60');
  // Remove.
  await page.getByRole('button', { name: 'Remove the override of thread ops' }).click();
  await waitFor('no override for ops at the API', async () => !(await ops()));
  await row.waitFor({ state: 'detached' });
  await waitFor('the removal listed', async () => /override removed/.test(await page.locator('#changes tbody tr').first().textContent()));
  // An API error for a thread shows under the add form, too.
  await page.getByLabel('Thread id', { exact: true }).fill('t'.repeat(129));
  await page.getByLabel('Order', { exact: true }).fill('1');
  await page.getByRole('button', { name: 'Add override' }).click();
  await waitFor('the thread id error', async () => /thread id is longer than 128 bytes/.test(await page.locator('#add-error').textContent()));
}));

test('keyboard: the skip link shows on focus and focus is visible', () => explain(async () => {
  phase = 'keyboard';
  // A fresh tab, so the first Tab starts at the top of the document.
  const p = await context.newPage();
  watch(p);
  await p.goto(`${adminUrl()}/`);
  await waitForLive(p);
  await p.keyboard.press('Tab');
  const skip = p.getByRole('link', { name: 'Skip to the dashboard' });
  assert.equal(await p.evaluate(() => document.activeElement.textContent), 'Skip to the dashboard');
  const box = await skip.boundingBox();
  assert.ok(box && box.y >= 0, 'the skip link is on screen when focused');
  await p.keyboard.press('Enter');
  assert.equal(await p.evaluate(() => document.activeElement.id), 'main');
  // Tabbing on reaches the controls; a keyboard-focused one draws an outline.
  const edit = p.getByRole('button', { name: 'Edit default bounds' });
  await edit.waitFor();
  let reached = false;
  for (let i = 0; i < 40 && !reached; i += 1) {
    await p.keyboard.press('Tab');
    reached = await p.evaluate(() => document.activeElement.getAttribute('aria-label') === 'Edit default bounds');
  }
  assert.ok(reached, 'Tab reaches the Edit button of the default bounds');
  const outline = await p.evaluate(() => {
    const st = getComputedStyle(document.activeElement);
    return [st.outlineStyle, st.outlineWidth];
  });
  assert.deepEqual(outline, ['solid', '3px']);
  // Enter opens the row for editing with the focus in its first field.
  await p.keyboard.press('Enter');
  assert.equal(await p.evaluate(() => document.activeElement.getAttribute('aria-label')), 'Staleness, default bounds');
  await p.keyboard.press('Escape');
  await p.close();
}));

/** Points drawn in the first series of chart `id`. */
function pointsIn(p, id) {
  return p.evaluate((chartId) => {
    const path = document.querySelector(`#${chartId} path.series`);
    return path ? (path.getAttribute('d').match(/[ML]/g) || []).length : 0;
  }, id);
}

test('charts are full as soon as the page opens, from the server-kept history', () => explain(async () => {
  phase = 'history';
  const history = await waitFor('20 s of server-side samples', async () => {
    const h = (await api('/api/v1/stats/history')).data;
    return h.samples.length >= 20 ? h : null;
  }, 30000, 250);
  assert.equal(history.interval_seconds, 1);
  const last = history.samples[history.samples.length - 1];
  assert.equal(typeof last.stats.messages_accepted, 'number');
  assert.equal(last.staleness_ms, 500);
  const fresh = await context.newPage();
  watch(fresh);
  const opened = Date.now();
  await fresh.goto(`${adminUrl()}/`);
  await waitForLive(fresh);
  const seconds = Math.ceil((Date.now() - opened) / 1000);
  const drawn = await pointsIn(fresh, 'chart-committed');
  assert.ok(drawn >= 15 && drawn > seconds + 5, `${drawn} points drawn ${seconds} s after opening`);
  // Committed and delivered have charts (and axes) of their own: deliveries
  // are commits times readers, so the delivered axis tops out higher.
  const top = (id) => fresh.evaluate((chartId) => {
    const labels = [...document.querySelectorAll(`#${chartId} text.axis`)].map((t) => t.textContent);
    return labels[2];
  }, id);
  const topOf = (text) => Number(text.replace(/,/g, '').replace(/k$/, 'e3'));
  assert.ok(topOf(await top('chart-delivered')) > topOf(await top('chart-committed')),
    `delivered axis ${await top('chart-delivered')}, committed axis ${await top('chart-committed')}`);
  // The p99 estimate is explained beside its chart.
  assert.match(await fresh.locator('#chart-latency .chart-note').textContent(), /estimated from the server's latency histogram/);
  // A reload is full at once too.
  await fresh.reload();
  await waitForLive(fresh);
  assert.ok(await pointsIn(fresh, 'chart-delivered') >= 15, 'charts empty after a reload');
  await fresh.close();
}));

test('screenshots under traffic, on a laptop and on a phone', () => explain(async () => {
  phase = 'screenshots';
  // A thread with bounds of its own, so the table shows both kinds of row.
  const r = await api('/api/v1/bounds/threads/alerts', { method: 'PUT', body: { staleness: '50ms', order: 2 }, token: TOKEN });
  assert.equal(r.status, 200);
  await page.locator('#bounds tbody tr[data-key="thread:alerts"]').waitFor();
  await waitForCharts(page, 10);
  await page.screenshot({ path: `${SHOTS}/dashboard.png`, fullPage: true });

  const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2 });
  const p = await phone.newPage();
  watch(p);
  await p.goto(`${adminUrl()}/`);
  await waitForLive(p);
  await waitForCharts(p, 4);
  await p.locator('#clients tbody tr').first().waitFor();
  // Nothing is wider than the screen: wide tables scroll inside their own region.
  const widths = await p.evaluate(() => [document.documentElement.scrollWidth, window.innerWidth]);
  assert.ok(widths[0] <= widths[1], `page ${widths[0]} px wide on a ${widths[1]} px screen`);
  // The row controls are on screen (under the row's name on a phone), not scrolled away.
  for (const name of ['Edit default bounds', 'Edit thread alerts', 'Remove the override of thread alerts']) {
    const box = await p.getByRole('button', { name }).boundingBox();
    assert.ok(box && box.x >= 0 && box.x + box.width <= widths[1], `${name} at ${JSON.stringify(box)}`);
  }
  await p.screenshot({ path: `${SHOTS}/dashboard-phone.png`, fullPage: true });
  await phone.close();
}));

test('when the server stops the page says so, and it recovers when the server is back', () => explain(async () => {
  phase = 'outage';
  await stop(traffic);
  await stop(server.proc);
  const banner = page.getByRole('alert').filter({ hasText: 'Server unreachable — retrying' });
  await banner.waitFor({ timeout: 15000 });
  // On screen wherever the page was scrolled to (it is scrolled down here).
  assert.ok(await page.evaluate(() => window.scrollY) > 0);
  const box = await banner.boundingBox();
  assert.ok(box && box.y >= 0 && box.y + box.height <= 900, `banner at ${JSON.stringify(box)}`);
  assert.equal(await page.locator('#conn').getAttribute('data-state'), 'offline');
  assert.equal(await page.locator('#conn-text').textContent(), 'Unreachable');
  await page.screenshot({ path: `${SHOTS}/dashboard-offline.png` });
  await startServer(); // on the same ports
  startTraffic();
  await banner.waitFor({ state: 'hidden', timeout: 15000 });
  await waitForLive(page);
  // Fresh figures from the new server: its defaults again, and its own clients.
  await waitFor('the restarted server\'s bounds', async () => (await page.locator('#bounds tbody tr[data-key="default"] td').nth(2).textContent()) === String(LOOSE));
  await waitFor('the client count to match again', async () => {
    const shown = await shownNumber(page, '#kpi-connected');
    return shown >= STEADY_CLIENTS && shown === (await stats()).clients_connected;
  }, 30000, 150);
  phase = 'recovered';
}));

test('every console error was one a test provoked on purpose', () => {
  const expected = {
    token: /status of 401/,
    validation: /status of 400/,
    threads: /status of 400/,
    outage: /net::ERR_(CONNECTION_REFUSED|CONNECTION_RESET|EMPTY_RESPONSE)|Failed to fetch/,
  };
  const unexpected = consoleErrors.filter(({ phase: ph, text }) => !(expected[ph] && expected[ph].test(text)));
  assert.deepEqual(unexpected, []);
  assert.deepEqual(pageErrors, []);
  // The provoked ones did happen (each test above asserted what the page showed).
  assert.ok(consoleErrors.some((e) => e.phase === 'token'), 'the 401s were seen');
});
