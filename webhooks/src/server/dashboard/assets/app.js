// ferry dashboard: sign-in, rerun/cancel through /api/v1, and live updates.
// Served as /assets/app.js; the Content-Security-Policy allows no other script. It never builds
// HTML from strings: server pages are swapped in as parsed documents, messages set textContent.
'use strict';

(function () {
  const KEY = 'ferry_token';
  const POLL_MS = 2000;
  const byId = (id) => document.getElementById(id);
  const token = () => sessionStorage.getItem(KEY) || '';

  function flash(text, isError, link) {
    const box = byId('flash');
    if (!box) return;
    box.textContent = text;
    if (link) {
      const a = document.createElement('a');
      a.href = link.href;
      a.textContent = link.text;
      box.append(' ', a);
    }
    box.className = isError ? 'flash error' : 'flash';
    box.hidden = false;
  }

  async function errorText(response) {
    try {
      const body = await response.json();
      // The API answers {"error": {"code", "message"}}; /login answers {"error": "..."}.
      if (body && body.error && typeof body.error.message === 'string') return body.error.message;
      if (body && typeof body.error === 'string') return body.error;
    } catch (_) { /* not JSON */ }
    return response.status + ' ' + response.statusText;
  }

  // The header's sign-in box and the action buttons follow whether this tab holds a token.
  function showSignedIn() {
    const signedIn = token() !== '';
    const state = byId('signin-state');
    if (state) state.textContent = signedIn ? 'signed in' : '';
    for (const id of ['token', 'signin-button']) {
      const el = byId(id);
      if (el) el.hidden = signedIn;
    }
    const out = byId('signout-button');
    if (out) out.hidden = !signedIn;
    document.querySelectorAll('button.action').forEach((b) => { b.disabled = !signedIn; });
    document.querySelectorAll('.actions .hint').forEach((h) => { h.hidden = signedIn; });
  }

  async function signIn(event) {
    event.preventDefault();
    const input = byId('token');
    const value = input.value.trim();
    if (!value) return;
    const response = await fetch('/login', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ token: value }),
      credentials: 'same-origin',
    });
    if (!response.ok) {
      flash('Sign-in failed: ' + await errorText(response), true);
      return;
    }
    sessionStorage.setItem(KEY, value);
    input.value = '';
    if (byId('denied')) {
      location.reload();
      return;
    }
    showSignedIn();
    flash('Signed in.', false);
  }

  async function signOut() {
    sessionStorage.removeItem(KEY);
    await fetch('/logout', { method: 'POST', credentials: 'same-origin' });
    if (document.body.dataset.private === 'true') {
      location.reload();
      return;
    }
    showSignedIn();
  }

  // Rerun and cancel call the API with the bearer token (delegated, so that buttons in
  // refreshed content keep working).
  async function act(button) {
    const run = button.closest('.actions').dataset.run;
    const action = button.dataset.action;
    const body = action === 'rerun' ? { failed_only: button.dataset.failed === 'true' } : {};
    button.disabled = true;
    try {
      const response = await fetch('/api/v1/runs/' + encodeURIComponent(run) + '/' + action, {
        method: 'POST',
        headers: { 'Authorization': 'Bearer ' + token(), 'Content-Type': 'application/json' },
        body: JSON.stringify(body),
        credentials: 'omit',
      });
      if (!response.ok) {
        flash(action + ' failed: ' + await errorText(response), true);
        return;
      }
      if (action === 'rerun') {
        const created = await response.json();
        const id = String(created.id);
        flash('Rerun queued:', false, { href: '/runs/' + encodeURIComponent(id), text: 'run #' + id });
      } else {
        flash('Cancel requested.', false);
      }
      refresh();
    } finally {
      button.disabled = token() === '';
    }
  }

  // Live updates: swap #live for the same part of a fresh copy of this page.
  let busy = false;
  let again = false;
  async function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    try {
      const response = await fetch(location.href, { credentials: 'same-origin', cache: 'no-store' });
      if (!response.ok) return;
      const doc = new DOMParser().parseFromString(await response.text(), 'text/html');
      const fresh = doc.getElementById('live');
      const here = byId('live');
      if (fresh && here) {
        here.replaceWith(document.importNode(fresh, true));
        document.body.dataset.mark = doc.body.dataset.mark || '';
        showSignedIn();
      }
    } catch (_) {
      /* the next change or poll tries again */
    } finally {
      busy = false;
      if (again) { again = false; refresh(); }
    }
  }

  function setLive(word) {
    const el = byId('live-state');
    if (el) { el.textContent = word; el.dataset.state = word; }
  }

  let polling = null;
  function poll() {
    if (polling) return;
    setLive('polling');
    polling = setInterval(refresh, POLL_MS);
  }

  function live() {
    if (!byId('live')) return;
    if (!window.EventSource) { poll(); return; }
    const source = new EventSource('/events');
    source.addEventListener('change', (event) => {
      setLive('live');
      if (event.data !== document.body.dataset.mark) refresh();
    });
    source.addEventListener('error', () => {
      if (source.readyState === EventSource.CLOSED) poll();
      else setLive('reconnecting');
    });
  }

  document.addEventListener('DOMContentLoaded', () => {
    const form = byId('signin');
    if (form) form.addEventListener('submit', signIn);
    const out = byId('signout-button');
    if (out) out.addEventListener('click', signOut);
    document.addEventListener('click', (event) => {
      const button = event.target.closest('button.action');
      if (button && !button.disabled) act(button);
    });
    showSignedIn();
    live();
  });
}());
