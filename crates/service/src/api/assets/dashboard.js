// The clerksync dashboard (served at GET /admin, compiled into the binary).
//
// Owns: asking for the admin token, polling the admin API, drawing what it
// answers. Must never: show data before the server accepted the token, send the
// token anywhere but a same-origin /admin/* request, or put server data into the
// DOM as markup (every value goes in through textContent or canvas text).
'use strict';

(function () {
  const TOKEN_KEY = 'clerksync.adminToken';
  const POLL_MS = 1000;
  // The chart spans the server's history: five minutes of one-second counts.
  const CHART_SECONDS = 300;
  const STATUS_CLASSES = ['pending', 'done', 'failed', 'dead', 'discarded'];
  const ENTITY_ID = /^(user|org)_[A-Za-z0-9_-]{1,120}$/;

  const $ = (id) => document.getElementById(id);

  // --- the token -----------------------------------------------------------

  // sessionStorage keeps the token for this tab only (gone when it closes);
  // some browsers refuse storage on a plain page, then it lives in memory.
  let memoryToken = null;
  function loadToken() {
    try { return sessionStorage.getItem(TOKEN_KEY) || memoryToken; } catch (_) { return memoryToken; }
  }
  function saveToken(t) {
    memoryToken = t;
    try { sessionStorage.setItem(TOKEN_KEY, t); } catch (_) { /* memory only */ }
  }
  function clearToken() {
    memoryToken = null;
    try { sessionStorage.removeItem(TOKEN_KEY); } catch (_) { /* memory only */ }
  }

  // `#token=...` is read once and removed from the address bar, so it does not
  // stay in the history, a bookmark or a screenshot.
  function takeTokenFromFragment() {
    const params = new URLSearchParams(location.hash.replace(/^#/, ''));
    const t = params.get('token');
    if (!t) return;
    saveToken(t);
    params.delete('token');
    const rest = params.toString();
    history.replaceState(null, '', location.pathname + location.search + (rest ? '#' + rest : ''));
  }

  // --- the API -------------------------------------------------------------

  class Unauthorized extends Error {}

  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function api(path, method) {
    const token = loadToken();
    if (!token) throw new Unauthorized('no token');
    const resp = await fetch(path, {
      method: method || 'GET',
      headers: { 'Authorization': 'Bearer ' + token, 'Accept': 'application/json' },
      cache: 'no-store',
      credentials: 'omit',
    });
    if (resp.status === 401) throw new Unauthorized('unauthorized');
    let body = null;
    try { body = await resp.json(); } catch (_) { body = null; }
    if (!resp.ok) {
      const msg = body && typeof body.error === 'string' ? body.error : 'HTTP ' + resp.status;
      throw new ApiError(resp.status, msg);
    }
    return body;
  }

  // --- small DOM helpers (text only) ----------------------------------------

  function el(tag, opts, children) {
    const e = document.createElement(tag);
    if (opts) {
      if (opts.text !== undefined && opts.text !== null) e.textContent = String(opts.text);
      if (opts.cls) e.className = opts.cls;
      if (opts.title) e.title = String(opts.title);
      if (opts.onclick) e.addEventListener('click', opts.onclick);
      if (opts.type) e.type = opts.type;
      // data-* attributes: stable hooks for tests and scripts (text values only).
      if (opts.data) for (const k of Object.keys(opts.data)) e.dataset[k] = String(opts.data[k]);
    }
    for (const c of children || []) e.appendChild(c);
    return e;
  }

  function fmtTime(ms) {
    if (typeof ms !== 'number') return '';
    return new Date(ms).toLocaleTimeString();
  }
  function fmtFull(ms) {
    if (typeof ms !== 'number') return '';
    return new Date(ms).toISOString();
  }
  function fmtNum(n) {
    return typeof n === 'number' ? n.toLocaleString() : '–';
  }
  function statusBadge(status) {
    const s = String(status);
    // Only known statuses become class names.
    const cls = STATUS_CLASSES.includes(s) ? 'badge st-' + s : 'badge';
    return el('span', { text: s, cls: cls });
  }
  function json(v) {
    return v === undefined ? '' : JSON.stringify(v, null, 2);
  }
  function short(v) {
    return v === undefined ? '' : JSON.stringify(v);
  }

  // A cell that opens an entity, when the value looks like one.
  function entityCell(id) {
    if (typeof id !== 'string' || !id) return el('td', { text: '' });
    if (!ENTITY_ID.test(id)) return el('td', { text: id, cls: 'mono' });
    return el('td', {}, [el('button', {
      text: id, cls: 'link mono', type: 'button', onclick: () => openEntity(id),
    })]);
  }
  function deliveryCell(svixId) {
    return el('td', {}, [el('button', {
      text: svixId, cls: 'link mono', type: 'button', title: 'show the delivery and its body',
      onclick: () => openEvent(svixId),
    })]);
  }
  // The server keeps the last error after a later attempt succeeded (it is the
  // event's history); on a processed event it is shown muted, as a past error.
  function errorCell(err, status) {
    const text = typeof err === 'string' ? err : '';
    if (text && status === 'done') {
      return el('td', { text: 'earlier attempt: ' + text, cls: 'err old', title: text });
    }
    return el('td', { text: text, cls: 'err', title: text });
  }

  // --- state and the poll loop ----------------------------------------------

  let running = false;
  let timer = null;
  // Bumped on every (re)start: a poll of an older generation stops by itself,
  // so a second start never leaves two loops running.
  let generation = 0;
  let paused = false;
  let openEntityId = null;
  let lastEventsKey = '';
  let lastDeadKey = '';
  let lastEntityKey = '';
  let newestSeq = null;
  // The last answer of /admin/throughput (kept by the server, so a page opened
  // now shows the last five minutes, not only what this tab saw).
  let recent = null;

  function setConn(state, text) {
    const c = $('conn');
    c.className = 'conn conn-' + state;
    c.textContent = text;
  }

  function stop() {
    running = false;
    generation++;
    if (timer) { clearTimeout(timer); timer = null; }
  }

  function showLogin(message) {
    stop();
    $('app').hidden = true;
    $('forget').hidden = true;
    $('login').hidden = false;
    $('login-msg').textContent = message || '';
    $('token').value = '';
    $('token').focus();
  }

  // Locks the page: nothing stays on screen that came with a refused token.
  function unauthorized() {
    clearToken();
    clearData();
    setConn('bad', 'unauthorized');
    showLogin('Unauthorized: the server did not accept this admin token.');
  }

  function clearData() {
    for (const id of ['events', 'dead', 'entity-events', 'entity-audit']) $(id).replaceChildren();
    $('entity-record').textContent = '';
    $('event-body').textContent = '';
    $('entity').hidden = true;
    $('event').hidden = true;
    openEntityId = null;
    lastEventsKey = lastDeadKey = lastEntityKey = '';
    newestSeq = null;
    recent = null;
  }

  async function start() {
    stop();
    const gen = generation;
    setConn('idle', 'connecting…');
    // Prove the token before showing anything.
    try {
      await api('/admin/stats');
      if (gen !== generation) return;
      $('login').hidden = true;
      $('app').hidden = false;
      $('forget').hidden = false;
      running = true;
      tick(gen);
    } catch (e) {
      if (gen !== generation) return;
      if (e instanceof Unauthorized) { unauthorized(); return; }
      setConn('bad', 'error');
      showLogin('Cannot reach the admin API: ' + e.message);
    }
  }

  async function tick(gen) {
    if (!running || gen !== generation) return;
    try {
      const jobs = [refreshStats(), refreshThroughput(), refreshDead(), refreshReconcile()];
      if (!paused) jobs.push(refreshEvents());
      if (openEntityId) jobs.push(refreshEntity(openEntityId, false));
      await Promise.all(jobs);
      if (gen !== generation) return;
      if (running) setConn('ok', paused ? 'live (stream paused)' : 'live');
    } catch (e) {
      if (gen !== generation) return;
      if (e instanceof Unauthorized) { unauthorized(); return; }
      // A restart or a network blip: keep polling, say so.
      setConn('warn', 'reconnecting… (' + e.message + ')');
    }
    // The next poll starts after this one ended, so slow answers never pile up.
    if (running && gen === generation) timer = setTimeout(() => tick(gen), POLL_MS);
  }

  // --- counters and chart ---------------------------------------------------

  async function refreshStats() {
    renderStats(await api('/admin/stats'));
  }

  function renderStats(s) {
    for (const k of ['received', 'pending', 'processed', 'failed', 'dead', 'discarded']) {
      $('c-' + k).textContent = fmtNum(s[k]);
    }
  }

  async function refreshThroughput() {
    const h = await api('/admin/throughput');
    if (h && Array.isArray(h.received) && Array.isArray(h.processed)) recent = h;
    drawChart();
  }

  // Per-second counts as points `secondsAgo` back from the newest complete
  // second. The server's last entry is the second still running: left out, so
  // the line does not dip at its end every time.
  function series(key) {
    if (!recent) return [];
    const values = recent[key].slice(0, -1);
    return values.map((v, i) => ({
      ago: values.length - i,
      v: typeof v === 'number' && v > 0 ? v : 0,
    }));
  }

  // A round axis: steps of 1, 2 or 5 times a power of ten (at least 1: the
  // counts are whole numbers), at most 4 of them up to the top, e.g. 137 per
  // second gives 0, 50, 100, 150.
  function niceScale(v) {
    const max = Math.max(1, v);
    const rough = max / 4;
    const p = Math.pow(10, Math.floor(Math.log10(rough)));
    let step = 10 * p;
    for (const m of [1, 2, 5]) {
      if (m * p >= rough) { step = m * p; break; }
    }
    step = Math.max(1, Math.round(step));
    return { top: Math.ceil(max / step) * step, step: step };
  }

  function drawChart() {
    const canvas = $('chart');
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth || 600;
    const h = canvas.clientHeight || 160;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(h * dpr);
    }
    const ctx = canvas.getContext('2d');
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    const processed = series('processed');
    const received = series('received');
    const left = 48, right = 8, top = 8, bottom = 20;
    const pw = w - left - right, ph = h - top - bottom;
    let peak = 0;
    for (const p of processed.concat(received)) if (p.v > peak) peak = p.v;
    const scale = niceScale(peak);
    const max = scale.top;
    const span = CHART_SECONDS * 1000;
    const x = (ago) => left + pw * (1 - (ago * 1000) / span);
    const y = (v) => top + ph * (1 - v / max);

    ctx.font = '11px system-ui, sans-serif';
    ctx.fillStyle = '#6b7280';
    ctx.strokeStyle = '#e5e7eb';
    ctx.lineWidth = 1;
    ctx.textAlign = 'right';
    ctx.textBaseline = 'middle';
    const ticks = [];
    for (let v = 0; v <= max; v += scale.step) ticks.push(v);
    for (const v of ticks) {
      const yy = Math.round(y(v)) + 0.5;
      ctx.beginPath(); ctx.moveTo(left, yy); ctx.lineTo(w - right, yy); ctx.stroke();
      ctx.fillText(v.toLocaleString(), left - 6, yy);
    }
    // What is drawn, for tests and scripts (the canvas itself is pixels).
    canvas.dataset.ticks = ticks.join(',');
    const total = (pts) => pts.reduce((a, p) => a + p.v, 0);
    canvas.dataset.received = String(total(received));
    canvas.dataset.processed = String(total(processed));
    ctx.textAlign = 'center';
    ctx.textBaseline = 'top';
    for (const m of [5, 4, 3, 2, 1, 0]) {
      const xx = left + pw * (1 - (m * 60000) / span);
      ctx.fillText(m === 0 ? 'now' : '−' + m + ' min', Math.min(Math.max(xx, left + 20), w - right - 14), h - bottom + 5);
    }

    const line = (pts, color) => {
      if (pts.length < 1) return;
      ctx.strokeStyle = color;
      ctx.lineWidth = 2;
      ctx.beginPath();
      pts.forEach((p, i) => {
        const px = Math.max(left, x(p.ago));
        if (i === 0) ctx.moveTo(px, y(p.v)); else ctx.lineTo(px, y(p.v));
      });
      ctx.stroke();
    };
    line(received, '#3b82f6');
    line(processed, '#16a34a');

    const last = (pts) => (pts.length ? pts[pts.length - 1].v : 0);
    $('rate-now').textContent = 'last second: ' + last(processed).toLocaleString() + ' processed, '
      + last(received).toLocaleString() + ' received';
  }

  // --- the live event stream -------------------------------------------------

  async function refreshEvents() {
    const status = $('status-filter').value;
    const q = '/admin/events?limit=50' + (status ? '&status=' + encodeURIComponent(status) : '');
    const page = await api(q);
    const rows = page.data || [];
    const key = status + '|' + JSON.stringify(rows);
    if (key === lastEventsKey) return;
    lastEventsKey = key;
    const before = newestSeq;
    const tbody = $('events');
    tbody.replaceChildren(...rows.map((r) => {
      const tr = el('tr', { data: { svixId: r.svix_id, status: r.status } }, [
        el('td', { text: fmtTime(r.received_at), title: fmtFull(r.received_at) }),
        deliveryCell(r.svix_id),
        el('td', { text: r.event_type, cls: 'mono' }),
        entityCell(r.entity_key),
        el('td', {}, [statusBadge(r.status)]),
        el('td', { text: r.attempts, cls: 'num' }),
        errorCell(r.last_error, r.status),
      ]);
      // New arrivals flash once, so the stream reads as a stream.
      if (before !== null && r.seq > before) tr.className = 'fresh';
      return tr;
    }));
    for (const r of rows) if (newestSeq === null || r.seq > newestSeq) newestSeq = r.seq;
  }

  // --- reconciliation ------------------------------------------------------

  // The pass running on this node (progress per resource) or else the last
  // pass on any node (its counts and drift: what webhooks missed).
  async function refreshReconcile() {
    const r = await api('/admin/reconcile');
    const running = r.running;
    const last = r.last;
    let state = r.status;
    if (running && running.node === 'other') state = 'running on another node';
    $('rc-state').textContent = '(' + state + ')';
    $('rc-run').disabled = !r.key_configured || r.status === 'running';
    const parts = [];
    if (last) {
      parts.push('last pass ' + fmtFull(last.finished_at) + (last.dry_run ? ' (dry run)' : '') +
        (last.ok ? ': drift ' + fmtNum(last.drift) : ': failed: ' + (last.error || '')));
    } else {
      parts.push('no pass yet');
    }
    if (typeof r.next_run_at === 'number') parts.push('next scheduled ' + fmtFull(r.next_run_at));
    else parts.push('not scheduled (CLERKSYNC_RECONCILE_EVERY)');
    if (!r.key_configured) parts.push('no Clerk key (CLERKSYNC_CLERK_SECRET_KEY)');
    $('rc-summary').textContent = parts.join(' · ');
    const rows = running && running.resources.length ? running.resources.map((p) => ({
      resource: p.resource, phase: p.phase, seen: p.seen, created: p.created, updated: p.updated,
      deleted: p.deleted, unchanged: null, drift: null,
    })) : (last ? last.resources.map((x) => ({
      resource: x.resource, phase: x.ending, seen: x.seen, created: x.created, updated: x.updated,
      deleted: x.deleted, unchanged: x.unchanged, drift: x.drift,
    })) : []);
    $('rc-rows').replaceChildren(...rows.map((x) => el('tr', { data: { resource: x.resource } }, [
      el('td', { text: x.resource, cls: 'mono' }),
      el('td', { text: x.phase }),
      el('td', { text: fmtNum(x.seen), cls: 'num' }),
      el('td', { text: fmtNum(x.created), cls: 'num' }),
      el('td', { text: fmtNum(x.updated), cls: 'num' }),
      el('td', { text: fmtNum(x.deleted), cls: 'num' }),
      el('td', { text: fmtNum(x.unchanged), cls: 'num' }),
      el('td', { text: fmtNum(x.drift), cls: x.drift > 0 ? 'num warn' : 'num', data: { drift: x.drift === null ? '' : x.drift } }),
    ])));
  }

  async function runReconcile() {
    $('rc-msg').textContent = '';
    $('rc-run').disabled = true;
    try {
      await api('/admin/reconcile', 'POST');
      await refreshReconcile();
    } catch (e) {
      if (e instanceof Unauthorized) { unauthorized(); return; }
      $('rc-msg').textContent = e.message;
    }
  }

  // --- dead letters --------------------------------------------------------

  async function refreshDead() {
    const page = await api('/admin/events?status=dead&limit=100');
    const rows = page.data || [];
    $('dead-count').textContent = rows.length ? '(' + rows.length + (page.next_cursor ? '+' : '') + ')' : '';
    $('dead-empty').hidden = rows.length > 0;
    $('retry-all').disabled = rows.length === 0;
    const key = JSON.stringify(rows);
    if (key === lastDeadKey) return;
    lastDeadKey = key;
    $('dead').replaceChildren(...rows.map((r) => el('tr', { data: { svixId: r.svix_id } }, [
      el('td', { text: fmtTime(r.received_at), title: fmtFull(r.received_at) }),
      deliveryCell(r.svix_id),
      el('td', { text: r.event_type, cls: 'mono' }),
      entityCell(r.entity_key),
      el('td', { text: r.attempts, cls: 'num' }),
      errorCell(r.last_error),
      el('td', { cls: 'actions' }, [
        el('button', { text: 'Retry', type: 'button', cls: 'small', data: { action: 'retry' }, onclick: (ev) => act(ev, r.svix_id, 'retry') }),
        el('button', { text: 'Discard', type: 'button', cls: 'small', data: { action: 'discard' }, onclick: (ev) => act(ev, r.svix_id, 'discard') }),
      ]),
    ])));
  }

  async function act(ev, svixId, what) {
    const button = ev.currentTarget;
    button.disabled = true;
    const msg = $('dead-msg');
    try {
      const r = await api('/admin/events/' + encodeURIComponent(svixId) + '/' + what, 'POST');
      msg.textContent = svixId + ': ' + (r && r.status ? r.status : what);
      lastDeadKey = '';
    } catch (e) {
      if (e instanceof Unauthorized) { unauthorized(); return; }
      msg.textContent = svixId + ': ' + e.message;
      button.disabled = false;
    }
  }

  async function retryAll() {
    const button = $('retry-all');
    button.disabled = true;
    try {
      const r = await api('/admin/events/retry-dead', 'POST');
      $('dead-msg').textContent = 'queued ' + (r && typeof r.queued === 'number' ? r.queued : 0) + ' dead event(s)';
      lastDeadKey = '';
    } catch (e) {
      if (e instanceof Unauthorized) { unauthorized(); return; }
      $('dead-msg').textContent = 'retry all: ' + e.message;
      button.disabled = false;
    }
  }

  // --- one delivery --------------------------------------------------------

  async function openEvent(svixId) {
    $('search-msg').textContent = '';
    try {
      const e = await api('/admin/events/' + encodeURIComponent(svixId));
      $('event-title').textContent = 'Delivery ' + e.svix_id + ' · ' + e.status;
      $('event-body').textContent = json(e);
      $('event').hidden = false;
      $('event').scrollIntoView({ behavior: 'smooth', block: 'nearest' });
    } catch (err) {
      if (err instanceof Unauthorized) { unauthorized(); return; }
      $('search-msg').textContent = err.status === 404
        ? 'No delivery with id ' + svixId + '.'
        : 'Cannot load ' + svixId + ': ' + err.message;
    }
  }

  // --- one entity ----------------------------------------------------------

  async function openEntity(id) {
    $('search-msg').textContent = '';
    openEntityId = id;
    lastEntityKey = '';
    try {
      await refreshEntity(id, true);
      $('entity').hidden = false;
      $('entity').scrollIntoView({ behavior: 'smooth', block: 'nearest' });
    } catch (err) {
      if (err instanceof Unauthorized) { unauthorized(); return; }
      openEntityId = null;
      $('entity').hidden = true;
      $('search-msg').textContent = err.status === 404
        ? 'Nothing received for ' + id + '.'
        : 'Cannot load ' + id + ': ' + err.message;
    }
  }

  async function refreshEntity(id, first) {
    const path = encodeURIComponent(id);
    // An entity whose every delivery failed is not in the store (404) but its
    // deliveries are what the operator came for: show those.
    const [ent, evs] = await Promise.all([
      api('/admin/entities/' + path + '?limit=500').catch((e) => {
        if (e instanceof ApiError && e.status === 404) return null;
        throw e;
      }),
      api('/admin/events?limit=20&entity=' + path),
    ]);
    if (ent === null && !(evs.data || []).length) throw new ApiError(404, 'not found');
    // The panel may have been closed or switched while this was in flight.
    if (openEntityId !== id) return;
    const key = JSON.stringify([ent, evs]);
    if (!first && key === lastEntityKey) return;
    lastEntityKey = key;
    if (ent === null) {
      $('entity-title').textContent = (id.startsWith('org_') ? 'organization ' : 'user ') + id;
      $('entity-meta').textContent = 'not in the store: none of its deliveries has applied';
      $('entity-record').textContent = '(no record)';
      renderAudit([]);
      renderEntityEvents(evs.data || []);
      return;
    }
    $('entity-title').textContent = ent.kind + ' ' + ent.id + (ent.deleted ? ' (deleted)' : '');
    $('entity-meta').textContent = [
      typeof ent.version === 'number' ? 'version ' + ent.version : 'not in the store',
      typeof ent.synced_at === 'number' ? 'synced ' + fmtFull(ent.synced_at) : '',
      ent.next_cursor ? 'showing the first 500 changes' : '',
    ].filter(Boolean).join(' · ');
    $('entity-record').textContent = ent.record === null
      ? (ent.deleted ? '(deleted: only a tombstone is kept)' : '(no record)')
      : json(ent.record);
    renderAudit(ent.audit || []);
    renderEntityEvents(evs.data || []);
  }

  function renderEntityEvents(rows) {
    $('entity-events').replaceChildren(...rows.map((r) => el('tr', {}, [
      el('td', { text: fmtTime(r.received_at), title: fmtFull(r.received_at) }),
      deliveryCell(r.svix_id),
      el('td', { text: r.event_type, cls: 'mono' }),
      el('td', {}, [statusBadge(r.status)]),
      el('td', { text: r.attempts, cls: 'num' }),
      errorCell(r.last_error, r.status),
    ])));
  }

  function renderAudit(entries) {
    const box = $('entity-audit');
    if (!entries.length) {
      box.replaceChildren(el('p', { text: 'No applied changes.', cls: 'muted' }));
      return;
    }
    box.replaceChildren(...entries.map((a) => {
      const changes = a.changes && typeof a.changes === 'object' ? a.changes : {};
      const rows = Object.keys(changes).map((field) => {
        const c = changes[field] || {};
        return el('tr', {}, [
          el('td', { text: field, cls: 'mono' }),
          el('td', { text: short(c.before), cls: 'mono before' }),
          el('td', { text: short(c.after), cls: 'mono after' }),
        ]);
      });
      return el('div', { cls: 'audit' }, [
        el('div', { cls: 'audit-head' }, [
          el('span', { text: '#' + a.seq + ' ' + a.operation, cls: 'op' }),
          el('span', { text: ' ' + fmtFull(a.at) + ' · version ' + a.version + ' · ', cls: 'muted' }),
          el('button', { text: a.svix_id, cls: 'link mono', type: 'button', onclick: () => openEvent(a.svix_id) }),
        ]),
        el('table', { cls: 'changes' }, [
          el('thead', {}, [el('tr', {}, [
            el('th', { text: 'field' }), el('th', { text: 'before' }), el('th', { text: 'after' }),
          ])]),
          el('tbody', {}, rows),
        ]),
      ]);
    }));
  }

  function onSearch(ev) {
    ev.preventDefault();
    const q = $('search').value.trim();
    if (!q) return;
    if (ENTITY_ID.test(q)) openEntity(q);
    else if (/^msg_/.test(q)) openEvent(q);
    else $('search-msg').textContent = 'Enter a user id (user_…), an organization id (org_…) or a delivery id (msg_…).';
  }

  // --- wiring --------------------------------------------------------------

  function init() {
    $('login-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const t = $('token').value.trim();
      if (!t) return;
      saveToken(t);
      $('login-msg').textContent = '';
      start();
    });
    $('forget').addEventListener('click', () => {
      clearToken();
      clearData();
      setConn('idle', 'not connected');
      showLogin('');
    });
    $('search-form').addEventListener('submit', onSearch);
    $('entity-close').addEventListener('click', () => { openEntityId = null; $('entity').hidden = true; });
    $('event-close').addEventListener('click', () => { $('event').hidden = true; });
    $('retry-all').addEventListener('click', retryAll);
    $('rc-run').addEventListener('click', runReconcile);
    $('pause').addEventListener('click', () => {
      paused = !paused;
      $('pause').textContent = paused ? 'Resume' : 'Pause';
    });
    $('status-filter').addEventListener('change', () => { lastEventsKey = ''; newestSeq = null; });
    window.addEventListener('resize', drawChart);
    window.addEventListener('hashchange', () => {
      if (/(^#|&)token=/.test(location.hash)) { takeTokenFromFragment(); start(); }
    });

    takeTokenFromFragment();
    if (loadToken()) start();
    else showLogin('');
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
  else init();
})();
