// Chromium side of throughput.sh: node chromium.mjs URL -> prints the page's RESULT JSON.
// Uses playwright-core from tests/browser/node_modules (NODE_PATH) and /usr/bin/chromium.
import { createRequire } from 'node:module';
const require = createRequire(process.env.PLAYWRIGHT_FROM ?? import.meta.url);
const { chromium } = require('playwright-core');
const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--no-first-run',
        '--disable-component-update', '--disable-sync'],
});
try {
    const page = await browser.newPage();
    await page.goto(process.argv[2]);
    await page.waitForFunction(() => document.getElementById('out').dataset.state !== 'running',
        null, { timeout: 300000 });
    const text = await page.textContent('#out');
    if (!text.startsWith('RESULT:')) throw new Error(text);
    console.log(text.slice('RESULT:'.length));
} finally {
    await browser.close();
}
