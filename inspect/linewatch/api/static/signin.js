'use strict';
// linewatch HMI sign-in: a PIN pad for operators (a password field for the other roles), who is signed in,
// and the idle lock. Self-contained: it adds its own header button and dialog, and locks the operator
// controls (.controls) while nobody is signed in; the run view stays readable. The server holds the truth
// (GET /api/session); this page polls it, keeps the session alive while the screen is touched, and signs out
// once nobody has touched it for the idle time the server names.
(function signin() {
  const $ = (id) => document.getElementById(id);
  const POLL_MS = 5000;
  const st = { user: null, role: null, idleMs: 900000, lastTouch: Date.now(), lastKeep: 0 };

  // ---- DOM ------------------------------------------------------------------
  const who = document.createElement('span');
  who.id = 'signed-user';
  who.className = 'dim';
  const btn = document.createElement('button');
  btn.id = 'signin-btn';
  btn.type = 'button';
  const right = document.querySelector('.bar .right') || document.body;
  right.prepend(who, btn);

  const dialog = document.createElement('dialog');
  dialog.id = 'signin-dialog';
  dialog.innerHTML = `
    <form id="signin-form" method="dialog" autocomplete="off">
      <label>user <input id="signin-user" name="user" maxlength="64" required autocapitalize="off"></label>
      <label>PIN or password <input id="signin-secret" name="secret" type="password" maxlength="256"
        required></label>
      <div id="signin-pad" class="pad"></div>
      <div class="actions">
        <button id="signin-cancel" type="button">Cancel</button>
        <button id="signin-ok" type="submit">Sign in</button>
      </div>
      <div id="signin-msg" class="dim" aria-live="polite"></div>
    </form>`;
  document.body.append(dialog);
  const pad = $('signin-pad');
  for (const key of ['1', '2', '3', '4', '5', '6', '7', '8', '9', 'clear', '0', '⌫']) {
    const b = document.createElement('button');
    b.type = 'button';
    b.textContent = key;
    b.dataset.key = key;
    pad.append(b);
  }
  pad.addEventListener('click', (e) => {
    const key = e.target.dataset?.key;
    const field = $('signin-secret');
    if (!key) return;
    field.value = key === 'clear' ? '' : key === '⌫' ? field.value.slice(0, -1) : field.value + key;
  });

  // ---- state ----------------------------------------------------------------
  function apply(session) {
    st.user = session.user || null;
    st.role = session.role;
    if (session.idle_lock_s) st.idleMs = session.idle_lock_s * 1000;
    document.body.dataset.user = st.user || '';
    document.body.classList.toggle('locked', !st.user);
    who.textContent = st.user ? `${st.user} (${st.role})` : (session.reason ? `locked: ${session.reason}` : '');
    btn.textContent = st.user ? 'Sign out' : 'Sign in';
    for (const el of document.querySelectorAll('.controls input, .controls button')) el.disabled = !st.user;
  }
  async function call(method, body) {
    const r = await fetch('/api/session', { method, cache: 'no-store', headers: { 'Content-Type': 'application/json' },
                                            body: body ? JSON.stringify(body) : undefined });
    const data = r.status === 204 ? {} : await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(typeof data.detail === 'string' ? data.detail : `HTTP ${r.status}`);
    return data;
  }
  async function refresh() {
    try { apply(await call('GET')); } catch (e) { console.warn('session', e); }
  }
  async function signOut(reason) {
    try { await call('DELETE'); } catch (e) { console.warn('sign out', e); }
    apply({ user: null, role: 'anonymous', reason });
  }

  // ---- sign in / out ----------------------------------------------------------
  btn.addEventListener('click', () => {
    if (st.user) { signOut('signed out'); return; }
    $('signin-msg').textContent = '';
    $('signin-secret').value = '';
    dialog.showModal();
    $('signin-user').focus();
  });
  $('signin-cancel').addEventListener('click', () => dialog.close());
  $('signin-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    try {
      apply(await call('POST', { user: $('signin-user').value.trim(), secret: $('signin-secret').value }));
      st.lastTouch = Date.now();
      dialog.close();
    } catch (err) { $('signin-msg').textContent = err.message; }
    $('signin-secret').value = '';
  });

  // ---- idle lock ----------------------------------------------------------------
  function touched() {
    const now = Date.now();
    st.lastTouch = now;
    if (st.user && now - st.lastKeep > Math.min(30000, st.idleMs / 3)) {
      st.lastKeep = now;
      call('PUT').catch(() => refresh()); // the server's idle time starts again too
    }
  }
  document.addEventListener('pointerdown', touched, true);
  document.addEventListener('keydown', touched, true);
  setInterval(() => {
    if (st.user && Date.now() - st.lastTouch > st.idleMs) signOut('idle lock');
  }, 500);
  setInterval(refresh, POLL_MS);
  apply({ user: null, role: 'anonymous' });
  refresh();
  window.lwSignin = { refresh };
}());
