// Rehearsal of the interop test with a small JavaScript stand-in for the provider. It is a
// development aid, NOT a test of Sluice: it exists to exercise interop.mjs end to end and to
// observe what the mppx 0.11.0 v1 client does on the wire (CLIENT-BEHAVIOUR.md was checked
// against its trace). The real test runs interop.mjs against our example server.
//
// It starts anvil, deploys SluiceEscrow + TestToken from contracts/artifacts, serves two routes
// on loopback (PAID_PATH: one unit per request; STREAM_PATH: SSE, one unit per token), runs
// interop.mjs against them, then checks the money on chain: the payee received exactly the
// close voucher's amount, the payer got the rest, and the close voucher's signature recovers to
// the payer over the escrow's getVoucherDigest.
//
//   node engine/tests/mppx/probe.mjs            # prints interop.mjs's JSON line on success
//   PROBE_TRACE=1 node engine/tests/mppx/probe.mjs   # also logs every request the server sees
//
// Stand-in server policy (mppx v2 server rules where PROTOCOL.md states them):
// - 402 challenges are v1 (`sessionProtocol:"v1"`), HMAC-bound, expire in 5 minutes, and
//   suggest the most recently opened live channel in `methodDetails.channelId`;
// - a POST with no body is a management request (204 + receipt, nothing charged), whatever its
//   query string (the v1 client POSTs mid-stream vouchers to the stream URL, query included);
// - a content request charges one unit before serving; if the accepted voucher does not cover it
//   the answer is 402 `session/insufficient-balance` with a fresh challenge;
// - the stream reserves one unit per token and, when headroom runs out, emits
//   `payment-need-voucher` with requiredCumulative = spent + one unit, then waits for a voucher.

import { spawn } from 'node:child_process';
import { createServer } from 'node:http';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  ANVIL_KEYS,
  channelIdOf,
  deployLocal,
  erc20Abi,
  fail,
  importTool,
  localChain,
  log,
  mppxEscrowAbi,
  startAnvil,
  viem,
  viemAccounts,
  withTimeout,
} from './lib.mjs';

const { Challenge, Credential } = await importTool('mppx');
const { SessionLegacy } = await importTool('mppx/tempo');
const { Voucher } = SessionLegacy.Session;

const TIMEOUT_MS = 20000;
const CHAIN_ID = 31337;
const PRICE = 1000n; // per paid request
const STREAM_PRICE = 250n; // per streamed token
const DEPOSIT = 20_000n;
const TOPUP = 10_000n;
const STREAM_TOKENS = 12;
const SECRET = 'probe-only-secret-key-0123456789abcdef0123456789';
const TRACE = Boolean(process.env.PROBE_TRACE);
const here = dirname(fileURLToPath(import.meta.url));

function trace(...args) {
  if (TRACE) process.stderr.write(`[probe-server] ${args.join(' ')}\n`);
}

/** The stand-in provider. `chain` = { publicClient, payeeWallet, payee, escrow, token, escrowAbi }. */
function provider(chain) {
  const channels = new Map(); // lower-case id -> state
  let latestChannel;
  const waiters = new Map(); // id -> Set<resolve>
  const routes = {
    '/paid': { price: PRICE, unitType: 'request' },
    '/stream': { price: STREAM_PRICE, unitType: 'llm_token' },
  };

  const challengeFor = (route) =>
    Challenge.from({
      secretKey: SECRET,
      realm: 'probe.local',
      method: 'tempo',
      intent: 'session',
      expires: new Date(Date.now() + 300_000).toISOString(),
      request: {
        amount: route.price.toString(),
        currency: chain.token,
        recipient: chain.payee,
        unitType: route.unitType,
        suggestedDeposit: DEPOSIT.toString(),
        methodDetails: {
          chainId: CHAIN_ID,
          escrowContract: chain.escrow,
          sessionProtocol: 'v1',
          ...(latestChannel && !channels.get(latestChannel).closed ? { channelId: latestChannel } : {}),
        },
      },
    });

  const receiptOf = (state, challengeId, txHash) => ({
    method: 'tempo',
    intent: 'session',
    status: 'success',
    timestamp: new Date().toISOString(),
    reference: state.id,
    challengeId,
    channelId: state.id,
    acceptedCumulative: state.highest.toString(),
    spent: state.spent.toString(),
    units: state.units,
    ...(txHash ? { txHash } : {}),
  });
  const encodeReceipt = (receipt) => Buffer.from(JSON.stringify(receipt)).toString('base64url');

  function problem(res, route, status, type, detail) {
    const challenge = challengeFor(route);
    res.writeHead(status, {
      'WWW-Authenticate': Challenge.serialize(challenge),
      'Cache-Control': 'no-store',
      'Content-Type': 'application/problem+json',
    });
    res.end(JSON.stringify({ type: `https://paymentauth.org/problems/${type}`, title: type, status, detail, challengeId: challenge.id }));
  }

  const read = (functionName, args) => chain.publicClient.readContract({ address: chain.escrow, abi: chain.escrowAbi, functionName, args });

  async function broadcast(serialized) {
    const hash = await chain.publicClient.sendRawTransaction({ serializedTransaction: serialized });
    const receipt = await chain.publicClient.waitForTransactionReceipt({ hash, timeout: TIMEOUT_MS });
    if (receipt.status !== 'success') throw new Error(`transaction ${hash} reverted`);
    return hash;
  }

  async function verifiedVoucher(state, payload) {
    const cumulativeAmount = BigInt(payload.cumulativeAmount);
    const ok = await Voucher.verifyVoucher(chain.escrow, CHAIN_ID, { channelId: state.id, cumulativeAmount, signature: payload.signature }, state.signer);
    if (!ok) throw Object.assign(new Error('voucher signature invalid'), { type: 'session/invalid-signature' });
    if (cumulativeAmount > state.deposit) throw Object.assign(new Error('voucher exceeds deposit'), { type: 'session/amount-exceeds-deposit' });
    return cumulativeAmount;
  }

  function raiseHighest(state, amount, signature) {
    if (amount < state.highest) throw Object.assign(new Error(`voucher ${amount} below accepted ${state.highest}`), { type: 'verification-failed' });
    if (amount > state.highest) {
      state.highest = amount;
      state.signature = signature;
      for (const wake of waiters.get(state.id) ?? []) wake();
      waiters.delete(state.id);
    }
  }

  async function apply(credential) {
    const p = credential.payload;
    const id = p.channelId?.toLowerCase();
    switch (p.action) {
      case 'open': {
        const tx = viem.parseTransaction(p.transaction);
        const from = await viem.recoverTransactionAddress({ serializedTransaction: p.transaction });
        if (viem.getAddress(tx.to) !== chain.escrow) throw new Error('open tx does not target the escrow');
        const { functionName, args } = viem.decodeFunctionData({ abi: chain.escrowAbi, data: tx.data });
        if (functionName !== 'open') throw new Error('open tx does not call open');
        const [payee, token, , salt, authorizedSigner] = args;
        if (payee !== chain.payee || token !== chain.token) throw new Error('open tx payee/token mismatch');
        const derived = channelIdOf({ payer: from, payee, token, salt, authorizedSigner, escrow: chain.escrow, chainId: CHAIN_ID });
        if (derived !== id) throw new Error(`open tx is for channel ${derived}, payload claims ${id}`);
        const txHash = await broadcast(p.transaction);
        const onChain = await read('getChannel', [id]);
        const signer = BigInt(onChain.authorizedSigner) === 0n ? onChain.payer : onChain.authorizedSigner;
        const state = { id, deposit: onChain.deposit, signer, highest: 0n, spent: 0n, units: 0, closed: false };
        channels.set(id, state);
        latestChannel = id;
        raiseHighest(state, await verifiedVoucher(state, p), p.signature);
        return { state, txHash };
      }
      case 'topUp': {
        const state = channels.get(id);
        if (!state) throw Object.assign(new Error('unknown channel'), { type: 'session/channel-not-found', status: 410 });
        const { functionName, args } = viem.decodeFunctionData({ abi: chain.escrowAbi, data: viem.parseTransaction(p.transaction).data });
        if (functionName !== 'topUp' || args[0] !== id || args[1] !== BigInt(p.additionalDeposit)) throw new Error('topUp tx mismatch');
        const txHash = await broadcast(p.transaction);
        const onChain = await read('getChannel', [id]);
        if (onChain.deposit <= state.deposit) throw new Error('deposit did not increase');
        state.deposit = onChain.deposit;
        return { state, txHash };
      }
      case 'voucher':
      case 'close': {
        const state = channels.get(id);
        if (!state || state.closed) throw Object.assign(new Error('unknown or closed channel'), { type: 'session/channel-not-found', status: 410 });
        const amount = await verifiedVoucher(state, p);
        if (p.action === 'voucher') {
          raiseHighest(state, amount, p.signature);
          return { state };
        }
        if (amount < state.spent) throw new Error(`close amount ${amount} below spent ${state.spent}`);
        const hash = await chain.payeeWallet.writeContract({
          address: chain.escrow,
          abi: chain.escrowAbi,
          functionName: 'close',
          args: [id, amount, p.signature],
        });
        const receipt = await chain.publicClient.waitForTransactionReceipt({ hash, timeout: TIMEOUT_MS });
        if (receipt.status !== 'success') throw new Error(`close reverted: ${hash}`);
        state.closed = true;
        state.closedAt = amount;
        return { state, txHash: hash };
      }
      default:
        throw Object.assign(new Error(`unknown action ${p.action}`), { type: 'invalid-payload' });
    }
  }

  function waitForVoucher(state) {
    return new Promise((resolve) => {
      const set = waiters.get(state.id) ?? new Set();
      set.add(resolve);
      waiters.set(state.id, set);
    });
  }

  async function stream(res, state, challengeId, tokens, tick) {
    res.writeHead(200, {
      'Content-Type': 'text/event-stream; charset=utf-8',
      'Cache-Control': 'no-cache',
      'Payment-Receipt': encodeReceipt(receiptOf(state, challengeId)),
    });
    for (let i = 1; i <= tokens; i++) {
      while (state.highest - state.spent < tick) {
        const data = {
          channelId: state.id,
          requiredCumulative: (state.spent + tick).toString(),
          acceptedCumulative: state.highest.toString(),
          deposit: state.deposit.toString(),
        };
        res.write(`event: payment-need-voucher\ndata: ${JSON.stringify(data)}\n\n`);
        await withTimeout(waitForVoucher(state), TIMEOUT_MS, 'a mid-stream voucher');
      }
      state.spent += tick;
      state.units += 1;
      res.write(`event: message\ndata: token-${i}\n\n`);
    }
    res.end(`event: payment-receipt\ndata: ${JSON.stringify(receiptOf(state, challengeId))}\n\n`);
  }

  async function handle(req, res) {
    const url = new URL(req.url, 'http://probe.local');
    const route = routes[url.pathname];
    const body = await new Promise((resolve) => {
      const chunks = [];
      req.on('data', (c) => chunks.push(c));
      req.on('end', () => resolve(Buffer.concat(chunks)));
    });
    const auth = req.headers.authorization;
    const credential = auth ? Credential.deserialize(auth) : undefined;
    trace(
      req.method,
      req.url,
      `accept=${req.headers.accept ?? '-'}`,
      `accept-payment=${req.headers['accept-payment'] ?? '-'}`,
      `content-length=${req.headers['content-length'] ?? '-'}`,
      `content-type=${req.headers['content-type'] ?? '-'}`,
      credential ? `credential=${JSON.stringify({ payload: credential.payload, source: credential.source, challengeId: credential.challenge.id })}` : 'no credential',
    );
    if (!route) return res.writeHead(404).end();
    if (!credential) return problem(res, route, 402, 'payment-required', 'Payment is required.');
    if (!Challenge.verify(credential.challenge, { secretKey: SECRET }))
      return problem(res, route, 402, 'invalid-challenge', 'challenge was not issued by this server');
    if (credential.challenge.request.amount !== route.price.toString())
      return problem(res, route, 402, 'invalid-challenge', 'credential amount does not match this route');
    let applied;
    try {
      applied = await apply(credential);
    } catch (error) {
      trace('rejected:', error.message);
      return problem(res, route, error.status ?? 402, error.type ?? 'verification-failed', error.message);
    }
    const { state, txHash } = applied;
    const challengeId = credential.challenge.id;
    const action = credential.payload.action;
    const management = action === 'close' || action === 'topUp' || (req.method === 'POST' && body.length === 0) || req.method === 'HEAD';
    if (management) {
      res.writeHead(204, { 'Payment-Receipt': encodeReceipt(receiptOf(state, challengeId, txHash)), 'Cache-Control': 'private' });
      return res.end();
    }
    const tick = route.price;
    if (url.pathname === '/stream') return stream(res, state, challengeId, Number(url.searchParams.get('tokens') ?? 1), tick);
    if (state.highest - state.spent < tick)
      return problem(res, route, 402, 'session/insufficient-balance', `requested ${tick}, available ${state.highest - state.spent}`);
    state.spent += tick;
    state.units += 1;
    res.writeHead(200, {
      'Content-Type': 'text/plain',
      'Payment-Receipt': encodeReceipt(receiptOf(state, challengeId, txHash)),
      'Cache-Control': 'private',
    });
    res.end('paid content');
  }

  const server = createServer((req, res) => {
    handle(req, res).catch((error) => {
      trace('internal error:', error.stack);
      if (!res.headersSent) res.writeHead(500).end();
      else res.end();
    });
  });
  return { server, channels };
}

function runInterop(envVars) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [join(here, 'interop.mjs')], {
      env: { ...process.env, ...envVars },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    child.stdout.on('data', (c) => (out += c));
    child.on('error', reject);
    child.on('exit', (code) => (code === 0 ? resolve(out) : reject(new Error(`interop.mjs exited with ${code}`))));
  });
}

async function main() {
  const anvil = await startAnvil(CHAIN_ID, TIMEOUT_MS);
  let http;
  try {
    const chainDef = localChain(CHAIN_ID, anvil.url);
    const transport = viem.http(anvil.url, { timeout: TIMEOUT_MS, retryCount: 0 });
    const publicClient = viem.createPublicClient({ chain: chainDef, transport });
    const deployer = viemAccounts.privateKeyToAccount(ANVIL_KEYS[0]);
    const payer = viemAccounts.privateKeyToAccount(ANVIL_KEYS[1]);
    const payee = viemAccounts.privateKeyToAccount(ANVIL_KEYS[2]);
    const deployerWallet = viem.createWalletClient({ chain: chainDef, transport, account: deployer });
    const payeeWallet = viem.createWalletClient({ chain: chainDef, transport, account: payee });
    const { token, escrow } = await deployLocal({
      publicClient,
      walletClient: deployerWallet,
      deployer,
      holders: [payer.address],
      mint: DEPOSIT + TOPUP,
      timeoutMs: TIMEOUT_MS,
    });
    const escrowAbi = await mppxEscrowAbi();
    const { server, channels } = provider({ publicClient, payeeWallet, payee: payee.address, escrow, token, escrowAbi });
    http = server;
    await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
    const serverUrl = `http://127.0.0.1:${server.address().port}`;
    log(`probe: anvil ${anvil.url}, server ${serverUrl}`);

    const out = await runInterop({
      SERVER_URL: serverUrl,
      RPC_URL: anvil.url,
      CHAIN_ID: String(CHAIN_ID),
      ESCROW: escrow,
      TOKEN: token,
      PAYER_KEY: ANVIL_KEYS[1],
      PAYEE: payee.address,
      DEPOSIT: DEPOSIT.toString(),
      TOPUP: TOPUP.toString(),
      STREAM_TOKENS: String(STREAM_TOKENS),
    });
    const lines = out.trim().split('\n');
    if (lines.length !== 1) throw new Error(`interop.mjs printed ${lines.length} lines on stdout`);
    const result = JSON.parse(lines[0]);

    // The money, checked on chain and against the stand-in's books.
    const state = channels.get(result.channelId.toLowerCase());
    const last = BigInt(result.lastCumulative);
    const balance = (who) => publicClient.readContract({ address: token, abi: erc20Abi, functionName: 'balanceOf', args: [who] });
    const digest = await publicClient.readContract({ address: escrow, abi: escrowAbi, functionName: 'getVoucherDigest', args: [result.channelId, last] });
    const signer = await viem.recoverAddress({ hash: digest, signature: result.lastSignature });
    const checks = {
      'close voucher signed by the payer over getVoucherDigest': signer === payer.address,
      'payee received exactly the close voucher': (await balance(payee.address)) === last,
      'payer refunded the rest': (await balance(payer.address)) === DEPOSIT + TOPUP - last,
      'close amount = max(spent, accepted) on the server': last === (state.spent > state.highest ? state.spent : state.highest),
      'spent = requests * price + tokens * stream price': state.spent === BigInt(result.requests) * PRICE + BigInt(result.streamTokens) * STREAM_PRICE,
      'need-voucher events = voucher POSTs': result.needVoucherEvents === result.voucherPosts,
    };
    for (const [what, ok] of Object.entries(checks)) if (!ok) throw new Error(`probe check failed: ${what}`);
    log(`probe: ${Object.keys(checks).length} checks passed`);
    process.stdout.write(`${lines[0]}\n`);
  } finally {
    http?.close();
    http?.closeAllConnections?.();
    anvil.stop();
  }
}

try {
  await withTimeout(main(), 240_000, 'the probe run');
  process.exit(0);
} catch (error) {
  fail(error?.stack ?? String(error));
}
