// The viewer's page, as the viewer tests use it.
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { LIVENESS } from './hub.mjs';

/** Reads `file` in the viewer on `page` and waits until it is shown. */
export async function pick(page, file) {
  await page.locator('#viewer[data-state="ready"], #viewer[data-state="done"]').waitFor({ timeout: LIVENESS });
  await page.setInputFiles('#log-file', file);
  const name = path.basename(file);
  await page
    .locator('#viewer[data-state="done"] #viewer-status', { hasText: `Read ${name}:` })
    .waitFor({ timeout: LIVENESS });
}

/** What the viewer shows of a capture of systemd257-reload-reexec. */
export async function assertReloadReexec(page) {
  const row = page.locator('#viewer-guests tr[data-guest="systemd257-reload-reexec"]');
  assert.equal(await row.locator('[data-field="phase"]').textContent(), 'off');
  assert.equal(await row.locator('[data-field="boot_count"]').textContent(), '1');
  assert.equal(await row.locator('[data-field="hostname"]').textContent(), 'probe-guest');
  assert.equal(await row.locator('[data-field="messages"]').textContent(), '42');
  assert.equal(await row.locator('[data-field="shutdown"]').textContent(), 'poweroff');

  // The boot timeline: one row, READY at boot and after each of the two reloads, one shutdown.
  const chart = page.locator('#viewer-timeline svg');
  assert.equal(await chart.locator('g.boot').count(), 1);
  const kinds = async (kind) => chart.locator(`g.milestone[data-kind="${kind}"]`).count();
  assert.equal(await kinds('first-message'), 1);
  assert.equal(await kinds('hostname'), 1);
  assert.equal(await kinds('machine-id'), 1);
  assert.equal(await kinds('ready'), 3);
  assert.equal(await kinds('reloading'), 2);
  assert.equal(await kinds('stopping'), 1);
  assert.equal(await kinds('shutdown'), 1);
  assert.equal(await kinds('target'), 18);
  assert.match(
    await chart.locator('g.milestone[data-kind="shutdown"] title').textContent(),
    /^shutdown: poweroff, exit status 0 at \+4\.738 s$/,
  );

  assert.equal(await page.locator('#viewer-messages tbody tr').count(), 42);
  assert.equal(
    await page.locator('#viewer-messages tbody tr').last().locator('pre.payload').textContent(),
    'EXIT_STATUS=0\nX_SYSTEMD_SHUTDOWN=poweroff',
  );
  assert.equal(await page.locator('#viewer-errors').isHidden(), true);
}

/**
 * A capture whose guest text holds characters that act rather than show: ESC (a terminal
 * escape), BEL, U+202E (RIGHT-TO-LEFT OVERRIDE, which reverses what follows). Written to `dir`
 * as `escapes.jsonl`; returns its path.
 */
export async function writeEscapesLog(dir) {
  const file = path.join(dir, 'escapes.jsonl');
  const hex = (text) => Buffer.from(text).toString('hex');
  const datagrams = [
    'X_SYSTEMD_HOSTNAME=host\u202eevil',
    'READY=1\nSTATUS=\x1b[31mred\u202eevil\x07bell',
    'X_SYSTEMD_SHUTDOWN=reboot\nX_SYSTEMD_REBOOT_PARAMETER=arg\u202ex',
  ];
  await writeFile(file, datagrams.map((text, i) => `${JSON.stringify({ seq: i + 1, t_ms: i, hex: hex(text) })}\n`).join(''));
  return file;
}

/** What the viewer shows of `writeEscapesLog`'s capture: the hub's visible escapes, nothing raw. */
export async function assertEscapes(page) {
  const status = '\\x1b[31mred\\u{202e}evil\\x07bell';
  const row = page.locator('#viewer-guests tr[data-guest="escapes"]');
  assert.equal(await row.locator('[data-field="status"]').textContent(), status);
  assert.equal(await row.locator('[data-field="hostname"]').textContent(), 'host\\u{202e}evil');
  assert.equal(await row.locator('[data-field="shutdown"]').textContent(), 'reboot (arg\\u{202e}x)');
  assert.equal(await page.locator('#viewer-facts dt:text-is("Status") + dd').textContent(), status);

  const messages = page.locator('#viewer-messages tbody tr');
  assert.equal(await messages.count(), 3);
  // The payload keeps its line break; the parsed STATUS is escaped too.
  assert.equal(await messages.nth(1).locator('pre.payload').textContent(), `READY=1\nSTATUS=${status}`);
  assert.deepEqual(
    await messages.nth(1).locator('.field').allTextContents(),
    ['ready true', `status ${status}`],
  );
  assert.equal(
    await page.locator('#viewer-timeline svg g.milestone[data-kind="shutdown"] title').textContent(),
    'shutdown: reboot (arg\\u{202e}x) at +0.002 s',
  );
  // The label on the chart: its text after its hover title.
  assert.equal(
    await page.locator('#viewer-timeline svg text.label.k-shutdown').evaluate((label) => label.lastChild.data),
    'reboot (arg\\u{202e}x)',
  );

  // Nowhere in the viewer, text or attribute, is one of them raw.
  const raw = await page.locator('#viewer').evaluate((viewer) => {
    const acting = /[\0-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/u;
    const found = [];
    const walker = document.createTreeWalker(viewer, NodeFilter.SHOW_ELEMENT | NodeFilter.SHOW_TEXT);
    for (let node = walker.currentNode; node; node = walker.nextNode()) {
      if (node.nodeType === Node.TEXT_NODE && acting.test(node.data)) found.push(node.data);
      for (const attr of node.attributes ?? []) {
        if (!attr.name.startsWith('data-') && acting.test(attr.value)) found.push(`${attr.name}=${attr.value}`);
      }
    }
    return found;
  });
  assert.deepEqual(raw, []);
}
