// notifyhub: live updates for the server-rendered pages. Follows /api/v1/events and updates the
// DOM in place. Guest text (status, hostname, unit names) only ever goes into textContent.
'use strict';

const pad = (n) => String(n).padStart(2, '0');
const utc = (us) => {
  const d = new Date(us / 1000);
  return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ` +
    `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())} UTC`;
};
const ago = (us) => {
  const s = Math.max(0, Math.round(Date.now() / 1000 - us / 1e6));
  if (s < 5) return 'just now';
  if (s < 90) return `${s} s ago`;
  if (s < 90 * 60) return `${Math.round(s / 60)} min ago`;
  return s < 36 * 3600 ? `${Math.round(s / 3600)} h ago` : utc(us);
};
// Guest text as the server shows it (src/text.rs): control, bidi and invisible format
// characters as visible escapes (`\x1b`, `\u{202e}`), so none can reorder or hide text.
const INVISIBLE =
  /[\0-\x1f\x7f-\x9f\u00ad\u061c\u180e\u200b\u200e\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb\u{e0000}-\u{e007f}]/gu;
const NAMED = { '\n': '\\n', '\r': '\\r', '\t': '\\t' };
const shown = (text) => text.replace(INVISIBLE, (c) => {
  const code = c.codePointAt(0);
  if (c in NAMED) return NAMED[c];
  return code < 0x80 ? `\\x${code.toString(16).padStart(2, '0')}` : `\\u{${code.toString(16)}}`;
});
const orDash = (v) => (v === null || v === undefined || v === '' ? '—' : shown(String(v)));

// Snapshot keys shown as plain text, as the server renders them.
const TEXT = {
  name: (s) => s.name,
  status: (s) => orDash(s.status),
  hostname: (s) => orDash(s.hostname),
  machine_id: (s) => orDash(s.machine_id),
  boot_count: (s) => String(s.boot_count),
  messages: (s) => String(s.messages),
  ready_seen: (s) => (s.ready_seen ? 'yes' : 'no'),
  failed_boot: (s) => (s.failed_boot ? 'yes' : 'no'),
  main_pid: (s) => orDash(s.main_pid),
  errno: (s) => orDash(s.errno),
  exit_status: (s) => orDash(s.exit_status ?? 'unknown'),
  shutdown: ({ shutdown: sd }) =>
    (sd ? shown(sd.verb + (sd.reboot_parameter === null ? '' : ` (${sd.reboot_parameter})`)) : '—'),
};

function setTime(el, us) {
  if (us === null || us === undefined) return;
  el.dataset.us = us;
  el.dateTime = new Date(us / 1000).toISOString();
  el.title = utc(us);
  el.textContent = ago(us);
}

function fill(scope, s) {
  for (const el of scope.querySelectorAll('[data-field]')) {
    const field = el.dataset.field;
    if (field === 'phase') {
      el.className = `badge phase-${s.phase}`;
      el.textContent = s.phase;
    } else if (field === 'ready_timed_out') {
      el.hidden = !s.ready_timed_out;
      el.title = s.ready_deadline == null ? '' : `no READY=1 by ${utc(s.ready_deadline)}`;
    } else if (field === 'active_units') {
      el.replaceChildren(...s.active_units.map((unit) => {
        const chip = document.createElement('span');
        chip.className = 'chip';
        chip.textContent = shown(unit);
        return chip;
      }));
    } else if (el.tagName === 'TIME') {
      setTime(el, s[field]);
    } else if (field in TEXT) {
      el.textContent = TEXT[field](s);
      if (el.tagName === 'A') el.href = `/guests/${encodeURIComponent(s.name)}`;
    }
  }
}

const live = document.querySelector('[data-last-event-id]');
const only = live?.dataset.guest; // set on a guest's own page
const tbody = document.querySelector('#guests tbody');

function upsert(s) {
  let row = [...tbody.rows].find((tr) => tr.dataset.guest === s.name);
  if (!row) {
    row = document.getElementById('guest-row').content.firstElementChild.cloneNode(true);
    row.dataset.guest = s.name;
    tbody.insertBefore(row, [...tbody.rows].find((tr) => tr.dataset.guest > s.name) ?? null);
  }
  fill(row, s);
}

function show(s, removed) {
  if (only) {
    if (removed) document.getElementById('removed').hidden = false;
    else { fill(live, s); document.getElementById('stale').hidden = false; }
    return;
  }
  if (removed) [...tbody.rows].find((tr) => tr.dataset.guest === s.name)?.remove();
  else upsert(s);
  document.getElementById('no-guests').hidden = tbody.rows.length > 1;
}

function resync(guests) {
  if (only) {
    if (guests.length === 0) show(null, true);
  } else {
    for (const tr of [...tbody.rows]) {
      if (tr.dataset.guest && !guests.some((s) => s.name === tr.dataset.guest)) show({ name: tr.dataset.guest }, true);
    }
  }
  guests.forEach((s) => show(s, false));
}

if (live) {
  const query = new URLSearchParams({ last_event_id: live.dataset.lastEventId });
  if (only) query.set('guest', only);
  const events = new EventSource(`/api/v1/events?${query}`);
  const connection = document.getElementById('connection');
  const state = (on) => {
    connection.hidden = false;
    connection.dataset.state = on ? 'live' : 'offline';
    connection.textContent = on ? 'live' : 'reconnecting…';
  };
  events.onopen = () => state(true);
  events.onerror = () => state(false);
  for (const name of ['registered', 'guest', 'removed']) {
    events.addEventListener(name, (e) => show(JSON.parse(e.data).snapshot, name === 'removed'));
  }
  events.addEventListener('resync', (e) => resync(JSON.parse(e.data).guests));
}

document.getElementById('register')?.addEventListener('submit', async (e) => {
  e.preventDefault();
  const form = e.target;
  const error = form.querySelector('output');
  const response = await fetch('/api/v1/guests', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ name: form.elements.name.value.trim() }),
  });
  const body = await response.json();
  error.textContent = response.ok ? '' : body.error;
  if (response.ok) { form.reset(); show(body, false); }
});

document.getElementById('remove')?.addEventListener('click', async () => {
  if (!window.confirm(`Remove guest ${only}? Its socket is deleted.`)) return;
  const response = await fetch(`/api/v1/guests/${encodeURIComponent(only)}`, { method: 'DELETE' });
  if (response.ok) window.location.assign('/');
});

for (const button of document.querySelectorAll('[data-copy]')) {
  button.addEventListener('click', async () => {
    await navigator.clipboard.writeText(document.getElementById(button.dataset.copy).value);
    button.textContent = 'Copied';
  });
}

// Controls that need this script, and relative times kept fresh.
for (const el of document.querySelectorAll('#register, #remove, [data-copy]')) el.hidden = false;
const tick = () => document.querySelectorAll('time[data-us]').forEach((el) => setTime(el, Number(el.dataset.us)));
tick();
setInterval(tick, 5000);
