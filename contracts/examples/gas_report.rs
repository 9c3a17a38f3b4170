//! P4 gas report: gas per channel of `settleBatch` for 1, 10, 100 and 500 channels next to a
//! standalone `settle`, measured from the receipts of real transactions on a local anvil.
//!
//! ```sh
//! make tools   # once, for the pinned anvil
//! cargo run -p sluice-contracts --example gas_report --release
//! ```
//!
//! Every batch settles fresh channels (each channel's first settlement, the common case for a
//! settlement daemon) of one token for one payee that already holds some of that token (as it
//! does after its first settlement). Vouchers are real EIP-712 signatures of anvil key #0.

use alloy::{
    network::EthereumWallet,
    node_bindings::Anvil,
    primitives::{Address, B256, U256},
    providers::{Provider, ProviderBuilder},
    signers::{SignerSync, local::PrivateKeySigner},
    sol_types::{SolStruct, eip712_domain},
};
use sluice_contracts::{
    DEFAULT_NAME, DEFAULT_VERSION, EscrowConfig, SluiceEscrow, anvil_binary, deploy_escrow,
    deploy_test_token, settle_item,
};

alloy::sol! {
    struct Voucher {
        bytes32 channelId;
        uint128 cumulativeAmount;
    }
}

const PAYER_KEY: &str = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
const PAYEE_KEY: &str = "59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";
const DEPOSIT: u128 = 10_000_000_000;
const BATCH_SIZES: [usize; 4] = [1, 10, 100, 500];

type Error = Box<dyn std::error::Error>;

fn sign(
    signer: &PrivateKeySigner,
    escrow: Address,
    chain_id: u64,
    id: B256,
    amount: u128,
) -> Vec<u8> {
    let domain = eip712_domain! {
        name: DEFAULT_NAME,
        version: DEFAULT_VERSION,
        chain_id: chain_id,
        verifying_contract: escrow,
    };
    let digest = Voucher {
        channelId: id,
        cumulativeAmount: amount,
    }
    .eip712_signing_hash(&domain);
    let sig = signer.sign_hash_sync(&digest).expect("signing");
    let mut out = sig.r().to_be_bytes::<32>().to_vec();
    out.extend_from_slice(&sig.s().to_be_bytes::<32>());
    out.push(27 + u8::from(sig.v()));
    out
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let anvil = Anvil::new().path(anvil_binary()?).try_spawn()?;
    let chain_id = anvil.chain_id();
    let payer: PrivateKeySigner = PAYER_KEY.parse()?;
    let payee: PrivateKeySigner = PAYEE_KEY.parse()?;
    let payer_provider = ProviderBuilder::new()
        .wallet(EthereumWallet::from(payer.clone()))
        .connect_http(anvil.endpoint_url());
    let payee_provider = ProviderBuilder::new()
        .wallet(EthereumWallet::from(payee.clone()))
        .connect_http(anvil.endpoint_url());

    let token = deploy_test_token(payer_provider.clone(), "Test USD", "TUSD", 6).await?;
    let escrow = deploy_escrow(payer_provider.clone(), &EscrowConfig::default()).await?;
    let escrow_address = *escrow.address();
    let token_address = *token.address();
    token
        .mint(payer.address(), U256::MAX >> 1)
        .send()
        .await?
        .get_receipt()
        .await?;
    token
        .mint(payee.address(), U256::from(1))
        .send()
        .await?
        .get_receipt()
        .await?;
    token
        .approve(escrow_address, U256::MAX)
        .send()
        .await?
        .get_receipt()
        .await?;
    let payee_escrow = SluiceEscrow::new(escrow_address, payee_provider.clone());

    let mut salt_counter = 0u64;
    let mut open = async |count: usize| -> Result<Vec<(B256, B256)>, Error> {
        let mut opened = Vec::with_capacity(count);
        for _ in 0..count {
            salt_counter += 1;
            let salt = B256::from(U256::from(salt_counter) << 64 | U256::from(0xa5a5_a5a5u64));
            escrow
                .open(payee.address(), token_address, DEPOSIT, salt, Address::ZERO)
                .send()
                .await?
                .get_receipt()
                .await?;
            let id = escrow
                .computeChannelId(
                    payer.address(),
                    payee.address(),
                    token_address,
                    salt,
                    Address::ZERO,
                )
                .call()
                .await?;
            opened.push((id, salt));
        }
        Ok(opened)
    };
    // Cumulative amounts of realistic size (micro-units of a 6-decimal token, 1 to 1000 USD).
    let amount = |i: usize| 1_000_000 + (i as u128 * 7_919_111) % 999_000_000;

    // Standalone settle, the baseline.
    let (id, _) = open(1).await?[0];
    let signature = sign(&payer, escrow_address, chain_id, id, amount(0));
    let receipt = payee_escrow
        .settle(id, amount(0), signature.into())
        .send()
        .await?
        .get_receipt()
        .await?;
    assert!(receipt.status(), "settle reverted");
    let standalone = receipt.gas_used;

    let info: serde_json::Value = payer_provider
        .raw_request("anvil_nodeInfo".into(), ())
        .await?;
    println!(
        "anvil chain {chain_id}, hardfork {}, escrow {escrow_address}",
        info["hardFork"].as_str().unwrap_or("?")
    );
    println!();
    println!("| channels in the transaction | gas used | gas per channel | vs standalone settle |");
    println!("|---:|---:|---:|---:|");
    println!("| 1 (`settle`) | {standalone} | {standalone} | 1.00x |");
    for n in BATCH_SIZES {
        let channels = open(n).await?;
        let items = channels
            .iter()
            .enumerate()
            .map(|(i, (id, salt))| {
                let sig = sign(&payer, escrow_address, chain_id, *id, amount(i));
                settle_item(
                    payer.address(),
                    token_address,
                    *salt,
                    Address::ZERO,
                    amount(i),
                    &sig,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let call = payee_escrow.settleBatch(items).gas(29_000_000);
        let settled = call.call().await?;
        assert_eq!(settled, U256::from(n), "every item settles");
        let receipt = call.send().await?.get_receipt().await?;
        assert!(receipt.status(), "settleBatch reverted");
        let per_channel = receipt.gas_used as f64 / n as f64;
        println!(
            "| {n} (`settleBatch`) | {} | {per_channel:.0} | {:.2}x cheaper |",
            receipt.gas_used,
            standalone as f64 / per_channel
        );
    }
    Ok(())
}
