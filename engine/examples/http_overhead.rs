//! Measures what the payment layer adds to a request: sequential keep-alive requests on
//! loopback to a free route and to the same handler behind `PaymentLayer` (each paid request
//! carries a new voucher, signature checked with the cached signer key, charged and made
//! durable in sled with group commit before the response). Prints p50/p99 of both and the
//! difference.
//!
//! `cargo run --release -p sluice-engine --example http_overhead [-- REQUESTS]`
//!
//! Needs the pinned anvil (`make tools`). One client, so this is latency, not peak rate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy::consensus::{SignableTransaction, TxEip1559, TxEnvelope};
use alloy::eips::eip2718::Encodable2718;
use alloy::network::EthereumWallet;
use alloy::node_bindings::Anvil;
use alloy::primitives::{Address, B256, Bytes, TxKind, U256, keccak256};
use alloy::providers::{Provider, ProviderBuilder};
use alloy::signers::SignerSync;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::{SolCall, SolValue};
use axum::Router;
use axum::routing::get;
use sluice_contracts::{
    EscrowConfig, SluiceEscrow, TestToken, anvil_binary, deploy_escrow, deploy_test_token,
};
use sluice_engine::chain::{RpcChain, RpcChainConfig};
use sluice_engine::http::PaymentLayer;
use sluice_engine::protocol::{
    ChallengeSecret, Credential, OpenPayload, SessionPayload, VoucherPayload,
    parse_www_authenticate,
};
use sluice_engine::store::{Durability, SledStore};
use sluice_engine::{Engine, EngineConfig, RoutePrice};
use sluice_voucher::{SigningKey, Voucher, VoucherDomain, sign_voucher};

const CHAIN_ID: u64 = 31_337;
const PRICE: u128 = 10;

fn signed(signer: &PrivateKeySigner, nonce: u64, to: Address, input: Vec<u8>) -> Bytes {
    let tx = TxEip1559 {
        chain_id: CHAIN_ID,
        nonce,
        gas_limit: 400_000,
        max_fee_per_gas: 10_000_000_000,
        max_priority_fee_per_gas: 1_000_000_000,
        to: TxKind::Call(to),
        value: U256::ZERO,
        access_list: Default::default(),
        input: input.into(),
    };
    let signature = signer.sign_hash_sync(&tx.signature_hash()).expect("sign");
    TxEnvelope::from(tx.into_signed(signature))
        .encoded_2718()
        .into()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

async fn timed(client: &reqwest::Client, url: &str, headers: &[Option<String>]) -> Vec<Duration> {
    let mut times = Vec::with_capacity(headers.len());
    for header in headers {
        let mut request = client.get(url);
        if let Some(header) = header {
            request = request.header("authorization", header);
        }
        let start = Instant::now();
        let response = request.send().await.expect("send");
        let status = response.status();
        let _ = response.bytes().await.expect("body");
        times.push(start.elapsed());
        assert_eq!(status, 200, "{url}");
    }
    times.sort();
    times
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let requests: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(5_000);
    let anvil = Anvil::new()
        .path(anvil_binary().expect("anvil: run `make tools`"))
        .chain_id(CHAIN_ID)
        .try_spawn()
        .expect("anvil");
    let key =
        |i: usize| PrivateKeySigner::from_slice(&anvil.nth_key(i).unwrap().to_bytes()).unwrap();
    let (deployer_key, payer_key, payee) = (key(0), key(1), key(9).address());
    let deployer = ProviderBuilder::new()
        .wallet(EthereumWallet::from(deployer_key))
        .connect_http(anvil.endpoint_url())
        .erased();
    let token = *deploy_test_token(deployer.clone(), "Test USD", "TUSD", 6)
        .await
        .expect("token")
        .address();
    let escrow = *deploy_escrow(deployer.clone(), &EscrowConfig::default())
        .await
        .expect("escrow")
        .address();
    let deposit = PRICE * (requests as u128 + 100);
    TestToken::new(token, &deployer)
        .mint(payer_key.address(), U256::from(deposit))
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), Durability::default()).expect("sled");
    let chain = RpcChain::connect(RpcChainConfig::new(anvil.endpoint_url(), escrow, CHAIN_ID))
        .await
        .expect("rpc");
    let mut config = EngineConfig::new(
        "bench.local",
        ChallengeSecret::new("http-overhead-secret-0123456789abcdef").unwrap(),
        CHAIN_ID,
        escrow,
        payee,
        token,
    );
    // Chain facts are re-read every 5 s by default; keep the measurement to the layer itself.
    config.chain_state_ttl = Duration::from_secs(3600);
    let engine = Arc::new(Engine::new(config, store, chain).expect("engine"));
    let route = engine.route(RoutePrice::new(PRICE, "request")).unwrap();
    let handler = || async { "content" };
    let app = Router::new()
        .route("/paid", get(handler))
        .route_layer(PaymentLayer::new(Arc::clone(&engine), route))
        .route("/free", get(handler));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = reqwest::Client::new();

    // Open: approve + open signed by the payer, sent inside the open credential.
    let nonce = deployer
        .get_transaction_count(payer_key.address())
        .await
        .unwrap();
    let approve = TestToken::approveCall {
        spender: escrow,
        amount: U256::from(deposit),
    };
    let approve = signed(&payer_key, nonce, token, approve.abi_encode());
    deployer
        .send_raw_transaction(&approve)
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    let salt = B256::repeat_byte(7);
    let open = SluiceEscrow::openCall {
        payee,
        token,
        deposit,
        salt,
        authorizedSigner: Address::ZERO,
    };
    let open = signed(&payer_key, nonce + 1, escrow, open.abi_encode());
    let channel = keccak256(
        (
            payer_key.address(),
            payee,
            token,
            salt,
            Address::ZERO,
            escrow,
            U256::from(CHAIN_ID),
        )
            .abi_encode(),
    );
    let domain = VoucherDomain::tempo_v1(CHAIN_ID, escrow);
    let voucher_key = SigningKey::from_slice(payer_key.to_bytes().as_slice()).unwrap();
    let signature = |amount: u128| {
        let voucher = Voucher::new(channel.into(), amount);
        Bytes::copy_from_slice(
            &sign_voucher(&domain, &voucher, &voucher_key)
                .signature
                .to_bytes65(),
        )
    };
    let unpaid = client.get(format!("{base}/paid")).send().await.unwrap();
    let header = unpaid.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    let challenge = parse_www_authenticate(&header).unwrap().remove(0);
    let open = Credential {
        challenge: challenge.clone(),
        payload: SessionPayload::Open(OpenPayload {
            channel_id: channel,
            transaction: open,
            cumulative_amount: PRICE,
            signature: signature(PRICE),
            authorized_signer: None,
            descriptor: None,
        }),
        source: None,
    }
    .to_header_value();
    let opened = client
        .get(format!("{base}/paid"))
        .header("authorization", open)
        .send()
        .await
        .unwrap();
    assert_eq!(opened.status(), 200, "open");

    // Every paid request carries a new voucher (signed before the clock starts).
    let vouchers: Vec<Option<String>> = (0..requests as u128 + 50)
        .map(|i| {
            let amount = PRICE * (i + 2);
            Some(
                Credential {
                    challenge: challenge.clone(),
                    payload: SessionPayload::Voucher(VoucherPayload {
                        channel_id: channel,
                        cumulative_amount: amount,
                        signature: signature(amount),
                        descriptor: None,
                    }),
                    source: None,
                }
                .to_header_value(),
            )
        })
        .collect();
    let free: Vec<Option<String>> = vec![None; requests];
    // Warm up both paths.
    timed(&client, &format!("{base}/free"), &free[..50]).await;
    timed(&client, &format!("{base}/paid"), &vouchers[..50]).await;
    let free = timed(&client, &format!("{base}/free"), &free).await;
    let paid = timed(&client, &format!("{base}/paid"), &vouchers[50..]).await;
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!("requests per route: {requests} (sequential, keep-alive, loopback)");
    for (name, times) in [("free", &free), ("paid", &paid)] {
        println!(
            "{name:>5}: p50 {:8.1} µs   p99 {:8.1} µs",
            us(percentile(times, 0.5)),
            us(percentile(times, 0.99))
        );
    }
    println!(
        "added by the payment layer: p50 {:.1} µs, p99 {:.1} µs",
        us(percentile(&paid, 0.5)) - us(percentile(&free, 0.5)),
        us(percentile(&paid, 0.99)) - us(percentile(&free, 0.99)),
    );
    let record = engine.channel(&channel).unwrap().unwrap();
    println!(
        "channel: accepted {} spent {} units {}",
        record.accepted_cumulative, record.spent, record.units
    );
}
