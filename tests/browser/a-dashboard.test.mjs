// (a) The dashboard, live: a real systemd-notify and a replayed systemd boot drive guest web1's
// row through its phases while the page stays loaded, and guest text stays text.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { useBrowser, watchedPage } from './lib/browser.mjs';
import { LIVENESS, WEB1_SOCKET, sendDatagrams, systemdNotify, untilText, url, vector } from './lib/hub.mjs';

const browser = useBrowser();

test('the dashboard follows web1 from registered to off without a reload', async () => {
  const { page, check, close } = await watchedPage(browser.browser);
  await page.goto(url('/'));
  const row = page.locator('#guests tr[data-guest="web1"]');
  const badge = row.locator('[data-field="phase"]');
  assert.equal(await badge.textContent(), 'registered', 'a fresh hub: run the tests in order');
  await page.locator('#connection[data-state="live"]').waitFor({ timeout: LIVENESS });

  // Every phase the badge shows, in order, and a marker that a reload would lose.
  await page.evaluate(() => {
    window.notifyhubTest = { phases: [] };
    const record = () => {
      const text = document.querySelector('#guests tr[data-guest="web1"] [data-field="phase"]').textContent;
      if (window.notifyhubTest.phases.at(-1) !== text) window.notifyhubTest.phases.push(text);
    };
    record();
    new MutationObserver(record).observe(document.querySelector('#guests tbody'), {
      subtree: true, childList: true, characterData: true,
    });
  });

  // A real sender: systemd-notify, with markup in its status.
  const status = '<script>alert(1)</script>';
  await systemdNotify(WEB1_SOCKET, ['--ready', `--status=${status}`]);
  await untilText(badge, 'ready');
  await untilText(row.locator('[data-field="status"]'), status);

  // Then a whole systemd boot that ends in a reboot, 20 ms between datagrams.
  await sendDatagrams(WEB1_SOCKET, { file: vector('systemd257-boot-reboot-arg'), delayMs: 20 });
  await untilText(badge, 'off');
  await untilText(row.locator('[data-field="hostname"]'), 'probe-guest');
  assert.equal(await row.locator('[data-field="boot_count"]').textContent(), '1');
  assert.equal(await row.locator('[data-field="status"]').textContent(), 'Ready.');
  assert.deepEqual(
    await row.locator('.chip').allTextContents(),
    ['final.target', 'reboot.target', 'shutdown.target', 'umount.target'],
  );

  const seen = await page.evaluate(() => window.notifyhubTest?.phases);
  assert.deepEqual(seen, ['registered', 'ready', 'stopping', 'off'], 'phases shown, in order, in one page load');

  // The status was shown as text: no dialog (check() fails on any) and no injected script.
  const scripts = await page.evaluate(() => [...document.scripts].map((s) => s.src || s.textContent));
  assert.deepEqual(scripts, [url('/static/dashboard.js')]);
  check();
  await close();
});
