// Helpers every screen of the HMI shares.
export const $ = (id) => document.getElementById(id);
export const FINALS = ['PASS', 'FAIL', 'REVIEW'];
export const ICONS = { PASS: '✓', FAIL: '✗', REVIEW: '?', UNKNOWN: '•' }; // status never by colour alone
export const setText = (id, v) => { $(id).textContent = v == null || v === '' ? '—' : String(v); };
export const cls = (f) => (FINALS.includes(f) ? f : 'UNKNOWN');
export const num = (v, d) => (v == null || !Number.isFinite(Number(v)) ? '—' : Number(v).toFixed(d));
export const timeOf = (ns) => (ns ? new Date(Number(ns) / 1e6).toLocaleTimeString() : '—');
export const keyOf = (v) => v.part_id ?? `${v.camera}-${v.stream}-${v.seq}`;
export const parse = (s) => { try { return JSON.parse(s); } catch { return null; } };
// Buttons made after the sign-in state was applied follow it too (signin.js locks `.controls` while
// nobody is signed in; the server refuses a change without a session anyway).
export const locked = () => document.body.classList.contains('locked');

export async function getJSON(url) {
  const r = await fetch(url, { cache: 'no-store' });
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return r.json();
}

// The server's refusal in words an operator reads: its detail text, or the first validation message.
function problem(r, data) {
  if (typeof data.detail === 'string') return data.detail;
  if (Array.isArray(data.detail) && data.detail.length) return String(data.detail[0].msg ?? '').replace(/^Value error, /, '');
  return `the line refused it (HTTP ${r.status})`;
}

export async function send(method, url, body) {
  const r = await fetch(url, { method, headers: { 'Content-Type': 'application/json' },
                               body: body ? JSON.stringify(body) : undefined });
  const data = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(problem(r, data));
  return data;
}

export function el(tag, attrs = {}, text = null) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') e.className = v; else if (k.startsWith('data-')) e.setAttribute(k, v); else e[k] = v;
  }
  if (text != null) e.textContent = String(text);
  return e;
}
