// (c) The log viewer: a capture read from a picked file, a log with a broken line, guest text
// that looks like markup, and guest text with controls and bidi overrides.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { useBrowser, watchedPage } from './lib/browser.mjs';
import { url, vector } from './lib/hub.mjs';
import { assertEscapes, assertReloadReexec, pick, writeEscapesLog } from './lib/viewer.mjs';

const browser = useBrowser();

test('the viewer replays a capture from a picked file', async () => {
  const { page, check, close } = await watchedPage(browser.browser);
  await page.goto(url('/viewer'));
  await pick(page, vector('systemd257-reload-reexec'));
  await assertReloadReexec(page);
  check();
  await close();
});

test('the viewer lists bad lines with their numbers and shows markup as text', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'notifyhub-viewer-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'broken.log');
  const hex = (text) => Buffer.from(text).toString('hex');
  await writeFile(file, [
    JSON.stringify({ seq: 1, t_ms: 0, hex: hex('X_SYSTEMD_HOSTNAME=probe-guest') }),
    '{"seq": 2, "t_ms": 1.0, "hex": "5245',
    JSON.stringify({ seq: 3, t_ms: 2, hex: hex('READY=1\nSTATUS=<script>alert(1)</script>') }),
    'this line is neither JSON nor an assignment',
    '',
    'X_SYSTEMD_SHUTDOWN=reboot',
    'X_SYSTEMD_REBOOT_PARAMETER=<img src=x onerror=alert(2)>',
    '',
  ].join('\n'));

  const { page, check, close } = await watchedPage(browser.browser);
  await page.goto(url('/viewer'));
  await pick(page, file);

  const errors = page.locator('#viewer-errors tbody tr');
  assert.equal(await page.locator('#viewer-errors').isVisible(), true);
  assert.equal(await errors.count(), 2);
  assert.deepEqual(await errors.locator('td:first-child').allTextContents(), ['2', '4']);
  assert.match(await errors.nth(0).locator('td').nth(1).textContent(), /^invalid JSON at column \d+/);
  assert.equal(
    await page.locator('#viewer-errors tbody tr[data-line="4"] td').nth(1).textContent(),
    'expected a JSON object, a KEY=VALUE line or a blank line',
  );

  const row = page.locator('#viewer-guests tr[data-guest="broken"]');
  assert.equal(await row.locator('[data-field="phase"]').textContent(), 'off');
  assert.equal(await row.locator('[data-field="messages"]').textContent(), '3');
  assert.equal(await row.locator('[data-field="status"]').textContent(), '<script>alert(1)</script>');
  assert.equal(await row.locator('[data-field="shutdown"]').textContent(), 'reboot (<img src=x onerror=alert(2)>)');
  assert.equal(
    await page.locator('#viewer-timeline svg g.milestone[data-kind="shutdown"] title').textContent(),
    'shutdown: reboot (<img src=x onerror=alert(2)>) at +0.002 s',
  );

  // Text, not markup: nothing injected, no dialog.
  assert.equal(await page.locator('#viewer img, #viewer script').count(), 0);
  check();
  await close();
});

test('the viewer shows controls and bidi overrides in guest text as visible escapes', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'notifyhub-viewer-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const { page, check, close } = await watchedPage(browser.browser);
  await page.goto(url('/viewer'));
  await pick(page, await writeEscapesLog(dir));
  await assertEscapes(page);
  check();
  await close();
});
