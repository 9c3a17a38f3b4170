// The real npm mppx@0.11.0 v1 client (`sessionLegacy`, `sessionLegacyManager`) paying a Sluice
// provider on a local EVM chain (anvil) with our escrow. Driven by a Rust integration test, which
// starts anvil, deploys the escrow and a token, funds the payer, starts the example server, runs
// this script, and checks the engine's accounting and the escrow against the JSON it prints.
//
// Flow (each step fails the script with a clear message and exit status 1):
//   1. GET PAID_PATH with no credential: a 402 whose `tempo`/`session` challenge is v1 and names
//      PAYEE, TOKEN, ESCROW and CHAIN_ID.
//   2. Manual open. mppx's automatic open builds a Tempo 0x76 transaction that anvil rejects, so
//      this script sends an EIP-1559 `approve(escrow, DEPOSIT)` itself, then builds and signs (does
//      not send) an EIP-1559 `open(PAYEE, TOKEN, DEPOSIT, salt, authorizedSigner = 0)`, computes
//      the channel id with mppx's v1 helper, and hands both to the server in a manual `open`
//      credential made by `sessionLegacy` (its `transaction` field takes any signed tx hex). It is
//      POSTed with no body to PAID_PATH; the SERVER broadcasts the open. The initial voucher is
//      for one unit of the route's price, as mppx's automatic open would sign.
//   3. REQUESTS automatic paid GETs of PAID_PATH with `sessionLegacyManager`, which resumes the
//      channel the server suggests in `methodDetails.channelId` (read back with getChannel).
//   4. One SSE GET of STREAM_PATH?tokens=STREAM_TOKENS; the manager answers each
//      `payment-need-voucher` event with a voucher POST. At least MIN_NEED_VOUCHER are required.
//   5. Top-up: EIP-1559 approve (sent) + signed EIP-1559 `topUp(channelId, TOPUP)` (not sent) in a
//      manual `topUp` credential POSTed with no body to PAID_PATH; the server broadcasts it.
//   6. AFTER_TOPUP_REQUESTS more paid GETs (vouchers beyond the first deposit work).
//   7. `manager.close()`: a `close` credential POSTed to the last URL; it must get a 2xx.
//
// Environment (amounts are raw token base units, decimal):
//   SERVER_URL      base URL of the provider, e.g. http://127.0.0.1:8080 (required)
//   RPC_URL         anvil JSON-RPC URL (required)
//   CHAIN_ID        chain id (required)
//   ESCROW          our escrow address (required)
//   TOKEN           the ERC-20 the server prices in (required)
//   PAYER_KEY       payer private key, hex; funded with ETH and >= DEPOSIT + TOPUP tokens (required)
//   PAYEE           the server's recipient address (required)
//   DEPOSIT         channel deposit (required)
//   TOPUP           top-up amount (required)
//   PAID_PATH       default /paid    one unit per request
//   STREAM_PATH     default /stream  SSE, one unit per token, `?tokens=N`
//   REQUESTS        default 5        paid requests before the stream
//   STREAM_TOKENS   default 12       tokens to stream
//   MIN_NEED_VOUCHER default 3       fewest mid-stream need-voucher events accepted
//   AFTER_TOPUP_REQUESTS default 1   paid requests after the top-up
//   MAX_DEPOSIT     default DEPOSIT + TOPUP   the manager's local cap on any voucher
//   SALT            default keccak256("sluice-mppx-interop")   bytes32 hex salt of the channel
//   TIMEOUT_MS      default 20000    bound on each HTTP exchange and chain wait
//   TOTAL_TIMEOUT_MS default 180000  bound on the whole run
//   RECEIPTS_KEPT   default 5        how many of the last receipts to print
//   SLUICE_TOOLS_NODE_MODULES        default <repo>/tools/node_modules
//
// Output: stdout gets exactly ONE line of JSON (see `result` at the end of main); progress goes
// to stderr. Run after `make tools`: `node engine/tests/mppx/interop.mjs`.

import {
  channelIdOf,
  decodeCredential,
  decodeReceipt,
  env,
  envAddress,
  envAmount,
  envCount,
  envOr,
  fail,
  importTool,
  localChain,
  log,
  mppxEscrowAbi,
  sendApprove,
  signOpen,
  signTopUp,
  toJson,
  viem,
  viemAccounts,
  withTimeout,
} from './lib.mjs';

const { Challenge } = await importTool('mppx');
const { Mppx, sessionLegacy, sessionLegacyManager } = await importTool('mppx/client');
const { SessionLegacy } = await importTool('mppx/tempo');

const ZERO = '0x0000000000000000000000000000000000000000';

const config = {
  serverUrl: env('SERVER_URL').replace(/\/+$/, ''),
  rpcUrl: env('RPC_URL'),
  chainId: envCount('CHAIN_ID'),
  escrow: envAddress('ESCROW'),
  token: envAddress('TOKEN'),
  payerKey: env('PAYER_KEY'),
  payee: envAddress('PAYEE'),
  deposit: envAmount('DEPOSIT'),
  topUp: envAmount('TOPUP'),
  paidPath: envOr('PAID_PATH', '/paid'),
  streamPath: envOr('STREAM_PATH', '/stream'),
  requests: envCount('REQUESTS', 5),
  streamTokens: envCount('STREAM_TOKENS', 12),
  minNeedVoucher: envCount('MIN_NEED_VOUCHER', 3),
  afterTopUpRequests: envCount('AFTER_TOPUP_REQUESTS', 1),
  timeoutMs: envCount('TIMEOUT_MS', 20000),
  totalTimeoutMs: envCount('TOTAL_TIMEOUT_MS', 180000),
  receiptsKept: envCount('RECEIPTS_KEPT', 5),
};
config.maxDeposit = envAmount('MAX_DEPOSIT', config.deposit + config.topUp);
config.salt = envOr('SALT', viem.keccak256(viem.toHex('sluice-mppx-interop')));
if (!/^0x[0-9a-fA-F]{64}$/.test(config.salt)) fail('SALT must be 0x + 64 hex digits');
if (config.deposit === 0n || config.topUp === 0n) fail('DEPOSIT and TOPUP must be positive');

const paidUrl = `${config.serverUrl}${config.paidPath}`;
const streamUrl = `${config.serverUrl}${config.streamPath}?tokens=${config.streamTokens}`;

// ---- what the script observes on the wire --------------------------------------------------

/** Every HTTP exchange, in order (credentials decoded; bodies of SSE streams parsed as they flow). */
const exchanges = [];
/** Receipts in the order they were seen (headers and SSE `payment-receipt` events). */
const receipts = [];
/** `payment-need-voucher` event payloads, as the server sent them. */
const needVoucherEvents = [];
/** Every credential that carried a voucher signature (open, voucher, close). */
const signedVouchers = [];

/** Parses one SSE event block (text between blank lines) into { event, data }. */
function parseSseBlock(block) {
  let event = 'message';
  const data = [];
  for (const line of block.split(/\r?\n/)) {
    if (line.startsWith('event:')) event = line.slice(6).trim();
    else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
  }
  return { event, data: data.join('\n') };
}

/** Passes an SSE body through unchanged while recording need-voucher and receipt events. */
function tapEventStream(response, exchange) {
  const decoder = new TextDecoder();
  let buffer = '';
  const onBlock = (block) => {
    if (!block.trim()) return;
    const { event, data } = parseSseBlock(block);
    exchange.events[event] = (exchange.events[event] ?? 0) + 1;
    let parsed;
    try {
      parsed = JSON.parse(data);
    } catch {
      parsed = { unparsable: data };
    }
    if (event === 'payment-need-voucher') needVoucherEvents.push(parsed);
    if (event === 'payment-receipt') receipts.push({ source: 'sse', ...parsed });
  };
  const tap = new TransformStream({
    transform(chunk, controller) {
      controller.enqueue(chunk);
      buffer += decoder.decode(chunk, { stream: true });
      for (let end = buffer.search(/\r?\n\r?\n/); end >= 0; end = buffer.search(/\r?\n\r?\n/)) {
        const sep = /\r?\n\r?\n/.exec(buffer.slice(end))[0].length;
        onBlock(buffer.slice(0, end));
        buffer = buffer.slice(end + sep);
      }
    },
  });
  const tapped = new Response(response.body.pipeThrough(tap), {
    status: response.status,
    statusText: response.statusText,
    headers: response.headers,
  });
  Object.defineProperty(tapped, 'url', { value: response.url });
  return tapped;
}

/** The fetch handed to mppx (and used for manual steps): records each exchange. */
async function tracingFetch(input, init = {}) {
  const url = input instanceof Request ? input.url : String(input);
  const method = (init.method ?? (input instanceof Request ? input.method : 'GET')).toUpperCase();
  const headers = new Headers(init.headers ?? (input instanceof Request ? input.headers : undefined));
  const authorization = headers.get('authorization');
  const credential = authorization ? decodeCredential(authorization) : undefined;
  const exchange = {
    method,
    url: url.slice(config.serverUrl.length) || url,
    acceptPayment: headers.get('accept-payment') ?? undefined,
    accept: headers.get('accept') ?? undefined,
    action: credential?.payload?.action,
    events: {},
  };
  exchanges.push(exchange);
  if (credential?.payload?.signature) {
    signedVouchers.push({
      action: credential.payload.action,
      channelId: credential.payload.channelId,
      cumulativeAmount: credential.payload.cumulativeAmount,
      signature: credential.payload.signature,
    });
  }
  const response = await fetch(input, init);
  exchange.status = response.status;
  const receiptHeader = response.headers.get('payment-receipt');
  if (receiptHeader) receipts.push({ source: `${method} ${exchange.url} ${response.status}`, ...decodeReceipt(receiptHeader) });
  if (response.status === 402) {
    try {
      const challenge = Challenge.fromResponseList(response.clone())[0];
      exchange.challengeAmount = challenge?.request?.amount;
      exchange.challengeChannelId = challenge?.request?.methodDetails?.channelId;
    } catch (error) {
      exchange.challengeError = error.message;
    }
  }
  const type = response.headers.get('content-type') ?? '';
  if (response.ok && response.body && type.toLowerCase().startsWith('text/event-stream')) return tapEventStream(response, exchange);
  return response;
}

// ---- steps ----------------------------------------------------------------------------------

/** A fresh 402 from PAID_PATH and its v1 session challenge, checked against the configuration. */
async function fetchChallenge(what) {
  const response = await withTimeout(tracingFetch(paidUrl), config.timeoutMs, `402 for ${what}`);
  if (response.status !== 402) fail(`${what}: GET ${config.paidPath} without a credential returned ${response.status}, expected 402`);
  const challenges = Challenge.fromResponseList(response);
  const challenge = challenges.find(
    (c) => c.method === 'tempo' && c.intent === 'session' && [undefined, 'v1'].includes(c.request.methodDetails?.sessionProtocol),
  );
  if (!challenge) fail(`${what}: no tempo/session v1 challenge among ${challenges.map((c) => `${c.method}/${c.intent}`).join(', ')}`);
  const r = challenge.request;
  const md = r.methodDetails ?? {};
  const same = (a, b) => typeof a === 'string' && a.toLowerCase() === b.toLowerCase();
  if (!same(r.recipient, config.payee)) fail(`${what}: challenge recipient ${r.recipient} is not PAYEE ${config.payee}`);
  if (!same(r.currency, config.token)) fail(`${what}: challenge currency ${r.currency} is not TOKEN ${config.token}`);
  if (!same(md.escrowContract, config.escrow)) fail(`${what}: challenge escrow ${md.escrowContract} is not ESCROW ${config.escrow}`);
  if (md.chainId !== config.chainId) fail(`${what}: challenge chainId ${md.chainId} is not CHAIN_ID ${config.chainId}`);
  return { response, challenge };
}

/** POSTs a credential with no body to PAID_PATH; requires a 2xx. */
async function postCredential(what, credential) {
  const response = await withTimeout(
    tracingFetch(paidUrl, { method: 'POST', headers: { Authorization: credential } }),
    config.timeoutMs,
    `${what} POST`,
  );
  const body = await response.text();
  if (!response.ok) fail(`${what}: POST ${config.paidPath} returned ${response.status}: ${body}`);
  const header = response.headers.get('payment-receipt');
  return { status: response.status, receipt: header ? decodeReceipt(header) : undefined };
}

/** Waits for a transaction the SERVER was handed to broadcast. */
async function waitMined(publicClient, hash, what) {
  let receipt;
  try {
    receipt = await publicClient.waitForTransactionReceipt({ hash, timeout: config.timeoutMs });
  } catch (error) {
    fail(`the server answered the ${what} credential but its transaction ${hash} was not mined within ${config.timeoutMs} ms: ${error.message}`);
  }
  if (receipt.status !== 'success') fail(`${what} transaction ${hash} reverted`);
  return receipt;
}

async function paidRequests(manager, count, channelId, what) {
  for (let i = 0; i < count; i++) {
    const response = await withTimeout(manager.fetch(paidUrl), config.timeoutMs, `${what} request ${i + 1}`);
    const body = await response.text();
    if (!response.ok) fail(`${what} request ${i + 1}: ${response.status} ${body}`);
    if (response.channelId !== channelId) fail(`${what} request ${i + 1}: the manager paid on ${response.channelId}, not ${channelId}`);
    if (!response.receipt) fail(`${what} request ${i + 1}: 2xx without a Payment-Receipt header`);
    log(`${what} request ${i + 1}: ${response.status}, cumulative ${response.cumulative}, spent ${response.receipt.spent}`);
  }
}

async function main() {
  const account = viemAccounts.privateKeyToAccount(config.payerKey);
  const chain = localChain(config.chainId, config.rpcUrl);
  const transport = viem.http(config.rpcUrl, { timeout: config.timeoutMs, retryCount: 0 });
  const publicClient = viem.createPublicClient({ chain, transport });
  const walletClient = viem.createWalletClient({ chain, transport, account });
  const rpcChainId = await publicClient.getChainId();
  if (rpcChainId !== config.chainId) fail(`RPC_URL reports chain id ${rpcChainId}, CHAIN_ID is ${config.chainId}`);
  const escrowAbi = await mppxEscrowAbi();
  const readChannel = (id) => publicClient.readContract({ address: config.escrow, abi: escrowAbi, functionName: 'getChannel', args: [id] });
  log(`payer ${account.address}, server ${config.serverUrl}, escrow ${config.escrow}`);

  // 1. The first 402.
  const first = await fetchChallenge('open');
  const price = BigInt(first.challenge.request.amount);
  log(`402: price ${price} per ${first.challenge.request.unitType}, challenge ${first.challenge.id}`);

  // 2. Manual open: approve (sent), open (signed), credential POSTed; the server broadcasts.
  const approveOpenTx = await sendApprove({
    publicClient,
    walletClient,
    account,
    token: config.token,
    spender: config.escrow,
    amount: config.deposit,
    timeoutMs: config.timeoutMs,
  });
  const open = await signOpen({
    walletClient,
    account,
    escrowAbi,
    escrow: config.escrow,
    payee: config.payee,
    token: config.token,
    deposit: config.deposit,
    salt: config.salt,
    authorizedSigner: ZERO,
  });
  const channelId = SessionLegacy.Session.Channel.computeId({
    payer: account.address,
    payee: config.payee,
    token: config.token,
    salt: config.salt,
    authorizedSigner: ZERO,
    escrowContract: config.escrow,
    chainId: config.chainId,
  });
  const viemId = channelIdOf({ payer: account.address, payee: config.payee, token: config.token, salt: config.salt, authorizedSigner: ZERO, escrow: config.escrow, chainId: config.chainId });
  if (viemId !== channelId) fail(`channel id mismatch: mppx ${channelId}, viem ${viemId}`);
  const client = viem.createClient({ chain, transport });
  // decimals: 0 makes mppx's human-unit parameters (maxDeposit) raw base units.
  const manual = Mppx.create({
    polyfill: false,
    fetch: tracingFetch,
    methods: [sessionLegacy({ account, getClient: () => client, allowCustomEscrow: true, decimals: 0 })],
  });
  const openCredential = await manual.createCredential(first.response, {
    action: 'open',
    channelId,
    transaction: open.serialized,
    cumulativeAmountRaw: price.toString(),
  });
  const opened = await postCredential('open', openCredential);
  await waitMined(publicClient, open.hash, 'open');
  const afterOpen = await readChannel(channelId);
  if (afterOpen.deposit !== config.deposit || afterOpen.finalized) fail(`after open the escrow holds deposit ${afterOpen.deposit}, finalized ${afterOpen.finalized}`);
  log(`open: ${opened.status}, tx ${open.hash}, channel ${channelId}`);

  // 3. The manager resumes the channel the server suggests.
  const suggestion = await fetchChallenge('suggestion');
  const suggested = suggestion.challenge.request.methodDetails.channelId;
  if (suggested?.toLowerCase() !== channelId.toLowerCase())
    fail(`after the open, the 402 suggests channel ${suggested ?? '(none)'}, expected ${channelId}: the v1 manager would try an automatic (Tempo-only) open`);
  const manager = sessionLegacyManager({
    account,
    client,
    allowCustomEscrow: true,
    decimals: 0,
    maxDeposit: config.maxDeposit.toString(),
    fetch: tracingFetch,
  });
  await paidRequests(manager, config.requests, channelId, 'paid');

  // 4. SSE with mid-stream vouchers.
  const streamed = [];
  let streamReceipt;
  const iterator = await withTimeout(
    manager.sse(streamUrl, { onReceipt: (r) => (streamReceipt = r), signal: AbortSignal.timeout(config.totalTimeoutMs) }),
    config.timeoutMs,
    'SSE response',
  );
  const needBefore = needVoucherEvents.length;
  for (;;) {
    const next = await withTimeout(iterator.next(), config.timeoutMs, `SSE token ${streamed.length + 1}`);
    if (next.done) break;
    streamed.push(next.value);
  }
  const streamNeedVoucher = needVoucherEvents.length - needBefore;
  if (streamed.length !== config.streamTokens) fail(`the stream delivered ${streamed.length} tokens, expected ${config.streamTokens}`);
  if (streamNeedVoucher < config.minNeedVoucher) fail(`the stream raised ${streamNeedVoucher} need-voucher events, expected >= ${config.minNeedVoucher}`);
  if (!streamReceipt) fail('the stream ended without a payment-receipt event');
  const voucherPosts = exchanges.filter((e) => e.method === 'POST' && e.action === 'voucher').length;
  log(`stream: ${streamed.length} tokens, ${streamNeedVoucher} need-voucher events, ${voucherPosts} voucher POSTs, spent ${streamReceipt.spent}`);

  // 5. Top-up: approve (sent), topUp (signed), credential POSTed; the server broadcasts.
  const approveTopUpTx = await sendApprove({
    publicClient,
    walletClient,
    account,
    token: config.token,
    spender: config.escrow,
    amount: config.topUp,
    timeoutMs: config.timeoutMs,
  });
  const topUp = await signTopUp({ walletClient, account, escrowAbi, escrow: config.escrow, channelId, additionalDeposit: config.topUp });
  const topUpChallenge = await fetchChallenge('topUp');
  const topUpCredential = await manual.createCredential(topUpChallenge.response, {
    action: 'topUp',
    channelId,
    transaction: topUp.serialized,
    additionalDepositRaw: config.topUp.toString(),
  });
  const toppedUp = await postCredential('topUp', topUpCredential);
  await waitMined(publicClient, topUp.hash, 'topUp');
  const afterTopUp = await readChannel(channelId);
  if (afterTopUp.deposit !== config.deposit + config.topUp) fail(`after the top-up the deposit is ${afterTopUp.deposit}, expected ${config.deposit + config.topUp}`);
  log(`topUp: ${toppedUp.status}, tx ${topUp.hash}, deposit ${afterTopUp.deposit}`);

  // 6. More paid requests on the topped-up channel.
  await paidRequests(manager, config.afterTopUpRequests, channelId, 'after top-up');

  // 7. Cooperative close.
  const closeReceipt = await withTimeout(manager.close(), config.timeoutMs, 'close');
  const closeExchange = exchanges.findLast((e) => e.action === 'close');
  if (!closeExchange || !(closeExchange.status >= 200 && closeExchange.status < 300)) fail(`close returned ${closeExchange?.status}`);
  const last = signedVouchers.at(-1);
  if (last?.action !== 'close') fail('the last signed voucher is not the close voucher');
  log(`close: ${closeExchange.status}, cumulative ${last.cumulativeAmount}`);

  const byAction = {};
  for (const v of signedVouchers) byAction[v.action] = (byAction[v.action] ?? 0) + 1;
  const statuses = {};
  for (const e of exchanges) statuses[e.status] = (statuses[e.status] ?? 0) + 1;
  const streamChallenge = exchanges.find((e) => e.url.startsWith(config.streamPath) && e.status === 402);
  return {
    ok: true,
    channelId,
    payer: account.address,
    payee: config.payee,
    escrow: config.escrow,
    token: config.token,
    salt: config.salt,
    deposit: config.deposit,
    topUp: config.topUp,
    depositAfterTopUp: afterTopUp.deposit,
    paidPrice: price,
    streamPrice: streamChallenge?.challengeAmount,
    requests: config.requests + config.afterTopUpRequests,
    requestsBeforeTopUp: config.requests,
    requestsAfterTopUp: config.afterTopUpRequests,
    streamTokens: streamed.length,
    needVoucherEvents: needVoucherEvents.length,
    needVoucher: needVoucherEvents,
    voucherPosts,
    vouchersSigned: signedVouchers.length,
    vouchersByAction: byAction,
    highestVoucher: signedVouchers.filter((v) => v.action !== 'close').at(-1)?.cumulativeAmount,
    lastCumulative: last.cumulativeAmount,
    lastSignature: last.signature,
    openTx: open.hash,
    openStatus: opened.status,
    openReceipt: opened.receipt,
    approveTxs: [approveOpenTx, approveTopUpTx],
    topUpTx: topUp.hash,
    topUpStatus: toppedUp.status,
    topUpReceipt: toppedUp.receipt,
    streamReceipt,
    closeStatus: closeExchange.status,
    closeReceipt: closeReceipt ?? null,
    receipts: receipts.slice(-config.receiptsKept),
    httpStatuses: statuses,
    exchanges: exchanges.length,
  };
}

try {
  const result = await withTimeout(main(), config.totalTimeoutMs, 'the whole interop run');
  process.stdout.write(`${toJson(result)}\n`);
  process.exit(0);
} catch (error) {
  fail(error?.stack ?? String(error));
}
