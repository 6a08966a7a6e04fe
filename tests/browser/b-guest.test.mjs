// (b) A guest's page: its boot timeline and raw messages, without a script error; and its
// "Open in viewer" link, which replays the guest's event log from the hub in the viewer.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { useBrowser, watchedPage } from './lib/browser.mjs';
import { LIVENESS, WEB1_SOCKET, api, sendDatagrams, until, untilText, url } from './lib/hub.mjs';

const browser = useBrowser();

test('the guest page shows the timeline and the message log, and opens in the viewer', async () => {
  const status = 'Detail page check';
  await sendDatagrams(WEB1_SOCKET, {
    datagrams: ['X_SYSTEMD_HOSTNAME=detail-check', 'X_SYSTEMD_UNIT_ACTIVE=basic.target', `READY=1\nSTATUS=${status}`],
  });
  const guest = await until('the hub has the messages', async () => {
    const g = await api('/api/v1/guests/web1');
    return g.status === status && g;
  });
  const { events } = await api('/api/v1/guests/web1/events');

  const { page, check, close } = await watchedPage(browser.browser);
  await page.goto(url('/guests/web1'));
  assert.equal(await page.locator('h1 [data-field="phase"]').textContent(), 'ready');
  assert.equal(await page.locator('.status-line').textContent(), status);

  // The timeline: one row per milestone the API reports, the newest boot's start among them.
  const timeline = page.locator('table.timeline tbody tr');
  assert.equal(await timeline.count(), guest.timeline.length);
  const texts = await timeline.allTextContents();
  assert.ok(texts.some((t) => t.includes(`boot ${guest.boot_count} started`)), texts.join('\n'));
  assert.ok(texts.some((t) => t.includes('active') && t.includes('basic.target')), texts.join('\n'));
  assert.ok(texts.some((t) => t.includes('hostname') && t.includes('detail-check')), texts.join('\n'));

  // The messages, newest first, exactly as received.
  const messages = page.locator('table.messages tbody tr');
  assert.equal(await messages.count(), Math.min(events.length, 100));
  assert.equal(await messages.first().locator('pre.payload').textContent(), `READY=1\nSTATUS=${status}`);
  assert.equal(await messages.first().locator('td').first().textContent(), String(events.at(-1).seq));
  await page.locator('#connection[data-state="live"]').waitFor({ timeout: LIVENESS });
  check();

  // Open in viewer: the guest's event log, replayed in the browser, agrees with the hub.
  await page.getByRole('link', { name: 'Open in viewer' }).click();
  await page.waitForURL(url('/viewer?guest=web1'));
  await page.locator('#viewer[data-state="done"]').waitFor({ timeout: LIVENESS });
  const row = page.locator('#viewer-guests tr[data-guest="web1"]');
  await untilText(row.locator('[data-field="phase"]'), 'ready');
  assert.equal(await row.locator('[data-field="boot_count"]').textContent(), String(guest.boot_count));
  assert.equal(await row.locator('[data-field="messages"]').textContent(), String(events.length));
  assert.equal(await row.locator('[data-field="hostname"]').textContent(), 'detail-check');
  assert.equal(await page.locator('#viewer-messages tbody tr').count(), events.length);
  assert.equal(
    await page.locator('#viewer-timeline svg g.boot').count(),
    Math.min(guest.boot_count, 24),
  );
  check();
  await close();
});
