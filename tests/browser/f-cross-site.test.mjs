// (f) Cross-site requests in a real browser: the dashboard's own POST (Sec-Fetch-Site:
// same-origin) registers a guest; a page of another origin that posts to the hub is refused with
// 403 by the hub itself, before the body is looked at.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { useBrowser, watchedPage } from './lib/browser.mjs';
import { LIVENESS, api, until, url } from './lib/hub.mjs';

const browser = useBrowser();

test("the dashboard's register form works: a same-origin POST", async () => {
  const { page, check, close } = await watchedPage(browser.browser);
  await page.goto(url('/'));
  const form = page.locator('#register');
  await form.waitFor({ state: 'visible', timeout: LIVENESS });
  const posted = page.waitForResponse((r) => r.url() === url('/api/v1/guests') && r.request().method() === 'POST');
  await page.locator('#register-name').fill('browser-same');
  await form.locator('button[type="submit"]').click();
  const response = await posted;
  assert.equal(response.status(), 201);
  assert.equal(await response.request().headerValue('sec-fetch-site'), 'same-origin');
  await until('guest browser-same in the API', async () => (await api('/api/v1/guests/browser-same')).name === 'browser-same');
  assert.equal(await page.locator('#register-error').textContent(), '');
  check();
  await close();
});

test('a page of another origin that posts to the hub gets 403', async () => {
  // The other origin: the same host on another port (so "same-site", still not this hub).
  const target = url('/api/v1/guests');
  const other = http.createServer((_, res) => {
    res.writeHead(200, { 'content-type': 'text/html' });
    // A no-cors POST: what a hostile page can send without a preflight.
    res.end(`<!doctype html><script>
      fetch(${JSON.stringify(target)}, { method: 'POST', mode: 'no-cors', body: '{"name":"browser-evil"}' });
    </script>`);
  });
  await new Promise((resolve) => other.listen(0, '127.0.0.1', resolve));
  try {
    const { page, close } = await watchedPage(browser.browser);
    const posted = page.waitForResponse((r) => r.url() === target, { timeout: LIVENESS });
    await page.goto(`http://127.0.0.1:${other.address().port}/`);
    const response = await posted;
    assert.equal(response.status(), 403, 'refused by the cross-site check (a 415 would be the JSON extractor)');
    assert.notEqual(await response.request().headerValue('sec-fetch-site'), 'same-origin');
    const guests = await api('/api/v1/guests');
    assert.ok(!guests.guests.some((g) => g.name === 'browser-evil'));
    await close();
  } finally {
    other.close();
  }
});
