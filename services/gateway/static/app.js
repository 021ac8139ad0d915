// sonar dashboard: plain JavaScript, no build step. Reads the gateway's REST
// API and follows /api/v1/events (server-sent events).
//   /                      everything, refreshed live
//   /?watch=<change_id>    follows one change: its results as they arrive and
//                          its verdict; the event stream ends after the report,
//                          so headless browsers (--dump-dom) finish on their own.
'use strict';

const params = new URLSearchParams(location.search);
const watch = params.get('watch');
const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'class') e.className = v; else e.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.appendChild(typeof c === 'string' || typeof c === 'number' ? document.createTextNode(String(c)) : c);
  }
  return e;
}

function badge(text, cls) { return el('span', { class: 'status ' + (cls || text) }, text); }

async function getJSON(url) {
  const r = await fetch(url, { cache: 'no-store' });
  const body = await r.json().catch(() => ({ message: 'not JSON' }));
  if (!r.ok) throw new Error(r.status + ': ' + (body.message || r.statusText));
  return body;
}

function showError(where, e) { $('error').textContent = where + ': ' + e.message; }

// ---- services -------------------------------------------------------------

let health = {};

async function loadServices() {
  try {
    const doc = await getJSON('/api/v1/services');
    const tbody = $('services').tBodies[0];
    tbody.replaceChildren();
    health = {};
    for (const s of doc.services) {
      health[s.service] = s.health;
      tbody.appendChild(el('tr', { 'data-service': s.service },
        el('td', {}, s.service, s.registered ? null : el('span', { class: 'note' }, ' (not on the bus)')),
        el('td', {}, badge(s.health || 'unknown')),
        el('td', {}, s.live ? badge('live', 'live') : s.registered ? badge('down', 'fail') : '—'),
        el('td', {}, (s.versions || []).join(', ')),
        el('td', {}, String((s.instances || []).length)),
        el('td', {}, (s.depends_on || []).join(', '))));
    }
    $('services-note').textContent = doc.statusd && !doc.statusd.available
      ? 'Health unknown: ' + (doc.statusd.error || 'statusd is not answering') : '';
    colourGraph();
  } catch (e) { showError('services', e); }
}

// ---- dependency graph (layered layout) --------------------------------------

let graph = { nodes: [], edges: [] };

function layers(g) {
  const deps = {};
  for (const n of g.nodes) deps[n] = [];
  for (const e of g.edges) { (deps[e.from] = deps[e.from] || []).push(e.to); if (!deps[e.to]) deps[e.to] = []; }
  const depth = {};
  const visit = (n, seen) => {
    if (depth[n] !== undefined) return depth[n];
    if (seen.has(n)) return 0; // a cycle: cut it here
    seen.add(n);
    let d = 0;
    for (const m of deps[n]) d = Math.max(d, visit(m, seen) + 1);
    seen.delete(n);
    return (depth[n] = d);
  };
  for (const n of Object.keys(deps)) visit(n, new Set());
  return depth;
}

function svg(tag, attrs, text) {
  const e = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function drawGraph() {
  const depth = layers(graph);
  const names = Object.keys(depth).sort();
  const maxDepth = Math.max(0, ...Object.values(depth));
  const rows = [];
  for (const n of names) (rows[maxDepth - depth[n]] = rows[maxDepth - depth[n]] || []).push(n);
  const W = 140, H = 34, GX = 30, GY = 60;
  const widest = Math.max(1, ...rows.map((r) => (r ? r.length : 0)));
  const pos = {};
  rows.forEach((row, y) => (row || []).forEach((n, x) => {
    const off = (widest - row.length) * (W + GX) / 2;
    pos[n] = { x: 10 + off + x * (W + GX), y: 10 + y * (H + GY) };
  }));
  const s = $('graph');
  s.replaceChildren();
  s.setAttribute('width', String(20 + widest * (W + GX)));
  s.setAttribute('height', String(20 + Math.max(1, rows.length) * (H + GY) - GY));
  const defs = svg('defs', {});
  const marker = svg('marker', { id: 'arrow', viewBox: '0 0 10 10', refX: '10', refY: '5', markerWidth: '8', markerHeight: '8', orient: 'auto-start-reverse' });
  marker.appendChild(svg('path', { d: 'M 0 0 L 10 5 L 0 10 z', fill: '#5b6472' }));
  defs.appendChild(marker);
  s.appendChild(defs);
  for (const e of graph.edges) {
    const a = pos[e.from], b = pos[e.to];
    if (!a || !b) continue;
    const line = svg('line', { x1: a.x + W / 2, y1: a.y + H, x2: b.x + W / 2, y2: b.y, stroke: '#5b6472', 'marker-end': 'url(#arrow)' });
    line.appendChild(svg('title', {}, e.from + ' depends on ' + e.to + ((e.checks || []).length ? ' (checks: ' + e.checks.join(', ') + ')' : '')));
    s.appendChild(line);
  }
  for (const n of names) {
    const p = pos[n];
    const g = svg('g', { class: 'node', 'data-service': n });
    g.appendChild(svg('rect', { x: p.x, y: p.y, width: W, height: H, rx: 5, fill: '#fff', stroke: '#1d2430' }));
    g.appendChild(svg('text', { x: p.x + W / 2, y: p.y + H / 2 + 4, 'text-anchor': 'middle' }, n));
    s.appendChild(g);
  }
  colourGraph();
}

function colourGraph() {
  const fill = { passing: '#c9f0da', warning: '#fbe3bd', critical: '#f6c9c4', unknown: '#fff' };
  for (const g of document.querySelectorAll('#graph g.node')) {
    g.querySelector('rect').setAttribute('fill', fill[health[g.dataset.service]] || '#fff');
  }
}

async function loadGraph() {
  try { graph = await getJSON('/api/v1/graph'); drawGraph(); } catch (e) { showError('graph', e); }
}

// ---- reports ----------------------------------------------------------------

function failing(report) {
  const out = [];
  for (const r of report.results || []) {
    for (const c of r.checks || []) if (c.status === 'fail') out.push(r.service + ': ' + c.name + (c.message ? ' — ' + c.message : ''));
    if (r.status === 'incomplete') out.push(r.service + ': ' + (r.reason || 'incomplete'));
  }
  return out;
}

function reportRow(rep) {
  return el('tr', { 'data-change': rep.change_id },
    el('td', {}, rep.started_at || ''),
    el('td', {}, rep.change_id),
    el('td', {}, rep.service),
    el('td', {}, rep.version || ''),
    el('td', {}, badge(rep.verdict)),
    el('td', {}, el('ul', {}, ...failing(rep).map((f) => el('li', {}, f)))));
}

async function loadReports() {
  try {
    const doc = await getJSON('/api/v1/reports?limit=20');
    $('reports').tBodies[0].replaceChildren(...doc.reports.map(reportRow));
  } catch (e) { showError('reports', e); }
}

// ---- live change --------------------------------------------------------------

let live = null; // { id, service, expected: [], answered: {} }

// Records the order in which a change's events arrived (data-events on
// #live), so a test can tell results that streamed in from a final dump.
function logEvent(type) {
  const l = $('live');
  l.dataset.events = (l.dataset.events ? l.dataset.events + ' ' : '') + type;
}

function startLive(id, service, expected) {
  live = { id, service, expected: expected || [], answered: {} };
  $('live').dataset.events = '';
  $('live').dataset.state = 'gathering';
  $('live').dataset.change = id;
  $('live-verdict').textContent = 'checking…';
  $('live-verdict').dataset.verdict = '';
  $('live-verdict').className = 'verdict waiting';
  $('live-results').replaceChildren(...live.expected.map((s) =>
    el('li', { 'data-service': s, 'data-status': 'waiting' }, badge('waiting'), ' ' + s)));
  summary();
}

function summary() {
  if (!live) return;
  const n = live.expected.length;
  // answers from services outside the expected list (e.g. sonard) do not count
  const k = n ? live.expected.filter((s) => s in live.answered).length : Object.keys(live.answered).length;
  $('live-summary').textContent = 'Change ' + live.id + ' of ' + live.service + ': ' + k + ' of ' + (n || '?') + ' answered';
}

function resultItem(service, status, checks, reason) {
  const li = el('li', { 'data-service': service, 'data-status': status }, badge(status), ' ' + service + (reason ? ' — ' + reason : ''));
  if ((checks || []).length) {
    li.appendChild(el('ul', { class: 'checks' }, ...checks.map((c) =>
      el('li', { 'data-check': c.name, 'data-status': c.status }, badge(c.status), ' ' + c.name + (c.message ? ' — ' + c.message : '')))));
  }
  return li;
}

function putResult(li) {
  const old = [...$('live-results').children].find((x) => x.dataset.service === li.dataset.service);
  if (old) old.replaceWith(li); else $('live-results').appendChild(li);
}

function onGather(m) {
  if (watch && m.change_id !== watch) return;
  if (!live || live.id !== m.change_id) { startLive(m.change_id, m.service, m.expected); logEvent('gather'); return; }
  logEvent('gather');
  // The gather travels on its own subject: results (even the report) may
  // have come first. Add what is still missing; never reset.
  live.service = m.service;
  live.expected = m.expected || [];
  for (const s of live.expected) {
    if (!(s in live.answered)) putResult(el('li', { 'data-service': s, 'data-status': 'waiting' }, badge('waiting'), ' ' + s));
  }
  summary();
}

function onResult(m) {
  if (watch && m.change_id !== watch) return;
  if (!live || live.id !== m.change_id) startLive(m.change_id, '?', []);
  logEvent('result');
  live.answered[m.service] = m.status;
  putResult(resultItem(m.service, m.status, m.checks));
  summary();
}

function onReport(m) {
  if (watch && m.change_id !== watch) return;
  if (!live || live.id !== m.change_id) startLive(m.change_id, m.service, []);
  logEvent('report');
  live.service = m.service;
  for (const r of m.results || []) {
    live.answered[r.service] = r.status;
    putResult(resultItem(r.service, r.status, r.checks, r.reason));
  }
  summary();
  $('live').dataset.state = 'done';
  $('live-verdict').textContent = m.verdict;
  $('live-verdict').dataset.verdict = m.verdict;
  $('live-verdict').className = 'verdict ' + m.verdict;
  const tbody = $('reports').tBodies[0];
  const old = tbody.querySelector('tr[data-change="' + CSS.escape(m.change_id) + '"]');
  if (old) old.remove();
  tbody.prepend(reportRow(m));
}

// ---- event stream ---------------------------------------------------------------

let servicesTimer = null;
function refreshServicesSoon() {
  if (servicesTimer) return;
  servicesTimer = setTimeout(() => { servicesTimer = null; loadServices(); loadGraph(); }, 500);
}

const known = new Set();
function connect() {
  const es = new EventSource('/api/v1/events' + (watch ? '?change_id=' + encodeURIComponent(watch) : ''));
  const on = (type, fn) => es.addEventListener(type, (ev) => {
    let m;
    try { m = JSON.parse(ev.data); } catch (e) { return; }
    fn(m);
  });
  es.onopen = () => { $('conn').textContent = 'live'; $('conn').className = 'badge live'; };
  es.onerror = () => {
    if (watch && $('live').dataset.state === 'done') { es.close(); $('conn').textContent = 'done'; return; }
    $('conn').textContent = 'reconnecting…'; $('conn').className = 'badge warning';
  };
  on('gather', onGather);
  on('result', onResult);
  on('report', (m) => {
    onReport(m);
    if (watch) { es.close(); $('conn').textContent = 'done'; $('conn').className = 'badge none'; }
  });
  on('register', (m) => {
    const key = m.service + '/' + m.instance;
    if (!known.has(key)) { known.add(key); refreshServicesSoon(); }
  });
  on('leave', (m) => { known.delete(m.service + '/' + m.instance); refreshServicesSoon(); });
  on('health', refreshServicesSoon);
}

connect();
loadServices();
loadGraph();
loadReports();
if (!watch) {
  setInterval(() => { loadServices(); loadReports(); }, 15000);
} else {
  $('live-summary').textContent = 'Waiting for change ' + watch + '…';
}
