//! The per-pod tier: one table of TATs per policy, shared by every worker, sharded so workers
//! rarely wait on each other (one lock per decision), capped at `--rate-limit-max-keys`.
//! GCRA makes pruning exact: an entry whose TAT is not after now decides as an absent one.

use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::Instant;

use hashbrown::{DefaultHashBuilder, Equivalent, HashMap};

use super::gcra::{Decision, Policy};
use crate::http::client::ClientKey;

const SHARDS: usize = 16;
/// Entries looked at to pick one to evict when a shard is full of live ones.
const EVICTION_SAMPLE: usize = 8;
/// Least time between two sweeps of a full shard for expired entries (µs): a flood of new
/// addresses must not buy a walk over the whole shard per request.
const SWEEP_EVERY_US: u64 = 100_000;

/// What a per-pod table counts by: an address (IPv6 by /64), or a verified subject.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    Client(ClientKey),
    Subject(Box<str>),
}

/// A key borrowed from a request: looking one up allocates nothing.
#[derive(Debug, Clone, Copy, Hash)]
pub enum KeyRef<'a> {
    Client(ClientKey),
    Subject(&'a str),
}

impl Equivalent<Key> for KeyRef<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        match (self, key) {
            (Self::Client(a), Key::Client(b)) => a == b,
            (Self::Subject(a), Key::Subject(b)) => *a == &**b,
            _ => false,
        }
    }
}

impl From<&KeyRef<'_>> for Key {
    fn from(key: &KeyRef<'_>) -> Self {
        match *key {
            KeyRef::Client(c) => Self::Client(c),
            KeyRef::Subject(s) => Self::Subject(s.into()),
        }
    }
}

/// One shard: its keys' TATs, and when it was last swept for expired ones.
#[derive(Default)]
struct Shard {
    map: HashMap<Key, u64>,
    swept: u64,
}

/// One policy's TATs (µs since the table's start).
pub struct Table {
    policy: Policy,
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
    hasher: DefaultHashBuilder,
    start: Instant,
}

impl Table {
    /// A table of at most `max_keys` keys (rounded down to a multiple of the shard count).
    pub fn new(policy: Policy, max_keys: usize) -> Self {
        Self {
            policy,
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            per_shard: (max_keys / SHARDS).max(1),
            hasher: DefaultHashBuilder::default(),
            start: Instant::now(),
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Decides one request of `key` now.
    pub fn decide(&self, key: KeyRef<'_>) -> Decision {
        self.decide_at(key, self.now())
    }

    fn decide_at(&self, key: KeyRef<'_>, now: u64) -> Decision {
        let shard = &self.shards[self.hasher.hash_one(key) as usize % SHARDS];
        let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
        // A known key (the usual case) is looked up once and updated in place.
        if let Some(tat) = shard.map.get_mut(&key) {
            let (decision, next) = self.policy.decide(Some(*tat), now);
            if let Some(next) = next {
                *tat = next;
            }
            return decision;
        }
        let (decision, next) = self.policy.decide(None, now);
        if let Some(next) = next {
            if shard.map.len() >= self.per_shard {
                shard.make_room(now);
            }
            shard.map.entry_ref(&key).insert(next);
        }
        decision
    }

    /// Drops every entry that decides as an absent one; returns the keys left.
    pub fn prune(&self) -> usize {
        self.prune_at(self.now())
    }

    fn prune_at(&self, now: u64) -> usize {
        self.shards
            .iter()
            .map(|shard| {
                let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
                shard.map.retain(|_, tat| *tat > now);
                shard.swept = now;
                shard.map.len()
            })
            .sum()
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).map.len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Shard {
    /// Frees one place in a full shard: expired entries go (at most one sweep per
    /// `SWEEP_EVERY_US`); else the entry nearest to expiry of a small sample (an expired one
    /// when the sample has one; a live one's owner loses the least).
    fn make_room(&mut self, now: u64) {
        if now >= self.swept + SWEEP_EVERY_US {
            self.swept = now;
            let before = self.map.len();
            self.map.retain(|_, tat| *tat > now);
            if self.map.len() < before {
                return;
            }
        }
        let victim = self
            .map
            .iter()
            .take(EVICTION_SAMPLE)
            .min_by_key(|(_, tat)| **tat)
            .map(|(key, _)| key.clone());
        if let Some(victim) = victim {
            self.map.remove(&victim);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    use std::time::Duration;

    fn v4(n: u32) -> KeyRef<'static> {
        KeyRef::Client(ClientKey::of(IpAddr::V4(Ipv4Addr::from(n))))
    }

    #[test]
    fn each_key_has_its_own_quota() {
        let table = Table::new(Policy::new("ip", 3, Duration::from_secs(60), 3), 1000);
        for _ in 0..3 {
            assert!(table.decide_at(v4(1), 0).allowed);
        }
        assert!(!table.decide_at(v4(1), 0).allowed);
        assert!(table.decide_at(v4(2), 0).allowed);
        assert!(table.decide_at(KeyRef::Subject("alice"), 0).allowed);
        assert_eq!(table.len(), 3);
    }

    #[test]
    fn the_table_stays_at_its_cap_under_many_distinct_addresses() {
        let cap = 1024;
        let table = Table::new(Policy::new("ip", 10, Duration::from_secs(60), 10), cap);
        // Rotating IPv6 addresses over many /64s, all live (within the window).
        for i in 0..100_000u128 {
            let ip = Ipv6Addr::from((0x2001_0db8u128 << 96) | (i << 64) | i);
            let key = KeyRef::Client(ClientKey::of(IpAddr::V6(ip)));
            assert!(table.decide_at(key, i as u64).allowed);
            assert!(table.len() <= cap, "grew past the cap at {i}");
        }
        assert!(
            table.len() > cap / 2,
            "the table still holds the recent keys"
        );
        // Once every TAT has passed, pruning empties it.
        assert_eq!(table.prune_at(200_000_000), 0);
        assert!(table.is_empty());
    }

    #[test]
    fn expired_entries_make_room_before_live_ones_are_evicted() {
        let table = Table::new(Policy::new("ip", 1, Duration::from_secs(1), 1), 16);
        // One key per shard at most: fill with keys that expire at 1 s.
        for n in 0..200 {
            table.decide_at(v4(n), 0);
        }
        assert!(table.len() <= 16);
        // At 1 s every entry has expired: a new key replaces them, not a live one.
        assert!(table.decide_at(v4(1000), 1_000_000).allowed);
        assert!(table.len() <= 16);
        assert_eq!(table.prune_at(2_000_001), 0);
    }
}
