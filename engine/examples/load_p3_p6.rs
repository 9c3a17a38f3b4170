//! Load generator for PERFORMANCE.md P3 (paid HTTP request end to end vs the same route unpaid)
//! and P6 (SSE metering: tokens/s with a voucher every N tokens vs an unpaid stream).
//!
//! Starts anvil with the escrow (the pinned binary), an engine over sled with group commit, and
//! an in-process axum server on loopback with:
//!
//! - `GET /paid`: a handler behind `PaymentLayer` (one unit per request, charged durably before
//!   the handler runs); `GET /free`: the same handler without the layer;
//! - `GET /stream-k{K}?tokens=T`: `SseMeter` behind `PaymentLayer::metered(..).charge_batch(K)`
//!   (one unit per token, charged before each event, K units per durable update); `GET /free-stream?tokens=T`: the same token stream, same bytes
//!   per event, without payment.
//!
//! It opens `channels` channels with real payer-signed transactions (8 payers on anvil accounts
//! 2–9), signs every voucher ahead, then:
//!
//! - **P3**: one keep-alive connection per channel (its own `reqwest::Client`), closed loop, in
//!   interleaved phases free, paid, free, paid, …; requests/s and p50/p99 of each, the added
//!   p50/p99; then the same paced at 0.5x (P3's p99 target) and 0.1x the peak paid rate; and the
//!   2-thread pure voucher-check rate in the same run for the peak-rate target.
//! - **P6**: `streams` concurrent streams of `tokens` tokens, one channel each; the paid client
//!   POSTs a voucher (empty body, to the stream's URL, another keep-alive connection) after every
//!   N = 100 tokens it reads, each signed N units ahead of what it has read, so the stream never
//!   has to pause (when the server runs ahead of what the client has read, the client answers
//!   the `payment-need-voucher` event as mppx does; pauses are counted); interleaved with the
//!   unpaid stream; tokens/s ratio.
//!
//! ```text
//! cargo run --release -p sluice-engine --example load_p3_p6 -- [requests-per-connection-per-phase] [sse-tokens-per-stream] [group|none] [K[,K...]] [serial|pipelined]
//! ```
//!
//! Defaults: 300 requests, 20,000 tokens, `group` (sled with group commit, the production
//! default), K = 1; `none` acknowledges writes without flushing, to separate the flush from the
//! rest. `K[,K...]` runs P6 once per metered charge batch size (`PaymentLayer::charge_batch`,
//! route `/stream-k{K}`), each on fresh channels; 0 requests skips P3. `serial` (the default)
//! awaits each voucher POST before reading on; `pipelined` POSTs from a separate task per stream
//! (in order, skipping to the highest amount queued) while the reader goes on.
//! Client and server share the same 2-worker tokio runtime (and the machine's cores).

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy::primitives::{Address, B256, Bytes};
use axum::Router;
use axum::body::Body;
use axum::extract::Query;
use axum::http::header::CONTENT_TYPE;
use axum::response::Response;
use axum::routing::get;
use futures_util::stream;
use sluice_engine::Route;
use sluice_engine::RoutePrice;
use sluice_engine::http::{PaymentLayer, SSE_CONTENT_TYPE, SseMeter};
use sluice_engine::protocol::Challenge;
use sluice_engine::protocol::{SessionPayload, VoucherPayload};
use sluice_engine::store::{Durability, SledStore};
use sluice_voucher::{
    SignedVoucher, SignerKey, SigningKey, Voucher, VoucherDomain, VoucherSignature, sign_voucher,
};
use support::session::{Harness, PRICE, credential, now};

const PAYERS: usize = 8;
const CHANNELS_PER_PAYER: usize = 8;
const ROUNDS: usize = 3;
/// P3: paced runs at these fractions of the peak paid rate.
const PACED: [f64; 2] = [0.5, 0.1];
/// P6: a voucher every N tokens.
const N: u128 = 100;
const STREAMS: usize = 8;

#[derive(serde::Deserialize)]
struct StreamQuery {
    tokens: u32,
}

fn token(i: u32) -> String {
    format!("token {i}")
}

async fn content() -> &'static str {
    "content"
}

async fn metered_stream(meter: SseMeter, Query(q): Query<StreamQuery>) -> Response {
    meter.stream(stream::iter((0..q.tokens).map(token)))
}

async fn free_stream(Query(q): Query<StreamQuery>) -> Response {
    let events = stream::iter((0..q.tokens).map(|i| {
        Ok::<_, std::convert::Infallible>(bytes::Bytes::from(format!(
            "event: message\ndata: {}\n\n",
            token(i)
        )))
    }));
    let mut response = Response::new(Body::from_stream(events));
    response.headers_mut().insert(
        CONTENT_TYPE,
        axum::http::HeaderValue::from_static(SSE_CONTENT_TYPE),
    );
    response
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// One closed-loop or paced phase: every connection sends its headers in order.
struct Phase {
    rate: f64,
    latencies: Vec<Duration>,
}

impl Phase {
    fn p(&self, p: f64) -> Duration {
        percentile(&self.latencies, p)
    }
}

/// Sends `per_conn[i]` on connection `i` (all at once); `interval` paces each connection.
async fn run_phase(
    clients: &[reqwest::Client],
    url: &str,
    per_conn: Vec<Vec<Option<String>>>,
    interval: Option<Duration>,
) -> Phase {
    let started = Instant::now();
    let connections = clients.len();
    let tasks: Vec<_> = clients
        .iter()
        .cloned()
        .zip(per_conn)
        .enumerate()
        .map(|(i, (client, headers))| {
            let url = url.to_owned();
            tokio::spawn(async move {
                let mut ticker = interval.map(|every| {
                    // Spread the connections' ticks over one interval.
                    let offset = every.mul_f64(i as f64 / connections as f64);
                    let mut t =
                        tokio::time::interval_at(tokio::time::Instant::now() + offset, every);
                    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    t
                });
                let mut times = Vec::with_capacity(headers.len());
                for header in headers {
                    if let Some(t) = ticker.as_mut() {
                        t.tick().await;
                    }
                    let mut request = client.get(&url);
                    if let Some(header) = header {
                        request = request.header("authorization", header);
                    }
                    let start = Instant::now();
                    let response = request.send().await.expect("send");
                    let status = response.status();
                    let body = response.bytes().await.expect("body");
                    times.push(start.elapsed());
                    assert_eq!(status, 200, "{url}: {body:?}");
                }
                times
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("connection task"));
    }
    let rate = latencies.len() as f64 / started.elapsed().as_secs_f64();
    latencies.sort();
    Phase { rate, latencies }
}

/// An open channel, the payer's voucher key, and the last voucher amount signed.
#[derive(Clone)]
struct Channel {
    id: B256,
    payer: Address,
    key: SigningKey,
    domain: VoucherDomain,
    next: u128,
}

impl Channel {
    fn signature(&self, amount: u128) -> Bytes {
        Bytes::copy_from_slice(
            &sign_voucher(
                &self.domain,
                &Voucher::new(self.id.into(), amount),
                &self.key,
            )
            .signature
            .to_bytes65(),
        )
    }

    /// A `voucher` credential for `amount`.
    fn voucher(&self, challenge: &Challenge, amount: u128) -> String {
        let payload = SessionPayload::Voucher(VoucherPayload {
            channel_id: self.id,
            cumulative_amount: amount,
            signature: self.signature(amount),
            descriptor: None,
        });
        credential(challenge, payload, None)
    }

    /// `count` vouchers of one unit each, in order.
    fn vouchers(
        &mut self,
        challenge: &Challenge,
        count: usize,
        price: u128,
    ) -> Vec<Option<String>> {
        (0..count)
            .map(|_| {
                self.next += price;
                Some(self.voucher(challenge, self.next))
            })
            .collect()
    }
}

/// Opens `per_payer` channels for each of `PAYERS` payers, each with `deposit`.
async fn open_channels(
    h: &Harness<SledStore>,
    deposit: u128,
    salt_base: u8,
    per_payer: usize,
) -> Vec<Channel> {
    let challenge = h.challenge();
    let mut channels = Vec::new();
    for payer in 0..PAYERS {
        let mut client = h.client(2 + payer, deposit * per_payer as u128).await;
        for n in 0..per_payer {
            let open = client.open(
                &challenge,
                deposit,
                B256::repeat_byte(salt_base + n as u8),
                Address::ZERO,
                0,
            );
            h.engine
                .authorize(&h.route, &open, now())
                .await
                .expect("open");
            channels.push(Channel {
                id: client.channel,
                payer: client.address(),
                key: client.voucher_key.clone(),
                domain: client.domain.clone(),
                next: 0,
            });
        }
    }
    channels
}

/// Pure checks per second on two threads (parse the 65 bytes, digest, cached-key verify).
fn pure_rate(
    domain: &VoucherDomain,
    signed: &[(Arc<SignerKey>, SignedVoucher)],
    duration: Duration,
) -> f64 {
    let started = Instant::now();
    let counts: Vec<u64> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..2)
            .map(|_| {
                scope.spawn(|| {
                    let mut count = 0u64;
                    while started.elapsed() < duration {
                        for (key, signed) in signed {
                            let bytes = signed.signature.to_bytes65();
                            let signature = VoucherSignature::from_bytes(&bytes).expect("parse");
                            let again = SignedVoucher {
                                voucher: signed.voucher,
                                signature,
                            };
                            key.verify(domain, &again).expect("valid");
                            count += 1;
                        }
                    }
                    count
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("worker"))
            .collect()
    });
    counts.iter().sum::<u64>() as f64 / started.elapsed().as_secs_f64()
}

fn keep_alive_clients(count: usize) -> Vec<reqwest::Client> {
    (0..count)
        .map(|_| {
            reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .tcp_nodelay(true)
                .build()
                .expect("client")
        })
        .collect()
}

fn print_pair(label: &str, free: &Phase, paid: &Phase) {
    println!(
        "| {label} | {:.0} | {:.1} / {:.1} | {:.0} | {:.1} / {:.1} | {:.1} / {:.1} |",
        free.rate,
        us(free.p(0.5)),
        us(free.p(0.99)),
        paid.rate,
        us(paid.p(0.5)),
        us(paid.p(0.99)),
        us(paid.p(0.5)) - us(free.p(0.5)),
        us(paid.p(0.99)) - us(free.p(0.99)),
    );
}

async fn p3(h: &Harness<SledStore>, base: &str, per_conn: usize) {
    let phases = ROUNDS + 1 + PACED.len(); // warm-up, ROUNDS peak rounds, the paced rounds
    let deposit = PRICE * (per_conn as u128 * phases as u128 + 10);
    let mut channels = open_channels(h, deposit, 1, CHANNELS_PER_PAYER).await;
    let challenge = h.challenge();
    let conns = channels.len();
    println!(
        "\n## P3: {conns} keep-alive connections (one channel each), {per_conn} requests per connection per phase\n"
    );
    // Sign everything before any clock starts.
    let signing = Instant::now();
    let mut paid_headers: Vec<Vec<Vec<Option<String>>>> = (0..phases)
        .map(|_| {
            channels
                .iter_mut()
                .map(|c| c.vouchers(&challenge, per_conn, PRICE))
                .collect()
        })
        .collect();
    println!(
        "signed {} vouchers ahead in {:.1} s",
        phases * conns * per_conn,
        signing.elapsed().as_secs_f64()
    );
    let free_headers = || vec![vec![None; per_conn]; conns];
    let clients = keep_alive_clients(conns);
    let free_url = format!("{base}/free");
    let paid_url = format!("{base}/paid");
    // Warm up: connections, signer cache, sled.
    run_phase(&clients, &free_url, free_headers(), None).await;
    run_phase(&clients, &paid_url, paid_headers.remove(0), None).await;

    println!(
        "| round | free req/s | free p50 / p99 µs | paid req/s | paid p50 / p99 µs | added p50 / p99 µs |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    let mut peak_paid: f64 = 0.0;
    let mut all_free = Vec::new();
    let mut all_paid = Vec::new();
    for round in 1..=ROUNDS {
        let free = run_phase(&clients, &free_url, free_headers(), None).await;
        let paid = run_phase(&clients, &paid_url, paid_headers.remove(0), None).await;
        print_pair(&format!("peak {round}"), &free, &paid);
        peak_paid = peak_paid.max(paid.rate);
        all_free.push(free);
        all_paid.push(paid);
    }
    let merge = |phases: &[Phase]| {
        let mut latencies: Vec<Duration> =
            phases.iter().flat_map(|p| p.latencies.clone()).collect();
        latencies.sort();
        Phase {
            rate: phases.iter().map(|p| p.rate).sum::<f64>() / phases.len() as f64,
            latencies,
        }
    };
    print_pair("peak, all rounds", &merge(&all_free), &merge(&all_paid));

    // Paced runs at fractions of the peak paid rate (half: P3's p99 target), free then paid.
    for fraction in PACED {
        let target = peak_paid * fraction;
        let interval = Duration::from_secs_f64(conns as f64 / target);
        let free = run_phase(&clients, &free_url, free_headers(), Some(interval)).await;
        let paid = run_phase(&clients, &paid_url, paid_headers.remove(0), Some(interval)).await;
        print_pair(
            &format!("paced at {fraction}x peak ({target:.0}/s)"),
            &free,
            &paid,
        );
    }

    // Money: every paid request charged exactly once, never above the accepted voucher.
    let mut spent = 0u128;
    for c in &channels {
        let record = h.record(&c.id).expect("channel");
        assert!(record.spent <= record.accepted_cumulative);
        assert!(record.accepted_cumulative <= record.deposit);
        assert_eq!(record.accepted_cumulative, c.next);
        spent += record.spent;
    }
    assert_eq!(
        spent,
        PRICE * (conns * per_conn * phases) as u128,
        "one unit per paid request"
    );

    // The pure-check baseline of P3's peak-rate target, on two threads, in the same run.
    let domain = h.engine.voucher_domain().clone();
    let signed: Vec<_> = channels
        .iter()
        .flat_map(|c| {
            let key = Arc::new(
                SignerKey::new(c.payer, *c.key.verifying_key(), Default::default())
                    .expect("own key"),
            );
            (1..=16u128).map(move |k| {
                let amount = k * PRICE;
                let signature = c.signature(amount);
                (
                    Arc::clone(&key),
                    SignedVoucher {
                        voucher: Voucher::new(c.id.into(), amount),
                        signature: VoucherSignature::from_bytes(&signature).expect("sig"),
                    },
                )
            })
        })
        .collect();
    let pure = tokio::task::block_in_place(|| pure_rate(&domain, &signed, Duration::from_secs(3)));
    println!(
        "\npeak paid rate {peak_paid:.0}/s; pure checks (2 threads) {pure:.0}/s; ratio {:.2}x",
        peak_paid / pure
    );
}

/// Reads an unpaid stream to its end; returns the message events.
async fn read_free_stream(client: reqwest::Client, url: String, tokens: u32) -> u64 {
    let mut response = client.get(&url).send().await.expect("stream");
    assert_eq!(response.status(), 200);
    let mut buffer = String::new();
    let mut messages = 0u64;
    while let Some(chunk) = response.chunk().await.expect("chunk") {
        buffer.push_str(std::str::from_utf8(&chunk).expect("utf-8"));
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            assert!(event.starts_with("event: message\n"), "{event:?}");
            messages += 1;
        }
    }
    assert_eq!(messages, u64::from(tokens));
    messages
}

async fn p6(
    h: &Harness<SledStore>,
    stream_route: &Route,
    base: &str,
    tokens: u32,
    batch: u64,
    salt_base: u8,
    pipelined: bool,
) {
    let rounds = 2;
    let deposit = PRICE * (u128::from(tokens) * (rounds as u128 + 1) + 4 * N);
    let channels = open_channels(h, deposit, salt_base, STREAMS / PAYERS).await;
    let challenge = h
        .engine
        .challenge(stream_route, now(), None)
        .expect("challenge");
    println!(
        "\n## P6: {STREAMS} concurrent streams × {tokens} tokens, a voucher every {N} tokens (signed {N} ahead), charge batch K = {batch}, {} voucher POSTs\n",
        if pipelined { "pipelined" } else { "serial" }
    );
    println!("| round | unpaid tokens/s | metered tokens/s | ratio | pauses (need-voucher) |");
    println!("|---|---:|---:|---:|---:|");
    let stream_clients = keep_alive_clients(STREAMS);
    let post_clients = keep_alive_clients(STREAMS);
    let mut ratios = Vec::new();
    // Per round: every channel streams `tokens` more; vouchers continue from the last amount.
    let mut carried: Vec<Channel> = channels;
    let mut warm = true;
    for round in 0..=rounds {
        let round_tokens = if warm { tokens / 10 } else { tokens };
        // Unpaid.
        let started = Instant::now();
        let tasks: Vec<_> = (0..STREAMS)
            .map(|i| {
                tokio::spawn(read_free_stream(
                    stream_clients[i].clone(),
                    format!("{base}/free-stream?tokens={round_tokens}"),
                    round_tokens,
                ))
            })
            .collect();
        let mut free_total = 0;
        for t in tasks {
            free_total += t.await.expect("task");
        }
        let free_rate = free_total as f64 / started.elapsed().as_secs_f64();
        // Metered.
        let started = Instant::now();
        let tasks: Vec<_> = carried
            .drain(..)
            .enumerate()
            .map(|(i, mut channel)| {
                let challenge = challenge.clone();
                let sc = stream_clients[i].clone();
                let pc = post_clients[i].clone();
                let url = format!("{base}/stream-k{batch}?tokens={round_tokens}");
                tokio::spawn(async move {
                    let (messages, pauses) = read_metered_stream(
                        sc,
                        pc,
                        url,
                        &mut channel,
                        &challenge,
                        round_tokens,
                        pipelined,
                    )
                    .await;
                    (channel, messages, pauses)
                })
            })
            .collect();
        let (mut paid_total, mut paused) = (0, 0);
        for t in tasks {
            let (channel, messages, pauses) = t.await.expect("task");
            paid_total += messages;
            paused += pauses;
            carried.push(channel);
        }
        let paid_rate = paid_total as f64 / started.elapsed().as_secs_f64();
        if warm {
            warm = false;
            continue;
        }
        ratios.push(paid_rate / free_rate);
        println!(
            "| {round} | {free_rate:.0} | {paid_rate:.0} | {:.3}x | {paused} |",
            paid_rate / free_rate
        );
    }
    // Every stream ran to its receipt, so every reservation was given back: spent is exactly
    // the tokens served.
    let served = u128::from(tokens / 10) + rounds as u128 * u128::from(tokens);
    for c in &carried {
        let record = h.record(&c.id).expect("channel");
        assert_eq!(record.spent, served * PRICE, "spent is what was served");
        assert!(record.spent <= record.accepted_cumulative);
        assert!(record.accepted_cumulative <= record.deposit);
    }
    println!(
        "\nmean ratio {:.3}x",
        ratios.iter().sum::<f64>() / ratios.len() as f64
    );
}

/// POSTs vouchers for the amounts it receives, one at a time and in order, skipping to the
/// highest amount queued (a pipelined client: the reader does not wait for the POST).
async fn post_vouchers(
    post_client: reqwest::Client,
    url: String,
    channel: Channel,
    challenge: Challenge,
    mut amounts: tokio::sync::mpsc::UnboundedReceiver<u128>,
) {
    let mut posted = 0;
    while let Some(mut amount) = amounts.recv().await {
        while let Ok(more) = amounts.try_recv() {
            amount = amount.max(more);
        }
        if amount <= posted {
            continue;
        }
        let post = post_client
            .post(&url)
            .header("authorization", channel.voucher(&challenge, amount))
            .send()
            .await
            .expect("voucher post");
        assert_eq!(post.status(), 204);
        posted = amount;
    }
}

/// Sends vouchers for a stream: awaited inline (serial) or through a [`post_vouchers`] task.
struct Poster {
    post_client: reqwest::Client,
    url: String,
    queue: Option<tokio::sync::mpsc::UnboundedSender<u128>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Poster {
    fn new(
        post_client: reqwest::Client,
        url: &str,
        channel: &Channel,
        challenge: &Challenge,
        pipelined: bool,
    ) -> Self {
        let (queue, task) = if pipelined {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let task = tokio::spawn(post_vouchers(
                post_client.clone(),
                url.to_owned(),
                channel.clone(),
                challenge.clone(),
                rx,
            ));
            (Some(tx), Some(task))
        } else {
            (None, None)
        };
        Self {
            post_client,
            url: url.to_owned(),
            queue,
            task,
        }
    }

    async fn post(&self, channel: &Channel, challenge: &Challenge, amount: u128) {
        match &self.queue {
            Some(queue) => queue.send(amount).expect("poster task runs"),
            None => {
                let post = self
                    .post_client
                    .post(&self.url)
                    .header("authorization", channel.voucher(challenge, amount))
                    .send()
                    .await
                    .expect("voucher post");
                assert_eq!(post.status(), 204);
            }
        }
    }

    async fn finish(mut self) {
        drop(self.queue.take());
        if let Some(task) = self.task.take() {
            task.await.expect("poster task");
        }
    }
}

/// Reads a metered stream of `tokens` to its end, POSTing a voucher every `N` tokens read,
/// `N` units ahead (awaiting each POST before reading on, or, `pipelined`, from a separate task
/// while reading on). Vouchers are cumulative over the channel's life, so the stream's amounts
/// start at `channel.next` (what earlier streams were paid); leaves `channel.next` at the new
/// accepted amount. Returns the message events and the pauses (need-voucher events).
async fn read_metered_stream(
    stream_client: reqwest::Client,
    post_client: reqwest::Client,
    url: String,
    channel: &mut Channel,
    challenge: &Challenge,
    tokens: u32,
    pipelined: bool,
) -> (u64, u64) {
    let poster = Poster::new(post_client, &url, channel, challenge, pipelined);
    let offset = channel.next;
    let total = offset + u128::from(tokens) * PRICE;
    let mut next = (offset + 2 * N * PRICE).min(total).max(offset + PRICE);
    let response = stream_client
        .get(&url)
        .header("authorization", channel.voucher(challenge, next))
        .send()
        .await
        .expect("stream");
    let status = response.status();
    assert_eq!(status, 200, "{url}");
    let mut response = response;
    let mut buffer = String::new();
    let (mut messages, mut pauses) = (0u64, 0u64);
    let mut receipt = false;
    while let Some(chunk) = response.chunk().await.expect("chunk") {
        buffer.push_str(std::str::from_utf8(&chunk).expect("utf-8"));
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            if event.starts_with("event: message\n") {
                messages += 1;
                if messages.is_multiple_of(N as u64) && next < total {
                    next = (next + N * PRICE).min(total);
                    poster.post(channel, challenge, next).await;
                }
            } else if event.starts_with("event: payment-need-voucher\n") {
                // The server ran ahead of what this client has read (socket buffers): answer
                // as an mppx client does, with a voucher N units past the required amount.
                pauses += 1;
                let data = event
                    .lines()
                    .find_map(|l| l.strip_prefix("data: "))
                    .expect("data line");
                let data: serde_json::Value = serde_json::from_str(data).expect("json");
                let required: u128 = data["requiredCumulative"]
                    .as_str()
                    .and_then(|r| r.parse().ok())
                    .expect("requiredCumulative");
                next = (required.max(next) + N * PRICE).min(total);
                poster.post(channel, challenge, next).await;
            } else if event.starts_with("event: payment-receipt\n") {
                receipt = true;
            } else {
                panic!("unexpected event {event:?}");
            }
        }
    }
    poster.finish().await;
    assert_eq!(messages, u64::from(tokens));
    assert!(receipt, "a paid stream ends with a receipt");
    channel.next = next;
    (messages, pauses)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let per_conn: usize = args
        .next()
        .map_or(300, |n| n.parse().expect("requests per connection"));
    let tokens: u32 = args
        .next()
        .map_or(20_000, |n| n.parse().expect("tokens per stream"));
    let durability = match args.next().as_deref() {
        None | Some("group") => Durability::default(),
        Some("none") => Durability::None,
        Some(other) => panic!("durability is `group` or `none`, not {other:?}"),
    };
    let batches: Vec<u64> = args.next().map_or_else(
        || vec![1],
        |list| {
            list.split(',')
                .map(|k| k.parse().expect("charge batch sizes: K[,K...], each >= 1"))
                .collect()
        },
    );
    assert!(
        !batches.is_empty() && batches.len() <= 8 && batches.iter().all(|&k| k >= 1),
        "one to eight charge batch sizes, each >= 1"
    );
    let pipelined = match args.next().as_deref() {
        None | Some("serial") => false,
        Some("pipelined") => true,
        Some(other) => panic!("voucher POSTs are `serial` or `pipelined`, not {other:?}"),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let sled = SledStore::open(dir.path().join("db"), durability).expect("sled");
        let h = Harness::start_with(sled, |config| {
            // As http_overhead: chain facts re-read hourly, challenges valid for the whole run,
            // so the run measures the layer and the store.
            config.chain_state_ttl = Duration::from_secs(3600);
            config.challenge_ttl = Duration::from_secs(3600);
        })
        .await;
        let mut stream_price = RoutePrice::new(PRICE, "llm_token");
        stream_price.route_id = Some("stream".into());
        let stream_route = h.engine.route(stream_price).expect("stream route");
        let mut app = Router::new()
            .route("/paid", get(content))
            .route_layer(PaymentLayer::new(Arc::clone(&h.engine), h.route.clone()))
            .route("/free", get(content))
            .route("/free-stream", get(free_stream));
        // One metered route per batch size: `/stream-k{K}`.
        for &k in &batches {
            app = app.merge(
                Router::new()
                    .route(
                        &format!("/stream-k{k}"),
                        get(metered_stream).post(metered_stream),
                    )
                    .route_layer(
                        PaymentLayer::metered(Arc::clone(&h.engine), stream_route.clone())
                            .charge_batch(k),
                    ),
            );
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        println!(
            "load_p3_p6: sled ({durability:?}), anvil, loopback, client and server on one 2-worker tokio runtime"
        );
        if per_conn > 0 {
            p3(&h, &base, per_conn).await;
        }
        for (i, &k) in batches.iter().enumerate() {
            let salt_base = 100 + 8 * u8::try_from(i).expect("at most 8 batch sizes");
            p6(&h, &stream_route, &base, tokens, k, salt_base, pipelined).await;
        }
    });
}
