// Debian's Chromium under playwright-core, and a page that fails the test on any script error.
import { after, before } from 'node:test';
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';

export const LAUNCH = {
  executablePath: '/usr/bin/chromium',
  headless: true,
  args: [
    '--no-sandbox',
    '--disable-gpu',
    '--disable-background-networking',
    '--no-first-run',
    '--disable-component-update',
    '--disable-sync',
    '--disable-quic',
  ],
};

/** One browser for the test file: launched before its tests, closed after them. */
export function useBrowser() {
  const state = { browser: null };
  before(async () => {
    state.browser = await chromium.launch(LAUNCH);
  });
  after(async () => {
    await state.browser?.close();
  });
  return state;
}

/**
 * A new page in a fresh context that records page errors, console errors and dialogs;
 * `check()` fails the test if any happened.
 */
export async function watchedPage(browser, options = {}) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, ...options });
  const page = await context.newPage();
  const problems = [];
  page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
  page.on('console', (message) => {
    if (message.type() === 'error') problems.push(`console error: ${message.text()}`);
  });
  page.on('dialog', async (dialog) => {
    problems.push(`dialog (${dialog.type()}): ${dialog.message()}`);
    await dialog.dismiss();
  });
  return {
    page,
    context,
    problems,
    check() {
      assert.deepEqual(problems, [], 'the page reported errors or opened a dialog');
    },
    async close() {
      await context.close();
    },
  };
}
