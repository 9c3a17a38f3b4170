use super::*;

fn id(n: u8) -> ChannelId {
    B256::repeat_byte(n)
}

fn voucher(amount: u128, sig: u8) -> Voucher {
    Voucher {
        amount,
        signature: [sig; SIGNATURE_LEN],
    }
}

fn submission(amount: u128, nonce: u64) -> Submission {
    Submission {
        kind: SubmissionKind::Settle,
        tx_hash: B256::repeat_byte(0xee),
        nonce,
        amount,
        submitted_at: 1_700_000_000,
    }
}

#[test]
fn a_fresh_database_starts_at_zero() {
    let dir = tempfile::tempdir().unwrap();
    let state = DaemonState::open(dir.path()).unwrap();
    assert_eq!(state.feed_cursor().unwrap(), 0);
    assert_eq!(state.last_block().unwrap(), 0);
    assert_eq!(state.voucher(&id(1)).unwrap(), None);
    assert_eq!(state.submission(&id(1)).unwrap(), None);
    assert!(state.submissions().unwrap().is_empty());
}

#[test]
fn everything_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut state = DaemonState::open(dir.path()).unwrap();
        state
            .apply_feed_page(&[(id(1), voucher(500, 1)), (id(2), voucher(70, 2))], 41)
            .unwrap();
        state.set_last_block(1234).unwrap();
        state.record_submission(&id(1), submission(500, 9)).unwrap();
        let close = Submission {
            kind: SubmissionKind::Close,
            ..submission(70, 10)
        };
        state.record_submission(&id(2), close).unwrap();
        state.clear_submission(&id(2)).unwrap();
    }
    let state = DaemonState::open(dir.path()).unwrap();
    assert_eq!(state.feed_cursor().unwrap(), 41);
    assert_eq!(state.last_block().unwrap(), 1234);
    assert_eq!(state.voucher(&id(1)).unwrap(), Some(voucher(500, 1)));
    assert_eq!(state.voucher(&id(2)).unwrap(), Some(voucher(70, 2)));
    assert_eq!(
        state.submissions().unwrap(),
        vec![(id(1), submission(500, 9))]
    );
    assert_eq!(state.submission(&id(2)).unwrap(), None);
}

#[test]
fn vouchers_only_grow_even_within_one_page() {
    let dir = tempfile::tempdir().unwrap();
    let mut state = DaemonState::open(dir.path()).unwrap();
    state
        .apply_feed_page(&[(id(1), voucher(500, 1))], 1)
        .unwrap();
    state
        .apply_feed_page(
            &[
                (id(1), voucher(400, 2)),
                (id(1), voucher(600, 3)),
                (id(1), voucher(550, 4)),
            ],
            2,
        )
        .unwrap();
    assert_eq!(state.voucher(&id(1)).unwrap(), Some(voucher(600, 3)));
    // An equal amount does not replace the stored signature either.
    state
        .apply_feed_page(&[(id(1), voucher(600, 5))], 3)
        .unwrap();
    assert_eq!(state.voucher(&id(1)).unwrap(), Some(voucher(600, 3)));
    assert_eq!(state.feed_cursor().unwrap(), 3);
}

#[test]
fn regressions_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut state = DaemonState::open(dir.path()).unwrap();
    state
        .apply_feed_page(&[(id(1), voucher(500, 1))], 10)
        .unwrap();
    state.set_last_block(100).unwrap();
    state.record_submission(&id(1), submission(500, 3)).unwrap();

    let err = state
        .apply_feed_page(&[(id(1), voucher(900, 2))], 9)
        .unwrap_err();
    assert!(matches!(
        err,
        StateError::CursorRegression {
            stored: 10,
            proposed: 9
        }
    ));
    assert_eq!(
        state.voucher(&id(1)).unwrap(),
        Some(voucher(500, 1)),
        "page not applied"
    );
    assert!(matches!(
        state.set_last_block(99),
        Err(StateError::BlockRegression {
            stored: 100,
            proposed: 99
        })
    ));
    assert!(matches!(
        state.record_submission(&id(1), submission(499, 4)),
        Err(StateError::SubmissionRegression {
            recorded: 500,
            proposed: 499,
            ..
        })
    ));
    assert_eq!(state.submission(&id(1)).unwrap(), Some(submission(500, 3)));
    assert_eq!(
        (state.feed_cursor().unwrap(), state.last_block().unwrap()),
        (10, 100)
    );

    // Same values again are fine (idempotent replays), as is a replacement at the same amount.
    state.apply_feed_page(&[], 10).unwrap();
    state.set_last_block(100).unwrap();
    let replacement = Submission {
        tx_hash: B256::repeat_byte(0xef),
        ..submission(500, 3)
    };
    state.record_submission(&id(1), replacement).unwrap();
    assert_eq!(state.submission(&id(1)).unwrap(), Some(replacement));
}

#[test]
fn corrupt_entries_and_foreign_formats_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    {
        let state = DaemonState::open(dir.path()).unwrap();
        state
            .tree
            .insert(key(PREFIX_VOUCHER, &id(1)), &[1u8, 2, 3][..])
            .unwrap();
        let mut bad_kind = encode_submission(&submission(5, 1));
        bad_kind[1] = 7;
        state
            .tree
            .insert(key(PREFIX_SUBMISSION, &id(2)), &bad_kind[..])
            .unwrap();
        state.tree.insert(KEY_CURSOR, &[0u8; 3][..]).unwrap();
        assert!(matches!(
            state.voucher(&id(1)),
            Err(StateError::Corrupt {
                what: "voucher",
                len: 3,
                ..
            })
        ));
        assert!(matches!(
            state.submission(&id(2)),
            Err(StateError::Corrupt {
                what: "submission",
                ..
            })
        ));
        assert!(matches!(
            state.submissions(),
            Err(StateError::Corrupt { .. })
        ));
        assert!(matches!(
            state.feed_cursor(),
            Err(StateError::Corrupt {
                what: "feed cursor",
                ..
            })
        ));
        state.tree.insert(KEY_FORMAT, &[2u8][..]).unwrap();
        state.flush().unwrap();
    }
    assert!(matches!(
        DaemonState::open(dir.path()),
        Err(StateError::Format {
            found: 2,
            supported: FORMAT
        })
    ));
}

#[test]
fn a_second_open_of_the_same_directory_fails() {
    let dir = tempfile::tempdir().unwrap();
    let _first = DaemonState::open(dir.path()).unwrap();
    assert!(matches!(
        DaemonState::open(dir.path()),
        Err(StateError::Db(_))
    ));
}

#[test]
fn codecs_round_trip() {
    let s = Submission {
        kind: SubmissionKind::Close,
        tx_hash: B256::repeat_byte(3),
        nonce: u64::MAX,
        amount: u128::MAX,
        submitted_at: 7,
    };
    assert_eq!(decode_submission(&encode_submission(&s)), Some(s));
    let v = voucher(u128::MAX, 0xab);
    assert_eq!(decode_voucher(&encode_voucher(&v)), Some(v));
}

fn entry(
    n: u8,
    cursor: u64,
    amount: u128,
    status: sluice_engine::store::ChannelStatus,
) -> sluice_engine::http::feed::FeedEntryDto {
    let page: sluice_engine::http::feed::FeedPageDto = serde_json::from_value(serde_json::json!({
        "entries": [{
            "cursor": cursor.to_string(),
            "channelId": id(n).to_string(),
            "cumulativeAmount": amount.to_string(),
            "signature": format!("0x{}", "11".repeat(65)),
            "status": match status {
                sluice_engine::store::ChannelStatus::Opening => "opening",
                sluice_engine::store::ChannelStatus::Open => "open",
                sluice_engine::store::ChannelStatus::Closing => "closing",
                sluice_engine::store::ChannelStatus::Closed => "closed",
            },
            "payer": Address::repeat_byte(1).to_string(),
            "payee": Address::repeat_byte(2).to_string(),
            "token": Address::repeat_byte(3).to_string(),
            "authorizedSigner": Address::ZERO.to_string(),
            "deposit": "1000",
            "settled": "10",
            "closeRequestedAt": 0
        }],
        "next": cursor.to_string()
    }))
    .unwrap();
    page.entries[0].clone()
}

#[test]
fn feed_entries_store_vouchers_engine_facts_and_the_cursor_together() {
    use sluice_engine::store::ChannelStatus;
    let dir = tempfile::tempdir().unwrap();
    {
        let mut state = DaemonState::open(dir.path()).unwrap();
        state
            .apply_feed_entries(&[entry(1, 5, 100, ChannelStatus::Open)], 5, 1_000)
            .unwrap();
        let facts = state.engine_facts(&id(1)).unwrap().unwrap();
        assert_eq!(facts.status, EngineStatus::Open);
        assert_eq!(facts.first_unsettled_at, 1_000);
        assert_eq!(facts.deposit, 1_000);
        // A later, lower entry (at-least-once delivery) keeps the voucher; the age stays.
        state
            .apply_feed_entries(&[entry(1, 7, 50, ChannelStatus::Closing)], 7, 2_000)
            .unwrap();
        assert_eq!(state.voucher(&id(1)).unwrap().unwrap().amount, 100);
        let facts = state.engine_facts(&id(1)).unwrap().unwrap();
        assert_eq!(facts.status, EngineStatus::Closing);
        assert_eq!(facts.first_unsettled_at, 1_000);
        // Going back is refused and changes nothing.
        let before = state.engine_channels().unwrap();
        assert!(matches!(
            state.apply_feed_entries(&[entry(2, 3, 9, ChannelStatus::Open)], 3, 3_000),
            Err(StateError::CursorRegression {
                stored: 7,
                proposed: 3
            })
        ));
        assert_eq!(state.engine_channels().unwrap(), before);
        // A settlement below the stored voucher (100) leaves a tail: its age restarts then.
        state.settlement_confirmed(&id(1), 60, 4_000).unwrap();
        let facts = state.engine_facts(&id(1)).unwrap().unwrap();
        assert_eq!(facts.first_unsettled_at, 4_000);
        // A settlement covering the voucher clears the age.
        state.settlement_confirmed(&id(1), 100, 5_000).unwrap();
    }
    let state = DaemonState::open(dir.path()).unwrap();
    assert_eq!(state.feed_cursor().unwrap(), 7);
    assert_eq!(
        state
            .engine_facts(&id(1))
            .unwrap()
            .unwrap()
            .first_unsettled_at,
        0
    );
    assert_eq!(state.engine_channels().unwrap().len(), 1);
}

#[test]
fn chain_facts_and_the_last_block_move_together_and_forward() {
    let dir = tempfile::tempdir().unwrap();
    let mut state = DaemonState::open(dir.path()).unwrap();
    let facts = ChainFacts {
        payer: Address::repeat_byte(1),
        salt: Some(B256::repeat_byte(9)),
        deposit: 500,
        settled: 200,
        close_requested_at: 77,
        ..ChainFacts::default()
    };
    state
        .apply_chain_facts(&[(id(1), facts)], Some(10))
        .unwrap();
    assert_eq!(state.chain_facts(&id(1)).unwrap(), Some(facts));
    assert_eq!(state.last_block().unwrap(), 10);
    let later = ChainFacts {
        finalized: true,
        salt: None,
        ..facts
    };
    assert!(matches!(
        state.apply_chain_facts(&[(id(1), later)], Some(9)),
        Err(StateError::BlockRegression {
            stored: 10,
            proposed: 9
        })
    ));
    assert_eq!(
        state.chain_facts(&id(1)).unwrap(),
        Some(facts),
        "nothing written"
    );
    state.apply_chain_facts(&[(id(1), later)], None).unwrap();
    assert_eq!(state.chain_facts(&id(1)).unwrap(), Some(later));
    assert_eq!(state.last_block().unwrap(), 10);
}

#[test]
fn transaction_records_survive_a_restart_and_finish_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let tx = TxRecord {
        nonce: 4,
        kind: TxKind::SettleBatch,
        channels: vec![(id(1), 100), (id(2), 200)],
        gas_limit: 90_000,
        attempts: vec![TxAttempt {
            hash: B256::repeat_byte(0xaa),
            max_fee_per_gas: 10,
            max_priority_fee_per_gas: 1,
            raw: Bytes::from_static(&[1, 2, 3]),
            sent_at: 5,
        }],
    };
    {
        let mut state = DaemonState::open(dir.path()).unwrap();
        state.record_tx(&tx).unwrap();
        assert_eq!(state.submission(&id(2)).unwrap().unwrap().amount, 200);
    }
    let mut state = DaemonState::open(dir.path()).unwrap();
    assert_eq!(state.txs().unwrap(), vec![tx.clone()]);
    assert_eq!(state.submission(&id(1)).unwrap().unwrap().nonce, 4);
    let settled = ChainFacts {
        settled: 100,
        ..ChainFacts::default()
    };
    state.finish_tx(&tx, &[(id(1), settled)]).unwrap();
    assert!(state.txs().unwrap().is_empty());
    assert_eq!(state.submission(&id(1)).unwrap(), None);
    assert_eq!(state.submission(&id(2)).unwrap(), None);
    assert_eq!(state.chain_facts(&id(1)).unwrap(), Some(settled));
    // A record without attempts is refused.
    let empty = TxRecord {
        attempts: Vec::new(),
        ..tx
    };
    assert!(matches!(
        state.record_tx(&empty),
        Err(StateError::Encode { nonce: 4, .. })
    ));
    state.record_refused(&id(3), 55).unwrap();
    assert_eq!(state.refused(&id(3)).unwrap(), Some(55));
}

#[test]
fn a_single_cursor_database_hands_its_cursor_to_the_first_feed() {
    use sluice_engine::store::ChannelStatus;
    let dir = tempfile::tempdir().unwrap();
    {
        // Written with the single-cursor API, as the daemon did before it followed several feeds.
        let mut state = DaemonState::open(dir.path()).unwrap();
        state
            .apply_feed_entries(&[entry(1, 42, 100, ChannelStatus::Open)], 42, 1_000)
            .unwrap();
        assert_eq!(state.feed_cursor().unwrap(), 42);
    }
    let mut state = DaemonState::open(dir.path()).unwrap();
    assert_eq!(state.feed_cursor_of("a").unwrap(), 0, "not adopted yet");
    assert_eq!(state.adopt_legacy_cursor("a").unwrap(), Some(42));
    assert_eq!(state.feed_cursor_of("a").unwrap(), 42);
    assert_eq!(state.feed_cursor_of("b").unwrap(), 0);
    assert_eq!(state.feed_cursor().unwrap(), 0, "the single cursor is gone");
    assert_eq!(
        state.adopt_legacy_cursor("b").unwrap(),
        None,
        "adopted once only"
    );
    assert_eq!(state.voucher(&id(1)).unwrap().unwrap().amount, 100);
    drop(state);
    let state = DaemonState::open(dir.path()).unwrap();
    assert_eq!(state.feed_cursor_of("a").unwrap(), 42, "durable");
    assert_eq!(state.feed_cursor_of("b").unwrap(), 0);
}

#[test]
fn each_feed_has_its_own_cursor_moved_with_its_entries() {
    use sluice_engine::store::ChannelStatus;
    let dir = tempfile::tempdir().unwrap();
    let mut state = DaemonState::open(dir.path()).unwrap();
    state
        .apply_feed_entries_from("a", &[entry(1, 5, 100, ChannelStatus::Open)], 5, 1_000)
        .unwrap();
    state
        .apply_feed_entries_from("b", &[entry(2, 3, 70, ChannelStatus::Open)], 3, 1_000)
        .unwrap();
    assert_eq!(state.feed_cursor_of("a").unwrap(), 5);
    assert_eq!(state.feed_cursor_of("b").unwrap(), 3);
    assert_eq!(state.channel_feeds(&id(1)).unwrap(), ["a"]);
    assert_eq!(state.channel_feeds(&id(2)).unwrap(), ["b"]);
    // Feed b's cursor 3 is behind a's 5, yet b moves on its own; b cannot go back.
    let before = state.engine_channels().unwrap();
    assert!(matches!(
        state.apply_feed_entries_from("b", &[entry(3, 2, 9, ChannelStatus::Open)], 2, 2_000),
        Err(StateError::CursorRegression {
            stored: 3,
            proposed: 2
        })
    ));
    assert_eq!(state.engine_channels().unwrap(), before, "nothing written");
    assert_eq!(state.channel_feeds(&id(3)).unwrap(), Vec::<String>::new());
    state
        .apply_feed_entries_from("b", &[entry(3, 9, 9, ChannelStatus::Open)], 9, 2_000)
        .unwrap();
    assert_eq!(
        (
            state.feed_cursor_of("a").unwrap(),
            state.feed_cursor_of("b").unwrap()
        ),
        (5, 9)
    );
}

#[test]
fn a_channel_two_feeds_deliver_keeps_the_highest_voucher_and_the_furthest_status() {
    use sluice_engine::store::ChannelStatus;
    let dir = tempfile::tempdir().unwrap();
    let mut state = DaemonState::open(dir.path()).unwrap();
    let mut closing = entry(1, 4, 300, ChannelStatus::Closing);
    closing.deposit = 2_000;
    closing.close_requested_at = 1_700;
    state
        .apply_feed_entries_from("a", &[closing], 4, 1_000)
        .unwrap();
    // Feed b knows the channel with a lower voucher, still open, a smaller deposit but a higher
    // settled amount.
    let mut open = entry(1, 9, 200, ChannelStatus::Open);
    open.settled = 150;
    state
        .apply_feed_entries_from("b", &[open], 9, 2_000)
        .unwrap();
    assert_eq!(state.voucher(&id(1)).unwrap().unwrap().amount, 300);
    let facts = state.engine_facts(&id(1)).unwrap().unwrap();
    assert_eq!(facts.status, EngineStatus::Closing, "closing wins");
    assert_eq!(facts.deposit, 2_000, "the higher deposit");
    assert_eq!(facts.settled, 150, "the higher settled amount");
    assert_eq!(facts.close_requested_at, 1_700);
    assert_eq!(facts.first_unsettled_at, 1_000, "the earlier age");
    assert_eq!(state.channel_feeds(&id(1)).unwrap(), ["a", "b"]);
    // A higher voucher from b is taken; a closed status from b wins over closing.
    state
        .apply_feed_entries_from("b", &[entry(1, 10, 400, ChannelStatus::Closed)], 10, 3_000)
        .unwrap();
    assert_eq!(state.voucher(&id(1)).unwrap().unwrap().amount, 400);
    assert_eq!(
        state.engine_facts(&id(1)).unwrap().unwrap().status,
        EngineStatus::Closed
    );
    // A later open entry from a cannot undo it.
    state
        .apply_feed_entries_from("a", &[entry(1, 6, 400, ChannelStatus::Open)], 6, 4_000)
        .unwrap();
    assert_eq!(
        state.engine_facts(&id(1)).unwrap().unwrap().status,
        EngineStatus::Closed
    );
}

#[test]
fn one_feed_alone_can_move_a_channel_back_to_open() {
    use sluice_engine::store::ChannelStatus;
    // A cancelled close request: the only node that knows the channel says open again.
    let dir = tempfile::tempdir().unwrap();
    let mut state = DaemonState::open(dir.path()).unwrap();
    state
        .apply_feed_entries_from("a", &[entry(1, 4, 300, ChannelStatus::Closing)], 4, 1_000)
        .unwrap();
    state
        .apply_feed_entries_from("a", &[entry(1, 5, 300, ChannelStatus::Open)], 5, 1_000)
        .unwrap();
    assert_eq!(
        state.engine_facts(&id(1)).unwrap().unwrap().status,
        EngineStatus::Open
    );
}
