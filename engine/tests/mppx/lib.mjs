// Shared helpers for the mppx 0.11.0 interop scripts (interop.mjs, selfcheck.mjs, probe-server.mjs).
//
// The pinned npm packages live in <repo>/tools/node_modules (installed by `make tools`), which is
// not an ancestor of this directory, so bare ESM imports would not find them (NODE_PATH does
// not apply to ESM). `importTool` resolves a package's `exports` entry inside that directory and
// imports the file by URL. It picks the `import` (ESM) entry, the same file mppx itself gets when
// it imports `viem`, so the scripts and mppx share one viem module instance.
//
// Environment: SLUICE_TOOLS_NODE_MODULES overrides the node_modules directory.

import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));

/** The repository root (this file is `<root>/engine/tests/mppx/lib.mjs`). */
export const repoRoot = resolve(here, '../../..');

/** The pinned tools' node_modules directory. */
export const toolsNodeModules = process.env.SLUICE_TOOLS_NODE_MODULES
  ? resolve(process.env.SLUICE_TOOLS_NODE_MODULES)
  : join(repoRoot, 'tools', 'node_modules');

/** Picks the ESM file of one `exports` target (a string or a conditions object). */
function esmTarget(target) {
  if (typeof target === 'string') return target;
  if (target && typeof target === 'object') {
    for (const condition of ['import', 'node', 'default']) {
      const picked = esmTarget(target[condition]);
      if (picked) return picked;
    }
  }
  return undefined;
}

/** Imports `pkg` or `pkg/subpath` from the pinned tools, e.g. `importTool('mppx/client')`. */
export async function importTool(specifier) {
  const parts = specifier.split('/');
  const name = specifier.startsWith('@') ? parts.slice(0, 2).join('/') : parts[0];
  const subpath = `.${specifier.slice(name.length)}` || '.';
  const packageDir = join(toolsNodeModules, name);
  const manifestPath = join(packageDir, 'package.json');
  if (!existsSync(manifestPath))
    throw new Error(`${name} is not installed in ${toolsNodeModules}: run \`make tools\` first`);
  const manifest = JSON.parse(readFileSync(manifestPath, 'utf8'));
  const entry = esmTarget(manifest.exports?.[subpath === '.' ? '.' : subpath]);
  if (!entry) throw new Error(`${name} exports no ESM entry for "${subpath}"`);
  return import(pathToFileURL(join(packageDir, entry)).href);
}

// Loaded once; every script needs them.
export const viem = await importTool('viem');
export const viemAccounts = await importTool('viem/accounts');

/** Writes one progress line to stderr (stdout carries only the final JSON line). */
export function log(...args) {
  process.stderr.write(`[mppx-interop] ${args.join(' ')}\n`);
}

/** Prints `message` to stderr and exits with status 1. */
export function fail(message) {
  process.stderr.write(`[mppx-interop] FAILED: ${message}\n`);
  process.exit(1);
}

/** Rejects with a message naming `what` if `promise` has not settled within `ms`. */
export function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** A required environment variable. */
export function env(name) {
  const value = process.env[name];
  if (value === undefined || value === '') fail(`environment variable ${name} is required`);
  return value;
}

/** An optional environment variable with a default. */
export function envOr(name, fallback) {
  const value = process.env[name];
  return value === undefined || value === '' ? fallback : value;
}

/** A non-negative integer environment variable (decimal), as a bigint. */
export function envAmount(name, fallback) {
  const raw = fallback === undefined ? env(name) : envOr(name, String(fallback));
  if (!/^\d+$/.test(raw)) fail(`${name} must be a decimal integer, got "${raw}"`);
  return BigInt(raw);
}

/** A non-negative integer environment variable (decimal), as a number. */
export function envCount(name, fallback) {
  const value = envAmount(name, fallback);
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) fail(`${name} is too large`);
  return Number(value);
}

/** An address environment variable (checksummed on return). */
export function envAddress(name, fallback) {
  const raw = fallback === undefined ? env(name) : envOr(name, fallback);
  if (!viem.isAddress(raw, { strict: false })) fail(`${name} must be a 0x address, got "${raw}"`);
  return viem.getAddress(raw);
}

/** A viem chain for a local EVM node (anvil) with the given id and RPC URL. */
export function localChain(chainId, rpcUrl) {
  return viem.defineChain({
    id: chainId,
    name: `local-${chainId}`,
    nativeCurrency: { name: 'Ether', symbol: 'ETH', decimals: 18 },
    rpcUrls: { default: { http: [rpcUrl] } },
  });
}

/** The minimal ERC-20 surface the scripts use. */
export const erc20Abi = viem.erc20Abi;

/**
 * The v1 escrow ABI as the mppx client knows it (`SessionLegacy.Session.Chain.escrowAbi`): the
 * peer's view of the contract, which our escrow must satisfy.
 */
export async function mppxEscrowAbi() {
  const { SessionLegacy } = await importTool('mppx/tempo');
  return SessionLegacy.Session.Chain.escrowAbi;
}

/** v1 channel id: keccak256(abi.encode(payer, payee, token, salt, authorizedSigner, escrow, chainId)). */
export function channelIdOf({ payer, payee, token, salt, authorizedSigner, escrow, chainId }) {
  return viem.keccak256(
    viem.encodeAbiParameters(
      viem.parseAbiParameters(
        'address payer, address payee, address token, bytes32 salt, address authorizedSigner, address escrow, uint256 chainId',
      ),
      [payer, payee, token, salt, authorizedSigner, escrow, BigInt(chainId)],
    ),
  );
}

/**
 * Sends an EIP-1559 `approve(spender, amount)` from `account` and waits for it to be mined.
 * Returns the transaction hash.
 */
export async function sendApprove({ publicClient, walletClient, account, token, spender, amount, timeoutMs }) {
  const hash = await walletClient.sendTransaction({
    account,
    to: token,
    data: viem.encodeFunctionData({ abi: erc20Abi, functionName: 'approve', args: [spender, amount] }),
    type: 'eip1559',
  });
  const receipt = await publicClient.waitForTransactionReceipt({ hash, timeout: timeoutMs });
  if (receipt.status !== 'success') throw new Error(`approve transaction reverted: ${hash}`);
  return hash;
}

/**
 * Builds and signs (does not send) an EIP-1559 transaction from `account` calling `to` with
 * `data`. Gas is estimated against current state, so any approve it depends on must be mined.
 * Returns `{ serialized, hash }`.
 */
export async function signCall({ walletClient, account, to, data }) {
  const request = await walletClient.prepareTransactionRequest({ account, to, data, type: 'eip1559' });
  const serialized = await walletClient.signTransaction(request);
  return { serialized, hash: viem.keccak256(serialized) };
}

/** Signs (does not send) `escrow.open(payee, token, deposit, salt, authorizedSigner)`. */
export async function signOpen({ walletClient, account, escrowAbi, escrow, payee, token, deposit, salt, authorizedSigner }) {
  const data = viem.encodeFunctionData({
    abi: escrowAbi,
    functionName: 'open',
    args: [payee, token, deposit, salt, authorizedSigner],
  });
  return signCall({ walletClient, account, to: escrow, data });
}

/** Signs (does not send) `escrow.topUp(channelId, additionalDeposit)`. */
export async function signTopUp({ walletClient, account, escrowAbi, escrow, channelId, additionalDeposit }) {
  const data = viem.encodeFunctionData({
    abi: escrowAbi,
    functionName: 'topUp',
    args: [channelId, additionalDeposit],
  });
  return signCall({ walletClient, account, to: escrow, data });
}

/** Decodes a `Payment <base64url JSON>` credential header into its JSON object. */
export function decodeCredential(header) {
  const match = /^Payment\s+(.+)$/i.exec(header ?? '');
  if (!match) return undefined;
  return JSON.parse(Buffer.from(match[1], 'base64url').toString('utf8'));
}

/** Decodes a `Payment-Receipt` header (base64url JSON). */
export function decodeReceipt(header) {
  return JSON.parse(Buffer.from(header, 'base64url').toString('utf8'));
}

/** JSON.stringify with bigints as decimal strings. */
export function toJson(value) {
  return JSON.stringify(value, (_, v) => (typeof v === 'bigint' ? v.toString() : v));
}

// ---- a local chain for the self-check and the probe rehearsal --------------------------------

/** anvil's well-known dev keys #0, #1, #2 (public test keys; anvil funds them with ETH). */
export const ANVIL_KEYS = [
  '0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80',
  '0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d',
  '0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a',
];

/** Starts the pinned anvil on a free loopback port; resolves to `{ url, stop }`. */
export async function startAnvil(chainId, timeoutMs) {
  const bin = join(toolsNodeModules, '.bin', 'anvil');
  if (!existsSync(bin)) throw new Error(`${bin} is missing: run \`make tools\` first`);
  const child = spawn(bin, ['--port', '0', '--chain-id', String(chainId)], { stdio: ['ignore', 'pipe', 'inherit'] });
  const url = await withTimeout(
    new Promise((resolve, reject) => {
      let seen = '';
      child.stdout.on('data', (chunk) => {
        seen += chunk.toString();
        const match = /Listening on ([\d.]+:\d+)/.exec(seen);
        if (match) resolve(`http://${match[1]}`);
      });
      child.on('exit', (code) => reject(new Error(`anvil exited with ${code}`)));
      child.on('error', reject);
    }),
    timeoutMs,
    'anvil to start',
  ).catch((error) => {
    child.kill();
    throw error;
  });
  child.stdout.resume();
  return { url, stop: () => child.kill() };
}

/** A committed contract artifact `{ abi, bytecode, deployedBytecode }` from contracts/artifacts. */
export function artifact(name) {
  return JSON.parse(readFileSync(join(repoRoot, 'contracts', 'artifacts', `${name}.json`), 'utf8'));
}

/** Deploys a committed artifact and waits for it; returns the checksummed address. */
export async function deployArtifact({ publicClient, walletClient, account, name, args, timeoutMs }) {
  const { abi, bytecode } = artifact(name);
  const hash = await walletClient.deployContract({ abi, bytecode, args, account });
  const receipt = await publicClient.waitForTransactionReceipt({ hash, timeout: timeoutMs });
  if (receipt.status !== 'success' || !receipt.contractAddress) throw new Error(`${name} deployment failed: ${hash}`);
  return viem.getAddress(receipt.contractAddress);
}

/**
 * Deploys a 6-decimal TestToken and a SluiceEscrow in the mppx v1 profile ("Tempo Stream
 * Channel", "1", 15 min grace) from `deployer`, and mints `mint` tokens to each of `holders`.
 * Returns `{ token, escrow }`.
 */
export async function deployLocal({ publicClient, walletClient, deployer, holders, mint, timeoutMs }) {
  const common = { publicClient, walletClient, account: deployer, timeoutMs };
  const token = await deployArtifact({ ...common, name: 'TestToken', args: ['Test USD', 'TUSD', 6] });
  const escrow = await deployArtifact({ ...common, name: 'SluiceEscrow', args: ['Tempo Stream Channel', '1', 900n] });
  for (const holder of holders) {
    const hash = await walletClient.writeContract({
      account: deployer,
      address: token,
      abi: artifact('TestToken').abi,
      functionName: 'mint',
      args: [holder, mint],
    });
    await publicClient.waitForTransactionReceipt({ hash, timeout: timeoutMs });
  }
  return { token, escrow };
}
