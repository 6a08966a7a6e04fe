// (e) Screenshots of the dashboard, a guest page and the viewer, light and dark, wide and
// narrow, into target/screenshots/ for a person to look at; and no page may be wider than its
// window.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, stat } from 'node:fs/promises';
import path from 'node:path';
import { useBrowser, watchedPage } from './lib/browser.mjs';
import { LIVENESS, SCREENSHOTS, register, sendDatagrams, until, api, url, vector } from './lib/hub.mjs';
import { pick } from './lib/viewer.mjs';

const browser = useBrowser();

const VIEWS = [
  { name: 'wide', viewport: { width: 1280, height: 900 }, colorScheme: 'light' },
  { name: 'dark', viewport: { width: 1280, height: 900 }, colorScheme: 'dark' },
  { name: 'narrow', viewport: { width: 390, height: 844 }, colorScheme: 'light' },
];

/** Guests in several phases, for a dashboard worth looking at. */
async function moreGuests() {
  const guests = [
    ['cache-1.prod', { file: vector('systemd257-multi-user-unit') }, 'off'],
    ['db1', {
      datagrams: [
        'X_SYSTEMD_HOSTNAME=db1.internal',
        'X_SYSTEMD_UNIT_ACTIVE=sysinit.target',
        'X_SYSTEMD_UNIT_ACTIVE=emergency.target',
        'STATUS=Entering emergency mode: /var/lib/postgresql failed to mount',
      ],
    }, 'failed'],
    ['build7', { datagrams: ['X_SYSTEMD_HOSTNAME=build7', 'X_SYSTEMD_UNIT_ACTIVE=basic.target'] }, 'booting'],
    ['idle', { datagrams: [] }, 'registered'],
  ];
  for (const [name, send, phase] of guests) {
    const socket = await register(name);
    await sendDatagrams(socket, send);
    await until(`${name} is ${phase}`, async () => (await api(`/api/v1/guests/${name}`)).phase === phase);
  }
}

async function shoot(page, file) {
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `${file}: the page is ${overflow} px wider than the window`);
  const target = path.join(SCREENSHOTS, file);
  await page.screenshot({ path: target, fullPage: true });
  assert.ok((await stat(target)).size > 10_000, `${target} is written`);
}

test('screenshots of every page, light, dark and narrow', async () => {
  await mkdir(SCREENSHOTS, { recursive: true });
  await moreGuests();
  for (const { name, viewport, colorScheme } of VIEWS) {
    const { page, check, close } = await watchedPage(browser.browser, { viewport, colorScheme });
    await page.goto(url('/'));
    await page.locator('#connection[data-state="live"]').waitFor({ timeout: LIVENESS });
    await shoot(page, `dashboard-${name}.png`);

    await page.goto(url('/guests/web1'));
    await shoot(page, `guest-${name}.png`);

    await page.goto(url('/viewer'));
    await pick(page, vector('systemd257-reload-reexec'));
    await shoot(page, `viewer-${name}.png`);
    check();
    await close();
  }
});
