// The viewer's page, as the viewer tests use it.
import assert from 'node:assert/strict';
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
