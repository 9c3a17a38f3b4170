use super::*;

const EXAMPLE: &str = include_str!("../../settle.example.toml");
/// A valid key (the first anvil account's); never a real secret.
const KEY: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

fn no_env() -> Vec<(String, String)> {
    Vec::new()
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn the_example_parses_and_validates() {
    let config = Config::parse(EXAMPLE, no_env()).expect("example config");
    assert_eq!(
        config.feed.as_ref().unwrap().url,
        "http://127.0.0.1:9090/feed"
    );
    assert_eq!(
        config.feed.as_ref().unwrap().token.file.as_deref(),
        Some(Path::new("/etc/sluice/feed-token"))
    );
    assert_eq!(config.chain.chain_id, 31337);
    assert_eq!(
        config.chain.escrow,
        "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512"
            .parse::<Address>()
            .unwrap()
    );
    let policy = config.policy_config();
    assert_eq!(policy.min_unsettled_amount, 1_000_000);
    assert_eq!(policy.max_gas_price, 100_000_000_000);
    assert_eq!(policy.batch_size, 50);
    assert_eq!(policy.items_per_batch(), 50);
    assert_eq!(config.service.listen, "127.0.0.1:9464".parse().unwrap());
}

#[test]
fn env_overrides_replace_values_of_any_depth() {
    let config = Config::parse(
        EXAMPLE,
        env(&[
            ("SLUICE_DAEMON_POLICY_BATCH_SIZE", "7"),
            ("SLUICE_DAEMON_CHAIN_RPC_URL", "http://node:8545"),
            (
                "SLUICE_DAEMON_POLICY_MIN_UNSETTLED_AMOUNT",
                "340282366920938463463374607431768211455",
            ),
            ("SLUICE_DAEMON_FEED_TOKEN__ENV", "FEED_TOKEN"),
            ("SLUICE_DAEMON_FEED_TOKEN__FILE", ""),
            (
                "SLUICE_DAEMON_CHAIN_ESCROW",
                "0x0000000000000000000000000000000000000001",
            ),
            ("UNRELATED", "x"),
        ]),
    );
    // An empty file path plus an env var is still two sources: refused.
    assert!(matches!(
        config,
        Err(ConfigError::SecretSourceAmbiguous {
            field: "feed.token"
        })
    ));

    let text = EXAMPLE.replace("file = \"/etc/sluice/feed-token\"", "");
    let config = Config::parse(
        &text,
        env(&[
            ("SLUICE_DAEMON_POLICY_BATCH_SIZE", "7"),
            ("SLUICE_DAEMON_CHAIN_RPC_URL", "http://node:8545"),
            (
                "SLUICE_DAEMON_POLICY_MIN_UNSETTLED_AMOUNT",
                "340282366920938463463374607431768211455",
            ),
            ("SLUICE_DAEMON_FEED_TOKEN__ENV", "FEED_TOKEN"),
            (
                "SLUICE_DAEMON_CHAIN_ESCROW",
                "0x0000000000000000000000000000000000000001",
            ),
        ]),
    )
    .expect("overridden config");
    assert_eq!(config.policy.batch_size, 7);
    assert_eq!(config.chain.rpc_url, "http://node:8545");
    assert_eq!(config.policy.min_unsettled_amount, Amount(u128::MAX));
    assert_eq!(
        config.feed.as_ref().unwrap().token.env.as_deref(),
        Some("FEED_TOKEN")
    );
    assert_eq!(config.chain.escrow, Address::with_last_byte(1));
}

#[test]
fn bad_overrides_are_typed_errors() {
    let bad_name = Config::parse(EXAMPLE, env(&[("SLUICE_DAEMON_POLICY", "1")]));
    assert!(matches!(bad_name, Err(ConfigError::OverrideName { .. })));
    let not_table = Config::parse(EXAMPLE, env(&[("SLUICE_DAEMON_FEED_URL__X", "1")]));
    assert!(matches!(
        not_table,
        Err(ConfigError::OverrideSection { .. })
    ));
    let wrong_type = Config::parse(EXAMPLE, env(&[("SLUICE_DAEMON_POLICY_BATCH_SIZE", "many")]));
    assert!(matches!(wrong_type, Err(ConfigError::Toml(_))));
}

#[test]
fn invalid_values_are_refused_naming_the_field() {
    let cases: &[(&str, &str, &str)] = &[
        ("batch_size = 50", "batch_size = 0", "policy.batch_size"),
        (
            "max_gas_per_batch = 3000000",
            "max_gas_per_batch = 60000",
            "policy.max_gas_per_batch",
        ),
        (
            "max_gas_per_batch = 3000000",
            "max_gas_per_batch = 40000000",
            "policy.max_gas_per_batch",
        ),
        (
            "gas_per_close = 80000",
            "gas_per_close = 4000000",
            "policy.gas_per_close",
        ),
        (
            "watchtower_margin_secs = 300",
            "watchtower_margin_secs = 900",
            "policy.watchtower_margin_secs",
        ),
        (
            "confirmations = 2",
            "confirmations = 0",
            "chain.confirmations",
        ),
        ("page_limit = 500", "page_limit = 1001", "feed.page_limit"),
        ("wait_ms = 10000", "wait_ms = 30001", "feed.wait_ms"),
        (
            "url = \"http://127.0.0.1:9090/feed\"",
            "url = \"ftp://x\"",
            "feed.url",
        ),
        (
            "url = \"http://127.0.0.1:9090/feed\"",
            "url = \"http://127.0.0.1:9090/\"",
            "feed.url",
        ),
        (
            "escrow = \"0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512\"",
            "escrow = \"0x0000000000000000000000000000000000000000\"",
            "chain.escrow",
        ),
        ("tick_secs = 15", "tick_secs = 0", "service.tick_secs"),
        ("# tick_ms = 250", "tick_ms = 5", "service.tick_ms"),
        ("log_range = 2000", "log_range = 0", "chain.log_range"),
        ("poll_ms = 1000", "poll_ms = 1", "chain.poll_ms"),
        (
            "replace_after_secs = 60",
            "replace_after_secs = 0",
            "chain.replace_after_secs",
        ),
        (
            "request_timeout_ms = 10000",
            "request_timeout_ms = 10",
            "chain.request_timeout_ms",
        ),
    ];
    for (from, to, field) in cases {
        assert!(EXAMPLE.contains(from), "{from}");
        let err = Config::parse(&EXAMPLE.replace(from, to), no_env()).unwrap_err();
        assert!(
            matches!(&err, ConfigError::Invalid { field: f, .. } if f == field),
            "{to}: {err}"
        );
    }
}

#[test]
fn the_tick_and_token_per_gas_keys() {
    let config = Config::parse(EXAMPLE, no_env()).unwrap();
    assert_eq!(config.service.tick(), std::time::Duration::from_secs(15));
    assert_eq!(config.policy.token_per_gas, Amount(0));
    let fast = Config::parse(
        &EXAMPLE.replace("# tick_ms = 250", "tick_ms = 250"),
        env(&[("SLUICE_DAEMON_POLICY_TOKEN_PER_GAS", "7")]),
    )
    .unwrap();
    assert_eq!(fast.service.tick(), std::time::Duration::from_millis(250));
    assert_eq!(fast.policy.token_per_gas, Amount(7));
    // Without the key the default is zero.
    let without = EXAMPLE.replace("token_per_gas = \"0\"", "");
    assert_eq!(
        Config::parse(&without, no_env())
            .unwrap()
            .policy
            .token_per_gas,
        Amount(0)
    );
}

#[test]
fn unknown_keys_and_bad_amounts_are_refused() {
    let unknown = EXAMPLE.replace("batch_size = 50", "batch_size = 50\nbatch_sise = 5");
    assert!(matches!(
        Config::parse(&unknown, no_env()),
        Err(ConfigError::Toml(_))
    ));
    for amount in [
        "\"01\"",
        "\"-1\"",
        "\"1e6\"",
        "\"\"",
        "\"340282366920938463463374607431768211456\"",
        "-5",
    ] {
        let text = EXAMPLE.replace("\"1000000\"", amount);
        assert!(
            matches!(Config::parse(&text, no_env()), Err(ConfigError::Toml(_))),
            "{amount}"
        );
    }
}

#[test]
fn secret_sources_need_exactly_one_place() {
    let both = EXAMPLE.replace(
        "file = \"/etc/sluice/payee.key\"",
        "file = \"/etc/sluice/payee.key\"\nenv = \"KEY\"",
    );
    assert!(matches!(
        Config::parse(&both, no_env()),
        Err(ConfigError::SecretSourceAmbiguous { field: "key" })
    ));
    let neither = EXAMPLE.replace("file = \"/etc/sluice/payee.key\"", "");
    assert!(matches!(
        Config::parse(&neither, no_env()),
        Err(ConfigError::SecretSourceAmbiguous { field: "key" })
    ));
}

#[test]
fn keys_load_from_a_file_and_never_print() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("payee.key");
    std::fs::write(&path, format!("{KEY}\n")).unwrap();
    let source = SecretSource {
        file: Some(path),
        env: None,
    };
    let key = source.load_key().expect("key");
    assert_eq!(key.to_bytes()[0], 0xac);
    assert_eq!(key.to_bytes()[31], 0x80);
    // Anvil's first account.
    assert_eq!(
        key.address().unwrap(),
        "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
            .parse::<Address>()
            .unwrap()
    );
    let printed = format!("{key:?} {:?}", Some(&key));
    assert!(
        !printed.to_ascii_lowercase().contains("ac0974"),
        "{printed}"
    );
    assert!(printed.contains("<redacted>"));

    let missing = SecretSource {
        file: Some(dir.path().join("absent")),
        env: None,
    };
    assert!(matches!(
        missing.load_key(),
        Err(ConfigError::ReadSecret {
            kind: std::io::ErrorKind::NotFound,
            ..
        })
    ));
    let unset = SecretSource {
        file: None,
        env: Some("SLUICE_DAEMON_TEST_SURELY_UNSET_VAR".into()),
    };
    assert!(matches!(
        unset.load_key(),
        Err(ConfigError::SecretEnvMissing { .. })
    ));
}

#[test]
fn malformed_keys_are_refused_without_echoing_them() {
    let order = "fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141";
    let below_order = "fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364140";
    assert!(SigningKey::parse(below_order).is_ok());
    assert!(SigningKey::parse(&KEY[2..]).is_ok());
    assert!(matches!(
        SigningKey::parse(order),
        Err(ConfigError::KeyOutOfRange)
    ));
    assert!(matches!(
        SigningKey::parse(&"0".repeat(64)),
        Err(ConfigError::KeyOutOfRange)
    ));
    for bad in [
        "",
        "0x",
        &KEY[..65],
        &format!("{KEY}00"),
        &KEY.replace('a', "g"),
        "0x+c0974",
    ] {
        let err = SigningKey::parse(bad).unwrap_err();
        assert!(matches!(err, ConfigError::KeyMalformed), "{bad}");
        assert!(!err.to_string().contains("ac0974"));
    }
}

#[test]
fn feed_tokens_follow_the_engines_rules_and_never_print() {
    let token = FeedToken::parse("A".repeat(32)).expect("token");
    assert_eq!(token.expose(), "A".repeat(32));
    assert_eq!(format!("{token:?}"), "FeedToken(<redacted>)");
    assert!(FeedToken::parse("a-._~+/=".repeat(4)).is_ok());
    for bad in [
        "A".repeat(31),
        "A".repeat(1025),
        format!("{} ", "A".repeat(32)),
        "é".repeat(20),
    ] {
        assert!(matches!(
            FeedToken::parse(bad),
            Err(ConfigError::TokenMalformed { .. })
        ));
    }
}

#[test]
fn a_bad_rpc_url_is_refused_without_echoing_its_api_key() {
    for url in [
        "wss://mainnet.example.org/ws/v3/0123456789abcdef",
        "mainnet.example.org/v3/0123456789abcdef",
    ] {
        let error = Config::parse(EXAMPLE, env(&[("SLUICE_DAEMON_CHAIN_RPC_URL", url)]))
            .expect_err("not http(s)");
        let shown = format!("{error} {error:?}");
        assert!(shown.contains("chain.rpc_url"), "{shown}");
        assert!(!shown.contains("0123456789abcdef"), "{shown}");
    }
}

#[test]
fn the_config_debug_holds_no_secret() {
    // The config only names where secrets are; loading them is a separate, explicit step.
    let config = Config::parse(EXAMPLE, no_env()).unwrap();
    let printed = format!("{config:?}");
    assert!(printed.contains("/etc/sluice/payee.key"));
}

/// The example with its `[feed]` section replaced by `feeds` (TOML text).
fn with_feeds(feeds: &str) -> String {
    let start = EXAMPLE.find("[feed]").unwrap();
    let end = EXAMPLE.find("[chain]").unwrap();
    format!("{}{feeds}\n{}", &EXAMPLE[..start], &EXAMPLE[end..])
}

const TWO_FEEDS: &str = r#"
[[feeds]]
name = "node-a"
url = "http://10.0.0.1:9090/feed"
token.file = "/etc/sluice/feed-token-a"

[[feeds]]
name = "node-b"
url = "http://10.0.0.2:9090/feed"
token.env = "FEED_TOKEN_B"
page_limit = 100
wait_ms = 2000
"#;

#[test]
fn the_single_feed_form_is_one_feed_named_default() {
    let config = Config::parse(EXAMPLE, no_env()).unwrap();
    let feeds = config.http_feeds();
    assert_eq!(feeds.len(), 1);
    assert_eq!(feeds[0].0, DEFAULT_FEED_NAME);
    assert_eq!(feeds[0].1.url, "http://127.0.0.1:9090/feed");
    let named = Config::parse(
        &EXAMPLE.replace("[feed]\n", "[feed]\nname = \"main\"\n"),
        no_env(),
    )
    .unwrap();
    assert_eq!(named.http_feeds()[0].0, "main");
}

#[test]
fn several_feeds_parse_with_their_names_and_defaults() {
    let config = Config::parse(&with_feeds(TWO_FEEDS), no_env()).expect("two feeds");
    assert!(config.feed.is_none());
    let feeds = config.http_feeds();
    let names: Vec<&str> = feeds.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["node-a", "node-b"]);
    assert_eq!(feeds[0].1.page_limit, 500, "default page limit");
    assert_eq!(feeds[0].1.wait_ms, 10_000, "default wait");
    assert_eq!(
        feeds[0].1.token.file.as_deref(),
        Some(Path::new("/etc/sluice/feed-token-a"))
    );
    assert_eq!(feeds[1].1.token.env.as_deref(), Some("FEED_TOKEN_B"));
    assert_eq!((feeds[1].1.page_limit, feeds[1].1.wait_ms), (100, 2000));
}

#[test]
fn feed_lists_are_validated_with_typed_errors() {
    let no_feeds = Config::parse(&with_feeds(""), no_env());
    assert!(
        matches!(no_feeds, Err(ConfigError::NoFeeds)),
        "{no_feeds:?}"
    );
    // An embedding provider brings its own feeds: none in the file is allowed there.
    let embedded = Config::parse_embedded(&with_feeds(""), no_env()).expect("embedded");
    assert!(embedded.http_feeds().is_empty());

    let both = Config::parse(&format!("{EXAMPLE}\n{TWO_FEEDS}"), no_env());
    assert!(matches!(both, Err(ConfigError::BothFeedForms)), "{both:?}");
    // The single form's overrides create `[feed]`: with a list, that is both forms.
    let override_with_list = Config::parse(
        &with_feeds(TWO_FEEDS),
        env(&[("SLUICE_DAEMON_FEED_URL", "http://x/feed")]),
    );
    assert!(matches!(
        override_with_list,
        Err(ConfigError::BothFeedForms)
    ));
    // The list is an array: a section override cannot reach into it.
    let into_list = Config::parse(
        &with_feeds(TWO_FEEDS),
        env(&[("SLUICE_DAEMON_FEEDS_URL", "http://x/feed")]),
    );
    assert!(matches!(
        into_list,
        Err(ConfigError::OverrideSection { .. })
    ));

    let same_name = TWO_FEEDS.replace("node-b", "node-a");
    let err = Config::parse(&with_feeds(&same_name), no_env()).unwrap_err();
    assert!(
        matches!(&err, ConfigError::DuplicateFeedName { name } if name == "node-a"),
        "{err}"
    );
    let same_url = TWO_FEEDS.replace("10.0.0.2", "10.0.0.1");
    let err = Config::parse(&with_feeds(&same_url), no_env()).unwrap_err();
    assert!(
        matches!(&err, ConfigError::DuplicateFeedUrl { url } if url == "http://10.0.0.1:9090/feed"),
        "{err}"
    );
    let unnamed = TWO_FEEDS.replace("name = \"node-b\"\n", "");
    let err = Config::parse(&with_feeds(&unnamed), no_env()).unwrap_err();
    assert!(
        matches!(err, ConfigError::FeedNameMissing { index: 1 }),
        "{err}"
    );
    for bad in ["", "node b", "nöde", &"x".repeat(65), "a/b"] {
        let renamed = TWO_FEEDS.replace("node-b", bad);
        let err = Config::parse(&with_feeds(&renamed), no_env()).unwrap_err();
        assert!(
            matches!(&err, ConfigError::FeedNameInvalid { .. }),
            "{bad:?}: {err}"
        );
    }
    for (from, to, field) in [
        ("wait_ms = 2000", "wait_ms = 30001", "feeds.wait_ms"),
        ("page_limit = 100", "page_limit = 0", "feeds.page_limit"),
        (
            "url = \"http://10.0.0.2:9090/feed\"",
            "url = \"file:///feed\"",
            "feeds.url",
        ),
    ] {
        let err = Config::parse(&with_feeds(&TWO_FEEDS.replace(from, to)), no_env()).unwrap_err();
        assert!(
            matches!(&err, ConfigError::Invalid { field: f, .. } if *f == field),
            "{to}: {err}"
        );
    }
    let two_places = TWO_FEEDS.replace(
        "token.env = \"FEED_TOKEN_B\"",
        "token = { env = \"FEED_TOKEN_B\", file = \"/etc/sluice/b\" }",
    );
    let err = Config::parse(&with_feeds(&two_places), no_env()).unwrap_err();
    assert!(
        matches!(
            err,
            ConfigError::SecretSourceAmbiguous {
                field: "feeds.token"
            }
        ),
        "{err}"
    );
}
