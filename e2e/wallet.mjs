// Drives the web UI's wallet in Debian's headless Chromium: a page without a wallet works as
// before; then an EIP-1193 provider backed by ethers (a fixed test key; it signs in this
// Node.js process) is injected, and the test connects the wallet (Sign-In with Ethereum),
// buys BLY through Checkout (a local stand-in for Stripe's API), plays Stripe's signed
// webhook, chats on the wallet's balance, sends BLY, makes and revokes an API key, and logs out.
//
// Run: node e2e/wallet.mjs BASE_URL OUT_DIR STRIPE_CHECKOUT_URL_PREFIX
// with BLYAN_TEST_WEBHOOK_SECRET set to the node's webhook secret (the Rust test
// `wallet_in_chromium` in bin/blyan/tests/node.rs starts the node and the mock and runs this).
import { chromium } from 'playwright-core';
import { Wallet, getBytes } from 'ethers';
import { createHmac } from 'node:crypto';
import assert from 'node:assert/strict';

const [base, outDir, checkoutPrefix] = process.argv.slice(2);
const secret = process.env.BLYAN_TEST_WEBHOOK_SECRET;
if (!base || !outDir || !checkoutPrefix || !secret) {
  console.error('usage: BLYAN_TEST_WEBHOOK_SECRET=… node e2e/wallet.mjs BASE_URL OUT_DIR CHECKOUT_PREFIX');
  process.exit(2);
}

// A fixed test key (never a real wallet's).
const wallet = new Wallet('0x' + '4b'.repeat(32));
const NANO = 1_000_000_000;

async function balance(address) {
  const r = await fetch(`${base}/ledger/accounts/${address}`);
  assert.equal(r.status, 200, `balance of ${address}: ${r.status}`);
  return (await r.json()).available;
}

// Stripe's delivery of a paid Checkout Session, signed as Stripe signs: v1 = HMAC-SHA256 of
// `t.body` with the endpoint secret.
async function deliverPaidSession(address) {
  const body = JSON.stringify({
    id: 'evt_e2e_1',
    type: 'checkout.session.completed',
    data: { object: {
      id: 'cs_e2e_1', object: 'checkout.session', payment_intent: 'pi_e2e_1', payment_status: 'paid',
      amount_total: 500, currency: 'usd', metadata: { address, tier: 'starter' },
    } },
  });
  const t = Math.floor(Date.now() / 1000);
  const v1 = createHmac('sha256', secret).update(`${t}.${body}`).digest('hex');
  const r = await fetch(`${base}/payments/stripe/webhook`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'stripe-signature': `t=${t},v1=${v1}` },
    body,
  });
  const reply = await r.json();
  assert.equal(r.status, 200, JSON.stringify(reply));
  return reply;
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
});
const errors = [];
try {
  // Without a wallet: the button says so, chat still works on the node's account.
  const bare = await browser.newPage();
  bare.on('pageerror', (e) => errors.push(`page error: ${e.message}`));
  await bare.goto(base);
  await bare.waitForFunction(() => document.querySelector('#network').textContent.includes('network'));
  assert.match(await bare.textContent('#billed-to'), /node's own account/);
  await bare.click('#connect-wallet');
  await bare.waitForFunction(() => document.querySelector('#wallet-error').textContent.includes('no wallet found'));
  await bare.close();

  const context = await browser.newContext({ viewport: { width: 1200, height: 820 } });
  // The provider's signing happens here, in Node.js, with ethers: the page only sees an
  // EIP-1193 `request` that answers as MetaMask does (lower-case accounts, personal_sign
  // of hex-encoded text).
  await context.exposeBinding('__blyanTestSign', async (_source, hex) => wallet.signMessage(getBytes(hex)));
  await context.addInitScript((address) => {
    const requests = [];
    window.__walletRequests = requests;
    window.ethereum = {
      isMetaMask: false,
      async request({ method, params }) {
        requests.push(method);
        if (method === 'eth_requestAccounts' || method === 'eth_accounts') return [address];
        if (method === 'eth_chainId') return '0x1';
        if (method === 'personal_sign') {
          if (params[1].toLowerCase() !== address) throw new Error('unknown account');
          return window.__blyanTestSign(params[0]);
        }
        throw Object.assign(new Error(`unsupported ${method}`), { code: 4200 });
      },
    };
  }, wallet.address.toLowerCase());
  const page = await context.newPage();
  page.on('pageerror', (e) => errors.push(`page error: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error') errors.push(`console: ${m.text()}`); });

  await page.goto(base);
  await page.waitForFunction(() => document.querySelector('#network').textContent.includes('network'));
  await page.click('#connect-wallet');
  await page.waitForFunction(() => !document.querySelector('#wallet-info').hidden, null, { timeout: 20000 });
  assert.equal(await page.getAttribute('#wallet-address', 'title'), wallet.address);
  await page.waitForFunction(() => document.querySelector('#wallet-balance').textContent === '0 BLY');
  assert.deepEqual(await page.evaluate(() => window.__walletRequests), ['eth_requestAccounts', 'personal_sign']);
  assert.match(await page.textContent('#billed-to'), /billed to your wallet/);

  // Buy BLY: the node opens a Checkout Session with Stripe (here the mock), and the page
  // goes to its URL.
  await page.click('#buy-bly');
  await page.waitForURL((u) => u.href.startsWith(checkoutPrefix), { timeout: 20000 });
  await page.screenshot({ path: `${outDir}/wallet-checkout.png` });
  // Stripe confirms the payment to the node.
  const credited = await deliverPaidSession(wallet.address);
  assert.equal(credited.outcome, 'credited');
  assert.equal(await balance(wallet.address), 5000 * NANO);
  // Back from checkout: the session is still there, and so is the balance.
  await page.goto(`${base}/?topup=done`);
  await page.waitForFunction(() => document.querySelector('#wallet-balance').textContent === '5,000 BLY');
  assert.match(await page.textContent('#wallet-error'), /payment received/);

  // A chat billed to the wallet.
  const operatorBefore = await balance('operator');
  await page.fill('#max-tokens', '24');
  await page.fill('#seed', '3');
  await page.fill('#prompt', 'And the earth');
  await page.click('#send');
  await page.waitForFunction(() => document.querySelector('.msg.assistant')?.dataset.done, null, { timeout: 60000 });
  assert.match(await page.textContent('#chat-status'), /^finished/);
  const afterChat = await balance(wallet.address);
  assert.ok(afterChat < 5000 * NANO, `the wallet paid for the chat: ${afterChat}`);
  assert.ok(await balance('operator') >= operatorBefore, 'the loopback account did not pay');
  await page.waitForFunction(() => document.querySelector('#wallet-balance').textContent !== '5,000 BLY');
  await page.screenshot({ path: `${outDir}/wallet-chat.png` });

  // The wallet tab: send BLY, make and revoke an API key.
  await page.click('[data-tab=wallet]');
  await page.fill('#transfer-to', 'operator');
  await page.fill('#transfer-amount', '12.5');
  await page.click('#transfer-send');
  await page.waitForFunction(() => document.querySelector('#transfer-status').textContent.startsWith('sent 12.5 BLY'));
  assert.equal(await balance(wallet.address), afterChat - 12.5 * NANO);
  await page.click('#new-key');
  await page.waitForFunction(() => document.querySelector('#new-key-value').textContent.startsWith('bly_'));
  const key = (await page.textContent('#new-key-value')).split(' ')[0];
  await page.waitForFunction(() => document.querySelectorAll('#keys-table tbody tr').length === 1);
  const viaKey = await fetch(`${base}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` },
    body: JSON.stringify({ prompt: 'In the beginning', max_tokens: 2 }),
  });
  assert.equal(viaKey.status, 200, 'the new key bills the wallet');
  await page.screenshot({ path: `${outDir}/wallet-tab.png` });
  await page.click('#keys-table button.revoke');
  await page.waitForFunction(() => document.querySelectorAll('#keys-table tbody tr').length === 0);
  const revoked = await fetch(`${base}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` },
    body: JSON.stringify({ prompt: 'In the beginning', max_tokens: 2 }),
  });
  assert.equal(revoked.status, 401, 'a revoked key is refused');

  // Log out: the token is revoked at the node, and the page is back to the node's account.
  const token = await page.evaluate(() => JSON.parse(sessionStorage.getItem('blyan.session')).token);
  await page.click('#logout');
  await page.waitForFunction(() => !document.querySelector('#connect-wallet').hidden);
  assert.match(await page.textContent('#billed-to'), /node's own account/);
  const after = await fetch(`${base}/auth/me`, { headers: { authorization: `Bearer ${token}` } });
  assert.equal(after.status, 401);
  assert.equal((await after.json()).error.code, 'revoked_token');

  assert.deepEqual(errors, []);
  console.log(`wallet ok: ${wallet.address} topped up, chatted, sent, made and revoked a key, logged out; screenshots in ${outDir}`);
} finally {
  await browser.close();
}
