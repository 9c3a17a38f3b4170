//! sled-only behaviour: restarts, recovery of the feed, corruption and format checks, locking.

use std::collections::BTreeMap;

use alloy_primitives::{Address, B256};
use sluice_engine::{
    feed::{FeedCursor, FeedEntry},
    store::{
        AuxEntry, BackendErrorKind, Change, ChannelId, ChannelRecord, ChannelStatus, ChannelStore,
        Durability, RecordError, SIGNATURE_LEN, SledStore, StoreError,
    },
};

fn channel(n: u8) -> ChannelId {
    B256::repeat_byte(n)
}

fn signature_for(amount: u128) -> [u8; SIGNATURE_LEN] {
    let mut signature = [0u8; SIGNATURE_LEN];
    signature[..16].copy_from_slice(&amount.to_be_bytes());
    signature[64] = 28;
    signature
}

fn create(store: &SledStore, id: ChannelId, deposit: u128) {
    store
        .update(&id, |_| -> Result<_, StoreError> {
            let mut record = ChannelRecord::new(id);
            record.status = ChannelStatus::Open;
            record.payee = Address::repeat_byte(0xbb);
            record.deposit = deposit;
            Ok(Change::write(record, ()))
        })
        .expect("create");
}

fn accept(store: &SledStore, id: ChannelId, amount: u128) -> ChannelRecord {
    store
        .update(&id, |record| -> Result<_, StoreError> {
            let mut next = *record.expect("exists");
            next.accepted_cumulative = amount;
            next.accepted_signature = signature_for(amount);
            Ok(Change::write(next, ()))
        })
        .expect("accept")
        .record
        .expect("record")
}

fn charge(store: &SledStore, id: ChannelId, cost: u128, key: &str) -> ChannelRecord {
    store
        .apply(
            &id,
            Some(key.as_bytes()),
            |current| -> Result<_, StoreError> {
                let mut next = *current.record.expect("exists");
                next.spent += cost;
                next.units += 1;
                let outcome = AuxEntry {
                    value: next.spent.to_be_bytes().to_vec(),
                    expires_at_ms: 77,
                };
                Ok(Change::write(next, ()).with_aux(key.as_bytes().to_vec(), outcome))
            },
        )
        .expect("charge")
        .wait()
        .expect("durable")
        .record
        .expect("record")
}

fn read_all(store: &SledStore) -> Vec<FeedEntry> {
    let mut entries = Vec::new();
    let mut cursor = FeedCursor::ZERO;
    loop {
        let page = store.read_feed(cursor, 3).expect("read feed");
        if page.entries.is_empty() {
            return entries;
        }
        cursor = page.next;
        entries.extend(page.entries);
    }
}

fn restart_recovers_acknowledged_updates(durability: Durability) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("db");
    let mut expected = BTreeMap::new();
    let max_cursor;
    {
        let store = SledStore::open(&path, durability).expect("open");
        for n in 1..=12u8 {
            create(&store, channel(n), 10_000);
        }
        for round in 1..=5u128 {
            for n in 1..=12u8 {
                if u128::from(n) % round == 0 {
                    accept(&store, channel(n), round * 100 + u128::from(n));
                    charge(&store, channel(n), round, &format!("{n}-{round}"));
                }
            }
        }
        for n in 1..=12u8 {
            expected.insert(
                channel(n),
                store.get(&channel(n)).expect("get").expect("record"),
            );
        }
        max_cursor = expected
            .values()
            .map(|r| r.feed_cursor)
            .max()
            .expect("channels");
        assert_eq!(read_all(&store).len(), 12);
    }
    let store = SledStore::open(&path, durability).expect("reopen");
    assert_eq!(store.len().expect("len"), 12);
    for (id, record) in &expected {
        assert_eq!(
            store.get(id).expect("get").as_ref(),
            Some(record),
            "channel {id}"
        );
    }
    for round in 1..=5u128 {
        for n in 1..=12u8 {
            if u128::from(n) % round == 0 {
                let aux = store
                    .get_aux(format!("{n}-{round}").as_bytes())
                    .expect("aux");
                assert!(
                    aux.is_some_and(|aux| aux.expires_at_ms == 77),
                    "aux {n}-{round}"
                );
            }
        }
    }
    let feed = read_all(&store);
    assert_eq!(feed.len(), 12, "one feed entry per channel after restart");
    for entry in &feed {
        let record = &expected[&entry.channel_id];
        assert_eq!(entry.cumulative_amount, record.accepted_cumulative);
        assert_eq!(entry.cursor.get(), record.feed_cursor);
    }
    // Cursors continue above everything handed out before the restart.
    let raised = accept(&store, channel(1), 9_999);
    assert!(raised.feed_cursor > max_cursor);
    assert_eq!(
        store
            .read_feed(FeedCursor::new(max_cursor), 10)
            .expect("read")
            .entries
            .len(),
        1
    );
}

#[test]
fn restart_recovers_acknowledged_updates_with_group_commit() {
    restart_recovers_acknowledged_updates(Durability::default());
}

#[test]
fn restart_recovers_acknowledged_updates_with_per_request_flush() {
    restart_recovers_acknowledged_updates(Durability::PerRequest);
}

#[test]
fn clean_close_persists_even_without_flushes() {
    restart_recovers_acknowledged_updates(Durability::None);
}

#[test]
fn a_second_open_of_the_same_database_fails_with_a_typed_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("db");
    let store = SledStore::open(&path, Durability::default()).expect("open");
    create(&store, channel(1), 5);
    let error = SledStore::open(&path, Durability::default()).unwrap_err();
    assert!(
        matches!(
            error,
            StoreError::Backend {
                kind: BackendErrorKind::Io(_),
                ..
            }
        ),
        "{error:?}"
    );
    drop(store);
    let reopened = SledStore::open(&path, Durability::default()).expect("reopen after drop");
    assert!(reopened.get(&channel(1)).expect("get").is_some());
}

#[test]
fn corrupt_records_are_reported_and_never_overwritten() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("db");
    {
        let store = SledStore::open(&path, Durability::default()).expect("open");
        create(&store, channel(1), 100);
        create(&store, channel(2), 100);
        create(&store, channel(3), 100);
    }
    let mut future_version = ChannelRecord::new(channel(1)).to_bytes();
    future_version[0] = 9;
    let truncated = ChannelRecord::new(channel(2)).to_bytes()[..200].to_vec();
    {
        let raw = raw_open(&path);
        let channels = raw.open_tree("channels").expect("tree");
        channels
            .insert(channel(1).as_slice(), &future_version[..])
            .expect("insert");
        channels
            .insert(channel(2).as_slice(), truncated.clone())
            .expect("insert");
        // A record stored under another channel's key.
        channels
            .insert(
                channel(4).as_slice(),
                &ChannelRecord::new(channel(3)).to_bytes()[..],
            )
            .expect("insert");
        raw.flush().expect("flush");
    }
    let store = SledStore::open(&path, Durability::default()).expect("open despite corruption");
    let error = store.get(&channel(1)).unwrap_err();
    assert!(
        matches!(
            error,
            StoreError::CorruptRecord {
                source: RecordError::UnknownVersion { found: 9 },
                ..
            }
        ),
        "{error}"
    );
    let error = store.get(&channel(2)).unwrap_err();
    assert!(
        matches!(
            error,
            StoreError::CorruptRecord {
                source: RecordError::WrongLength {
                    expected: 292,
                    found: 200,
                    ..
                },
                ..
            }
        ),
        "{error}"
    );
    let error = store.get(&channel(4)).unwrap_err();
    assert!(
        matches!(error, StoreError::ChannelMismatch { .. }),
        "{error}"
    );
    // An update of a corrupt channel never reaches its closure and changes nothing.
    let error = store
        .update(&channel(1), |_| -> Result<Change<()>, StoreError> {
            panic!("the closure must not see a corrupt record")
        })
        .unwrap_err();
    assert!(matches!(error, StoreError::CorruptRecord { .. }), "{error}");
    assert!(
        store.scan(None, 10).is_err(),
        "a scan reports the corruption"
    );
    assert!(store.get(&channel(3)).expect("healthy channel").is_some());
    drop(store);
    let raw = raw_open(&path);
    let channels = raw.open_tree("channels").expect("tree");
    assert_eq!(
        channels
            .get(channel(1).as_slice())
            .expect("get")
            .expect("kept")
            .as_ref(),
        &future_version[..]
    );
    assert_eq!(
        channels
            .get(channel(2).as_slice())
            .expect("get")
            .expect("kept")
            .as_ref(),
        &truncated[..]
    );
}

#[test]
fn foreign_or_newer_databases_are_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let newer = dir.path().join("newer");
    drop(SledStore::open(&newer, Durability::default()).expect("create"));
    {
        let raw = raw_open(&newer);
        raw.open_tree("meta")
            .expect("meta")
            .insert(b"format", &b"sluice-channel-store/2"[..])
            .expect("insert");
        raw.flush().expect("flush");
    }
    let error = SledStore::open(&newer, Durability::default()).unwrap_err();
    assert!(
        matches!(&error, StoreError::UnsupportedFormat { found, .. } if found == "sluice-channel-store/2"),
        "{error}"
    );

    let foreign = dir.path().join("foreign");
    {
        let raw = raw_open(&foreign);
        raw.open_tree("channels")
            .expect("tree")
            .insert(b"someone else's", &b"data"[..])
            .expect("insert");
        raw.flush().expect("flush");
    }
    let error = SledStore::open(&foreign, Durability::default()).unwrap_err();
    assert!(
        matches!(error, StoreError::UnsupportedFormat { .. }),
        "{error}"
    );
}

#[test]
fn recovery_drops_feed_entries_a_crash_left_behind() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("db");
    let (old_cursor, current) = {
        let store = SledStore::open(&path, Durability::default()).expect("open");
        create(&store, channel(1), 1_000);
        let first = accept(&store, channel(1), 10);
        let second = accept(&store, channel(1), 20);
        (first.feed_cursor, second)
    };
    {
        // What a crash between the durable replacement and the removal of the old entry leaves.
        let mut stale = vec![1u8];
        stale.extend_from_slice(channel(1).as_slice());
        stale.extend_from_slice(&10u128.to_be_bytes());
        stale.extend_from_slice(&signature_for(10));
        stale.push(ChannelStatus::Open.to_byte());
        let raw = raw_open(&path);
        raw.open_tree("feed")
            .expect("feed")
            .insert(old_cursor.to_be_bytes(), stale)
            .expect("insert");
        raw.flush().expect("flush");
    }
    let store = SledStore::open(&path, Durability::default()).expect("reopen");
    let feed = read_all(&store);
    assert_eq!(feed.len(), 1, "{feed:?}");
    assert_eq!(feed[0].cumulative_amount, 20);
    assert_eq!(feed[0].cursor.get(), current.feed_cursor);
}

#[test]
fn size_on_disk_is_reported() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SledStore::open(dir.path().join("db"), Durability::default()).expect("open");
    for n in 1..=50u8 {
        create(&store, channel(n), 1);
    }
    store.sync().expect("sync");
    assert!(store.approximate_size_on_disk().expect("size") >= 50 * 292);
}

#[test]
fn recovery_drops_aux_entries_whose_record_write_was_lost() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("db");
    let record = {
        let store = SledStore::open(&path, Durability::default()).expect("open");
        create(&store, channel(1), 1_000);
        accept(&store, channel(1), 500);
        charge(&store, channel(1), 5, "committed")
    };
    assert_eq!(record.revision, 3);
    {
        // What a crash after an update's auxiliary write but before its record write leaves:
        // an entry tagged with the record revision that never became durable.
        let mut orphan = vec![1u8];
        orphan.extend_from_slice(channel(1).as_slice());
        orphan.extend_from_slice(&(record.revision + 1).to_be_bytes());
        orphan.extend_from_slice(&77u64.to_be_bytes());
        orphan.extend_from_slice(b"charged twice?");
        let raw = raw_open(&path);
        let mut index_key = 77u64.to_be_bytes().to_vec();
        index_key.extend_from_slice(b"orphan");
        raw.open_tree("aux_expiry")
            .expect("tree")
            .insert(index_key, &[][..])
            .expect("insert");
        raw.open_tree("aux")
            .expect("tree")
            .insert(b"orphan", orphan)
            .expect("insert");
        raw.flush().expect("flush");
    }
    let store = SledStore::open(&path, Durability::default()).expect("reopen");
    assert_eq!(
        store.get_aux(b"orphan").expect("aux"),
        None,
        "the orphan is gone"
    );
    assert!(
        store.get_aux(b"committed").expect("aux").is_some(),
        "committed entries stay"
    );
    // The next record write reaches the orphan's revision; the orphan must not come back.
    let next = charge(&store, channel(1), 1, "later");
    assert_eq!(next.revision, record.revision + 1);
    assert_eq!(store.get_aux(b"orphan").expect("aux"), None);
    // Its key is free again, and pruning finds nothing left over.
    charge(&store, channel(1), 1, "orphan");
    assert_eq!(
        store.prune_aux(78).expect("prune"),
        3,
        "committed, later and orphan"
    );
    drop(store);
    let raw = raw_open(&path);
    assert!(
        raw.open_tree("aux_expiry").expect("tree").is_empty(),
        "no dangling index keys"
    );
}

#[test]
fn a_keep_waits_for_the_write_it_observed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SledStore::open(dir.path().join("db"), Durability::default()).expect("open");
    create(&store, channel(1), 100);
    // A write whose caller has not waited yet: nothing asked the flusher to cover it.
    let write = store
        .update_pending(&channel(1), |record| -> Result<_, StoreError> {
            let mut next = *record.expect("exists");
            next.accepted_cumulative = 10;
            next.accepted_signature = signature_for(10);
            Ok(Change::write(next, ()))
        })
        .expect("write");
    // An idempotent retry of the same voucher changes nothing, but it observed that write, so
    // it must not be released before the write is durable.
    let retry = store
        .update_pending(&channel(1), |record| -> Result<_, StoreError> {
            assert_eq!(record.expect("exists").accepted_cumulative, 10);
            Ok(Change::keep(()))
        })
        .expect("retry");
    assert!(write.seq().is_some());
    assert_eq!(
        retry.seq(),
        write.seq(),
        "the retry waits for the observed write"
    );
    let retried = retry.wait().expect("durable");
    assert!(!retried.written);
    assert_eq!(
        write
            .wait()
            .expect("durable")
            .record
            .expect("record")
            .accepted_cumulative,
        10
    );
}

/// Opens the database with sled itself, behind the store's back. sled 0.34 may hold the
/// directory lock for a moment after the store's last handle is dropped (no event to await),
/// so this retries a held lock for up to 2 s, as `SledStore::open` does.
fn raw_open(path: &std::path::Path) -> sled::Db {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match sled::open(path) {
            Ok(db) => return db,
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(e) => panic!("raw open of {}: {e}", path.display()),
        }
    }
}
