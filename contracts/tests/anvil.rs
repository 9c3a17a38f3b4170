//! The escrow on a real anvil node, through the alloy bindings and the deploy helpers: the mppx
//! 0.11.0 vectors (digests, channel ids, signatures) and a full channel lifecycle.

mod support;

use alloy::{
    network::EthereumWallet,
    node_bindings::{Anvil, AnvilInstance},
    primitives::{Address, B256, U256, address},
    providers::{Provider, ProviderBuilder},
    rpc::types::TransactionReceipt,
    sol_types::SolEvent,
};
use sluice_contracts::{
    DEFAULT_CLOSE_GRACE_PERIOD, EscrowConfig, SluiceEscrow, TestToken, anvil_binary, deploy_escrow,
    deploy_test_token, settle_item, settle_item_from_opened,
};
use support::{anvil_signer, reference_channel_id, reference_digest, sign65, vector_file};

/// Token at nonce 0 and escrow at nonce 1 from anvil account #0: the mppx vectors' addresses.
const VECTOR_TOKEN: Address = address!("5FbDB2315678afecb367f032d93F642f64180aa3");
const VECTOR_ESCROW: Address = address!("e7f1725E7734CE288F8367e1Bb143E90bb3F0512");
const CHAIN_ID: u64 = 31337;

fn spawn_anvil() -> AnvilInstance {
    let path = anvil_binary().unwrap_or_else(|e| panic!("{e}"));
    Anvil::new()
        .path(path)
        .chain_id(CHAIN_ID)
        .try_spawn()
        .expect("anvil starts")
}

fn provider_for(anvil: &AnvilInstance, key: usize) -> impl Provider + Clone + use<> {
    ProviderBuilder::new()
        .wallet(EthereumWallet::from(anvil_signer(key)))
        .connect_http(anvil.endpoint_url())
}

fn hex_b256(v: &serde_json::Value) -> B256 {
    v.as_str().expect("hex string").parse().expect("bytes32")
}

fn hex_address(v: &serde_json::Value) -> Address {
    v.as_str().expect("hex string").parse().expect("address")
}

fn hex_bytes(v: &serde_json::Value) -> Vec<u8> {
    alloy::hex::decode(v.as_str().expect("hex string")).expect("hex")
}

async fn mined(
    pending: alloy::contract::Result<
        alloy::providers::PendingTransactionBuilder<alloy::network::Ethereum>,
    >,
) -> TransactionReceipt {
    let receipt = pending
        .expect("transaction accepted")
        .get_receipt()
        .await
        .expect("receipt");
    assert!(receipt.status(), "transaction reverted: {receipt:?}");
    receipt
}

#[tokio::test]
async fn digests_channel_ids_and_signatures_match_mppx_vectors() {
    let anvil = spawn_anvil();
    let payer = provider_for(&anvil, 0);
    let token = deploy_test_token(payer.clone(), "Test USD", "TUSD", 6)
        .await
        .expect("token deploys");
    let escrow = deploy_escrow(payer.clone(), &EscrowConfig::default())
        .await
        .expect("escrow deploys");
    assert_eq!(*token.address(), VECTOR_TOKEN, "token address (nonce 0)");
    assert_eq!(*escrow.address(), VECTOR_ESCROW, "escrow address (nonce 1)");

    // Every v1 voucher vector of this escrow and chain.
    let vouchers = vector_file("eip712-vouchers.json");
    let mut checked = 0;
    for v in vouchers["vectors"].as_array().expect("vectors") {
        let domain = &v["domain"];
        if v["version"] != "v1"
            || domain["chainId"] != CHAIN_ID
            || hex_address(&domain["verifyingContract"]) != VECTOR_ESCROW
        {
            continue;
        }
        let channel_id = hex_b256(&v["message"]["channelId"]);
        let amount: u128 = v["message"]["cumulativeAmount"]
            .as_str()
            .expect("amount")
            .parse()
            .expect("u128");
        let expected = hex_b256(&v["digest"]);
        let on_chain = escrow
            .getVoucherDigest(channel_id, amount)
            .call()
            .await
            .expect("getVoucherDigest");
        assert_eq!(on_chain, expected, "escrow digest for {}", v["label"]);
        assert_eq!(
            reference_digest(
                domain["name"].as_str().expect("name"),
                domain["version"].as_str().expect("version"),
                CHAIN_ID,
                VECTOR_ESCROW,
                channel_id,
                amount
            ),
            expected,
            "reference digest for {}",
            v["label"]
        );
        assert_eq!(
            escrow
                .domainSeparator()
                .call()
                .await
                .expect("domainSeparator"),
            hex_b256(&v["domainSeparator"]),
            "domain separator"
        );
        checked += 1;
    }
    assert_eq!(checked, 3, "the three v1 anvil vectors were checked");

    // Channel ids: the escrow's view, its `open`, and the formula agree with the vectors.
    let ids = vector_file("channel-ids.json");
    let payee = anvil_signer(1).address();
    let deposit = 1_000_000u128;
    token
        .mint(anvil_signer(0).address(), U256::from(10 * deposit))
        .send()
        .await
        .expect("mint")
        .get_receipt()
        .await
        .expect("mint receipt");
    mined(token.approve(VECTOR_ESCROW, U256::MAX).send().await).await;
    for case in ids["v1"]["cases"].as_array().expect("cases") {
        let (p, e, t, s, a) = (
            hex_address(&case["payer"]),
            hex_address(&case["payee"]),
            hex_address(&case["token"]),
            hex_b256(&case["salt"]),
            hex_address(&case["authorizedSigner"]),
        );
        let expected = hex_b256(&case["channelId"]);
        let viewed = escrow
            .computeChannelId(p, e, t, s, a)
            .call()
            .await
            .expect("computeChannelId");
        assert_eq!(viewed, expected, "computeChannelId");
        assert_eq!(
            reference_channel_id(p, e, t, s, a, VECTOR_ESCROW, CHAIN_ID),
            expected,
            "formula"
        );
        let receipt = mined(escrow.open(e, t, deposit, s, a).send().await).await;
        let opened = receipt
            .inner
            .logs()
            .iter()
            .find_map(|log| SluiceEscrow::ChannelOpened::decode_log(&log.inner).ok())
            .expect("ChannelOpened");
        assert_eq!(opened.channelId, expected, "open returns the vector id");
    }

    // The payee settles with mppx's own signature bytes; the malleated form mppx would also
    // accept is refused on chain.
    let payee_escrow = SluiceEscrow::new(VECTOR_ESCROW, provider_for(&anvil, 1));
    let v250k = &vouchers["vectors"][1];
    let channel_id = hex_b256(&v250k["message"]["channelId"]);
    let high_s = hex_bytes(&v250k["signatureVariants"]["high_s_malleated"]["signature"]);
    let Err(err) = payee_escrow
        .settle(channel_id, 250_000, high_s.into())
        .call()
        .await
    else {
        panic!("high-s signature accepted");
    };
    let decoded = err
        .as_decoded_interface_error::<SluiceEscrow::SluiceEscrowErrors>()
        .expect("typed escrow error");
    assert!(
        matches!(decoded, SluiceEscrow::SluiceEscrowErrors::MalformedSignature(ref m) if m.channelId == channel_id && m.fault == 3),
        "MalformedSignature(S), got {decoded:?}"
    );
    let signature = hex_bytes(&v250k["signature"]);
    mined(
        payee_escrow
            .settle(channel_id, 250_000, signature.into())
            .send()
            .await,
    )
    .await;
    let balance = token.balanceOf(payee).call().await.expect("balanceOf");
    assert_eq!(
        balance,
        U256::from(250_000),
        "payee paid by the mppx voucher"
    );

    // The delegated vector through settleBatch (signature converted to compact form).
    let delegated = &vouchers["vectors"][2];
    let item = settle_item(
        anvil_signer(0).address(),
        VECTOR_TOKEN,
        hex_b256(&ids["v1"]["cases"][1]["salt"]),
        hex_address(&ids["v1"]["cases"][1]["authorizedSigner"]),
        250_000,
        &hex_bytes(&delegated["signature"]),
    )
    .expect("vector signature converts");
    mined(payee_escrow.settleBatch(vec![item]).send().await).await;
    let balance = token.balanceOf(payee).call().await.expect("balanceOf");
    assert_eq!(
        balance,
        U256::from(500_000),
        "delegated voucher settled in a batch"
    );
}

#[tokio::test]
async fn lifecycle_through_the_bindings() {
    let anvil = spawn_anvil();
    let payer_provider = provider_for(&anvil, 0);
    let payee_provider = provider_for(&anvil, 1);
    let payer = anvil_signer(0);
    let payee = anvil_signer(1).address();
    let token = deploy_test_token(payer_provider.clone(), "Test USD", "TUSD", 6)
        .await
        .expect("token deploys");
    let config = EscrowConfig {
        close_grace_period: 60,
        ..EscrowConfig::default()
    };
    let escrow = deploy_escrow(payer_provider.clone(), &config)
        .await
        .expect("escrow deploys");
    assert_eq!(
        escrow.CLOSE_GRACE_PERIOD().call().await.expect("grace"),
        60,
        "custom grace period"
    );
    let default_escrow = deploy_escrow(payer_provider.clone(), &EscrowConfig::default())
        .await
        .expect("default escrow deploys");
    assert_eq!(
        default_escrow
            .CLOSE_GRACE_PERIOD()
            .call()
            .await
            .expect("grace"),
        DEFAULT_CLOSE_GRACE_PERIOD,
        "default grace period"
    );

    mined(
        token
            .mint(payer.address(), U256::from(1_000_000))
            .send()
            .await,
    )
    .await;
    mined(token.approve(*escrow.address(), U256::MAX).send().await).await;
    let (salt_a, salt_b) = (B256::repeat_byte(1), B256::repeat_byte(2));
    let mut opened = Vec::new();
    for salt in [salt_a, salt_b] {
        let receipt = mined(
            escrow
                .open(payee, *token.address(), 1000, salt, Address::ZERO)
                .send()
                .await,
        )
        .await;
        opened.extend(
            receipt
                .inner
                .logs()
                .iter()
                .filter_map(|log| SluiceEscrow::ChannelOpened::decode_log(&log.inner).ok())
                .map(|log| log.data),
        );
    }
    assert_eq!(opened.len(), 2, "one ChannelOpened per open");
    let id_a = escrow
        .computeChannelId(
            payer.address(),
            payee,
            *token.address(),
            salt_a,
            Address::ZERO,
        )
        .call()
        .await
        .expect("id");
    let id_b = escrow
        .computeChannelId(
            payer.address(),
            payee,
            *token.address(),
            salt_b,
            Address::ZERO,
        )
        .call()
        .await
        .expect("id");

    // Settle both in one batch: one Settled event per channel, one transfer.
    let sign = |id: B256, amount: u128| {
        sign65(
            &payer,
            reference_digest(
                "Tempo Stream Channel",
                "1",
                CHAIN_ID,
                *escrow.address(),
                id,
                amount,
            ),
        )
    };
    // The daemon's view: items built from the ChannelOpened events.
    let items = vec![
        settle_item_from_opened(&opened[0], 300, &sign(id_a, 300)).expect("item"),
        settle_item_from_opened(&opened[1], 100, &sign(id_b, 100)).expect("item"),
    ];
    assert_eq!(opened[0].channelId, id_a, "event id");
    let payee_escrow = SluiceEscrow::new(*escrow.address(), payee_provider.clone());
    let receipt = mined(payee_escrow.settleBatch(items).send().await).await;
    let settled: Vec<_> = receipt
        .inner
        .logs()
        .iter()
        .filter_map(|log| SluiceEscrow::Settled::decode_log(&log.inner).ok())
        .collect();
    assert_eq!(settled.len(), 2, "one Settled per channel");
    assert_eq!(
        token.balanceOf(payee).call().await.expect("balance"),
        U256::from(400),
        "payee paid both"
    );

    // Close A cooperatively with a higher voucher; B by request and withdraw.
    mined(
        payee_escrow
            .close(id_a, 450, sign(id_a, 450).into())
            .send()
            .await,
    )
    .await;
    let channel = escrow.getChannel(id_a).call().await.expect("getChannel");
    assert!(channel.finalized, "A finalized");
    assert_eq!(channel.deposit, 0, "A tombstone");
    mined(escrow.requestClose(id_b).send().await).await;
    let Err(early) = escrow.withdraw(id_b).call().await else {
        panic!("withdraw before the grace period succeeded");
    };
    assert!(
        matches!(
            early.as_decoded_interface_error::<SluiceEscrow::SluiceEscrowErrors>(),
            Some(SluiceEscrow::SluiceEscrowErrors::CloseNotReady(_))
        ),
        "CloseNotReady, got {early:?}"
    );
    payer_provider
        .raw_request::<_, serde_json::Value>("evm_increaseTime".into(), (61,))
        .await
        .expect("increase time");
    mined(escrow.withdraw(id_b).send().await).await;
    let batch = escrow
        .getChannelsBatch(vec![id_a, id_b])
        .call()
        .await
        .expect("batch");
    assert!(batch.iter().all(|c| c.finalized), "both finalized");
    assert_eq!(
        token.balanceOf(payee).call().await.expect("balance"),
        U256::from(550),
        "payee: 300 + 150 (A) + 100 (B)"
    );
    assert_eq!(
        token
            .balanceOf(payer.address())
            .call()
            .await
            .expect("balance"),
        U256::from(1_000_000 - 550),
        "payer got the rest back"
    );
    assert_eq!(
        token
            .balanceOf(*escrow.address())
            .call()
            .await
            .expect("balance"),
        U256::ZERO,
        "escrow empty"
    );
    let _: &TestToken::TestTokenInstance<_> = &token;
}
