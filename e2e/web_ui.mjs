// Drives the Blyan web UI in Debian's headless Chromium: a streamed chat, the stop button,
// the expert dashboard (choosing versions), the chain explorer and the health page.
//
// Run: node e2e/web_ui.mjs http://127.0.0.1:8420 OUT_DIR
// (the Rust test `web_ui_in_chromium` in bin/blyan/tests/web_ui.rs starts a node and runs this)
import { chromium } from 'playwright-core';
import assert from 'node:assert/strict';

const [base, outDir] = process.argv.slice(2);
if (!base || !outDir) {
  console.error('usage: node e2e/web_ui.mjs BASE_URL OUT_DIR');
  process.exit(2);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
});
const errors = [];
try {
  const page = await browser.newPage({ viewport: { width: 1200, height: 820 } });
  page.on('pageerror', (e) => errors.push(`page error: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error') errors.push(`console: ${m.text()}`); });

  await page.goto(base);
  await page.waitForFunction(() => document.querySelector('#network').textContent.includes('network'));
  await page.waitForFunction(() => !document.querySelector('#stage-badge').textContent.includes('…'));

  // A streamed chat reply.
  await page.fill('#max-tokens', '40');
  await page.fill('#seed', '7');
  await page.fill('#prompt', 'And God said');
  await page.click('#send');
  const reply = page.locator('.msg.assistant').first();
  await page.waitForFunction(() => document.querySelector('.msg.assistant')?.dataset.done, null, { timeout: 60000 });
  const text = await reply.textContent();
  assert.ok(text.trim().length > 0, 'the reply is empty');
  const status = await page.textContent('#chat-status');
  assert.match(status, /^finished \((stop|length)\)/, status);
  assert.match(status, /every expert computed on this node$/, status);
  assert.equal(await page.locator('.msg.user').first().textContent(), 'And God said');
  await page.screenshot({ path: `${outDir}/web-ui-chat.png` });

  // The stop button ends a long generation early. The node decodes a 900-token reply in
  // well under a second, so the page's download is throttled (1 KB/s, about seven streamed
  // tokens a second) to keep the reply streaming while the button is found and clicked.
  const cdp = await page.context().newCDPSession(page);
  await cdp.send('Network.enable');
  await cdp.send('Network.emulateNetworkConditions', {
    offline: false, latency: 0, downloadThroughput: 1024, uploadThroughput: -1,
  });
  await page.fill('#max-tokens', '900');
  await page.fill('#seed', '');
  await page.fill('#prompt', 'Tell a long story');
  await page.click('#send');
  await page.waitForFunction(() => (document.querySelectorAll('.msg.assistant')[1]?.textContent.length || 0) > 10, null, { timeout: 60000 });
  assert.equal(await page.isEnabled('#stop'), true, 'stop is disabled while streaming');
  await page.click('#stop');
  await page.waitForFunction(() => document.querySelectorAll('.msg.assistant')[1]?.dataset.done === 'stopped', null, { timeout: 10000 });
  assert.match(await page.textContent('#chat-status'), /^stopped/);
  assert.equal(await page.isEnabled('#send'), true);
  await cdp.send('Network.emulateNetworkConditions', {
    offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: -1,
  });

  // Expert dashboard: every expert, usage from the chats, and choosing versions.
  await page.click('[data-tab=experts]');
  await page.waitForFunction(() => document.querySelectorAll('#experts-table tbody tr').length === 32);
  // Where each expert is computed: a node alone computes every expert itself.
  assert.match(await page.textContent('#hosting-summary'), /computes every expert/);
  assert.equal(await page.textContent('#experts-table tbody tr td.served-by'), 'this node');
  assert.match(await page.textContent('#cache-summary'), /hit rate \d/);
  await page.click('#apply-versions');
  await page.waitForFunction(() => document.querySelector('#serving-status').textContent.includes('serving every expert'));
  await page.screenshot({ path: `${outDir}/web-ui-experts.png` });

  // Chain explorer: a page of blocks, one block's header.
  await page.click('[data-tab=chain]');
  await page.waitForFunction(() => document.querySelectorAll('#blocks-table tbody tr').length === 25);
  await page.click('#next-page');
  await page.waitForFunction(() => document.querySelector('#page-info').textContent.startsWith('26–'));
  await page.selectOption('#chain-filter', 'meta');
  await page.waitForFunction(() => document.querySelectorAll('#blocks-table tbody tr').length === 1);
  await page.click('#blocks-table tbody tr');
  await page.waitForFunction(() => document.querySelector('#block-detail').textContent.includes('"header"'));

  // Activity and health.
  await page.click('[data-tab=activity]');
  await page.waitForFunction(() => document.querySelector('#pol-status').textContent.length > 0);
  await page.click('[data-tab=health]');
  await page.waitForFunction(() => document.querySelectorAll('#health-table tbody tr').length === 7);
  // A node that follows no peer says so, and its peer table is empty.
  assert.equal(await page.isVisible('#peers-none'), true);
  assert.equal(await page.locator('#peers-table tbody tr').count(), 0);
  assert.match(await page.textContent('#health-stage'), /release|production|development|unavailable/);
  await page.screenshot({ path: `${outDir}/web-ui-health.png` });

  assert.deepEqual(errors, []);
  console.log(`web UI ok: reply ${JSON.stringify(text.slice(0, 60))}…; screenshots in ${outDir}`);
} finally {
  await browser.close();
}
