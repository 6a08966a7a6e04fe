// (d) The standalone viewer: downloaded from the hub, opened from disk (file://, where a page may
// fetch neither modules nor the .wasm), it works the same, and asks for nothing.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { useBrowser, watchedPage } from './lib/browser.mjs';
import { url, vector } from './lib/hub.mjs';
import { assertEscapes, assertReloadReexec, pick, writeEscapesLog } from './lib/viewer.mjs';

const browser = useBrowser();

test('the standalone viewer works opened from disk', async (t) => {
  const response = await fetch(url('/viewer/standalone.html'));
  assert.equal(response.status, 200);
  assert.equal(response.headers.get('content-disposition'), 'attachment; filename="notifyhub-viewer.html"');
  const dir = await mkdtemp(path.join(tmpdir(), 'notifyhub-standalone-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'notifyhub-viewer.html');
  await writeFile(file, Buffer.from(await response.arrayBuffer()));

  const { page, check, close } = await watchedPage(browser.browser);
  const requests = [];
  page.on('request', (request) => requests.push(request.url()));
  await page.goto(pathToFileURL(file).href);
  await pick(page, vector('systemd257-reload-reexec'));
  await assertReloadReexec(page);

  await pick(page, vector('systemd257-boot-reboot-arg'));
  const row = page.locator('#viewer-guests tr[data-guest="systemd257-boot-reboot-arg"]');
  assert.equal(await row.locator('[data-field="shutdown"]').textContent(), 'reboot (probe-arg)');

  // Guest text as the hub shows it: the inlined module's escapes.
  await pick(page, await writeEscapesLog(dir));
  await assertEscapes(page);

  assert.deepEqual(requests.filter((u) => !u.startsWith('file:') && !u.startsWith('data:')), [], 'nothing but the file itself');
  check();
  await close();
});
