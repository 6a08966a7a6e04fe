// notifyhub log viewer. Replays a log file in this browser with the hub's own core compiled to
// WebAssembly (LogReader of notifyhub-wasm), then shows the guests, a boot timeline per guest,
// the messages and the bad lines. The file is read in 1 MiB slices (File.slice) and never leaves
// the browser.
//
// Everything a log contains (guest names, statuses, payloads, error messages) reaches the page as
// text nodes or textContent, in HTML and SVG alike: never as markup. And it is shown as the hub's
// own pages show it: el() and svg() pass every string through the core's escapeLine
// (notifyhub_core::text, exported by the wasm module), so control, bidi and invisible format
// characters appear as visible escapes (`\x1b`, `\u{202e}`) and cannot reorder or hide text.
//
// The same script runs on /viewer, where it imports the bundle from /static/wasm/, and inlined in
// the standalone file, where the bundle is inlined before it (globalThis.notifyhubWasm).

const SLICE = 1 << 20;
const SVG_NS = 'http://www.w3.org/2000/svg';
const PHASES = ['registered', 'booting', 'ready', 'reloading', 'stopping', 'off', 'failed'];
/** The most boots drawn per guest: the latest ones. */
const MAX_BOOTS = 24;

const $ = (id) => document.getElementById(id);

/** The core's escapes for guest text (see the top), set once the module is loaded. */
let escapeLine = null;
let escapeLines = null;

/** A string as shown: a text node, escaped for one line. Nodes pass as they are. */
const shown = (child) => (typeof child === 'string' ? document.createTextNode(escapeLine(child)) : child);

/** Text over several lines (a message's `KEY=value` lines): escaped, with its line breaks. */
const linesOf = (text) => document.createTextNode(escapeLines(text));

/** An HTML element; string children become escaped text nodes. */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  node.append(...children.filter((c) => c !== null && c !== undefined && c !== false).map(shown));
  return node;
}

/** An SVG element; string children become escaped text nodes. */
function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttrs(node, attrs);
  node.append(...children.map(shown));
  return node;
}

/** Attributes a person reads or hears; their values are escaped like text. */
const SHOWN_ATTRS = new Set(['title', 'aria-label']);

/** Sets attributes; `data` holds dataset entries, kept exact (they are keys, not shown). */
function setAttrs(node, attrs) {
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === 'data') Object.assign(node.dataset, value);
    else if (SHOWN_ATTRS.has(name)) node.setAttribute(name, escapeLine(String(value)));
    else node.setAttribute(name, value === true ? '' : String(value));
  }
}

// ---- formatting -----------------------------------------------------------------------------

const pad = (n, width = 2) => String(n).padStart(width, '0');
const orDash = (v) => (v === null || v === undefined || v === '' ? '—' : String(v));

/** µs since the epoch as `2026-11-29 21:03:04.123 UTC`. */
function utc(us) {
  const d = new Date(us / 1000);
  return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ` +
    `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())}.` +
    `${pad(d.getUTCMilliseconds(), 3)} UTC`;
}

/** Whether a time is µs since the epoch (an event log) rather than since a capture's start. */
const isWallClock = (us) => us >= 1e15; // after 2001-09-09

/** A span of µs as `+1.234 s`, like the hub's pages. */
const offset = (us) => `+${(Math.max(0, us) / 1e6).toFixed(3)} s`;

/** A span of µs, short: `250 ms`, `1.5 s`, `2 min`, `3 h`. */
function duration(us) {
  const trim = (n, digits) => String(Number(n.toFixed(digits)));
  if (us === 0) return '0';
  if (us < 1000) return `${us} µs`;
  if (us < 1e6) return `${trim(us / 1e3, 1)} ms`;
  if (us < 120e6) return `${trim(us / 1e6, 2)} s`;
  if (us < 7200e6) return `${trim(us / 60e6, 1)} min`;
  return `${trim(us / 3600e6, 1)} h`;
}

function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1 << 20) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / (1 << 20)).toFixed(1)} MiB`;
}

function describeSender(sender) {
  switch (sender?.transport) {
    case 'unix': {
      const c = sender.credentials;
      return c ? `unix pid ${c.pid} uid ${c.uid} gid ${c.gid}` : 'unix, no credentials';
    }
    case 'vsock':
      return sender.port === null ? `vsock cid ${sender.cid}` : `vsock cid ${sender.cid} port ${sender.port}`;
    default:
      return 'unknown';
  }
}

function describeShutdown(shutdown) {
  if (!shutdown) return '—';
  return shutdown.reboot_parameter === null ? shutdown.verb : `${shutdown.verb} (${shutdown.reboot_parameter})`;
}

function badge(phase) {
  const known = PHASES.includes(phase) ? phase : 'registered';
  return el('span', { class: `badge phase-${known}`, data: { field: 'phase' } }, String(phase));
}

// ---- the core -------------------------------------------------------------------------------

/** LogReader, once the module is instantiated (which also sets escapeLine and escapeLines). */
async function loadCore() {
  let core = globalThis.notifyhubWasm; // the standalone file's
  if (core) {
    // Compiled asynchronously: browsers refuse to compile large modules synchronously.
    core.initSync({ module: await WebAssembly.compile(core.bytes()) });
  } else {
    core = await import('/static/wasm/notifyhub_wasm.js');
    await core.default();
  }
  ({ escapeLine, escapeLines } = core);
  return core.LogReader;
}

// ---- reading --------------------------------------------------------------------------------

/** A file's bytes, one 1 MiB slice at a time: the file is never held whole in memory. */
async function* fileSlices(file) {
  for (let at = 0; at < file.size; at += SLICE) {
    yield new Uint8Array(await file.slice(at, at + SLICE).arrayBuffer());
  }
}

/** A response body's chunks, as they arrive. */
async function* responseChunks(response) {
  const body = response.body.getReader();
  for (;;) {
    const { done, value } = await body.read();
    if (done) return;
    yield value;
  }
}

/** The guest of a capture or plain text log: the file's name without its extension. */
const guestOf = (name) => name.replace(/\.[^.]*$/, '') || 'log';

const viewer = $('viewer');
const core = loadCore(); // resolves to LogReader
let generation = 0; // a newer read makes older ones stop

function setState(state, text) {
  viewer.dataset.state = state;
  $('viewer-status').textContent = text;
  $('viewer-progress').hidden = state !== 'reading';
}

function progress(done, total) {
  const bar = $('viewer-progress');
  if (total) {
    bar.max = total;
    bar.value = done;
    $('viewer-status').textContent = `Reading… ${bytes(done)} of ${bytes(total)}`;
  } else {
    bar.removeAttribute('value'); // indeterminate
    $('viewer-status').textContent = `Reading… ${bytes(done)}`;
  }
}

/**
 * Replays `chunks` (Uint8Arrays) with a reader for guest `guest` and shows the result.
 * `source` describes the log; `total` is its size when known.
 */
async function replay(source, guest, chunks, total) {
  const mine = ++generation;
  let LogReader;
  try {
    LogReader = await core;
  } catch {
    return; // reported once, below
  }
  if (mine !== generation) return;
  setState('reading', 'Reading…');
  const reader = new LogReader(guest);
  let read = 0;
  try {
    for await (const chunk of chunks) {
      if (mine !== generation) {
        reader.free();
        return;
      }
      reader.push(chunk);
      read += chunk.length;
      progress(read, total);
    }
  } catch (error) {
    reader.free();
    if (mine === generation) setState('error', `Cannot read ${escapeLine(source)}: ${error.message ?? error}`);
    return;
  }
  const result = JSON.parse(reader.finish()); // finish() frees the reader
  if (mine !== generation) return;
  show(source, read, result);
  setState('done', `Read ${escapeLine(source)}: ${bytes(read)}, ${result.lines} lines.`);
}

function readFile(file) {
  replay(file.name, guestOf(file.name), fileSlices(file), file.size);
}

async function readGuestExport(guest) {
  const url = `/api/v1/guests/${encodeURIComponent(guest)}/events?format=jsonl`;
  const source = `${guest}'s event log from this hub`;
  replay(source, guest, (async function* () {
    const response = await fetch(url, { headers: { accept: 'application/x-ndjson' } });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    yield* responseChunks(response);
  })());
}

// ---- showing --------------------------------------------------------------------------------

let current = null; // the replay shown
let selected = null; // the guest name shown in detail

function show(source, size, result) {
  current = result;
  $('viewer-result').hidden = false;

  const f = result.formats;
  const formats = [
    f.capture && `${f.capture} capture`,
    f.events && `${f.events} event log`,
    f.text && `${f.text} plain text`,
  ].filter(Boolean).join(', ') || 'none';
  $('viewer-summary').replaceChildren(
    ...fact('Source', source),
    ...fact('Size', bytes(size)),
    ...fact('Lines', String(result.lines)),
    ...fact('Messages', formats),
    ...fact('Guests', String(result.guests.length)),
    ...fact('Bad lines', String(result.errors_total)),
  );

  const rows = result.guests.map((g) => guestRow(g));
  $('viewer-guests').tBodies[0].replaceChildren(...rows);
  $('viewer-no-guests').hidden = rows.length > 0;

  showErrors(result);
  const names = result.guests.map((g) => g.snapshot.name);
  select(names.includes(selected) ? selected : names[0] ?? null);
}

function fact(label, value) {
  return [el('dt', {}, label), el('dd', {}, value)];
}

function guestRow(g) {
  const s = g.snapshot;
  const button = el('button', { type: 'button', class: 'link' }, s.name);
  button.addEventListener('click', () => select(s.name));
  return el('tr', { data: { guest: s.name } },
    el('td', { class: 'nowrap' }, button),
    el('td', {}, badge(s.phase)),
    el('td', { class: 'nowrap', data: { field: 'hostname' } }, orDash(s.hostname)),
    el('td', { class: 'status', data: { field: 'status' } }, orDash(s.status)),
    el('td', { class: 'num', data: { field: 'boot_count' } }, String(s.boot_count)),
    el('td', { class: 'num', data: { field: 'messages' } }, String(g.messages_total)),
    el('td', { class: 'nowrap', data: { field: 'shutdown' } }, describeShutdown(s.shutdown)),
  );
}

function showErrors(result) {
  $('viewer-errors').hidden = result.errors_total === 0;
  $('viewer-errors').querySelector('tbody').replaceChildren(...result.errors.map((e) =>
    el('tr', { data: { line: e.line } },
      el('td', { class: 'num mono' }, String(e.line)),
      el('td', {}, e.message))));
  const more = result.errors_total - result.errors.length;
  $('viewer-errors-more').hidden = more <= 0;
  $('viewer-errors-more').textContent = `${more} more bad lines are not listed.`;
}

function select(name) {
  selected = name;
  for (const row of $('viewer-guests').tBodies[0].rows) {
    row.classList.toggle('selected', row.dataset.guest === name);
    row.querySelector('button').setAttribute('aria-pressed', String(row.dataset.guest === name));
  }
  const g = current?.guests.find((x) => x.snapshot.name === name);
  $('viewer-guest').hidden = !g;
  if (g) showGuest(g);
}

function showGuest(g) {
  const s = g.snapshot;
  $('viewer-guest-title').replaceChildren(el('span', {}, s.name), ' ', badge(s.phase));
  const chips = el('span', { class: 'chips' }, ...s.active_units.map((u) => el('span', { class: 'chip' }, u)));
  const drops = Object.values(s.drops).reduce((a, b) => a + b, 0);
  const at = (us) => (us === null ? '—' : isWallClock(us) ? utc(us) : `${offset(us)} into the capture`);
  $('viewer-facts').replaceChildren(
    ...fact('Hostname', orDash(s.hostname)),
    ...fact('Machine ID', orDash(s.machine_id)),
    ...fact('Boots', String(s.boot_count)),
    ...fact('Status', orDash(s.status)),
    ...fact('READY=1 this boot', s.ready_seen ? 'yes' : 'no'),
    ...fact('Shutdown', describeShutdown(s.shutdown)),
    ...fact('Exit status', s.exit_status === null ? 'unknown' : String(s.exit_status)),
    ...fact('Messages', `${s.messages} accepted, ${drops} rejected`),
    ...fact('First message', at(s.first_seen)),
    ...fact('Last message', at(s.last_seen)),
    el('dt', {}, 'Active targets'), el('dd', {}, chips),
  );
  $('viewer-timeline').replaceChildren(timelineChart(g));
  $('viewer-legend').replaceChildren(...legend());
  showMessages(g);
}

function showMessages(g) {
  const first = g.snapshot.first_seen ?? 0;
  const shown = g.messages.length;
  $('viewer-messages-note').textContent = shown < g.messages_total
    ? `The last ${shown} of ${g.messages_total} messages, oldest first.`
    : `All ${shown} messages, oldest first; times from the guest's first message.`;
  $('viewer-messages').tBodies[0].replaceChildren(...g.messages.map((m) => {
    const time = el('td', { class: 'nowrap' }, el('span', { class: 'mono' }, offset(m.at - first)));
    if (isWallClock(m.at)) time.append(el('br'), el('span', { class: 'muted small' }, utc(m.at)));
    const text = el('pre', { class: 'payload' }, linesOf(m.text));
    const payload = el('td', {}, text);
    if (m.len > m.text.length && m.len > 4096) payload.append(el('p', { class: 'muted small' }, `${m.len} bytes; the first 4096 shown`));
    payload.append(el('details', {}, el('summary', {}, 'hex'), el('code', { class: 'hex' }, m.hex)));
    return el('tr', { class: m.error ? 'rejected' : null, data: { line: m.line } },
      el('td', { class: 'num mono' }, String(m.line)),
      el('td', { class: 'num' }, String(m.seq)),
      time,
      el('td', { class: 'small sender' }, describeSender(m.sender), m.fds ? `, ${m.fds} fd` : ''),
      payload,
      el('td', { class: 'fields' }, ...parsedFields(m)));
  }));
}

function parsedFields(m) {
  if (m.error) return [el('span', { class: 'error' }, `rejected: ${m.error}`)];
  const fields = Object.entries(m.fields ?? {}).filter(([key]) => key !== 'ignored');
  const chips = fields.map(([key, value]) =>
    el('span', { class: 'field' }, el('span', { class: 'key' }, key), ' ',
      typeof value === 'string' ? value : JSON.stringify(value)));
  const ignored = m.fields?.ignored ?? [];
  if (ignored.length) chips.push(el('span', { class: 'field ignored' }, `ignored: ${ignored.join(', ')}`));
  return chips.length ? chips : [el('span', { class: 'muted' }, '—')];
}

// ---- the boot timeline ----------------------------------------------------------------------

/** What the chart shows of each kind of milestone: its legend text and whether it is labelled. */
const KINDS = {
  'first-message': { legend: 'first message', labelled: false },
  hostname: { legend: 'hostname', labelled: false },
  'machine-id': { legend: 'machine ID', labelled: false },
  target: { legend: 'target active', labelled: false },
  ready: { legend: 'READY', labelled: true },
  reloading: { legend: 'reloading', labelled: true },
  stopping: { legend: 'stopping', labelled: true },
  shutdown: { legend: 'shutdown', labelled: true },
  problem: { legend: 'failed, watchdog, timeout', labelled: true },
};

/** A milestone's kind, short label and full description, or null for one not drawn. */
function describeMilestone(m) {
  switch (m.type) {
    case 'boot_started': return ['first-message', 'first message', `boot ${m.number}: first message`];
    case 'hostname': return ['hostname', 'hostname', `hostname ${m.hostname}`];
    case 'machine_id': return ['machine-id', 'machine ID', `machine ID ${m.machine_id}`];
    case 'unit_active': return ['target', m.unit, `${m.unit} active`];
    case 'phase_changed':
      switch (m.to) {
        case 'ready': return ['ready', 'READY', m.from === 'reloading' ? 'READY after reloading' : 'READY'];
        case 'reloading': return ['reloading', 'reloading', 'reloading'];
        case 'stopping': return ['stopping', 'stopping', 'stopping'];
        case 'failed': return ['problem', 'failed', 'failed: emergency or rescue target'];
        default: return null;
      }
    case 'shutdown': {
      const text = describeShutdown(m.shutdown);
      const exit = m.exit_status === null ? '' : `, exit status ${m.exit_status}`;
      return ['shutdown', text, `shutdown: ${text}${exit}`];
    }
    case 'watchdog_missed': return ['problem', 'watchdog', 'watchdog deadline missed'];
    case 'ready_timed_out': return ['problem', 'no READY', 'no READY=1 in time'];
    default: return null;
  }
}

/** The marker of a milestone kind at (x, y). */
function marker(kind, x, y) {
  switch (kind) {
    case 'first-message': return svg('line', { x1: x, x2: x, y1: y - 9, y2: y + 9 });
    case 'hostname': return svg('circle', { cx: x, cy: y, r: 3.5 });
    case 'machine-id': return svg('rect', { x: x - 3, y: y - 3, width: 6, height: 6 });
    case 'target': return svg('line', { x1: x, x2: x, y1: y - 5, y2: y + 5 });
    case 'ready': return svg('path', { d: `M${x} ${y - 6}l6 6l-6 6l-6-6z` });
    case 'reloading': return svg('path', { d: `M${x} ${y - 6}l5.5 10h-11z` });
    case 'stopping': return svg('path', { d: `M${x} ${y + 6}l5.5-10h-11z` });
    case 'shutdown': return svg('rect', { x: x - 5, y: y - 5, width: 10, height: 10, rx: 1.5 });
    default: return svg('path', { d: `M${x - 5} ${y - 5}l10 10m0-10l-10 10` });
  }
}

/** A step of 1, 2 or 5 × 10^n µs giving about `count` ticks over `span`. */
function niceStep(span, count) {
  const raw = span / count;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * magnitude).find((s) => s >= raw);
  return Math.max(1, step);
}

function timelineChart(g) {
  const W = 960;
  const LEFT = 70;
  const RIGHT = 14;
  const AXIS = 24;
  const LANE = 15;
  const CHAR = 6.6; // px per character of an 11 px label, generously
  const plot = W - LEFT - RIGHT;

  // The milestones drawn, by boot.
  const boots = new Map();
  for (const m of g.timeline) {
    const described = describeMilestone(m);
    if (!boots.has(m.boot)) boots.set(m.boot, { number: m.boot, start: m.at, end: m.at, items: [] });
    const boot = boots.get(m.boot);
    if (m.type === 'boot_started') boot.start = m.at;
    boot.start = Math.min(boot.start, m.at);
    boot.end = Math.max(boot.end, m.at);
    if (described) boot.items.push({ at: m.at, kind: described[0], label: described[1], title: described[2] });
  }
  const all = [...boots.values()].sort((a, b) => a.number - b.number);
  if (all.length === 0) return el('p', { class: 'muted' }, 'No milestone in this log.');
  const rows = all.slice(-MAX_BOOTS);
  const span = Math.max(1000, ...rows.map((b) => b.end - b.start));
  const xOf = (us) => LEFT + (us / span) * plot;

  // Labels go on lanes above the row's line, each on the first lane it does not overlap.
  let y = AXIS + 6;
  const layout = rows.map((boot) => {
    const laneEnds = [];
    const labels = [];
    for (const item of boot.items) {
      if (!KINDS[item.kind].labelled) continue;
      const x = xOf(item.at - boot.start);
      const label = escapeLine(item.label); // as shown, so that its width is the shown one
      const text = label.length > 28 ? `${label.slice(0, 27)}…` : label;
      const width = text.length * CHAR;
      const toLeft = x + 4 + width > W - RIGHT;
      const [from, to] = toLeft ? [x - 4 - width, x] : [x, x + 4 + width];
      let lane = laneEnds.findIndex((end) => end + 6 <= from);
      if (lane === -1) lane = laneEnds.push(-Infinity) - 1;
      laneEnds[lane] = to;
      labels.push({ item, x, text, toLeft, lane });
    }
    const top = y;
    const line = top + laneEnds.length * LANE + 14;
    y = line + 16;
    return { boot, labels, top, line };
  });
  const height = y + 4;

  const chart = svg('svg', {
    viewBox: `0 0 ${W} ${height}`,
    class: 'timeline-svg',
    role: 'img',
    'aria-label': `Boot timeline of ${g.snapshot.name}: ${rows.length} boot(s) on a common time axis of ${duration(span)}`,
  });

  // The time axis, with grid lines through every row.
  const axis = svg('g', { class: 'axis' });
  const step = niceStep(span, 6);
  for (let t = 0; t <= span + step / 1000; t += step) {
    const x = xOf(t);
    axis.append(
      svg('line', { class: 'grid', x1: x, x2: x, y1: AXIS - 4, y2: height - 4 }),
      svg('text', { x, y: AXIS - 9, 'text-anchor': t === 0 ? 'start' : 'middle' }, t === 0 ? '0' : `+${duration(t)}`),
    );
  }
  chart.append(axis);

  for (const { boot, labels, top, line } of layout) {
    const row = svg('g', { class: 'boot', data: { boot: boot.number } });
    row.append(
      svg('text', { class: 'row-label', x: 4, y: line + 4 }, `boot ${boot.number}`),
      svg('line', { class: 'span', x1: LEFT, x2: xOf(boot.end - boot.start), y1: line, y2: line }),
    );
    for (const item of boot.items) {
      const x = xOf(item.at - boot.start);
      row.append(svg('g', { class: `milestone k-${item.kind}`, data: { kind: item.kind, at: item.at } },
        svg('title', {}, `${item.title} at ${offset(item.at - boot.start)}`),
        marker(item.kind, x, line)));
    }
    for (const { item, x, text, toLeft, lane } of labels) {
      const baseline = top + (lane + 1) * LANE - 3;
      row.append(
        svg('line', { class: `leader k-${item.kind}`, x1: x, x2: x, y1: baseline + 2, y2: line - 7 }),
        svg('text', {
          class: `label k-${item.kind}`,
          x: toLeft ? x - 4 : x + 4,
          y: baseline,
          'text-anchor': toLeft ? 'end' : 'start',
        }, svg('title', {}, `${item.title} at ${offset(item.at - boot.start)}`), text),
      );
    }
    chart.append(row);
  }

  const wrap = el('div', { class: 'timeline-scroll' }, chart);
  if (all.length > rows.length) {
    return el('div', {}, el('p', { class: 'muted small' }, `The last ${rows.length} of ${all.length} boots.`), wrap);
  }
  return wrap;
}

function legend() {
  return Object.entries(KINDS).map(([kind, { legend: text }]) =>
    el('li', {},
      svg('svg', { viewBox: '-8 -9 16 18', class: `legend-mark k-${kind}`, 'aria-hidden': 'true' },
        svg('g', { class: `milestone k-${kind}` }, marker(kind, 0, 0))),
      text));
}

// ---- wiring ---------------------------------------------------------------------------------

$('log-file').addEventListener('change', (e) => {
  const file = e.target.files[0];
  if (file) readFile(file);
});

// Dropping a file anywhere reads it (rather than letting the browser open it).
const zone = $('dropzone');
document.addEventListener('dragover', (e) => {
  if (![...e.dataTransfer.types].includes('Files')) return;
  e.preventDefault();
  zone.classList.add('dragging');
});
document.addEventListener('dragleave', (e) => {
  if (e.relatedTarget === null) zone.classList.remove('dragging');
});
document.addEventListener('drop', (e) => {
  if (!e.dataTransfer.files.length) return;
  e.preventDefault();
  zone.classList.remove('dragging');
  readFile(e.dataTransfer.files[0]);
});

core.then(
  () => {
    if (viewer.dataset.state === 'loading') setState('ready', 'Ready: choose or drop a file.');
  },
  (error) => setState('error', `Cannot load the parser: ${error.message ?? error}`),
);

// /viewer?guest=NAME (the guest page's "Open in viewer"): that guest's event log from this hub.
const guest = new URLSearchParams(location.search).get('guest');
if (guest && location.protocol !== 'file:') readGuestExport(guest);
