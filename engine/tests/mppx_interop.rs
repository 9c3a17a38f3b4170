//! The real npm `mppx@0.11.0` v1 client pays the example provider (`examples/provider.rs`) on a
//! local anvil chain with our escrow: `engine/tests/mppx/interop.mjs` opens a channel manually
//! (a payer-signed EIP-1559 transaction that the provider broadcasts), makes automatic paid
//! requests on the channel the provider suggests, reads a metered SSE stream answering
//! need-voucher events with voucher POSTs, tops the channel up, makes more paid requests and
//! closes. This test then checks what the client reports against the engine's accounting (admin
//! API), the settlement feed and the chain, and finally settles the feed's voucher on chain as the
//! payee to prove the money moves exactly as signed.
//!
//! Needs `make tools` (anvil and mppx in `tools/node_modules`) and `node` ≥ 20 on `PATH` (or
//! `SLUICE_NODE`).

mod support;

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use alloy::network::EthereumWallet;
use alloy::primitives::{Address, B256, Bytes};
use alloy::providers::{Provider, ProviderBuilder};
use serde_json::Value;
use sluice_contracts::SluiceEscrow;
use sluice_engine::http::feed::FeedPageDto;
use sluice_engine::store::ChannelStatus;
use sluice_voucher::{VoucherSignature, recover_address};
use support::anvil::{CHAIN_ID, TestChain};

/// Price of one `/paid` request and of one streamed token, in token base units.
const PRICE: u128 = 1_000;
/// The initial deposit: covers the requests and the stream before the top-up, not the requests
/// after it (so vouchers beyond the first deposit are exercised).
const DEPOSIT: u128 = 20_000;
const TOPUP: u128 = 10_000;
const REQUESTS_BEFORE_TOPUP: u64 = 5;
const AFTER_TOPUP_REQUESTS: u64 = 4;
const STREAM_TOKENS: u64 = 12;
const MIN_NEED_VOUCHER: u64 = 3;
const ADMIN_TOKEN: &str = "admin-token-for-mppx-interop-0123456789";
/// Bound on the node script (it bounds itself slightly below this).
const NODE_TIMEOUT: Duration = Duration::from_secs(50);
/// Bound on each HTTP request the test itself makes.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("engine/ has a parent")
        .to_path_buf()
}

/// The provider process and its stderr log. Kills the process when dropped, and prints the log
/// if the test is failing.
struct ProviderProcess {
    child: Child,
    base: String,
    admin: String,
    stderr_log: PathBuf,
}

impl ProviderProcess {
    fn start(chain: &TestChain, dir: &Path, payee: Address) -> Self {
        let stderr_log = dir.join("provider.stderr");
        let mut child = Command::new(support::provider::provider_binary())
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(["--admin-token", ADMIN_TOKEN])
            .args(["--rpc-url", chain.rpc_url().as_str()])
            .args(["--chain-id", &CHAIN_ID.to_string()])
            .args(["--escrow", &chain.escrow.to_string()])
            .args(["--token", &chain.token.to_string()])
            .args(["--recipient", &payee.to_string()])
            .arg("--store")
            .arg(dir.join("store"))
            .args(["--price", &PRICE.to_string()])
            // CLIENT-BEHAVIOUR.md §10.10: the delta must not exceed the smallest unit price.
            .args(["--min-voucher-delta", &PRICE.to_string()])
            .args(["--suggested-deposit", &DEPOSIT.to_string()])
            .args(["--realm", "mppx-interop.test"])
            .args(["--stream-wait-ms", "15000"])
            .arg("--suggest-latest-channel")
            .env("SLUICE_SECRET", "mppx-interop-test-secret-0123456789abcdef")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                File::create(&stderr_log).expect("provider stderr log"),
            ))
            .spawn()
            .expect("provider starts");
        let stdout = child.stdout.take().expect("stdout");
        // Read the two address lines on a thread so a silent provider cannot hang the test.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            for _ in 0..2 {
                match lines.next() {
                    Some(Ok(line)) => {
                        if tx.send(line).is_err() {
                            return;
                        }
                    }
                    _ => return,
                }
            }
            // Keep draining so the provider never blocks on a full pipe.
            for _ in lines {}
        });
        let mut process = Self {
            child,
            base: String::new(),
            admin: String::new(),
            stderr_log,
        };
        let next = |what: &str| {
            rx.recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|e| panic!("the provider did not print its {what} line: {e}"))
        };
        let listening = next("LISTENING");
        let admin = next("ADMIN");
        process.base = listening
            .strip_prefix("LISTENING ")
            .unwrap_or_else(|| panic!("LISTENING line first, got {listening:?}"))
            .to_owned();
        process.admin = admin
            .strip_prefix("ADMIN ")
            .unwrap_or_else(|| panic!("ADMIN line second, got {admin:?}"))
            .to_owned();
        process
    }
}

impl Drop for ProviderProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.stderr_log).unwrap_or_default();
            eprintln!("---- provider stderr ----\n{log}\n---- end provider stderr ----");
        }
    }
}

/// What the node script left behind.
struct NodeRun {
    stdout: String,
    stderr: String,
}

/// Runs `interop.mjs` with `env`, bounded by [`NODE_TIMEOUT`]; panics with its stderr if it
/// fails or times out.
fn run_interop_script(env: &[(&str, String)]) -> NodeRun {
    let root = repo_root();
    let mppx = root.join("tools/node_modules/mppx");
    assert!(
        mppx.is_dir(),
        "{} is missing: run `make tools` first (installs mppx, viem and anvil)",
        mppx.display()
    );
    let node = std::env::var("SLUICE_NODE").unwrap_or_else(|_| "node".to_owned());
    let script = root.join("engine/tests/mppx/interop.mjs");
    let mut child = Command::new(&node)
        .arg(&script)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run `{node}` (install node >= 20 or set SLUICE_NODE): {e}")
        });
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("stderr")));
    let deadline = Instant::now() + NODE_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for node") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let run = NodeRun {
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    };
    match status {
        None => panic!(
            "interop.mjs did not finish within {NODE_TIMEOUT:?}; its stderr:\n{}",
            run.stderr
        ),
        Some(status) if !status.success() => panic!(
            "interop.mjs failed ({status}); its stderr:\n{}\nits stdout:\n{}",
            run.stderr, run.stdout
        ),
        Some(_) => run,
    }
}

fn str_field<'a>(report: &'a Value, key: &str) -> &'a str {
    report[key]
        .as_str()
        .unwrap_or_else(|| panic!("field {key} is a string in {report}"))
}

fn parsed<T: std::str::FromStr>(report: &Value, key: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    str_field(report, key)
        .parse()
        .unwrap_or_else(|e| panic!("field {key}: {e:?}"))
}

fn count(report: &Value, key: &str) -> u64 {
    report[key]
        .as_u64()
        .unwrap_or_else(|| panic!("field {key} is a count in {report}"))
}

async fn admin_get(client: &reqwest::Client, url: &str) -> Value {
    let response = client
        .get(url)
        .bearer_auth(ADMIN_TOKEN)
        .timeout(HTTP_TIMEOUT)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(response.status(), 200, "GET {url}");
    response.json().await.expect("admin JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mppx_client_pays_the_example_provider_end_to_end() {
    let chain = TestChain::start().await;
    let payer = chain.account(1);
    let payee_signer = chain.account(9);
    let payee = payee_signer.address();
    // Anvil accounts hold ETH; the payer gets exactly the tokens it will lock.
    chain.mint(payer.address(), DEPOSIT + TOPUP).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let provider = ProviderProcess::start(&chain, dir.path(), payee);

    let run = tokio::task::spawn_blocking({
        let env = vec![
            ("SERVER_URL", provider.base.clone()),
            ("RPC_URL", chain.rpc_url().to_string()),
            ("CHAIN_ID", CHAIN_ID.to_string()),
            ("ESCROW", chain.escrow.to_string()),
            ("TOKEN", chain.token.to_string()),
            ("PAYER_KEY", payer.to_bytes().to_string()),
            ("PAYEE", payee.to_string()),
            ("DEPOSIT", DEPOSIT.to_string()),
            ("TOPUP", TOPUP.to_string()),
            ("PAID_PATH", "/paid".to_owned()),
            ("STREAM_PATH", "/stream".to_owned()),
            ("REQUESTS", REQUESTS_BEFORE_TOPUP.to_string()),
            ("STREAM_TOKENS", STREAM_TOKENS.to_string()),
            ("MIN_NEED_VOUCHER", MIN_NEED_VOUCHER.to_string()),
            ("AFTER_TOPUP_REQUESTS", AFTER_TOPUP_REQUESTS.to_string()),
            ("TIMEOUT_MS", "15000".to_owned()),
            ("TOTAL_TIMEOUT_MS", "45000".to_owned()),
        ];
        move || run_interop_script(&env)
    })
    .await
    .expect("node runner");
    // From here on, a failed check also shows what the client saw.
    let _node_log = NodeLogOnPanic(&run.stderr);
    let line = run
        .stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_else(|| panic!("interop.mjs printed no JSON line"));
    let report: Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("bad JSON line {line:?}: {e}"));
    assert_eq!(report["ok"], true, "{report}");
    eprintln!("interop.mjs report: {report}");

    // ---- the flow steps all happened -----------------------------------------------------
    let channel: B256 = parsed(&report, "channelId");
    assert_eq!(parsed::<Address>(&report, "payer"), payer.address());
    assert_eq!(parsed::<Address>(&report, "payee"), payee);
    assert_eq!(parsed::<Address>(&report, "escrow"), chain.escrow);
    assert_eq!(parsed::<Address>(&report, "token"), chain.token);
    assert_eq!(parsed::<u128>(&report, "paidPrice"), PRICE);
    assert_eq!(parsed::<u128>(&report, "streamPrice"), PRICE);
    let requests = count(&report, "requests");
    assert_eq!(requests, REQUESTS_BEFORE_TOPUP + AFTER_TOPUP_REQUESTS);
    let tokens = count(&report, "streamTokens");
    assert_eq!(tokens, STREAM_TOKENS, "every streamed token arrived");
    let need_voucher = count(&report, "needVoucherEvents");
    assert!(
        need_voucher >= MIN_NEED_VOUCHER,
        "{need_voucher} mid-stream need-voucher events"
    );
    assert_eq!(
        count(&report, "voucherPosts"),
        need_voucher,
        "each need-voucher event was answered by a voucher POST"
    );
    let open_status = count(&report, "openStatus");
    assert!((200..300).contains(&open_status), "open: {open_status}");
    let top_up_status = count(&report, "topUpStatus");
    assert!(
        (200..300).contains(&top_up_status),
        "topUp: {top_up_status}"
    );
    let close_status = count(&report, "closeStatus");
    assert!((200..300).contains(&close_status), "close: {close_status}");
    assert_eq!(
        parsed::<u128>(&report, "depositAfterTopUp"),
        DEPOSIT + TOPUP
    );
    let by_action = &report["vouchersByAction"];
    assert_eq!(by_action["open"], 1, "{by_action}");
    assert_eq!(by_action["close"], 1, "{by_action}");

    // The open and top-up transactions were broadcast by our server (the script only signed
    // them) and mined successfully.
    let rpc = ProviderBuilder::new()
        .wallet(EthereumWallet::from(payee_signer.clone()))
        .connect_http(chain.rpc_url());
    for key in ["openTx", "topUpTx"] {
        let hash: B256 = parsed(&report, key);
        let receipt = rpc
            .get_transaction_receipt(hash)
            .await
            .expect("receipt query")
            .unwrap_or_else(|| panic!("{key} {hash} was never mined"));
        assert!(receipt.status(), "{key} {hash} reverted");
    }

    // ---- the engine's accounting equals what the client paid --------------------------------
    let last: u128 = parsed(&report, "lastCumulative");
    assert_eq!(
        parsed::<u128>(&report, "highestVoucher"),
        last,
        "the close voucher repeats the highest voucher"
    );
    let client = reqwest::Client::new();
    let view = admin_get(&client, &format!("{}/channels/{channel}", provider.admin)).await;
    let paid = u128::from(requests) * PRICE + u128::from(tokens) * PRICE;
    assert_eq!(view["acceptedCumulative"], last.to_string(), "{view}");
    assert_eq!(view["spent"], paid.to_string(), "{view}");
    assert_eq!(view["units"], requests + tokens, "{view}");
    assert_eq!(view["deposit"], (DEPOSIT + TOPUP).to_string(), "{view}");
    assert_eq!(view["status"], "closing", "{view}");
    assert!(
        paid <= last && last <= DEPOSIT + TOPUP,
        "spent ≤ accepted ≤ deposit"
    );
    assert!(
        last > DEPOSIT,
        "vouchers beyond the first deposit were accepted ({last})"
    );

    // ---- the final voucher is the payer's signature over the escrow's digest ---------------
    let escrow = SluiceEscrow::new(chain.escrow, &rpc);
    let digest = escrow
        .getVoucherDigest(channel, last)
        .call()
        .await
        .expect("getVoucherDigest");
    let signature = VoucherSignature::from_hex(str_field(&report, "lastSignature"))
        .expect("a voucher signature");
    assert_eq!(
        recover_address(&digest, &signature).expect("recovers"),
        payer.address(),
        "the close voucher recovers to the payer"
    );

    // ---- the settlement feed carries the last voucher -------------------------------------
    let page: FeedPageDto =
        serde_json::from_value(admin_get(&client, &format!("{}/feed", provider.admin)).await)
            .expect("a feed page");
    let entry = page
        .entries
        .iter()
        .rfind(|e| e.channel_id == channel)
        .unwrap_or_else(|| panic!("no feed entry for {channel}: {page:?}"));
    assert_eq!(entry.cumulative_amount, last);
    assert_eq!(entry.signature, Some(signature.to_bytes65()));
    assert_eq!(entry.status, ChannelStatus::Closing);

    // ---- the chain agrees, and the feed's voucher settles exactly -------------------------
    let onchain = escrow.getChannel(channel).call().await.expect("getChannel");
    assert_eq!(onchain.payer, payer.address());
    assert_eq!(onchain.payee, payee);
    assert_eq!(onchain.deposit, DEPOSIT + TOPUP);
    assert_eq!(
        onchain.settled, 0,
        "nothing settled before the payee closes"
    );
    assert!(!onchain.finalized);
    let receipt = escrow
        .close(
            channel,
            entry.cumulative_amount,
            Bytes::from(entry.signature.expect("signed").to_vec()),
        )
        .send()
        .await
        .expect("close accepted")
        .get_receipt()
        .await
        .expect("close mined");
    assert!(
        receipt.status(),
        "the payee's close with the feed's voucher"
    );
    assert_eq!(chain.balance(payee).await, last, "payee gets the voucher");
    assert_eq!(
        chain.balance(payer.address()).await,
        DEPOSIT + TOPUP - last,
        "payer gets the rest"
    );
    assert_eq!(chain.balance(chain.escrow).await, 0, "escrow is empty");
    assert!(
        escrow
            .getChannel(channel)
            .call()
            .await
            .expect("getChannel")
            .finalized
    );
    drop(provider);
}

/// Prints the node script's stderr if the test panics while this is alive.
struct NodeLogOnPanic<'a>(&'a str);

impl Drop for NodeLogOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- interop.mjs stderr ----\n{}\n---- end interop.mjs stderr ----",
                self.0
            );
        }
    }
}
