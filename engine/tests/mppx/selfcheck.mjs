// Self-check of the mppx 0.11.0 v1 client pieces against OUR escrow on a real anvil chain, with
// no Sluice server involved. It validates what interop.mjs relies on:
//
//   1. mppx's channel id helper (SessionLegacy.Session.Channel.computeId) equals our escrow's
//      computeChannelId (and the id interop.mjs computes with viem), for several inputs.
//   2. The approve + signed EIP-1559 `open` transaction interop.mjs builds is accepted by anvil
//      when broadcast by someone else (as the server will), and opens the channel it claims.
//   3. mppx's `sessionLegacy` manual `open` credential carries that EIP-1559 transaction as is.
//   4. A voucher signed by mppx's v1 helper (SessionLegacy.Session.Voucher.signVoucher) has the
//      digest of our escrow's getVoucherDigest, passes mppx's verifyVoucher, and settles on our
//      escrow when the payee calls `settle` with `cast send`.
//   5. A signed EIP-1559 `topUp` transaction raises the deposit; a higher mppx voucher closes the
//      channel with `cast send ... close`, paying the payee and refunding the payer exactly.
//
// Run it (after `make tools`):
//   node engine/tests/mppx/selfcheck.mjs
// With no RPC_URL it starts its own anvil (tools/node_modules/.bin/anvil) and deploys
// SluiceEscrow + TestToken from contracts/artifacts with viem. To use an existing chain, set:
//   RPC_URL, CHAIN_ID, ESCROW, TOKEN   the chain and our deployed contracts
//   PAYER_KEY                          payer private key (hex); must hold ETH and >= 3 * DEPOSIT tokens
//   PAYEE_KEY                          payee private key (hex); must hold ETH
//   DEPOSIT (default 1000000), SALT (default keccak256("selfcheck-open")),
//   CAST (default tools/node_modules/.bin/cast)
// On success it prints one JSON line with what it checked; on failure it exits 1 with a message.
// Every wait is bounded (TIMEOUT_MS per chain wait, default 20000).

import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import {
  ANVIL_KEYS,
  artifact,
  channelIdOf,
  decodeCredential,
  env,
  envAmount,
  envCount,
  envOr,
  erc20Abi,
  fail,
  importTool,
  localChain,
  log,
  mppxEscrowAbi,
  deployLocal,
  sendApprove,
  signOpen,
  signTopUp,
  startAnvil,
  toJson,
  toolsNodeModules,
  viem,
  viemAccounts,
  withTimeout,
} from './lib.mjs';

const TIMEOUT_MS = envCount('TIMEOUT_MS', 20000);
const DEPOSIT = envAmount('DEPOSIT', 1_000_000);
const CAST = envOr('CAST', join(toolsNodeModules, '.bin', 'cast'));
const ZERO = '0x0000000000000000000000000000000000000000';

const { SessionLegacy } = await importTool('mppx/tempo');
const { Challenge } = await importTool('mppx');
const { Mppx, sessionLegacy } = await importTool('mppx/client');
const { Channel, Voucher } = SessionLegacy.Session;

function check(condition, message) {
  if (!condition) throw new Error(`check failed: ${message}`);
}

function cast(args) {
  return execFileSync(CAST, args, { encoding: 'utf8', timeout: TIMEOUT_MS, stdio: ['ignore', 'pipe', 'pipe'] });
}

async function main() {
  const ownChain = !process.env.RPC_URL;
  const chainId = envCount('CHAIN_ID', 31337);
  const anvil = ownChain ? await startAnvil(chainId, TIMEOUT_MS) : undefined;
  try {
    return await run(anvil?.url ?? env('RPC_URL'), chainId, ownChain);
  } finally {
    anvil?.stop();
  }
}

async function run(rpcUrl, chainId, ownChain) {
  const chain = localChain(chainId, rpcUrl);
  const transport = viem.http(rpcUrl, { timeout: TIMEOUT_MS, retryCount: 0 });
  const publicClient = viem.createPublicClient({ chain, transport });
  const payer = viemAccounts.privateKeyToAccount(ownChain ? ANVIL_KEYS[1] : env('PAYER_KEY'));
  const payeeKey = ownChain ? ANVIL_KEYS[2] : env('PAYEE_KEY');
  const payee = viemAccounts.privateKeyToAccount(payeeKey);
  const payerWallet = viem.createWalletClient({ chain, transport, account: payer });
  const escrowAbi = await mppxEscrowAbi();
  const ourEscrowAbi = artifact('SluiceEscrow').abi;

  let escrow;
  let token;
  if (ownChain) {
    const payeeWallet = viem.createWalletClient({ chain, transport, account: payee });
    ({ token, escrow } = await deployLocal({
      publicClient,
      walletClient: payeeWallet,
      deployer: payee,
      holders: [payer.address],
      mint: 3n * DEPOSIT,
      timeoutMs: TIMEOUT_MS,
    }));
    log(`started anvil at ${rpcUrl}; escrow ${escrow}, token ${token}`);
  } else {
    escrow = viem.getAddress(env('ESCROW'));
    token = viem.getAddress(env('TOKEN'));
  }
  const read = (functionName, args) => publicClient.readContract({ address: escrow, abi: escrowAbi, functionName, args });
  const balanceOf = (who) => publicClient.readContract({ address: token, abi: erc20Abi, functionName: 'balanceOf', args: [who] });
  const summary = { escrow, token, payer: payer.address, payee: payee.address, chainId };

  // 1. Channel ids: mppx helper == escrow == viem encoding, for varied inputs.
  const idCases = [];
  for (let i = 0; i < 4; i++) {
    const input = {
      payer: i === 3 ? viemAccounts.privateKeyToAccount(viemAccounts.generatePrivateKey()).address : payer.address,
      payee: payee.address,
      token,
      salt: viem.keccak256(viem.toHex(`selfcheck-salt-${i}`)),
      authorizedSigner: i % 2 === 0 ? ZERO : viemAccounts.privateKeyToAccount(viemAccounts.generatePrivateKey()).address,
      escrowContract: escrow,
      chainId,
    };
    const fromMppx = Channel.computeId(input);
    const fromEscrow = await read('computeChannelId', [input.payer, input.payee, input.token, input.salt, input.authorizedSigner]);
    const fromViem = channelIdOf({ ...input, escrow });
    check(fromMppx === fromEscrow, `mppx channel id ${fromMppx} == escrow computeChannelId ${fromEscrow}`);
    check(fromViem === fromEscrow, `viem channel id ${fromViem} == escrow computeChannelId ${fromEscrow}`);
    idCases.push(fromEscrow);
  }
  summary.channelIdCases = idCases.length;
  log(`channel ids: mppx == escrow == viem for ${idCases.length} cases`);

  // 2. approve (sent) + open (signed only), then broadcast the open as a server would.
  const salt = envOr('SALT', viem.keccak256(viem.toHex('selfcheck-open')));
  await sendApprove({ publicClient, walletClient: payerWallet, account: payer, token, spender: escrow, amount: DEPOSIT, timeoutMs: TIMEOUT_MS });
  const open = await signOpen({
    walletClient: payerWallet,
    account: payer,
    escrowAbi,
    escrow,
    payee: payee.address,
    token,
    deposit: DEPOSIT,
    salt,
    authorizedSigner: ZERO,
  });
  const parsed = viem.parseTransaction(open.serialized);
  check(parsed.type === 'eip1559', 'open tx is EIP-1559');
  check(open.serialized.startsWith('0x02'), 'open tx starts with type byte 0x02');
  check(viem.getAddress(parsed.to) === escrow, 'open tx targets the escrow');
  const sender = await viem.recoverTransactionAddress({ serializedTransaction: open.serialized });
  check(sender === payer.address, `open tx sender ${sender} is the payer`);
  const channelId = channelIdOf({ payer: payer.address, payee: payee.address, token, salt, authorizedSigner: ZERO, escrow, chainId });
  const openHash = await publicClient.sendRawTransaction({ serializedTransaction: open.serialized });
  check(openHash === open.hash, 'broadcast hash equals keccak256(signed tx)');
  const openReceipt = await publicClient.waitForTransactionReceipt({ hash: openHash, timeout: TIMEOUT_MS });
  check(openReceipt.status === 'success', 'open tx mined successfully');
  const opened = viem.parseEventLogs({ abi: ourEscrowAbi, logs: openReceipt.logs, eventName: 'ChannelOpened' });
  check(opened.length === 1 && opened[0].args.channelId === channelId, 'ChannelOpened names the computed channel id');
  let onChain = await read('getChannel', [channelId]);
  check(onChain.deposit === DEPOSIT && onChain.settled === 0n && !onChain.finalized, 'channel open with the deposit');
  check(onChain.payer === payer.address && onChain.authorizedSigner === ZERO, 'payer recorded, signer unset');
  summary.openTx = openHash;
  summary.salt = salt;
  summary.channelId = channelId;
  log(`open: EIP-1559 tx ${openHash} accepted by anvil, channel ${channelId}`);

  // 3. The mppx manual open credential carries our EIP-1559 tx unchanged.
  const client = viem.createClient({ chain, transport });
  const secretKey = 'selfcheck-secret-key-0123456789abcdef-0123456789';
  const amount = 1000n;
  const challenge = Challenge.from({
    secretKey,
    realm: 'selfcheck.local',
      method: 'tempo',
      intent: 'session',
      expires: new Date(Date.now() + 60_000).toISOString(),
      request: {
        amount: amount.toString(),
        currency: token,
        recipient: payee.address,
        unitType: 'request',
        methodDetails: { chainId, escrowContract: escrow, sessionProtocol: 'v1' },
      },
  });
  const challengeResponse = new Response(null, { status: 402, headers: { 'WWW-Authenticate': Challenge.serialize(challenge) } });
  const manual = Mppx.create({
    polyfill: false,
    methods: [sessionLegacy({ account: payer, getClient: () => client, allowCustomEscrow: true, decimals: 0 })],
  });
  const openHeader = await manual.createCredential(challengeResponse, {
    action: 'open',
    channelId,
    transaction: open.serialized,
    cumulativeAmountRaw: amount.toString(),
  });
  const openCredential = decodeCredential(openHeader);
  const p = openCredential.payload;
  check(p.action === 'open' && p.type === 'transaction', 'open credential action/type');
  check(p.transaction === open.serialized, 'open credential carries the EIP-1559 tx byte for byte');
  check(p.channelId === channelId && p.cumulativeAmount === amount.toString(), 'open credential channel and amount');
  check(p.authorizedSigner === payer.address, 'mppx claims authorizedSigner = payer address (calldata has zero)');
  check(openCredential.source === `did:pkh:eip155:${chainId}:${payer.address}`, 'credential source is the payer DID');
  check(openCredential.challenge.id === challenge.id, 'credential echoes the challenge id');
  summary.manualOpenCredential = 'carries EIP-1559 tx';
  log('manual open credential: carries the EIP-1559 tx, signs the initial voucher');

  // 4. mppx-signed vouchers: digest == escrow getVoucherDigest, verifyVoucher, settle via cast.
  const domain = { name: 'Tempo Stream Channel', version: '1', chainId, verifyingContract: escrow };
  const types = { Voucher: [{ name: 'channelId', type: 'bytes32' }, { name: 'cumulativeAmount', type: 'uint128' }] };
  check(
    (await read('domainSeparator', [])) === viem.hashDomain({ domain, types: { EIP712Domain: viem.getTypesForEIP712Domain({ domain }) } }),
    'escrow domainSeparator equals the EIP-712 domain mppx signs for',
  );
  async function mppxVoucher(cumulativeAmount) {
    const signature = await Voucher.signVoucher(client, payer, { channelId, cumulativeAmount }, escrow, chainId);
    const digest = viem.hashTypedData({ domain, types, primaryType: 'Voucher', message: { channelId, cumulativeAmount } });
    const onChainDigest = await read('getVoucherDigest', [channelId, cumulativeAmount]);
    check(digest === onChainDigest, `voucher digest ${digest} == escrow getVoucherDigest ${onChainDigest}`);
    check((await viem.recoverAddress({ hash: onChainDigest, signature })) === payer.address, 'voucher signer is the payer');
    check(await Voucher.verifyVoucher(escrow, chainId, { channelId, cumulativeAmount, signature }, payer.address), 'mppx verifyVoucher');
    check(signature.length === 132 && ['1b', '1c'].includes(signature.slice(-2)), '65-byte r||s||v with v in {27,28}');
    // The voucher inside p (open credential) must verify too: same key, same digest.
    return signature;
  }
  check(
    await Voucher.verifyVoucher(escrow, chainId, { channelId, cumulativeAmount: amount, signature: p.signature }, payer.address),
    'the open credential voucher verifies',
  );
  const settleAmount = DEPOSIT / 4n;
  const settleSig = await mppxVoucher(settleAmount);
  const payeeBefore = await balanceOf(payee.address);
  cast(['send', '--rpc-url', rpcUrl, '--private-key', payeeKey, escrow, 'settle(bytes32,uint128,bytes)', channelId, settleAmount.toString(), settleSig]);
  onChain = await read('getChannel', [channelId]);
  check(onChain.settled === settleAmount, `settled ${onChain.settled} == ${settleAmount}`);
  check((await balanceOf(payee.address)) - payeeBefore === settleAmount, 'payee received the settled amount');
  summary.settled = settleAmount;
  log(`settle: mppx voucher for ${settleAmount} settled on our escrow via cast`);

  // 5. topUp (signed EIP-1559, broadcast here) then close with a higher mppx voucher via cast.
  const topUpAmount = DEPOSIT / 2n;
  await sendApprove({ publicClient, walletClient: payerWallet, account: payer, token, spender: escrow, amount: topUpAmount, timeoutMs: TIMEOUT_MS });
  const topUp = await signTopUp({ walletClient: payerWallet, account: payer, escrowAbi, escrow, channelId, additionalDeposit: topUpAmount });
  check(viem.parseTransaction(topUp.serialized).type === 'eip1559', 'topUp tx is EIP-1559');
  const topUpHash = await publicClient.sendRawTransaction({ serializedTransaction: topUp.serialized });
  check((await publicClient.waitForTransactionReceipt({ hash: topUpHash, timeout: TIMEOUT_MS })).status === 'success', 'topUp mined');
  onChain = await read('getChannel', [channelId]);
  check(onChain.deposit === DEPOSIT + topUpAmount, 'deposit raised by the top-up');
  summary.topUpTx = topUpHash;

  const closeAmount = DEPOSIT + topUpAmount / 2n; // above the original deposit: needs the top-up
  const closeSig = await mppxVoucher(closeAmount);
  const payerBeforeClose = await balanceOf(payer.address);
  const payeeBeforeClose = await balanceOf(payee.address);
  cast(['send', '--rpc-url', rpcUrl, '--private-key', payeeKey, escrow, 'close(bytes32,uint128,bytes)', channelId, closeAmount.toString(), closeSig]);
  onChain = await read('getChannel', [channelId]);
  check(onChain.finalized, 'channel finalized after close');
  const payeeGot = (await balanceOf(payee.address)) - payeeBeforeClose;
  const payerGot = (await balanceOf(payer.address)) - payerBeforeClose;
  check(payeeGot === closeAmount - settleAmount, `payee got ${payeeGot} == close - settled`);
  check(payerGot === DEPOSIT + topUpAmount - closeAmount, `payer refunded ${payerGot} == deposit - close`);
  summary.closeAmount = closeAmount;
  summary.closeSignature = closeSig;
  summary.topUp = topUpAmount;
  summary.deposit = DEPOSIT;
  summary.payeeTotal = settleAmount + payeeGot;
  summary.payerRefund = payerGot;
  log(`close: mppx voucher for ${closeAmount} closed the channel; payee +${payeeGot}, payer refund ${payerGot}`);

  // A closed channel is not recoverable by the mppx client (tryRecoverChannel reads getChannel).
  const { Chain } = SessionLegacy.Session;
  const after = await Chain.getOnChainChannel(client, escrow, channelId);
  check(after.finalized === true, 'mppx getOnChainChannel decodes our escrow struct (finalized)');
  summary.ok = true;
  return summary;
}

try {
  const summary = await withTimeout(main(), 20 * TIMEOUT_MS, 'the whole self-check');
  process.stdout.write(`${toJson(summary)}\n`);
} catch (error) {
  fail(error?.stack ?? String(error));
}
