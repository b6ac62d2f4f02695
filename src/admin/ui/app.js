// Dyconit Chat admin dashboard. Plain JavaScript, no framework, no build
// step: served by the binary from src/admin/ui/.
//
// Every second it samples /api/v1/stats, /api/v1/clients and /api/v1/bounds;
// rates and interval quantiles come from the difference of two successive
// stats samples (counters and cumulative histograms since server start).
// Everything the server sends is put into the page as text, never as HTML.
'use strict';

(() => {
  const POLL_MS = 1000;
  const FETCH_TIMEOUT_MS = 3000;
  const WINDOW_S = 120;
  const TOKEN_KEY = 'dyconit-admin-token';
  const REJECTION_REASONS = [
    ['order', 'Order error', 'ORDER_ERROR'],
    ['numerical', 'Numerical error', 'NUMERICAL_ERROR'],
    ['staleness', 'Staleness', 'STALENESS'],
    ['client', 'Client error', 'CLIENT_ERROR'],
    ['internal', 'Internal error', 'INTERNAL_ERROR'],
  ];
  const DROP_REASONS = [
    ['ack_timeout', 'Acknowledgement timeout'],
    ['never_streamed', 'Never streamed'],
    ['slow_consumer', 'Slow consumer (buffer full)'],
    ['laggard', 'Laggard (never caught up)'],
    ['stream_closed', 'Stream closed by the client'],
    ['shutdown', 'Server shutdown'],
  ];
  const VIOLATIONS = [
    ['staleness', 'Staleness (delivered late)'],
    ['lease', 'Lease (Update after expiry)'],
  ];

  const $ = (id) => document.getElementById(id);

  /** Creates an element with attributes and children (strings become text). */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'class') el.className = v;
      else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }

  const SVG_NS = 'http://www.w3.org/2000/svg';
  function s(tag, attrs, text) {
    const el = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
    if (text !== undefined) el.textContent = text;
    return el;
  }

  // ---------------------------------------------------------------- format

  function fmtNumber(n, digits = 0) {
    if (n === null || n === undefined || Number.isNaN(n)) return '–';
    return n.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
  }

  function fmtRate(n) {
    if (n === null || n === undefined) return '–';
    return fmtNumber(n, n !== 0 && n < 10 ? 1 : 0);
  }

  /** Seconds as "850 ms", "1.25 s", "3 min 4 s". */
  function fmtSeconds(sec) {
    if (sec === null || sec === undefined || Number.isNaN(sec)) return '–';
    if (sec === 0) return '0 ms';
    if (sec < 1) return `${fmtNumber(sec * 1000, sec * 1000 < 10 ? 1 : 0)} ms`;
    if (sec < 60) return `${fmtNumber(sec, sec < 10 ? 2 : 1)} s`;
    const m = Math.floor(sec / 60);
    if (m < 60) return `${m} min ${Math.floor(sec % 60)} s`;
    return `${Math.floor(m / 60)} h ${m % 60} min`;
  }

  const pad = (n) => String(n).padStart(2, '0');
  function fmtClock(ms) {
    const d = new Date(ms);
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  function fmtAgo(micros) {
    if (!micros) return 'never';
    const sec = Math.max(0, (Date.now() * 1000 - micros) / 1e6);
    return `${fmtSeconds(sec)} ago`;
  }

  function announce(text) {
    const el = $('announce');
    el.textContent = '';
    // A change of content is what a screen reader announces.
    setTimeout(() => { el.textContent = text; }, 50);
  }

  // ------------------------------------------------------------------ http

  class ApiError extends Error {
    constructor(message, status) {
      super(message);
      this.status = status;
    }
  }

  async function fetchWithTimeout(path, options = {}) {
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), FETCH_TIMEOUT_MS);
    try {
      return await fetch(path, { cache: 'no-store', ...options, signal: ctl.signal });
    } finally {
      clearTimeout(timer);
    }
  }

  async function getJSON(path) {
    const r = await fetchWithTimeout(path, { headers: { Accept: 'application/json' } });
    if (!r.ok) throw new ApiError(`${path} answered HTTP ${r.status}`, r.status);
    return r.json();
  }

  /**
   * A PUT or DELETE. On 401 asks for the admin token in the page, keeps it in
   * session storage and tries again; throws ApiError with the API's own
   * message on any other failure, or when the user gives up.
   */
  async function mutate(method, path, body) {
    for (;;) {
      const headers = { Accept: 'application/json' };
      if (body !== undefined) headers['Content-Type'] = 'application/json';
      const token = sessionStorage.getItem(TOKEN_KEY);
      if (token) headers.Authorization = `Bearer ${token}`;
      let r;
      try {
        r = await fetchWithTimeout(path, {
          method,
          headers,
          body: body === undefined ? undefined : JSON.stringify(body),
        });
      } catch (e) {
        throw new ApiError('The server did not answer; nothing was changed here. Try again when it is back.', 0);
      }
      if (r.status === 401) {
        sessionStorage.removeItem(TOKEN_KEY);
        updateTokenButton();
        const next = await askToken(Boolean(token));
        if (next === null) throw new ApiError('Not changed: this server needs the admin token for changes.', 401);
        sessionStorage.setItem(TOKEN_KEY, next);
        updateTokenButton();
        continue;
      }
      let data = null;
      try { data = await r.json(); } catch (e) { data = null; }
      if (!r.ok) {
        const msg = data && typeof data.error === 'string' ? data.error : `HTTP ${r.status}`;
        throw new ApiError(msg, r.status);
      }
      return data;
    }
  }

  // ----------------------------------------------------------------- token

  let tokenResolve = null;

  /**
   * Opens the token dialog; resolves to the token, or null if cancelled.
   * `forClients`: asked to show the client list rather than for a change.
   */
  function askToken(refused, forClients = false) {
    const dlg = $('token-dialog');
    const msg = $('token-msg');
    if (forClients) {
      msg.textContent = 'This server needs the admin token to list its clients. Enter it to show them.';
    } else {
      msg.textContent = refused
        ? 'The server refused that token (401 Unauthorized). Enter the admin token to apply the change.'
        : 'This server needs the admin token to change bounds. Enter it to apply the change.';
    }
    msg.classList.toggle('refused', refused);
    $('token-title').textContent = refused ? 'Admin token refused' : 'Admin token needed';
    $('token-input').value = '';
    $('token-input').removeAttribute('aria-invalid');
    if (refused) $('token-input').setAttribute('aria-invalid', 'true');
    return new Promise((resolve) => {
      tokenResolve = resolve;
      if (!dlg.open) dlg.showModal();
      $('token-input').focus();
    });
  }

  function finishToken(value) {
    const dlg = $('token-dialog');
    const resolve = tokenResolve;
    tokenResolve = null;
    if (dlg.open) dlg.close();
    if (resolve) resolve(value);
  }

  function updateTokenButton() {
    $('forget-token').hidden = !sessionStorage.getItem(TOKEN_KEY);
  }

  // ---------------------------------------------------------------- charts

  /** Rounds up to 1, 2 or 5 times a power of ten. */
  function niceCeil(v) {
    if (!(v > 0)) return 1;
    const p = 10 ** Math.floor(Math.log10(v));
    for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
    return 10 * p;
  }

  /**
   * A small line chart drawn in SVG: series over the last two minutes and,
   * optionally, the bound they must stay under as a dashed line.
   */
  class Chart {
    constructor(figure, opts) {
      this.opts = opts;
      this.figure = figure;
      const capId = `${figure.id}-caption`;
      this.caption = h('figcaption', { id: capId }, opts.title);
      this.svg = s('svg', { role: 'img', 'aria-labelledby': capId, focusable: 'false' });
      this.desc = s('desc', { id: `${figure.id}-desc` });
      this.svg.setAttribute('aria-describedby', this.desc.id);
      this.svg.append(this.desc);
      this.legendValues = [];
      const legend = h('ul', { class: 'legend' });
      const entries = opts.series.map((ser, i) => ({ label: ser.label, cls: `series s${i}` }));
      if (opts.bound) entries.push({ label: opts.bound.label, cls: 'bound' });
      for (const e of entries) {
        const sw = s('svg', { viewBox: '0 0 24 10', 'aria-hidden': 'true', focusable: 'false' });
        sw.append(s('line', { x1: 0, y1: 5, x2: 24, y2: 5, class: e.cls }));
        const value = h('span', { class: 'value' }, '–');
        this.legendValues.push(value);
        legend.append(h('li', {}, sw, h('span', {}, `${e.label}: `), value));
      }
      figure.append(this.caption, this.svg, legend);
      if (opts.note) figure.append(h('p', { class: 'note chart-note' }, opts.note));
    }

    /** samples: [{t (seconds), v: [value|null per series], bound: number|null}] */
    render(samples) {
      const { series, bound, fmt, title } = this.opts;
      const W = Math.max(200, Math.round(this.svg.getBoundingClientRect().width) || 320);
      const H = 150;
      const m = { l: 52, r: 8, t: 8, b: 20 };
      const iw = W - m.l - m.r;
      const ih = H - m.t - m.b;
      this.svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
      while (this.svg.lastChild !== this.desc) this.svg.lastChild.remove();

      const tEnd = samples.length ? samples[samples.length - 1].t : 0;
      // Two minutes at most; less while there is less history, so a fresh
      // page is not one thin line at the right edge.
      const first = samples.length ? samples[0].t : tEnd;
      const span = Math.min(WINDOW_S, Math.max(30, tEnd - first));
      const tStart = tEnd - span;
      const visible = samples.filter((p) => p.t >= tStart);
      let dataMax = 0;
      let boundMax = 0;
      for (const p of visible) {
        for (const v of p.v) if (v !== null && v > dataMax) dataMax = v;
        if (bound && p.bound !== null && p.bound > boundMax) boundMax = p.bound;
      }
      // A bound far above the data would flatten it: then the bound is
      // named at the top instead of drawn.
      const floor = Math.max(dataMax, this.opts.minMax || 1);
      const boundOnScale = bound && boundMax > 0 && boundMax <= 4 * floor;
      const yMax = niceCeil(Math.max(dataMax * 1.15, boundOnScale ? boundMax * 1.15 : 0) || this.opts.minMax || 1);
      const x = (t) => m.l + ((t - tStart) / span) * iw;
      const y = (v) => m.t + ih - (Math.min(v, yMax) / yMax) * ih;

      for (const frac of [0, 0.5, 1]) {
        const yy = m.t + ih - frac * ih;
        this.svg.append(s('line', { x1: m.l, x2: W - m.r, y1: yy, y2: yy, class: 'gridline' }));
        this.svg.append(s('text', { x: m.l - 6, y: yy + 4, 'text-anchor': 'end', class: 'axis' }, fmt(yMax * frac)));
      }
      this.svg.append(s('text', { x: m.l, y: H - 4, class: 'axis' }, span >= WINDOW_S ? '−2 min' : `−${Math.round(span)} s`));
      this.svg.append(s('text', { x: W - m.r, y: H - 4, 'text-anchor': 'end', class: 'axis' }, 'now'));

      const path = (get) => {
        let d = '';
        let pen = false;
        for (const p of visible) {
          const v = get(p);
          if (v === null || v === undefined) { pen = false; continue; }
          d += `${pen ? 'L' : 'M'}${x(p.t).toFixed(1)} ${y(v).toFixed(1)} `;
          pen = true;
        }
        return d.trim();
      };
      series.forEach((ser, i) => {
        const d = path((p) => p.v[i]);
        if (d) this.svg.append(s('path', { d, class: `series s${i}` }));
      });
      const last = visible.length ? visible[visible.length - 1] : null;
      let over = false;
      if (bound && last && last.bound !== null) {
        if (boundOnScale) {
          const d = path((p) => p.bound);
          if (d) this.svg.append(s('path', { d, class: 'bound' }));
          const by = y(last.bound);
          this.svg.append(s('text', {
            x: W - m.r - 2, y: by > m.t + 12 ? by - 4 : by + 12, 'text-anchor': 'end', class: 'bound-label',
          }, `${bound.short} ${fmt(last.bound)}`));
        } else {
          this.svg.append(s('text', {
            x: W - m.r - 2, y: m.t + 11, 'text-anchor': 'end', class: 'bound-label off-scale',
          }, `${bound.short} ${fmt(last.bound)} ↑ (far above)`));
        }
        over = last.over !== undefined ? last.over : last.v.some((v) => v !== null && v > last.bound);
      }

      const values = series.map((_, i) => (last ? last.v[i] : null));
      if (bound) values.push(last ? last.bound : null);
      values.forEach((v, i) => { this.legendValues[i].textContent = v === null ? '–' : fmt(v); });
      this.caption.replaceChildren(title);
      if (over) this.caption.append(' ', h('span', { class: 'over' }, '— above the bound'));
      const parts = series.map((ser, i) => `${ser.label} ${values[i] === null ? 'no data' : fmt(values[i])}`);
      if (bound) parts.push(`${bound.label} ${values[series.length] === null ? 'unknown' : fmt(values[series.length])}`);
      this.desc.textContent = `Last two minutes. Now: ${parts.join(', ')}.`;
    }
  }

  const ms = (sec) => (sec === null ? null : sec * 1000);
  const fmtMs = (v) => fmtSeconds(v / 1000);
  const fmtCount = (v) => fmtNumber(v, v !== 0 && v < 10 && !Number.isInteger(v) ? 1 : 0);

  let charts = null;
  function makeCharts() {
    charts = {
      // Two charts, two axes: deliveries are commits times readers (100/s
      // committed to 96 clients is 9,600/s delivered), so on one axis the
      // commit rate lay on the zero line.
      committed: new Chart($('chart-committed'), {
        title: 'Messages committed per second',
        series: [{ label: 'committed / s' }],
        fmt: fmtRate,
      }),
      delivered: new Chart($('chart-delivered'), {
        title: 'Deliveries per second (messages × receiving clients)',
        series: [{ label: 'delivered / s' }],
        fmt: fmtRate,
      }),
      rejections: new Chart($('chart-rejections'), {
        title: 'Rejections per second by reason',
        series: REJECTION_REASONS.map(([, label]) => ({ label })),
        fmt: fmtRate,
      }),
      latency: new Chart($('chart-latency'), {
        title: 'Delivery latency (commit → flush) against staleness',
        series: [{ label: 'p99 (estimated)' }, { label: 'mean' }],
        note: 'The p99 is estimated from the server\'s latency histogram, whose buckets double '
          + '(…, 256 ms, 512 ms, …), so an estimate can fall anywhere inside a bucket. Each late '
          + 'delivery is counted exactly (under Broken promises); a second in which none was late '
          + 'had every delivery within the bound, so there the estimate is capped at the bound.',
        bound: { label: 'staleness bound (default)', short: 'staleness' },
        fmt: fmtMs,
        minMax: 10,
      }),
      lagMessages: new Chart($('chart-lag-messages'), {
        title: 'Acknowledgement lag in messages against numerical',
        series: [{ label: 'largest client lag' }],
        bound: { label: 'numerical bound (default)', short: 'numerical' },
        fmt: fmtCount,
      }),
      lagSeconds: new Chart($('chart-lag-seconds'), {
        title: 'Acknowledgement lag in time against the ack timeout',
        series: [{ label: 'oldest unacknowledged' }, { label: 'ack round trip p99' }],
        bound: { label: 'ack timeout', short: 'timeout' },
        fmt: fmtMs,
        minMax: 10,
      }),
    };
  }

  // ------------------------------------------------------------- sampling

  /** What one histogram did between two cumulative samples. */
  function histDelta(cur, prev) {
    if (!cur || !prev) return null;
    const n = cur.count - prev.count;
    if (n <= 0) return null;
    const buckets = cur.buckets.map(([le, c], i) => [le, c - ((prev.buckets[i] || [le, 0])[1])]);
    const quantile = (q) => {
      const rank = q * n;
      let lo = 0;
      let below = 0;
      for (const [le, c] of buckets) {
        if (c >= rank) return lo + (le - lo) * ((rank - below) / Math.max(1, c - below));
        lo = le;
        below = c;
      }
      return lo; // in the +Inf bucket: at least the largest finite bound
    };
    return { n, mean: (cur.sum - prev.sum) / n, quantile };
  }

  const state = {
    prev: null,          // the previous stats sample
    history: [],         // derived points, oldest first (WINDOW_S + a little)
    online: null,        // null until the first answer
    lastContact: null,   // Date.now() of the last answer
    bounds: null,        // the last /api/v1/bounds
    boundsKey: '',       // its JSON, to re-render only on change
    editing: null,       // the key of the bounds row being edited
  };

  function rate(cur, prev, dt) {
    if (prev === undefined || prev === null || dt <= 0) return null;
    const d = cur - prev;
    return d < 0 ? null : d / dt;
  }

  function ingest(stats) {
    const prev = state.prev;
    // A restarted server starts its counters again: forget the old samples.
    const restarted = prev && (stats.uptime_seconds < prev.uptime_seconds
      || stats.messages_accepted < prev.messages_accepted);
    if (restarted) state.history = [];
    const usable = prev && !restarted;
    const dt = usable ? stats.uptime_seconds - prev.uptime_seconds : 0;
    const point = {
      t: stats.uptime_seconds,
      at: Date.now(),
      stats,
      accepted: usable ? rate(stats.messages_accepted, prev.messages_accepted, dt) : null,
      delivered: usable ? rate(stats.messages_delivered, prev.messages_delivered, dt) : null,
      rejections: {},
      latency: usable ? histDelta(stats.delivery_latency_seconds, prev.delivery_latency_seconds) : null,
      ackRtt: usable ? histDelta(stats.ack_lag_seconds, prev.ack_lag_seconds) : null,
    };
    let rejected = usable ? 0 : null;
    for (const [key] of REJECTION_REASONS) {
      const r = usable ? rate(stats.rejections[key], prev.rejections[key], dt) : null;
      point.rejections[key] = r;
      if (r !== null && rejected !== null) rejected += r;
    }
    point.rejected = rejected;
    point.lateDeliveries = usable ? stats.bound_violations.staleness - prev.bound_violations.staleness : 0;
    state.prev = stats;
    if (dt > 0 || !usable) state.history.push(point);
    const cutoff = stats.uptime_seconds - WINDOW_S - 5;
    while (state.history.length && state.history[0].t < cutoff) state.history.shift();
    return point;
  }

  /** The change of a counter over the last minute of samples. */
  function lastMinute(get) {
    const hist = state.history;
    if (hist.length < 2) return null;
    const now = hist[hist.length - 1];
    let then = hist[0];
    for (const p of hist) { if (p.t >= now.t - 60) { then = p; break; } }
    return Math.max(0, get(now.stats) - get(then.stats));
  }

  // ------------------------------------------------------------- rendering

  function setText(id, text) {
    const el = $(id);
    if (el.textContent !== text) el.textContent = text;
  }

  function renderOverview(stats, point) {
    setText('kpi-connected', fmtNumber(stats.clients_connected));
    setText('kpi-active', fmtNumber(stats.clients_active));
    setText('kpi-accepted-rate', fmtRate(point.accepted));
    setText('kpi-delivered-rate', fmtRate(point.delivered));
    setText('kpi-rejected-rate', fmtRate(point.rejected));
    setText('kpi-pending', fmtNumber(stats.pending_messages));
    setText('kpi-head', fmtNumber(stats.head));
    setText('uptime', fmtSeconds(stats.uptime_seconds));
    setText('updated', fmtClock(Date.now()));
  }

  /** rows: [id, label, code or null, recent value (number or null), total] */
  function renderCounterTable(table, rows, fmtRecent) {
    const tbody = table.querySelector('tbody');
    tbody.replaceChildren(...rows.map(([id, label, code, recent, total]) => h('tr', { id },
      h('th', { scope: 'row' }, label, code ? h('span', { class: 'inherit' }, ` ${code}`) : null),
      h('td', { class: `num recent${recent ? ' nonzero' : ''}` }, recent === null ? '–' : fmtRecent(recent)),
      h('td', { class: 'num total' }, fmtNumber(total)))));
  }

  function renderRejections(stats, point) {
    renderCounterTable($('rejections'), REJECTION_REASONS.map(([key, label, code]) => (
      [`rej-${key}`, label, code, point.rejections[key], stats.rejections[key]])), fmtRate);
  }

  function renderDrops(stats) {
    renderCounterTable($('dropped'), DROP_REASONS.map(([key, label]) => (
      [`drop-${key}`, label, null, lastMinute((st) => st.clients_dropped[key]), stats.clients_dropped[key]])),
    fmtNumber);
    renderCounterTable($('violations'), VIOLATIONS.map(([key, label]) => (
      [`violation-${key}`, label, null, lastMinute((st) => st.bound_violations[key]), stats.bound_violations[key]])),
    fmtNumber);
  }

  function renderCharts() {
    const b = state.bounds ? state.bounds.default : null;
    const hist = state.history;
    charts.committed.render(hist.map((p) => ({ t: p.t, v: [p.accepted] })));
    charts.delivered.render(hist.map((p) => ({ t: p.t, v: [p.delivered] })));
    charts.rejections.render(hist.map((p) => ({ t: p.t, v: REJECTION_REASONS.map(([k]) => p.rejections[k]) })));
    charts.latency.render(hist.map((p) => {
      const bound = p.staleness_ms !== undefined ? p.staleness_ms : (b ? b.staleness_ms : null);
      let p99 = p.latency ? ms(p.latency.quantile(0.99)) : null;
      // None late (as the server counted) means all within the bound: the
      // bucket estimate may not say otherwise.
      if (p99 !== null && bound !== null && p.lateDeliveries === 0) p99 = Math.min(p99, bound);
      return latencyPoint(p, p99, bound);
    }));
    charts.lagMessages.render(hist.map((p) => ({
      t: p.t,
      v: [p.stats.ack_lag_messages_max],
      bound: p.numerical !== undefined ? p.numerical : (b ? b.numerical : null),
    })));
    charts.lagSeconds.render(hist.map((p) => ({
      t: p.t,
      v: [ms(p.stats.ack_lag_seconds_max), p.ackRtt ? ms(p.ackRtt.quantile(0.99)) : null],
      bound: p.stats.ack_timeout_seconds !== undefined ? ms(p.stats.ack_timeout_seconds) : null,
    })));
  }

  function latencyPoint(p, p99, bound) {
    return {
      t: p.t,
      v: [p99, p.latency ? ms(p.latency.mean) : null],
      bound,
      // The estimate can overshoot within a bucket: "above the bound" is
      // what the server counted as late.
      over: p.lateDeliveries > 0,
    };
  }

  /** Whether this server wants the admin token for its client list (null: not known yet). */
  let clientsNeedToken = null;

  /**
   * The laggiest clients, or null when the server wants the admin token
   * for them (it has one configured): who is connected is for operators.
   * A stored token the server refuses is forgotten.
   */
  async function getClients() {
    const headers = { Accept: 'application/json' };
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (clientsNeedToken === null) {
      // The OpenAPI document declares bearer security only when the server
      // has a token: ask it once rather than provoke a 401 every second.
      const doc = await getJSON('/api/v1/openapi.json');
      clientsNeedToken = Boolean(doc.components && doc.components.securitySchemes);
    }
    if (clientsNeedToken && !token) return null;
    if (token) headers.Authorization = `Bearer ${token}`;
    const r = await fetchWithTimeout('/api/v1/clients?limit=10', { headers });
    if (r.status === 401) {
      if (token) {
        sessionStorage.removeItem(TOKEN_KEY);
        updateTokenButton();
      }
      return null;
    }
    if (!r.ok) throw new ApiError(`/api/v1/clients answered HTTP ${r.status}`, r.status);
    return r.json();
  }

  async function unlockClients() {
    const token = await askToken(false, true);
    if (token === null) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    updateTokenButton();
    announce('The admin token is kept for this tab; the client list shows at the next refresh.');
  }

  /** The client table without the token: a note and a way to give it. */
  function renderClientsLocked() {
    setText('clients-total', '–');
    const tbody = $('clients').querySelector('tbody');
    // Kept as it is between refreshes, so the button stays put under a click.
    if (tbody.dataset.locked === 'yes') return;
    tbody.dataset.locked = 'yes';
    tbody.replaceChildren(h('tr', {}, h('td', { colspan: 6, class: 'empty' },
      'The client list needs the admin token. ',
      h('button', { type: 'button', class: 'quiet', onclick: unlockClients }, 'Enter admin token'))));
  }

  function renderClients(data) {
    if (data === null) {
      renderClientsLocked();
      return;
    }
    setText('clients-total', fmtNumber(data.total));
    const tbody = $('clients').querySelector('tbody');
    tbody.dataset.locked = 'no';
    if (!data.clients.length) {
      tbody.replaceChildren(h('tr', {}, h('td', { colspan: 6, class: 'empty' }, 'No clients connected.')));
      return;
    }
    tbody.replaceChildren(...data.clients.map((c) => h('tr', {},
      h('th', { scope: 'row' }, h('code', {}, c.handle), h('span', { class: 'inline-name' }, c.name),
        h('span', { class: 'inline-ago' }, c.streaming ? `acked ${fmtAgo(c.last_ack)}` : 'not streaming yet')),
      h('td', { class: 'name' }, c.name),
      h('td', { class: 'num' }, fmtNumber(c.lag_messages)),
      h('td', { class: 'num' }, fmtNumber(c.lag_seconds, 2)),
      h('td', { class: 'num' }, fmtNumber(c.pending)),
      h('td', { class: 'ago' }, c.streaming ? fmtAgo(c.last_ack) : 'not streaming yet'))));
  }

  // ---------------------------------------------------------------- bounds

  const threadLabel = (t) => (t === '' ? 'main room' : t);

  function boundsSummary(b) {
    return `staleness ${b.staleness}, numerical ${b.numerical}, order ${b.order}`;
  }

  function describeChange(c) {
    if (!c.new) return `override removed (was ${boundsSummary(c.old)}); follows the defaults`;
    if (!c.old) return boundsSummary(c.new);
    const diffs = [];
    if (c.old.staleness !== c.new.staleness) diffs.push(`staleness ${c.old.staleness} → ${c.new.staleness}`);
    if (c.old.numerical !== c.new.numerical) diffs.push(`numerical ${c.old.numerical} → ${c.new.numerical}`);
    if (c.old.order !== c.new.order) diffs.push(`order ${c.old.order} → ${c.new.order}`);
    return diffs.length ? diffs.join('; ') : `unchanged (${boundsSummary(c.new)})`;
  }

  function renderChanges(bounds) {
    const tbody = $('changes').querySelector('tbody');
    const recent = bounds.changes.slice(-15).reverse();
    if (!recent.length) {
      tbody.replaceChildren(h('tr', {}, h('td', { colspan: 4, class: 'empty' }, 'No changes since the server started.')));
      return;
    }
    tbody.replaceChildren(...recent.map((c) => h('tr', {},
      h('td', { class: 'when' }, fmtClock(c.at / 1000)),
      h('td', {}, c.scope === 'default' ? 'default' : h('span', {}, 'thread ', h('code', {}, threadLabel(c.thread)))),
      h('td', { class: 'what' }, describeChange(c), h('span', { class: 'inline-who' }, `by ${c.who}`)),
      h('td', { class: 'who' }, c.who))));
  }

  /** The JSON value of a typed field: numbers as numbers, anything else as typed. */
  function fieldValue(name, raw) {
    const v = raw.trim();
    if (name === 'staleness') return /^\d+(\.\d+)?$/.test(v) ? Number(v) : v;
    return /^-?\d+$/.test(v) ? Number(v) : v;
  }

  /** Shows an API error in place and marks the field it names, if any. */
  function showError(errorEl, inputs, message) {
    errorEl.textContent = message;
    let named = null;
    for (const [name, input] of Object.entries(inputs)) {
      const hit = message.toLowerCase().startsWith(name) || message.includes(`"${name}"`)
        || new RegExp(`\\b${name}\\b`).test(message.split(':')[0]);
      input.setAttribute('aria-invalid', hit && !named ? 'true' : 'false');
      if (hit && !named) named = input;
    }
    (named || Object.values(inputs)[0]).focus();
  }

  function clearError(errorEl, inputs) {
    errorEl.textContent = '';
    for (const input of Object.values(inputs)) input.removeAttribute('aria-invalid');
  }

  function renderBounds(force) {
    const bounds = state.bounds;
    if (!bounds) return;
    const key = JSON.stringify([bounds.default, bounds.threads]);
    if (!force && (state.editing || key === state.boundsKey)) return;
    state.boundsKey = key;
    const tbody = $('bounds').querySelector('tbody');
    const rows = [viewRow('default', null, bounds.default, null)];
    for (const t of bounds.threads) rows.push(viewRow(`thread:${t.thread}`, t.thread, t.effective, t.override));
    tbody.replaceChildren(...rows);
  }

  /** The row header; `buttons` (a function, called once per copy) also go
   * inside it, shown instead of the actions column on narrow screens. */
  function scopeCell(thread, buttons) {
    const cell = thread === null
      ? h('th', { scope: 'row' }, 'Default')
      : h('th', { scope: 'row' }, 'Thread ', h('code', {}, threadLabel(thread)));
    if (buttons) cell.append(h('div', { class: 'inline-actions' }, buttons()));
    return cell;
  }

  function valueCell(value, overridden, cls) {
    return h('td', { class: cls }, String(value),
      overridden === false ? h('span', { class: 'inherit' }, ' (default)') : null);
  }

  function viewRow(key, thread, eff, ovr) {
    const who = thread === null ? 'default bounds' : `thread ${threadLabel(thread)}`;
    const buttons = () => [
      h('button', {
        type: 'button', class: 'quiet', 'aria-label': `Edit ${who}`, onclick: () => startEdit(key),
      }, 'Edit'),
      thread === null ? null : h('button', {
        type: 'button', class: 'quiet', 'aria-label': `Remove the override of ${who}`,
        onclick: (e) => removeOverride(thread, e.currentTarget),
      }, 'Remove'),
    ];
    const actions = h('td', { class: 'actions' }, buttons());
    return h('tr', { 'data-key': key },
      scopeCell(thread, buttons),
      valueCell(eff.staleness, ovr ? ovr.staleness !== null : null, ''),
      valueCell(eff.numerical, ovr ? ovr.numerical !== null : null, 'num'),
      valueCell(eff.order, ovr ? ovr.order !== null : null, 'num'),
      actions);
  }

  function findRow(key) {
    return [...$('bounds').querySelectorAll('tbody tr[data-key]')].find((tr) => tr.dataset.key === key);
  }

  function startEdit(key) {
    if (state.editing) cancelEdit();
    const bounds = state.bounds;
    const isDefault = key === 'default';
    const thread = isDefault ? null : key.slice('thread:'.length);
    const entry = isDefault ? null : bounds.threads.find((t) => t.thread === thread);
    if (!isDefault && !entry) return;
    const row = findRow(key);
    if (!row) return;
    state.editing = key;
    const who = isDefault ? 'default bounds' : `thread ${threadLabel(thread)}`;
    const errId = `edit-error-${Math.random().toString(36).slice(2)}`;
    const initial = {};
    const inputs = {};
    for (const name of ['staleness', 'numerical', 'order']) {
      let value;
      if (isDefault) value = String(bounds.default[name]);
      else value = entry.override[name] === null ? '' : String(entry.override[name]);
      initial[name] = value;
      inputs[name] = h('input', {
        value,
        'aria-label': `${name[0].toUpperCase()}${name.slice(1)}, ${who}`,
        'aria-describedby': errId,
        inputmode: name === 'staleness' ? null : 'numeric',
        placeholder: isDefault ? null : `default ${bounds.default[name]}`,
        autocomplete: 'off',
        spellcheck: 'false',
        onkeydown: (e) => {
          if (e.key === 'Enter') { e.preventDefault(); save(); }
          if (e.key === 'Escape') { e.preventDefault(); cancelEdit(); }
        },
      });
    }
    const error = h('p', { id: errId, class: 'error', role: 'alert' });
    const saveButtons = [];
    const buttons = () => {
      const save1 = h('button', { type: 'button', onclick: () => save() }, 'Save');
      saveButtons.push(save1);
      return [save1, h('button', { type: 'button', class: 'quiet', onclick: () => cancelEdit() }, 'Cancel')];
    };
    const setSaving = (on) => { for (const b of saveButtons) b.disabled = on; };
    const editRow = h('tr', { 'data-key': key, class: 'editing' },
      scopeCell(thread, buttons),
      h('td', {}, inputs.staleness),
      h('td', { class: 'num' }, inputs.numerical),
      h('td', { class: 'num' }, inputs.order),
      h('td', { class: 'actions' }, buttons()));
    const errorRow = h('tr', { class: 'error-row' }, h('td', { colspan: 5 }, error));
    row.replaceWith(editRow);
    editRow.after(errorRow);
    inputs.staleness.focus();
    inputs.staleness.select();

    async function save() {
      clearError(error, inputs);
      const body = {};
      for (const [name, input] of Object.entries(inputs)) {
        const raw = input.value;
        if (isDefault) {
          if (raw.trim() !== initial[name] && raw.trim() !== '') body[name] = fieldValue(name, raw);
        } else if (raw.trim() !== '') {
          body[name] = fieldValue(name, raw);
        }
      }
      if (isDefault && !Object.keys(body).length) {
        showError(error, inputs, 'Nothing changed: edit a value first, or press Cancel.');
        return;
      }
      setSaving(true);
      try {
        const path = isDefault
          ? '/api/v1/bounds/default'
          : `/api/v1/bounds/threads/${encodeURIComponent(thread)}`;
        const change = await mutate('PUT', path, body);
        state.editing = null;
        announce(`Saved ${who}: ${describeChange(change)}.`);
        await refreshBounds();
        renderBounds(true);
        focusRowButton(key, 'Edit');
      } catch (e) {
        setSaving(false);
        showError(error, inputs, e.message);
      }
    }
  }

  function cancelEdit() {
    const key = state.editing;
    state.editing = null;
    renderBounds(true);
    if (key) focusRowButton(key, 'Edit');
  }

  function focusRowButton(key, label) {
    const row = findRow(key);
    // The visible copy (the column, or the one in the row header on phones).
    const btn = row && [...row.querySelectorAll('button')]
      .find((b) => b.textContent === label && b.getClientRects().length > 0);
    if (btn) btn.focus();
  }

  async function removeOverride(thread, button) {
    const key = `thread:${thread}`;
    const row = findRow(key);
    button.disabled = true;
    try {
      await mutate('DELETE', `/api/v1/bounds/threads/${encodeURIComponent(thread)}`);
      announce(`Removed the override of thread ${threadLabel(thread)}; it follows the defaults.`);
      await refreshBounds();
      renderBounds(true);
      $('add-override').elements.thread.focus();
    } catch (e) {
      button.disabled = false;
      let errRow = row && row.nextElementSibling;
      if (!errRow || !errRow.classList.contains('error-row')) {
        errRow = h('tr', { class: 'error-row' }, h('td', { colspan: 5 }, h('p', { class: 'error', role: 'alert' })));
        row.after(errRow);
      }
      errRow.querySelector('.error').textContent = e.message;
    }
  }

  function setupAddForm() {
    const form = $('add-override');
    const error = $('add-error');
    const inputs = {
      thread: form.elements.thread,
      staleness: form.elements.staleness,
      numerical: form.elements.numerical,
      order: form.elements.order,
    };
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      clearError(error, inputs);
      const thread = inputs.thread.value;
      if (!thread.trim()) {
        showError(error, inputs, 'thread id: give the thread to override (the main room can only be set in the config file).');
        return;
      }
      const body = {};
      for (const name of ['staleness', 'numerical', 'order']) {
        if (inputs[name].value.trim() !== '') body[name] = fieldValue(name, inputs[name].value);
      }
      const button = form.querySelector('button[type="submit"]');
      button.disabled = true;
      try {
        const change = await mutate('PUT', `/api/v1/bounds/threads/${encodeURIComponent(thread)}`, body);
        form.reset();
        announce(`Added bounds for thread ${threadLabel(thread)}: ${describeChange(change)}.`);
        await refreshBounds();
        renderBounds(true);
        inputs.thread.focus();
      } catch (err) {
        const { thread: _t, ...fields } = inputs;
        showError(error, /thread id/.test(err.message) ? inputs : fields, err.message);
      } finally {
        button.disabled = false;
      }
    });
  }

  // ----------------------------------------------------------- connection

  function setOnline(online, reason) {
    const conn = $('conn');
    if (online) {
      const draining = state.prev && state.prev.draining;
      conn.dataset.state = draining ? 'draining' : 'live';
      setText('conn-text', draining ? 'Draining' : 'Live');
      if (state.online === false) announce('Connection to the server restored.');
      $('offline').hidden = true;
      $('offline').textContent = '';
    } else {
      conn.dataset.state = 'offline';
      setText('conn-text', 'Unreachable');
      const since = state.lastContact ? ` Last contact at ${fmtClock(state.lastContact)}; the figures below are from then.` : '';
      $('offline').textContent = `Server unreachable — retrying every second.${since} (${reason})`;
      $('offline').hidden = false;
    }
    state.online = online;
  }

  /** One row per policy: whether it is on, what it does now, what it last decided. */
  function policyRows(p) {
    const load = p.load || {};
    const interest = p.interest || {};
    const size = p.size || {};
    const loadLast = (load.decisions || []).slice(0, 3).map((d) => (
      `${fmtClock(d.at / 1000)} ${d.step} ×${fmtNumber(d.scale, 2)} (pressure ${fmtNumber(d.pressure, 2)}: lateness ${fmtNumber(d.lateness, 2)}, write age ${fmtNumber(d.write_age, 2)}${typeof d.work === 'number' ? `, CPU ${fmtNumber(d.work, 2)} cores` : ''}${typeof d.writes === 'number' ? `, ${fmtNumber(d.writes, 0)} writes/s` : ''})`));
    const sizeThreads = Object.entries(size.threads || {});
    const widest = sizeThreads.reduce((a, b) => (b[1] > a[1] ? b : a), ['', 1]);
    const sizeLast = (size.decisions || []).slice(0, 3).map((d) => (
      `${fmtClock(d.at / 1000)} ${d.thread === '' ? 'main room' : d.thread}: ${fmtNumber(d.readers)} readers → ×${fmtNumber(d.factor, 2)}`));
    return [
      ['load', 'Load', load.enabled,
        load.enabled ? `bounds ×${fmtNumber(load.scale || 1, 2)} (target ${load.target}, up to ${load.max_staleness})` : 'operator\'s bounds',
        loadLast],
      ['interest', 'Interest', interest.enabled,
        interest.enabled
          ? `other threads ×${fmtNumber(interest.factor, 0)} staleness; ${fmtNumber(interest.taking_part)} of ${fmtNumber(interest.streaming)} clients take part somewhere`
          : 'every client gets every thread at its own bounds',
        []],
      ['size', 'Size', size.enabled,
        size.enabled
          ? (sizeThreads.length ? `${sizeThreads.length} thread(s) widened, widest ×${fmtNumber(widest[1], 2)} (${widest[0] === '' ? 'main room' : widest[0]})` : 'no thread above its reader threshold')
          : 'operator\'s bounds',
        sizeLast],
    ];
  }

  function renderPolicies(p) {
    const tbody = $('policies').querySelector('tbody');
    tbody.replaceChildren(...policyRows(p).map(([key, label, on, output, last]) => h('tr', { id: `policy-${key}` },
      h('th', { scope: 'row' }, label),
      h('td', { class: `state ${on ? 'on' : 'off'}` }, on ? 'On' : 'Off'),
      h('td', { class: 'output' }, output),
      h('td', { class: 'last' }, last.length ? last.join('; ') : '–'))));
  }

  async function refreshBounds() {
    state.bounds = await getJSON('/api/v1/bounds');
    renderChanges(state.bounds);
  }

  /**
   * Fills the charts from the server's own sample history (one a second),
   * so they are full on open and after a reload. A server without it (an
   * older one) leaves them to fill from live samples.
   */
  async function backfill() {
    try {
      const h = await getJSON(`/api/v1/stats/history?seconds=${WINDOW_S + 5}`);
      for (const sample of h.samples) {
        const point = ingest(sample.stats);
        point.staleness_ms = sample.staleness_ms;
        point.numerical = sample.numerical;
      }
    } catch (e) {
      // Live samples fill the charts instead.
    }
  }

  async function poll() {
    try {
      const [stats, clients, bounds, policies] = await Promise.all([
        getJSON('/api/v1/stats'),
        getClients(),
        getJSON('/api/v1/bounds'),
        getJSON('/api/v1/policies'),
      ]);
      state.lastContact = Date.now();
      state.bounds = bounds;
      const point = ingest(stats);
      point.staleness_ms = bounds.default.staleness_ms;
      point.numerical = bounds.default.numerical;
      setOnline(true);
      renderOverview(stats, point);
      renderRejections(stats, point);
      renderDrops(stats);
      renderClients(clients);
      renderBounds(false);
      renderChanges(bounds);
      renderPolicies(policies);
      renderCharts();
    } catch (e) {
      const reason = e instanceof ApiError ? e.message
        : (e && e.name === 'AbortError' ? 'no answer within 3 s' : 'connection failed');
      setOnline(false, reason);
    } finally {
      setTimeout(poll, POLL_MS);
    }
  }

  function init() {
    makeCharts();
    setupAddForm();
    $('token-form').addEventListener('submit', (e) => {
      e.preventDefault();
      const v = $('token-input').value;
      if (!v) { $('token-input').setAttribute('aria-invalid', 'true'); $('token-input').focus(); return; }
      finishToken(v);
    });
    $('token-cancel').addEventListener('click', () => finishToken(null));
    $('token-dialog').addEventListener('cancel', (e) => { e.preventDefault(); finishToken(null); });
    $('forget-token').addEventListener('click', () => {
      sessionStorage.removeItem(TOKEN_KEY);
      updateTokenButton();
      announce('The admin token was forgotten.');
    });
    updateTokenButton();
    let resizeTimer = null;
    window.addEventListener('resize', () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(() => { if (state.history.length) renderCharts(); }, 100);
    });
    backfill().finally(poll);
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
  else init();
})();
