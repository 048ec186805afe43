// Blyan web UI: chat (streamed over the OpenAI-compatible API), expert dashboard, chain
// explorer, activity, health, and a wallet (Sign-In with Ethereum through an EIP-1193
// provider such as MetaMask: balance, transfers, API keys, card top-ups). Plain browser
// JavaScript; no build step. Without a wallet everything works as before: the node bills
// local chats to its loopback account.
'use strict';

const $ = (sel) => document.querySelector(sel);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'class') node.className = v;
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

async function getJson(path, init) {
  const res = await fetch(path, init);
  const body = await res.json().catch(() => null);
  if (!res.ok) {
    const e = body && body.error;
    throw new Error(e ? `[${e.code}] ${e.message}` : `${res.status} ${res.statusText}`);
  }
  return body;
}

const short = (h) => (h ? h.slice(0, 12) : '');
const bytes = (n) => (n >= 1 << 20 ? `${(n / (1 << 20)).toFixed(1)} MiB` : n >= 1024 ? `${(n / 1024).toFixed(1)} KiB` : `${n} B`);

// ---- tabs ----
const loaders = {};
for (const tab of document.querySelectorAll('.tab')) {
  tab.addEventListener('click', () => {
    document.querySelectorAll('.tab').forEach((t) => t.classList.toggle('active', t === tab));
    document.querySelectorAll('.panel').forEach((p) => p.classList.toggle('active', p.id === `tab-${tab.dataset.tab}`));
    const load = loaders[tab.dataset.tab];
    if (load) load();
  });
}

// ---- chat ----
let history = [];
let controller = null;

function addMessage(role, text) {
  const m = el('div', { class: `msg ${role}` }, text);
  $('#messages').append(m);
  $('#messages').scrollTop = $('#messages').scrollHeight;
  return m;
}

function setStreaming(on) {
  $('#send').disabled = on;
  $('#stop').disabled = !on;
  $('#prompt').disabled = on;
}

async function sendChat(event) {
  event.preventDefault();
  const text = $('#prompt').value.trim();
  if (!text || controller) return;
  $('#prompt').value = '';
  history.push({ role: 'user', content: text });
  addMessage('user', text);
  const reply = addMessage('assistant streaming', '');
  const body = {
    model: 'blyan',
    messages: history,
    stream: true,
    stream_options: { include_usage: true },
    max_tokens: Number($('#max-tokens').value) || 96,
    temperature: Number($('#temperature').value),
  };
  if ($('#seed').value !== '') body.seed = Number($('#seed').value);
  controller = new AbortController();
  setStreaming(true);
  $('#chat-status').textContent = 'generating…';
  const started = performance.now();
  let firstAt = null;
  let content = '';
  let finish = null;
  let usage = null;
  let where = null;
  try {
    const res = await fetch('/v1/chat/completions', {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...authHeaders() },
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (!res.ok) {
      const b = await res.json().catch(() => null);
      throw new Error(b && b.error ? `[${b.error.code}] ${b.error.message}` : `${res.status}`);
    }
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf('\n\n')) >= 0) {
        const frame = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        for (const line of frame.split('\n')) {
          if (!line.startsWith('data:')) continue;
          const data = line.slice(5).trim();
          if (data === '[DONE]') continue;
          const chunk = JSON.parse(data);
          if (chunk.error) throw new Error(`[${chunk.error.code}] ${chunk.error.message}`);
          if (chunk.usage) usage = chunk.usage;
          if (chunk.blyan) where = chunk.blyan;
          const choice = chunk.choices[0];
          if (!choice) continue;
          if (choice.delta && choice.delta.content) {
            if (firstAt === null) firstAt = performance.now();
            content += choice.delta.content;
            reply.textContent = content;
            $('#messages').scrollTop = $('#messages').scrollHeight;
          }
          if (choice.finish_reason) finish = choice.finish_reason;
        }
      }
    }
    history.push({ role: 'assistant', content });
    const secs = (performance.now() - started) / 1000;
    const ttft = firstAt === null ? '–' : `${Math.round(firstAt - started)} ms`;
    const tokens = usage ? usage.completion_tokens : '?';
    const hosts = where ? Object.keys(where.remote_hosts) : [];
    const remote = hosts.length
      ? `; ${where.remote_rows} expert computations on other nodes (${hosts.map((h) => `${h}: layers ${where.remote_hosts[h].join(', ')}`).join('; ')})`
      : '; every expert computed on this node';
    const missing = where && where.missing_experts ? Object.keys(where.missing_experts) : [];
    const degraded = missing.length
      ? `; DEGRADED: no node could compute ${missing.map((e) => `expert ${e} (${where.missing_experts[e]} tokens)`).join(', ')}, left out of the mixture`
      : '';
    $('#chat-status').textContent = `finished (${finish}); ${tokens} tokens in ${secs.toFixed(2)} s; first token after ${ttft}${remote}${degraded}`;
  } catch (e) {
    if (e.name === 'AbortError') {
      history.push({ role: 'assistant', content });
      $('#chat-status').textContent = `stopped after ${content.length} characters`;
    } else {
      history.pop();
      addMessage('error', String(e.message || e));
      $('#chat-status').textContent = 'failed';
    }
  } finally {
    reply.classList.remove('streaming');
    reply.dataset.done = finish || 'stopped';
    controller = null;
    setStreaming(false);
    if (session) refreshWallet();
    $('#prompt').focus();
  }
}

$('#chat-form').addEventListener('submit', sendChat);
$('#prompt').addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && !e.shiftKey) {
    e.preventDefault();
    $('#chat-form').requestSubmit();
  }
});
$('#stop').addEventListener('click', () => controller && controller.abort());
$('#reset').addEventListener('click', () => {
  if (controller) controller.abort();
  history = [];
  $('#messages').replaceChildren();
  $('#chat-status').textContent = '';
});

// ---- experts ----
loaders.experts = async () => {
  let hosting = null;
  try {
    hosting = await getJson('/experts/hosted');
    $('#hosting-summary').textContent = `this node computes ${hosting.hosted === '*' ? 'every expert' : hosting.hosted}; ` +
      `${hosting.computed_for_peers} calls computed for other nodes; of its own, ${hosting.remote_calls} answered by hosts, ` +
      `${hosting.hedged} hedged to a second host, ${hosting.fallbacks} computed here for want of a host, ` +
      `${hosting.checked} spot-checked; ${hosting.repaired} unreadable blocks repaired from peers`;
    $('#hosts-table tbody').replaceChildren(...hosting.hosts.map((h) => el('tr', {},
      el('td', {}, h.api), el('td', { class: 'hash' }, short(h.account)), el('td', {}, h.blocks.length),
      el('td', {}, h.queue), el('td', {}, `${h.latency_ms.toFixed(2)} ms`), el('td', {}, `${h.answered} / ${h.failed}`),
      el('td', {}, h.banned ? `banned: ${h.banned}`
        : !h.admitted ? 'not admitted as a host: never called'
          : `seen ${(h.seen_ms_ago / 1000).toFixed(1)} s ago`))));
  } catch (e) {
    $('#hosting-summary').textContent = `could not load expert hosts: ${e.message}`;
  }
  const here = new Set(hosting ? hosting.experts.map((x) => x.id) : []);
  const servedBy = (x) => {
    const where = [];
    if (!hosting || here.has(x.id)) where.push('this node');
    for (const h of (hosting ? hosting.hosts : [])) {
      if (!h.banned && h.admitted && h.blocks.includes(x.served)) where.push(`${h.api} (${h.latency_ms.toFixed(1)} ms)`);
    }
    return where.join(', ') || 'this node, from its block (no host)';
  };
  try {
    const data = await getJson('/experts');
    const c = data.cache;
    const rate = c.hit_rate === null ? 'n/a' : `${(100 * c.hit_rate).toFixed(1)}%`;
    $('#cache-summary').textContent = `expert cache: hit rate ${rate}, ${c.hits} hits, ${c.misses} misses, ${c.evictions} evictions, ${bytes(c.bytes)} of ${bytes(c.budget_bytes)} in ${c.entries} experts`;
    const max = Math.max(1, ...data.experts.map((x) => x.tokens_routed));
    const rows = data.experts.map((x) => {
      const select = el('select', { 'data-expert': x.id });
      x.versions.forEach((v, i) => {
        const label = `v${i + 1} ${short(v)}${v === x.head ? ' (head)' : ''}`;
        const opt = el('option', { value: v }, label);
        if (v === x.served) opt.selected = true;
        select.append(opt);
      });
      return el('tr', {},
        el('td', {}, x.id),
        el('td', {}, el('span', { class: 'bar', style: `width:${Math.round(80 * x.tokens_routed / max)}px` }), ` ${x.tokens_routed}`),
        el('td', {}, x.cached ? 'yes' : 'no'),
        el('td', {}, x.versions.length),
        el('td', {}, select),
        el('td', { class: 'served-by' }, servedBy(x)));
    });
    $('#experts-table tbody').replaceChildren(...rows);
  } catch (e) {
    $('#cache-summary').textContent = `could not load experts: ${e.message}`;
  }
};

async function serve(pins) {
  $('#serving-status').textContent = 'loading the model with the chosen versions…';
  try {
    const r = await getJson('/experts/serving', {
      method: 'PUT',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ pins }),
    });
    const n = Object.keys(r.pins).length;
    $('#serving-status').textContent = n ? `serving ${n} pinned expert versions` : 'serving every expert\'s head';
    loaders.experts();
  } catch (e) {
    $('#serving-status').textContent = `not changed: ${e.message}`;
  }
}

$('#apply-versions').addEventListener('click', () => {
  const pins = {};
  for (const s of document.querySelectorAll('#experts-table select')) {
    const head = [...s.options].find((o) => o.textContent.endsWith('(head)'));
    if (!head || s.value !== head.value) pins[s.dataset.expert] = s.value;
  }
  serve(pins);
});
$('#heads').addEventListener('click', () => serve({}));

// ---- chain ----
const PAGE = 25;
let offset = 0;
loaders.chain = async () => {
  const chain = $('#chain-filter').value;
  try {
    const page = await getJson(`/chain/blocks?limit=${PAGE}&offset=${offset}${chain ? `&chain=${chain}` : ''}`);
    const rows = page.blocks.map((b) => el('tr', { onclick: () => showBlock(b.hash) },
      el('td', {}, b.chain), el('td', {}, b.height), el('td', {}, b.kind), el('td', {}, b.name),
      el('td', {}, bytes(b.payload_len)), el('td', { class: 'hash' }, short(b.hash))));
    $('#blocks-table tbody').replaceChildren(...rows);
    const last = Math.min(page.total, offset + page.blocks.length);
    $('#page-info').textContent = `${page.total ? offset + 1 : 0}–${last} of ${page.total}`;
    $('#prev-page').disabled = offset === 0;
    $('#next-page').disabled = last >= page.total;
  } catch (e) {
    $('#page-info').textContent = `could not load blocks: ${e.message}`;
  }
};

async function showBlock(hash) {
  const d = $('#block-detail');
  d.hidden = false;
  try {
    d.textContent = JSON.stringify(await getJson(`/chain/blocks/${hash}`), null, 2);
  } catch (e) {
    d.textContent = e.message;
  }
}

$('#chain-filter').addEventListener('change', () => { offset = 0; loaders.chain(); });
$('#prev-page').addEventListener('click', () => { offset = Math.max(0, offset - PAGE); loaders.chain(); });
$('#next-page').addEventListener('click', () => { offset += PAGE; loaders.chain(); });

// ---- activity ----
loaders.activity = async () => {
  try {
    const pol = await getJson('/pol/status');
    const last = pol.recent.length ? pol.recent[pol.recent.length - 1] : null;
    $('#pol-status').textContent = pol.pool_problem
      ? `mode ${pol.settings.mode}; ${pol.pool_problem}`
      : `mode ${pol.settings.mode}; ${pol.verdicts} verdicts; pool ${pol.pool_remaining}/${pol.pool_items} items left` +
        (last ? `; last: ${last.expert} ${last.reason}` : '');
    const experts = (await getJson('/experts')).experts.filter((x) => x.versions.length > 1);
    $('#new-versions').textContent = experts.length
      ? experts.map((x) => `${x.id}: ${x.versions.length} versions, head ${short(x.head)}`).join('\n')
      : 'No expert has a version beyond genesis yet. `blyan train expert` makes a candidate; Proof of Learning will accept it.';
    const proofs = await getJson('/chain/blocks?chain=proof&limit=50');
    $('#proof-blocks').textContent = proofs.blocks.map((b) => `#${b.height} ${b.kind} ${b.name} ${short(b.hash)}`).join('\n') || 'empty';
  } catch (e) {
    $('#pol-status').textContent = `could not load activity: ${e.message}`;
  }
};

// ---- health ----
async function refreshHealth() {
  try {
    const h = await getJson('/health');
    const badge = $('#stage-badge');
    badge.textContent = `${h.stage} · ${(100 * h.readiness).toFixed(1)}%`;
    badge.className = `badge ${h.stage}`;
    $('#health-stage').textContent = h.stage;
    $('#health-readiness').textContent = `readiness ${(100 * h.readiness).toFixed(1)}% after ${h.updates} checks`;
    $('#health-reason').textContent = h.reason;
    $('#health-table tbody').replaceChildren(...h.components.map((c) => el('tr', {},
      el('td', {}, c.name), el('td', {}, `${(100 * c.readiness).toFixed(1)}%`), el('td', {}, c.weight),
      el('td', {}, c.critical ? 'yes' : 'no'), el('td', {}, c.detail))));
  } catch (e) {
    $('#stage-badge').textContent = 'unreachable';
    $('#stage-badge').className = 'badge unavailable';
  }
  try {
    const n = await getJson('/net/peers');
    $('#peers-none').hidden = n.peers.length > 0;
    $('#peers-table tbody').replaceChildren(...n.peers.map((p) => el('tr', {},
      el('td', {}, short(p.key)), el('td', {}, p.api || ''),
      el('td', {}, p.rtt_ms == null ? '–' : `${p.rtt_ms.toFixed(1)} ms`),
      el('td', {}, `${p.blocks_from} / ${p.blocks_to}`),
      el('td', {}, p.banned_for_ms == null ? `${p.bans}` : `${p.bans} (banned: ${p.last_ban || ''})`))));
  } catch (e) {
    $('#peers-none').hidden = false;
  }
}
loaders.health = refreshHealth;

// ---- wallet ----
const SESSION_KEY = 'blyan.session';
let session = null;
let refreshTimer = null;

function authHeaders() {
  return session ? { authorization: `Bearer ${session.token}` } : {};
}

const bly = (nano) => `${(Number(nano) / 1e9).toLocaleString('en-US', { maximumFractionDigits: 4 })} BLY`;
const shortAddress = (a) => `${a.slice(0, 6)}…${a.slice(-4)}`;

function hexOf(text) {
  return `0x${[...new TextEncoder().encode(text)].map((b) => b.toString(16).padStart(2, '0')).join('')}`;
}

// The EIP-4361 message the wallet signs: this page's host and origin (the node refuses a
// login for another domain), the chain and nonce the node asked for.
function siweMessage(address, n) {
  return `${window.location.host} wants you to sign in with your Ethereum account:\n${address}\n\n` +
    'Sign in to this Blyan node.\n\n' +
    `URI: ${window.location.origin}\nVersion: 1\nChain ID: ${n.chain_id}\nNonce: ${n.nonce}\n` +
    `Issued At: ${new Date().toISOString()}`;
}

function setSession(s) {
  session = s;
  clearTimeout(refreshTimer);
  if (s) {
    sessionStorage.setItem(SESSION_KEY, JSON.stringify(s));
    // Refresh a minute before the token expires.
    const wait = Math.max(5000, Date.parse(s.expires_at) - Date.now() - 60000);
    refreshTimer = setTimeout(refreshSession, wait);
  } else {
    sessionStorage.removeItem(SESSION_KEY);
  }
  showWallet();
}

function showWallet() {
  const on = session !== null;
  $('#connect-wallet').hidden = on;
  $('#wallet-info').hidden = !on;
  $('#wallet-tab').hidden = !on;
  $('#billed-to').textContent = on
    ? `chats are billed to your wallet ${shortAddress(session.address)}`
    : 'chats from this machine are billed to the node\'s own account; connect a wallet to pay with yours';
  if (on) {
    $('#wallet-address').textContent = shortAddress(session.address);
    $('#wallet-address').title = session.address;
    $('#wallet-summary').textContent = `${session.address}`;
  } else if ($('#wallet-tab').classList.contains('active')) {
    $('[data-tab=chat]').click();
  }
}

async function connectWallet() {
  $('#wallet-error').textContent = '';
  const provider = window.ethereum;
  if (!provider) {
    $('#wallet-error').textContent = 'no wallet found: install MetaMask or another Ethereum wallet';
    return;
  }
  try {
    const accounts = await provider.request({ method: 'eth_requestAccounts' });
    if (!accounts || !accounts.length) throw new Error('the wallet shared no account');
    const n = await getJson(`/auth/nonce?address=${encodeURIComponent(accounts[0])}`);
    const message = siweMessage(n.address, n);
    const signature = await provider.request({ method: 'personal_sign', params: [hexOf(message), accounts[0]] });
    const s = await getJson('/auth/siwe', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ message, signature }),
    });
    setSession({ token: s.token, address: s.address, expires_at: s.expires_at });
    await refreshWallet();
  } catch (e) {
    $('#wallet-error').textContent = `login failed: ${e.message || e}`;
  }
}

async function refreshSession() {
  if (!session) return;
  try {
    const s = await getJson('/auth/refresh', { method: 'POST', headers: authHeaders() });
    setSession({ token: s.token, address: s.address, expires_at: s.expires_at });
  } catch (e) {
    setSession(null);
    $('#wallet-error').textContent = `signed out: ${e.message}`;
  }
}

async function refreshWallet() {
  if (!session) return;
  try {
    const me = await getJson('/auth/me', { headers: authHeaders() });
    $('#wallet-balance').textContent = bly(me.balance.available);
    $('#wallet-status').textContent = `available ${bly(me.balance.available)}; held for requests in flight ${bly(me.balance.pending)}`;
  } catch (e) {
    if (/\[(expired_token|revoked_token|invalid_token)\]/.test(e.message)) setSession(null);
    $('#wallet-error').textContent = e.message;
  }
}

async function logout() {
  try {
    await getJson('/auth/logout', { method: 'POST', headers: authHeaders() });
  } catch (e) {
    // The token is forgotten here either way.
  }
  setSession(null);
}

async function loadKeys() {
  const data = await getJson('/auth/api-keys', { headers: authHeaders() });
  $('#keys-table tbody').replaceChildren(...data.keys.map((k) => el('tr', {},
    el('td', { class: 'hash' }, k.id),
    el('td', {}, new Date(k.created_ms).toLocaleString()),
    el('td', {}, el('button', { class: 'secondary revoke', 'data-id': k.id, onclick: () => revokeKey(k.id) }, 'Revoke')))));
}

async function revokeKey(id) {
  try {
    await getJson(`/auth/api-keys/${id}`, { method: 'DELETE', headers: authHeaders() });
    $('#new-key-value').textContent = `revoked ${id}`;
    await loadKeys();
  } catch (e) {
    $('#new-key-value').textContent = e.message;
  }
}

async function loadTiers() {
  try {
    const t = await getJson('/payments/tiers');
    $('#tier').replaceChildren(...t.tiers.map((x) => el('option', { value: x.name },
      `${x.name}: ${(x.amount_minor / 100).toFixed(2)} ${x.currency.toUpperCase()} for ${Number(x.bly).toLocaleString('en-US')} BLY`)));
    $('#checkout').disabled = !t.checkout;
    $('#buy-bly').disabled = !t.checkout;
    $('#checkout-status').textContent = t.checkout ? '' : 'this node does not sell BLY by card';
  } catch (e) {
    $('#checkout-status').textContent = e.message;
  }
}

async function checkout() {
  $('#checkout-status').textContent = 'opening checkout…';
  try {
    const tier = $('#tier').value || undefined;
    const c = await getJson('/payments/checkout', {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...authHeaders() },
      body: JSON.stringify(tier ? { tier } : {}),
    });
    window.location.assign(c.url);
  } catch (e) {
    $('#checkout-status').textContent = `checkout failed: ${e.message}`;
  }
}

$('#connect-wallet').addEventListener('click', connectWallet);
$('#logout').addEventListener('click', logout);
$('#checkout').addEventListener('click', checkout);
$('#buy-bly').addEventListener('click', checkout);
$('#new-key').addEventListener('click', async () => {
  try {
    const k = await getJson('/auth/api-keys', { method: 'POST', headers: authHeaders() });
    $('#new-key-value').textContent = `${k.key} (shown once: copy it now)`;
    await loadKeys();
  } catch (e) {
    $('#new-key-value').textContent = e.message;
  }
});
$('#transfer-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  $('#transfer-status').textContent = 'sending…';
  try {
    const r = await getJson('/ledger/transfers', {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...authHeaders() },
      body: JSON.stringify({ to: $('#transfer-to').value.trim(), amount: $('#transfer-amount').value.trim() }),
    });
    $('#transfer-status').textContent = `sent ${bly(r.amount)} to ${shortAddress(r.to)} (posting ${r.seq})`;
    await refreshWallet();
  } catch (e) {
    $('#transfer-status').textContent = `not sent: ${e.message}`;
  }
});
loaders.wallet = async () => {
  await refreshWallet();
  try {
    await loadKeys();
  } catch (e) {
    $('#new-key-value').textContent = e.message;
  }
};

(async () => {
  try {
    session = JSON.parse(sessionStorage.getItem(SESSION_KEY) || 'null');
  } catch (e) {
    session = null;
  }
  setSession(session);
  loadTiers();
  if (session) refreshWallet();
  const topup = new URLSearchParams(window.location.search).get('topup');
  if (topup === 'done') $('#wallet-error').textContent = 'payment received: the BLY arrive once Stripe confirms it';
  if (topup === 'cancelled') $('#wallet-error').textContent = 'checkout cancelled';
})();

(async () => {
  try {
    const info = await getJson('/node');
    $('#network').textContent = `network ${short(info.node.network)} · ${info.node.precision} · ${info.node.layers}×${info.node.experts} experts, top-${info.node.top_k}`;
  } catch (e) {
    $('#network').textContent = 'node unreachable';
  }
  refreshHealth();
  setInterval(refreshHealth, 5000);
})();
