#!/usr/bin/env node
// Trims forge build output to the {abi, bytecode, deployedBytecode} JSON that alloy's `sol!`
// reads, one file per contract the Rust side needs.
//
//   node tools/trim-artifacts.js <forge out dir> <artifacts dir>
//
// The output is deterministic (fixed key order, two-space indent, trailing newline), so
// `make artifacts-check` can compare a fresh build with the committed files byte for byte.
"use strict";
const fs = require("fs");
const path = require("path");

// Source file (as forge names its out/ subdirectory) and contract name.
const CONTRACTS = [
  ["SluiceEscrow.sol", "SluiceEscrow"],
  ["TestToken.sol", "TestToken"],
  ["NoBoolToken.sol", "NoBoolToken"],
  ["FeeOnTransferToken.sol", "FeeOnTransferToken"],
  ["ReentrantToken.sol", "ReentrantToken"],
];

function hexOf(field, what) {
  const hex = typeof field === "string" ? field : field && field.object;
  if (typeof hex !== "string" || !/^0x[0-9a-fA-F]+$/.test(hex)) {
    throw new Error(`${what}: missing or empty bytecode (is it abstract, or did the build fail?)`);
  }
  if (/__\$[0-9a-fA-F]{34}\$__/.test(hex)) throw new Error(`${what}: unlinked library placeholder`);
  return hex.toLowerCase();
}

function main() {
  const [outDir, destDir] = process.argv.slice(2);
  if (!outDir || !destDir) {
    process.stderr.write("usage: trim-artifacts.js <forge out dir> <artifacts dir>\n");
    process.exit(2);
  }
  fs.mkdirSync(destDir, { recursive: true });
  for (const [file, name] of CONTRACTS) {
    const src = path.join(outDir, file, `${name}.json`);
    if (!fs.existsSync(src)) throw new Error(`${src} not found: run forge build first`);
    const artifact = JSON.parse(fs.readFileSync(src, "utf8"));
    const trimmed = {
      abi: artifact.abi,
      bytecode: hexOf(artifact.bytecode, `${name}.bytecode`),
      deployedBytecode: hexOf(artifact.deployedBytecode, `${name}.deployedBytecode`),
    };
    fs.writeFileSync(path.join(destDir, `${name}.json`), JSON.stringify(trimmed, null, 2) + "\n");
  }
}

try {
  main();
} catch (err) {
  process.stderr.write(`trim-artifacts: ${err.message}\n`);
  process.exit(1);
}
