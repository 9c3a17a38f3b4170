#!/usr/bin/env python3
"""Print criterion medians for the P1 group as a markdown table with ratios to the baseline.

Run after `cargo bench --bench voucher`; reads target/criterion/<group>/<function>/new/estimates.json.
"""
import json
import pathlib
import sys

root = pathlib.Path(__file__).resolve().parent / "target" / "criterion"
baseline = ("p1_voucher_check", "libsecp256k1_ecrecover")


def median_ns(group, function):
    path = root / group / function / "new" / "estimates.json"
    return json.loads(path.read_text())["median"]["point_estimate"]


def fmt(ns):
    return f"{ns / 1000:.2f} µs" if ns >= 1000 else f"{ns:.1f} ns"


base = median_ns(*baseline)
print("| group | function | median | ratio to libsecp256k1_ecrecover |")
print("|---|---|---|---|")
for group_dir in sorted(p for p in root.iterdir() if p.is_dir() and p.name != "report"):
    for fn_dir in sorted(p for p in group_dir.iterdir() if (p / "new" / "estimates.json").exists()):
        ns = median_ns(group_dir.name, fn_dir.name)
        print(f"| {group_dir.name} | {fn_dir.name} | {fmt(ns)} | {ns / base:.3f} |")
sys.exit(0)
