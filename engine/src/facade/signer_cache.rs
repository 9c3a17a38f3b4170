//! A bounded cache of verified signer keys ([`SignerKey`]), shared by every channel a signer
//! signs for.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use alloy_primitives::Address;
use sluice_voucher::SignerKey;

/// Two generations of keys, the usual cheap approximation of LRU: lookups and inserts go to
/// the hot map; when it reaches half the capacity it becomes the cold map and the old cold map
/// is dropped. A key used since the last rotation survives the next one (a cold hit moves it
/// back to the hot map), so busy signers stay cached and the cache never holds more than
/// `capacity` keys. Every operation is O(1) under one short lock.
///
/// Keys are indexed by the signer's address, which the engine takes from the channel's chain
/// facts; a [`SignerKey`] can only exist for the address its key hashes to, so a cached key can
/// never vouch for another signer.
#[derive(Debug)]
pub(crate) struct SignerCache {
    generations: Mutex<Generations>,
    half: usize,
}

#[derive(Debug, Default)]
struct Generations {
    hot: HashMap<Address, Arc<SignerKey>>,
    cold: HashMap<Address, Arc<SignerKey>>,
}

impl SignerCache {
    /// A cache of at most `capacity` keys (0 disables caching).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            generations: Mutex::new(Generations::default()),
            half: capacity / 2,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generations> {
        // The maps are only ever left consistent (no user code runs under the lock).
        self.generations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The cached key of `signer`, if any.
    pub(crate) fn get(&self, signer: &Address) -> Option<Arc<SignerKey>> {
        if self.half == 0 {
            return None;
        }
        let mut generations = self.lock();
        if let Some(key) = generations.hot.get(signer) {
            return Some(Arc::clone(key));
        }
        let key = generations.cold.remove(signer)?;
        generations.put(*signer, Arc::clone(&key), self.half);
        Some(key)
    }

    /// Caches `key` under its own address.
    pub(crate) fn insert(&self, key: Arc<SignerKey>) {
        if self.half == 0 {
            return;
        }
        self.lock().put(key.address(), key, self.half);
    }

    /// The number of cached keys.
    pub(crate) fn len(&self) -> usize {
        let generations = self.lock();
        generations.hot.len() + generations.cold.len()
    }
}

impl Generations {
    fn put(&mut self, signer: Address, key: Arc<SignerKey>, half: usize) {
        self.hot.insert(signer, key);
        if self.hot.len() >= half {
            self.cold = std::mem::take(&mut self.hot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_voucher::{SigningKey, TableWidth, address_of};

    fn key(seed: u8) -> Arc<SignerKey> {
        let secret = SigningKey::from_slice(&[seed; 32]).expect("key");
        let address = address_of(secret.verifying_key());
        Arc::new(SignerKey::new(address, *secret.verifying_key(), TableWidth::Small).expect("own"))
    }

    #[test]
    fn the_cache_stays_bounded_and_keeps_recently_used_keys() {
        let cache = SignerCache::new(4);
        let keys: Vec<_> = (1..=9).map(key).collect();
        for k in &keys[..2] {
            cache.insert(Arc::clone(k));
        }
        // Touch key 0 after the rotation so it moves back to the hot map.
        assert!(cache.get(&keys[0].address()).is_some());
        for k in &keys[2..] {
            cache.insert(Arc::clone(k));
            assert!(cache.len() <= 4);
        }
        // The newest keys are there; an old untouched one is gone.
        assert!(cache.get(&keys[8].address()).is_some());
        assert!(cache.get(&keys[1].address()).is_none());
    }

    #[test]
    fn a_hit_returns_the_key_of_that_signer() {
        let cache = SignerCache::new(8);
        let (a, b) = (key(1), key(2));
        cache.insert(Arc::clone(&a));
        cache.insert(Arc::clone(&b));
        assert_eq!(
            cache.get(&a.address()).map(|k| k.address()),
            Some(a.address())
        );
        assert_eq!(
            cache.get(&b.address()).map(|k| k.address()),
            Some(b.address())
        );
        assert!(cache.get(&Address::repeat_byte(7)).is_none());
    }

    #[test]
    fn capacity_zero_caches_nothing() {
        let cache = SignerCache::new(0);
        let a = key(1);
        cache.insert(Arc::clone(&a));
        assert!(cache.get(&a.address()).is_none());
        assert_eq!(cache.len(), 0);
    }
}
