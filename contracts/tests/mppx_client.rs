//! Our escrow, deployed by the Rust deploy helpers on anvil, driven by the real npm mppx 0.11.0
//! v1 client helpers: runs `engine/tests/mppx/selfcheck.mjs` (node) against it and checks from
//! Rust what the script reports: the channel it opened with a signed EIP-1559 transaction, and
//! the money that mppx-signed vouchers moved through `settle`, `topUp` and `close`.
//!
//! Needs `make tools` (anvil, cast, mppx and viem in `tools/node_modules`) and `node` on `PATH`
//! (or `SLUICE_NODE`).

mod support;

use std::path::PathBuf;
use std::process::Command;

use alloy::{
    network::EthereumWallet,
    node_bindings::Anvil,
    primitives::{Address, B256, U256},
    providers::ProviderBuilder,
};
use serde_json::Value;
use sluice_contracts::{EscrowConfig, anvil_binary, deploy_escrow, deploy_test_token};
use support::{ANVIL_KEYS, anvil_signer, reference_channel_id, reference_digest};

const CHAIN_ID: u64 = 31337;
const DEPOSIT: u128 = 1_000_000;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("contracts/ has a parent")
        .to_path_buf()
}

/// Runs a node script with `env` and returns the JSON object on the last line of its stdout.
/// Panics with the script's stderr if it exits non-zero.
fn run_node_script(script: &PathBuf, env: &[(&str, String)]) -> Value {
    let node = std::env::var("SLUICE_NODE").unwrap_or_else(|_| "node".to_owned());
    let output = Command::new(&node)
        .arg(script)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{node}` (install node, or set SLUICE_NODE): {e}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{} failed ({}):\n{stderr}",
        script.display(),
        output.status
    );
    let stdout = String::from_utf8(output.stdout).expect("stdout is UTF-8");
    let last = stdout
        .lines()
        .last()
        .expect("the script printed a JSON line");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("bad JSON line {last:?}: {e}"))
}

fn field<T: std::str::FromStr>(v: &Value, key: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("field {key} is a string in {v}"))
        .parse()
        .unwrap_or_else(|e| panic!("field {key}: {e:?}"))
}

#[tokio::test]
async fn mppx_v1_client_helpers_open_settle_top_up_and_close_on_our_escrow() {
    let anvil = Anvil::new()
        .path(anvil_binary().unwrap_or_else(|e| panic!("{e}")))
        .chain_id(CHAIN_ID)
        .try_spawn()
        .expect("anvil starts");
    let deployer = ProviderBuilder::new()
        .wallet(EthereumWallet::from(anvil_signer(0)))
        .connect_http(anvil.endpoint_url());
    let token = deploy_test_token(deployer.clone(), "Test USD", "TUSD", 6)
        .await
        .expect("token deploys");
    let escrow = deploy_escrow(deployer.clone(), &EscrowConfig::default())
        .await
        .expect("escrow deploys");
    let payer = anvil_signer(1).address();
    let payee = anvil_signer(2).address();
    token
        .mint(payer, U256::from(3 * DEPOSIT))
        .send()
        .await
        .expect("mint")
        .get_receipt()
        .await
        .expect("mint mined");

    let script = repo_root().join("engine/tests/mppx/selfcheck.mjs");
    let report = run_node_script(
        &script,
        &[
            ("RPC_URL", anvil.endpoint()),
            ("CHAIN_ID", CHAIN_ID.to_string()),
            ("ESCROW", escrow.address().to_string()),
            ("TOKEN", token.address().to_string()),
            ("PAYER_KEY", format!("0x{}", ANVIL_KEYS[1])),
            ("PAYEE_KEY", format!("0x{}", ANVIL_KEYS[2])),
            ("DEPOSIT", DEPOSIT.to_string()),
        ],
    );
    assert_eq!(report["ok"], true, "{report}");

    // The channel the script opened is the one the v1 formula (and sluice-voucher) names.
    let channel_id: B256 = field(&report, "channelId");
    let salt: B256 = field(&report, "salt");
    assert_eq!(
        channel_id,
        reference_channel_id(
            payer,
            payee,
            *token.address(),
            salt,
            Address::ZERO,
            *escrow.address(),
            CHAIN_ID
        )
    );

    // The close voucher mppx signed is the payer's signature over the escrow's digest.
    let close_amount: u128 = field(&report, "closeAmount");
    let close_sig: alloy::primitives::Bytes = field(&report, "closeSignature");
    let digest = reference_digest(
        "Tempo Stream Channel",
        "1",
        CHAIN_ID,
        *escrow.address(),
        channel_id,
        close_amount,
    );
    assert_eq!(
        escrow
            .getVoucherDigest(channel_id, close_amount)
            .call()
            .await
            .expect("getVoucherDigest"),
        digest
    );
    let signature =
        alloy::primitives::Signature::try_from(close_sig.as_ref()).expect("65-byte signature");
    assert_eq!(
        signature
            .recover_address_from_prehash(&digest)
            .expect("recovers"),
        payer
    );

    // Money: the payee holds exactly the close voucher, the payer the rest; the channel is final.
    let deposit: u128 = field(&report, "deposit");
    let top_up: u128 = field(&report, "topUp");
    assert_eq!(deposit, DEPOSIT);
    assert!(
        close_amount > deposit,
        "the close voucher relies on the top-up"
    );
    assert!(close_amount <= deposit + top_up);
    let balance = |who| {
        let token = token.clone();
        async move { token.balanceOf(who).call().await.expect("balanceOf") }
    };
    assert_eq!(balance(payee).await, U256::from(close_amount));
    assert_eq!(balance(payer).await, U256::from(3 * DEPOSIT - close_amount));
    assert_eq!(balance(*escrow.address()).await, U256::ZERO);
    let channel = escrow
        .getChannel(channel_id)
        .call()
        .await
        .expect("getChannel");
    assert!(channel.finalized, "closed channel is finalized");
}
