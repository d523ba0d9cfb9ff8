// The HMI's other screens: rejects, the review queue, alarms and control. All data via textContent.
import { $, el, getJSON, send, timeOf, num, cls, ICONS, locked } from './common.js';

const SCREENS = ['run', 'rejects', 'review', 'alarms', 'control'];
const REJECTS = 24;
const LOT_MAX = 64;
const st = { screen: 'run', alarms: [], reviewItem: null, labels: new Set(), hooks: {} };

export function showScreen(name) {
  const screen = SCREENS.includes(name) ? name : 'run';
  st.screen = screen;
  for (const s of SCREENS) {
    $(`screen-${s}`).hidden = s !== screen;
    const tab = $(`tab-${s}`);
    if (s === screen) tab.setAttribute('aria-current', 'page'); else tab.removeAttribute('aria-current');
  }
  if (screen === 'rejects') loadRejects().catch((e) => console.warn('rejects', e));
  if (screen === 'review') loadReview().catch((e) => console.warn('review', e));
  if (screen === 'alarms') refreshAlarms().catch((e) => console.warn('alarms', e));
  if (screen === 'control') loadRecipes().catch((e) => console.warn('recipes', e));
}

// ---- alarms: every active one listed, acknowledged on the server ----------
const SEVERITY_ICONS = { critical: '⛔', warning: '⚠', info: 'ℹ' };
function alarmText(a) {
  return `${[String(a.severity || 'alarm').toUpperCase(), a.source, a.kind].filter(Boolean).join(' · ')} — ${a.message ?? ''}`;
}
function renderBanner() {
  const active = st.alarms.filter((a) => !a.acknowledged_by);
  $('alarms-active').textContent = String(active.length);
  $('alarm-banner').hidden = active.length === 0;
  if (!active.length) return;
  const newest = active[0];
  $('alarm-text').textContent = `${alarmText(newest)} (${timeOf(newest.t_ns)})`;
  $('alarm-more').textContent = active.length > 1 ? `+${active.length - 1} more` : '';
  $('alarm-ack').dataset.id = String(newest.id);
}
function renderAlarmList() {
  const rows = st.alarms.map((a) => {
    const tr = el('tr', { class: `sev-${a.severity}` });
    tr.append(el('td', {}, `${SEVERITY_ICONS[a.severity] ?? '•'} ${a.severity}`), el('td', {}, timeOf(a.t_ns)),
      el('td', {}, alarmText(a)));
    const state = a.acknowledged_by ? `acknowledged by ${a.acknowledged_by}` : a.t_cleared_ns ? 'cleared' : 'active';
    tr.append(el('td', {}, state));
    const cell = el('td');
    if (!a.acknowledged_by) {
      const b = el('button', { type: 'button', class: 'ack', disabled: locked() }, 'Acknowledge');
      b.dataset.id = String(a.id);
      b.addEventListener('click', () => acknowledge(a.id));
      cell.append(b);
    }
    tr.append(cell);
    return tr;
  });
  $('alarm-list').replaceChildren(...rows);
}
export async function refreshAlarms() {
  const [active, recent] = await Promise.all([getJSON('/api/alarms?active=1&limit=100'), getJSON('/api/alarms?limit=50')]);
  const byId = new Map([...recent, ...active].map((a) => [a.id, a]));
  st.alarms = [...byId.values()].sort((a, b) => (b.id ?? 0) - (a.id ?? 0));
  renderBanner();
  if (st.screen === 'alarms') renderAlarmList();
}
export function onAlarmEvent(a) {
  if (a) refreshAlarms().catch((e) => console.warn('alarms', e));
}
async function acknowledge(id) {
  try {
    await send('POST', `/api/alarms/${id}/ack`);  // the signed-in user is the actor
  } catch (err) {
    $('alarm-text').textContent = `not acknowledged: ${err.message}`;
  }
  await refreshAlarms();
}

// ---- rejects: recent FAIL/REVIEW parts, tap one for everything about it ----
async function loadRejects() {
  const [fails, reviews] = await Promise.all([getJSON(`/api/inspections?final=FAIL&limit=${REJECTS}`),
    getJSON(`/api/inspections?final=REVIEW&limit=${REJECTS}`)]);
  const parts = [...fails, ...reviews].sort((a, b) => b.id - a.id).slice(0, REJECTS);
  $('reject-strip').replaceChildren(...parts.map((p) => {
    const b = el('button', { type: 'button', class: `thumb ${cls(p.final)}` });
    b.dataset.id = String(p.id);
    if (p.image && !p.image_pruned_ns) b.append(el('img', { src: `/api/inspections/${p.id}/image`, alt: '' }));
    else b.append(el('span', { class: 'noimg' }, 'no image kept'));
    b.append(el('span', { class: 'cap' }, `${ICONS[cls(p.final)]} ${p.final} · ${timeOf(p.t_capture_ns)}`));
    b.setAttribute('aria-label', `${p.final} part ${p.part_id ?? p.seq} at ${timeOf(p.t_capture_ns)}`);
    b.addEventListener('click', () => showDetail(p.id));
    return b;
  }));
}
const STAGES = ['acquire_ms', 'transport_ms', 'queue_ms', 'preprocess_ms', 'inference_ms', 'failsafe_ms', 'latency_ms', 'record_ms'];
function table(head, rows) {
  const t = el('table', { class: 'kv' });
  if (head) {
    const tr = el('tr');
    tr.append(...head.map((h) => el('th', { scope: 'col' }, h)));
    t.append(el('thead'));
    t.tHead.append(tr);
  }
  const tb = el('tbody');
  for (const r of rows) {
    const tr = el('tr');
    tr.append(...r.map((c, j) => el(j === 0 && !head ? 'th' : 'td', {}, c ?? '—')));
    tb.append(tr);
  }
  t.append(tb);
  return t;
}
async function showDetail(id) {
  const d = await getJSON(`/api/inspections/${id}`);
  const p = d.inspection;
  const log = d.decision_log;
  const box = $('reject-detail');
  const fig = el('figure', { class: 'detail-image' });
  if (d.image) {
    const im = el('img', { alt: `part ${p.part_id ?? p.seq} with its heatmap` });
    im.onerror = () => { im.onerror = null; im.src = `/api/inspections/${id}/image`; };
    im.src = `/api/inspections/${id}/heatmap.png`;
    fig.append(im);
  } else fig.append(el('span', { class: 'noimg' }, 'image not kept'));
  const info = el('div', { class: 'detail-info' });
  info.append(el('h3', {}, `${ICONS[cls(p.final)]} ${p.final} · ${p.camera} seq ${p.seq} · part ${p.part_id ?? '—'}`));
  info.append(table(null, [
    ['decided by', log.decided_by], ['reasons', (log.reasons || []).join('; ') || '—'],
    ['model', `${p.model_name ?? '—'} ${(p.model_hash ?? '').slice(0, 12)}`], ['label', p.label],
    ['score', num(p.score, 3)], ['captured', timeOf(p.t_capture_ns)], ['decided', timeOf(p.t_decided_ns)],
    ['recorded', timeOf(p.t_recorded_ns)],
    ['review', d.review ? `${d.review.decision} ${d.review.label ?? ''} by ${d.review.reviewer}` : 'none'],
  ]));
  info.append(el('h4', {}, 'Fail-safe decision log'));
  info.append(log.measured ? table(['rule', 'check', 'value', 'limit', 'result'], log.checks.map((c) => [
    c.rule, c.check, num(c.value, 4), c.limit, c.held == null ? '—' : c.held ? '✓ held' : '✗ broke'])) :
    el('p', {}, 'no measurements: the part was never looked at'));
  info.append(el('h4', {}, 'Stage times (ms)'));
  info.append(table(null, STAGES.map((s) => [s.replace(/_ms$/, ''), num(p[s], 2)])));
  const close = el('button', { type: 'button' }, 'Close');
  close.addEventListener('click', () => { box.hidden = true; });
  box.replaceChildren(fig, info, close);
  box.hidden = false;
}

// ---- review queue: the oldest waiting part, decided with one or two taps ----
export async function refreshReviewCount() {
  const q = await getJSON('/api/review/queue?limit=1');
  $('review-waiting').textContent = String(q.waiting);
  $('review-count').textContent = String(q.waiting);
  return q;
}
async function loadReview() {
  const q = await refreshReviewCount();
  const part = q.items[0] ?? null;
  st.reviewItem = part;
  $('review-empty').hidden = !!part;
  $('review-part').hidden = !part;
  $('review-types').hidden = true;
  if (!part) return;
  if (part.label && part.label !== 'good') st.labels.add(part.label);
  const im = $('review-image');
  im.onerror = () => { im.onerror = null; im.src = `/api/inspections/${part.id}/image`; };
  im.src = part.image ? `/api/inspections/${part.id}/heatmap.png` : '';
  $('review-info').replaceChildren(
    el('div', { class: 'big-text' }, `? REVIEW · ${part.camera} seq ${part.seq}`),
    el('div', {}, `part ${part.part_id ?? '—'} · ${timeOf(part.t_capture_ns)}`),
    el('div', {}, `score ${num(part.score, 3)} · ${part.label ?? '—'} · ${part.decided_by}`),
    el('div', { class: 'dim' }, (part.reasons || []).join('; ')));
}
async function decide(decision, label) {
  const part = st.reviewItem;
  if (!part) return;
  try {
    await send('POST', `/api/inspections/${part.id}/review`, { decision, label });
    $('review-msg').textContent = `part ${part.part_id ?? part.seq}: ${decision === 'PASS' ? 'good' : `defect ${label ?? ''}`}`;
  } catch (err) {
    $('review-msg').textContent = `not stored: ${err.message}`;
  }
  await loadReview();
}
async function offerTypes() {
  const box = $('review-types');
  try {   // the defect types the line has been naming lately
    for (const r of await getJSON('/api/inspections?final=FAIL&limit=100')) {
      if (r.label && r.label !== 'good' && r.decided_by === 'model') st.labels.add(r.label);
    }
  } catch (e) { console.warn('labels', e); }
  const labels = [...st.labels, 'other'];
  box.replaceChildren(...labels.map((l) => {
    const b = el('button', { type: 'button', class: 'type', disabled: locked() }, l);
    b.addEventListener('click', () => decide('FAIL', l));
    return b;
  }));
  box.hidden = false;
}

// ---- control ----------------------------------------------------------------
function lotProblem(lot) {
  if (!lot) return 'Enter a lot id first.';
  if (lot.length > LOT_MAX) return `A lot id has at most ${LOT_MAX} characters.`;
  return null;
}

async function loadRecipes() {
  const r = await getJSON('/api/recipes');
  st.recipes = r.recipes;
  const sel = $('recipe-select');
  const keep = sel.value || r.in_force;
  sel.replaceChildren(...r.recipes.map((x) => el('option', { value: x.name }, `${x.name}${x.name === r.in_force ? ' (in force)' : ''}`)));
  sel.value = keep;
  showRecipe();
  const paused = Object.keys(r.offline || {});
  $('control-state').textContent = paused.length ? `inspection off: ${paused.map((c) => `${c} (${r.offline[c]})`).join(', ')}` : 'inspecting';
}
function showRecipe() {   // what the operator confirms: the recipe's model and rules
  const x = (st.recipes || []).find((r) => r.name === $('recipe-select').value);
  $('recipe-details').textContent = x ? `job ${x.job} · model ${x.model} · rules: ${x.rules.join(', ')}` : '';
}
async function control(url, body, done) {
  try {
    await send('POST', url, body);
    $('control-msg').textContent = done;
    st.hooks.afterControl?.();
  } catch (err) { $('control-msg').textContent = `not done: ${err.message}`; }
  loadRecipes().catch(() => {});
}

export function initScreens(hooks) {
  $('recipe-select').addEventListener('change', showRecipe);
  $('recipe-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const recipe = $('recipe-select').value;
    control('/api/line/recipe', { recipe }, `recipe ${recipe} in force from the next part`);
  });
  $('pause-btn').addEventListener('click', () => control('/api/line/pause', {}, 'inspection paused: parts are recorded as not inspected'));
  $('resume-btn').addEventListener('click', () => control('/api/line/resume', {}, 'inspecting again'));
  st.hooks = hooks;
  $('alarm-ack').addEventListener('click', () => acknowledge(Number($('alarm-ack').dataset.id)));
  $('review-good').addEventListener('click', () => decide('PASS', null));
  $('review-defect').addEventListener('click', offerTypes);
  $('lot-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const lot = $('lot-input').value.trim();
    const wrong = lotProblem(lot);
    if (wrong) { $('control-msg').textContent = wrong; return; }
    try {
      await send('PUT', '/api/lot', { lot });
      $('lot-input').value = '';
      $('control-msg').textContent = `lot ${lot} set`;
      st.hooks.afterLot?.();
    } catch (err) { $('control-msg').textContent = `lot not set: ${err.message}`; }
  });
  $('reset-btn').addEventListener('click', async () => {
    try {
      await send('POST', '/api/counters/reset');
      $('control-msg').textContent = 'counters reset';
      st.hooks.afterReset?.();
    } catch (err) { $('control-msg').textContent = `not reset: ${err.message}`; }
  });
}
