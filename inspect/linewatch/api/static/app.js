// linewatch operator HMI: the run screen, the live stream and the screen switch. Vanilla JS, no build step,
// no CDN; all data goes in via textContent. Other screens live in screens.js.
import { $, setText, getJSON, send, timeOf, num, cls, keyOf, parse, FINALS, ICONS } from './common.js';
import { showScreen, refreshAlarms, refreshReviewCount, onAlarmEvent, initScreens } from './screens.js';

const MAX_RECENT = 10;
const FRAME_MS = 330;          // ~3 frames/s, only after the previous load finished
const RESYNC_MS = 5000;
const TILE_MS = 250;           // the verdict tile changes at most 4 times a second: the latest part
const HOLD_MS = 1500;          // a FAIL or REVIEW stays on the tile this long unless a newer one comes
const st = { counters: null, period: 'shift', cameras: [], cam: null, shown: null, shownAt: 0, pending: null,
  since: 0, imgBusy: 0, imgTimer: 0, wasDown: false, lot: null };

// ---- counters -------------------------------------------------------------
function renderCounts() {
  const p = st.counters?.periods?.[st.period];
  if (!p) return;
  for (const [id, v] of [['count-total', p.total], ['count-pass', p.PASS], ['count-fail', p.FAIL], ['count-review', p.REVIEW]]) setText(id, v);
  setText('yield', p.total > 0 ? `${(100 * p.PASS / p.total).toFixed(1)}%` : null);
  const from = p.from_ns ? `since ${new Date(Number(p.from_ns) / 1e6).toLocaleString()}` : '';
  $('period-label').textContent = [p.name, from].filter(Boolean).join(' · ');
  setText('ppm', st.counters.parts_per_minute);
}
async function refreshCounters() {
  st.counters = await getJSON('/api/counters');
  renderCounts();
}
function countVerdict(v) {
  for (const [name, p] of Object.entries(st.counters?.periods ?? {})) {
    if (name === 'lot' && v.lot !== p.name) continue;
    p.total += 1;
    if (FINALS.includes(v.final)) p[v.final] += 1;
  }
}

// ---- last verdict tile: the latest part, a reject held long enough to be seen ----
function showOnTile(v) {
  st.shown = v;
  st.shownAt = Date.now();
  st.since = 0;
  const tile = $('verdict');
  tile.className = `tile ${cls(v.final)}`;
  $('last-icon').textContent = ICONS[cls(v.final)] ?? '';
  setText('last-final', v.final);
  setText('last-part', v.part_id);
  $('last-decided').textContent = `decided by ${v.decided_by ?? '?'}${v.score != null ? ` · score ${num(v.score, 3)}` : ''}`;
  const ul = $('last-reasons');
  ul.replaceChildren();
  if (v.decided_by !== 'model') {
    for (const r of (v.reasons || []).slice(0, 3)) ul.appendChild(document.createElement('li')).textContent = r;
  }
  for (const d of (v.detections || []).slice(0, 3)) {     // a detection model's boxes: what it found
    const li = ul.appendChild(document.createElement('li'));
    li.className = 'detection';
    li.textContent = `${d.label} ${num(d.score, 2)}`;
  }
  $('last-since').textContent = '';
  $('last-latency').textContent = `${v.camera ?? ''} · ${timeOf(v.t_capture_ns)} · latency ${num(v.latency_ms, 1)} ms`;
  if (v.final !== 'PASS') showPart(v);
}
function offerToTile(v) {
  const t = Number(v.t_capture_ns) || 0;
  if (st.shown && (keyOf(v) === keyOf(st.shown) || t < Number(st.shown.t_capture_ns))) return;
  const holding = st.shown && st.shown.final !== 'PASS' && Date.now() - st.shownAt < HOLD_MS;
  if (holding && v.final === 'PASS') {           // a newer PASS waits; a newer reject replaces the held one
    st.since += 1;
    st.pending = v;
    $('last-since').textContent = `+${st.since} part${st.since === 1 ? '' : 's'} since`;
    return;
  }
  st.pending = v;
}
function tick() {                                 // at most TILE_MS: the browser never builds a backlog
  const v = st.pending;
  if (Date.now() - st.shownAt < TILE_MS) return;  // timers drift: the tile's own clock keeps the pace
  const holding = st.shown && st.shown.final !== 'PASS' && Date.now() - st.shownAt < HOLD_MS;
  if (v && (!holding || v.final !== 'PASS')) { st.pending = null; showOnTile(v); }
}
function showPart(v) {
  if (v.id == null || !v.image) return;
  const fig = $('part-figure');
  const im = $('part-image');
  im.onerror = () => { im.onerror = () => { fig.hidden = true; }; im.src = `/api/inspections/${v.id}/image`; };
  im.src = `/api/inspections/${v.id}/heatmap.png`;
  $('part-caption').textContent = `${v.final} ${v.part_id ?? ''} · ${v.decided_by ?? ''} · ${timeOf(v.t_capture_ns)}`;
  fig.hidden = false;
}

// ---- recent list ----------------------------------------------------------
function makeRow(v) {
  const tr = document.createElement('tr');
  tr.className = `final-${cls(v.final)}`;
  tr.dataset.key = keyOf(v);
  for (const x of [timeOf(v.t_capture_ns), v.seq, `${ICONS[cls(v.final)] ?? ''} ${v.final}`, v.decided_by, num(v.score, 3)]) {
    tr.appendChild(document.createElement('td')).textContent = x == null ? '—' : String(x);
  }
  return tr;
}
const recentQueue = [];
function flushRecent() {
  if (!recentQueue.length) return;
  const tb = $('recent');
  const known = new Set([...tb.children].map((tr) => tr.dataset.key));
  const fresh = recentQueue.splice(0).slice(-MAX_RECENT).filter((v) => !known.has(keyOf(v)));
  for (const v of fresh) tb.prepend(makeRow(v));
  while (tb.children.length > MAX_RECENT) tb.lastElementChild.remove();
}
async function loadRecent() {
  const rows = await getJSON(`/api/inspections?limit=${MAX_RECENT}`);
  $('recent').replaceChildren(...(Array.isArray(rows) ? rows : []).slice(0, MAX_RECENT).map(makeRow));
  if (rows.length && !st.shown) showOnTile(rows[0]);
}

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
  st.triggers = s.triggers || {};
  setCameras(Array.isArray(s.cameras) ? s.cameras : []);
  showTrigger();
  document.body.dataset.ready = '1';
}
const STATE_ICONS = { running: '●', paused: '⏸', offline: '⏸', 'camera lost': '⚠', 'model down': '⚠', drift: '≈', 'process down': '⚠' };
async function refreshLine() {
  const l = await getJSON('/api/line');
  const el = $('line-state');
  el.className = `state ${l.state.replace(/\s+/g, '-')}`;
  el.title = (l.conditions || []).map((c) => `${c.state}: ${c.detail}`).join('\n');
  el.querySelector('.icon').textContent = STATE_ICONS[l.state] ?? '⚠';
  $('line-state-text').textContent = l.state;
}
async function refreshLot() {
  const l = await getJSON('/api/lot');
  st.lot = l.lot;
  setText('lot', l.lot);
  setText('shift', l.shift);
}
const resync = () => Promise.all([refreshStatus(), loadRecent(), refreshCounters(), refreshLine(), refreshLot(),
  refreshAlarms(), refreshReviewCount()]).catch((e) => console.warn('resync', e));

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
  if (document.hidden || $('screen-run').hidden) { st.imgTimer = setTimeout(nextFrame, 1000); return; }
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
  if (!v) return;
  countVerdict(v);
  offerToTile(v);
  recentQueue.push(v);
  if (v.final === 'REVIEW') refreshReviewCount().catch(() => {});
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
    onAlarmEvent(parse(e.data));
    refreshStatus().catch(() => {});
    refreshLine().catch(() => {});
  });
}
// Renders happen on timers, never per event: at 50 parts/s the page shows the latest state, no backlog.
setInterval(() => { tick(); flushRecent(); renderCounts(); }, TILE_MS);

// ---- controls on the run screen's data -------------------------------------
function showTrigger() { $('trigger-btn').hidden = !(st.triggers && st.triggers[st.cam] === 'software'); }
$('trigger-btn').addEventListener('click', async () => {
  try {
    const r = await send('POST', `/api/cameras/${encodeURIComponent(st.cam)}/trigger`);
    $('control-msg').textContent = `triggered ${r.part_id}`;
  } catch (err) { $('control-msg').textContent = `trigger failed: ${err.message}`; }
});
$('period-select').addEventListener('change', (e) => { st.period = e.target.value; renderCounts(); });

// ---- start ----------------------------------------------------------------
initScreens({ afterLot: () => refreshLot().catch(() => {}), afterReset: () => refreshCounters().catch(() => {}),
  afterControl: () => Promise.all([refreshLine(), refreshStatus()]).catch(() => {}) });
window.addEventListener('hashchange', () => showScreen(location.hash.slice(1)));
showScreen(location.hash.slice(1));
setInterval(() => { $('clock').textContent = new Date().toLocaleTimeString(); }, 1000);
setInterval(() => {
  Promise.all([refreshStatus(), refreshCounters(), refreshLine(), refreshLot(), refreshAlarms(),
    refreshReviewCount()]).catch((e) => console.warn('status', e));
}, RESYNC_MS);
(async function boot() {
  try { await resync(); } finally { if (!document.body.dataset.ready) setTimeout(boot, 2000); }
})();
connect();
