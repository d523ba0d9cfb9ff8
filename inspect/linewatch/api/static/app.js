'use strict';
// linewatch operator HMI — vanilla JS, no dependencies. All data goes in via textContent.
const $ = (id) => document.getElementById(id);
const FINALS = ['PASS', 'FAIL', 'REVIEW'];
const MAX_RECENT = 20;
const FRAME_MS = 330;          // ~3 frames/s, only after the previous load finished
const RESYNC_MS = 10000;
const st = { counts: null, cameras: [], cam: null, lastKey: null, lastT: -Infinity, alarm: null,
  alarmAcked: null, eventAlarm: false, wasDown: false, imgBusy: 0, imgTimer: 0 };

const setText = (id, v) => { $(id).textContent = v == null || v === '' ? '—' : String(v); };
const cls = (f) => (FINALS.includes(f) ? f : 'UNKNOWN');
const num = (v, d) => (v == null || !Number.isFinite(Number(v)) ? '—' : Number(v).toFixed(d));
const timeOf = (ns) => (ns ? new Date(Number(ns) / 1e6).toLocaleTimeString() : '—');
const keyOf = (v) => v.part_id ?? `${v.camera}-${v.stream}-${v.seq}`;
const parse = (s) => { try { return JSON.parse(s); } catch { return null; } };

async function getJSON(url) {
  const r = await fetch(url, { cache: 'no-store' });
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return r.json();
}

// ---- counters -------------------------------------------------------------
function renderCounts(serverYield) {
  const c = st.counts;
  if (!c) return;
  for (const [id, v] of [['count-total', c.total], ['count-pass', c.PASS], ['count-fail', c.FAIL], ['count-review', c.REVIEW]]) setText(id, v);
  const y = serverYield != null ? Number(serverYield) : (c.total > 0 ? c.PASS / c.total : null);
  setText('yield', y == null || !Number.isFinite(y) ? null : `${(100 * y).toFixed(1)}%`);
}

// ---- last verdict tile ----------------------------------------------------
function renderLast(v) {
  if (!v) return;
  const t = Number(v.t_capture_ns) || 0;
  if (keyOf(v) === st.lastKey || t < st.lastT) return;   // already shown, or older
  st.lastKey = keyOf(v);
  st.lastT = t;
  const tile = $('verdict');
  tile.className = `tile ${cls(v.final)}`;
  void tile.offsetWidth;                                  // restart the flash animation
  tile.classList.add('flash');
  setText('last-final', v.final);
  setText('last-part', v.part_id);
  $('last-decided').textContent = `decided by ${v.decided_by ?? '?'}`;
  const ul = $('last-reasons');
  ul.replaceChildren();
  if (v.decided_by !== 'model') {
    for (const r of v.reasons || []) ul.appendChild(document.createElement('li')).textContent = r;
  }
  for (const d of (v.detections || []).slice(0, 3)) {     // a detection model's boxes: what it found
    const li = ul.appendChild(document.createElement('li'));
    li.className = 'detection';
    li.textContent = `${d.label} ${num(d.score, 2)}`;
  }
  $('last-latency').textContent = `${v.camera ?? ''} · ${timeOf(v.t_capture_ns)} · latency ${num(v.latency_ms, 1)} ms`;
}

// ---- recent list ----------------------------------------------------------
function makeRow(v) {
  const tr = document.createElement('tr');
  tr.className = `final-${cls(v.final)}`;
  tr.dataset.key = keyOf(v);
  for (const x of [timeOf(v.t_capture_ns), v.seq, v.final, v.decided_by, num(v.score, 3)]) {
    tr.appendChild(document.createElement('td')).textContent = x == null ? '—' : String(x);
  }
  return tr;
}
function addRecent(v) {
  const tb = $('recent');
  const k = keyOf(v);
  if ([...tb.children].some((tr) => tr.dataset.key === k)) return false;
  tb.prepend(makeRow(v));
  while (tb.children.length > MAX_RECENT) tb.lastElementChild.remove();
  return true;
}
async function loadRecent() {
  const rows = await getJSON(`/api/inspections?limit=${MAX_RECENT}`);
  $('recent').replaceChildren(...(Array.isArray(rows) ? rows : []).slice(0, MAX_RECENT).map(makeRow));
}

// ---- alarms ---------------------------------------------------------------
function showAlarm(a, fromEvent) {
  if (!a || (a.id != null && a.id === st.alarmAcked)) return;
  st.alarm = a;
  if (fromEvent) st.eventAlarm = true;
  const head = [String(a.severity || 'alarm').toUpperCase(), a.source, a.kind].filter(Boolean).join(' · ');
  $('alarm-text').textContent = `${head} — ${a.message ?? ''} (${timeOf(a.t_ns)})`;
  $('alarm-banner').hidden = false;
}
function hideAlarm() {
  $('alarm-banner').hidden = true;
  st.alarm = null;
  st.eventAlarm = false;
}
$('alarm-ack').addEventListener('click', () => { st.alarmAcked = st.alarm?.id ?? null; hideAlarm(); });

// ---- status ---------------------------------------------------------------
async function refreshStatus() {
  const s = await getJSON('/api/status');
  const m = s.model || {};
  setText('line-name', s.line);
  setText('recipe', s.recipe);
  setText('model-name', m.name);
  $('model-hash').textContent = m.hash ? String(m.hash).slice(0, 12) : '';
  $('providers').textContent = (m.providers || []).join(', ');
  $('rules-only').hidden = !s.rules_only;
  document.title = `linewatch · ${s.line ?? ''}`;
  const c = s.counts || {};
  st.counts = { PASS: c.PASS || 0, FAIL: c.FAIL || 0, REVIEW: c.REVIEW || 0 };
  st.counts.total = c.total ?? st.counts.PASS + st.counts.FAIL + st.counts.REVIEW;
  renderCounts(s.yield);
  st.triggers = s.triggers || {};
  setCameras(Array.isArray(s.cameras) ? s.cameras : []);
  showTrigger();
  renderLast(s.last);
  document.body.dataset.ready = '1';
  if (s.alarms_active > 0) {
    const list = await getJSON('/api/alarms?active=1');
    if (Array.isArray(list) && list.length) {
      showAlarm(list.reduce((a, b) => ((b.t_ns ?? b.id ?? 0) > (a.t_ns ?? a.id ?? 0) ? b : a)));
    }
  } else if (!st.eventAlarm) hideAlarm();
}
const resync = () => Promise.all([refreshStatus(), loadRecent()]).catch((e) => console.warn('resync', e));

// ---- live camera image ----------------------------------------------------
const img = $('live-image');
function setCameras(cams) {
  if (cams.join('\n') === st.cameras.join('\n')) return;
  st.cameras = cams.slice();
  const box = $('cam-select');
  box.replaceChildren(...cams.map((c) => {
    const b = document.createElement('button');
    b.type = 'button';
    b.textContent = c;
    b.addEventListener('click', () => selectCam(c));
    return b;
  }));
  box.hidden = cams.length < 2;
  selectCam(cams.includes(st.cam) ? st.cam : cams[0] ?? null);
}
function selectCam(c) {
  const changed = c !== st.cam;
  st.cam = c;
  for (const b of $('cam-select').children) b.setAttribute('aria-pressed', String(b.textContent === c));
  if (changed) $('cam-msg').textContent = c ? `waiting for ${c}…` : 'no camera';
  showTrigger();
  if (!st.imgBusy) nextFrame();
}
function nextFrame() {
  clearTimeout(st.imgTimer);
  if (!st.cam) return;
  if (document.hidden) { st.imgTimer = setTimeout(nextFrame, 1000); return; }
  st.imgBusy = Date.now();
  img.src = `/api/cameras/${encodeURIComponent(st.cam)}/live.jpg?t=${Date.now()}`;
}
img.addEventListener('load', () => {
  st.imgBusy = 0;
  img.classList.remove('noimg');
  $('cam-msg').hidden = true;
  st.imgTimer = setTimeout(nextFrame, FRAME_MS);
});
img.addEventListener('error', () => {
  st.imgBusy = 0;
  img.classList.add('noimg');
  $('cam-msg').textContent = `no image from ${st.cam} yet`;
  $('cam-msg').hidden = false;
  st.imgTimer = setTimeout(nextFrame, 1000);
});
setInterval(() => { if (st.imgBusy && Date.now() - st.imgBusy > 5000) { st.imgBusy = 0; nextFrame(); } }, 1000);

// ---- server-sent events ---------------------------------------------------
function setConn(live) {
  const el = $('conn-state');
  el.textContent = live ? 'live' : 'reconnecting';
  el.className = `conn ${live ? 'up' : 'down'}`;
}
function onVerdict(v) {
  if (!v || !addRecent(v)) return;        // ignore duplicates of rows already listed
  if (st.counts) {
    st.counts.total += 1;
    if (FINALS.includes(v.final)) st.counts[v.final] += 1;
    renderCounts();
  }
  renderLast(v);
}
function connect() {
  const es = new EventSource('/api/events');
  es.onopen = () => { setConn(true); if (st.wasDown) { st.wasDown = false; resync(); } };
  es.onerror = () => {
    setConn(false);
    st.wasDown = true;
    if (es.readyState === EventSource.CLOSED) { es.close(); setTimeout(connect, 3000); } // browser gave up
  };
  es.addEventListener('verdict', (e) => onVerdict(parse(e.data)));
  es.addEventListener('alarm', (e) => {
    showAlarm(parse(e.data), true);
    refreshStatus().catch((err) => console.warn('status', err)); // e.g. rules-only mode began or ended
  });
}

// ---- operator controls: lot and software trigger -------------------------
const say = (msg) => { $('control-msg').textContent = msg; };
function showTrigger() { $('trigger-btn').hidden = !(st.triggers && st.triggers[st.cam] === 'software'); }
async function send(method, url, body) {
  const r = await fetch(url, { method, headers: { 'Content-Type': 'application/json' },
                               body: body ? JSON.stringify(body) : undefined });
  const data = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(typeof data.detail === 'string' ? data.detail : `${r.status} ${r.statusText}`);
  return data;
}
async function refreshLot() {
  try { setText('lot', (await getJSON('/api/lot')).lot); } catch (e) { console.warn('lot', e); }
}
$('lot-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const lot = $('lot-input').value.trim();
  try {
    await send('PUT', '/api/lot', { lot }); // the server names the signed-in user in the audit log
    $('lot-input').value = '';
    say(`lot ${lot} set`);
    refreshLot();
  } catch (err) { say(`lot not set: ${err.message}`); }
});
$('trigger-btn').addEventListener('click', async () => {
  try {
    const r = await send('POST', `/api/cameras/${encodeURIComponent(st.cam)}/trigger`);
    say(`triggered ${r.part_id}`);
  } catch (err) { say(`trigger failed: ${err.message}`); }
});

// ---- start ----------------------------------------------------------------
setInterval(() => { $('clock').textContent = new Date().toLocaleTimeString(); }, 1000);
setInterval(() => { refreshStatus().catch((e) => console.warn('status', e)); refreshLot(); }, RESYNC_MS);
(async function boot() {
  try { await resync(); } finally { if (!document.body.dataset.ready) setTimeout(boot, 2000); }
})();
connect();
refreshLot();
