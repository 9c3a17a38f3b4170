//! Runs each target's `do_test` on the mppx vectors, hand-written malformed inputs, and
//! deterministic mutations of them (every truncation, and byte edits at every position), so the
//! fuzz oracles run in a normal `cargo test`.

use serde_json::Value;

use crate::{challenge_parse, credential_parse};

const CORE: &str = include_str!("../../testdata/mppx-0.11.0/core-challenge.json");
const CREDENTIALS: &str = include_str!("../../testdata/mppx-0.11.0/credentials.json");
const RECEIPTS: &str = include_str!("../../testdata/mppx-0.11.0/receipts-sse.json");

/// Every string value under a key in `keys`, anywhere in the JSON.
fn strings_under(file: &str, keys: &[&str]) -> Vec<String> {
    fn walk(v: &Value, keys: &[&str], out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    match v {
                        Value::String(s) if keys.contains(&k.as_str()) => out.push(s.clone()),
                        other => walk(other, keys, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|i| walk(i, keys, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(
        &serde_json::from_str(file).expect("vector file is JSON"),
        keys,
        &mut out,
    );
    out
}

/// The seed itself, every prefix, and a few byte edits at every `edit_stride`-th position.
fn mutations(seed: &[u8], edit_stride: usize) -> impl Iterator<Item = Vec<u8>> + '_ {
    let truncations = (0..=seed.len()).map(|n| seed[..n].to_vec());
    let edits = (0..seed.len()).step_by(edit_stride).flat_map(move |i| {
        [b'"', b'\\', b',', b'=', b' ', 0xff]
            .into_iter()
            .map(move |b| {
                let mut m = seed.to_vec();
                m[i] = b;
                m
            })
    });
    truncations.chain(edits)
}

const MALFORMED: &[&str] = &[
    "",
    "Payment",
    "Payment ",
    "Payment id=",
    "Payment id=\"",
    "Payment id=\"a\\",
    "Payment id=\"\\ud83d\"",
    "Payment id=\"a\", id=\"b\"",
    "Payment id=\"a\", realm=\"r\", method=\"tempo\", intent=\"session\", request=\"e30\", Payment =x",
    "Basic realm=\"x\", Payment id=\"a\"",
    "Payment eyJ9",
    "Payment e30",
    "tempo/session;q=0.5, */*;q=0",
];

#[test]
fn challenge_parse_on_vectors_and_mutations() {
    let mut seeds = strings_under(CORE, &["wwwAuthenticate", "www-authenticate"]);
    seeds.extend(strings_under(CREDENTIALS, &["wwwAuthenticate"]));
    seeds.extend(strings_under(
        RECEIPTS,
        &["header", "closeHeader", "chargeHeader"],
    ));
    assert!(seeds.len() >= 10, "vectors found: {}", seeds.len());
    seeds.extend(MALFORMED.iter().map(|s| (*s).to_owned()));
    let mut runs = 0;
    for seed in &seeds {
        for input in mutations(seed.as_bytes(), 1) {
            challenge_parse::do_test(&input);
            runs += 1;
        }
    }
    assert!(runs > 10_000);
}

#[test]
fn credential_parse_on_vectors_and_mutations() {
    let mut seeds = strings_under(CREDENTIALS, &["authorization", "decodedJsonExact"]);
    assert_eq!(seeds.len(), 12);
    seeds.extend(MALFORMED.iter().map(|s| (*s).to_owned()));
    for seed in &seeds {
        // Authorization values are long: every truncation is kept, edits are sampled.
        let bytes = seed.as_bytes();
        for input in mutations(bytes, if bytes.len() > 600 { 7 } else { 1 }) {
            credential_parse::do_test(&input);
        }
    }
}
