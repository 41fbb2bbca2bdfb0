//! The hasher of every hash table in the engine, keyed by one seed.
//!
//! A hash table's iteration order follows its hasher's key. The engine
//! iterates some tables where the order reaches the wire (retained
//! messages matching a new subscription, connections closed on shutdown,
//! storage operations of a session), so every table the engine builds
//! takes its key from [`crate::broker::Config::random_seed`]: the same
//! seed and the same inputs give byte-identical outputs. A runtime seeds
//! it from the operating system, which keeps the tables' protection
//! against chosen colliding keys (hash flooding).

use core::hash::BuildHasher;

/// A [`BuildHasher`] (foldhash) keyed by a seed. [`Default`] is the key
/// of seed 0.
#[derive(Clone, Debug, Default)]
pub struct SeededState(foldhash::fast::FixedState);

impl SeededState {
    /// The hasher keyed by `seed`.
    pub fn new(seed: u64) -> SeededState {
        SeededState(foldhash::fast::FixedState::with_seed(seed))
    }
}

impl BuildHasher for SeededState {
    type Hasher = foldhash::fast::FoldHasher<'static>;

    fn build_hasher(&self) -> Self::Hasher {
        self.0.build_hasher()
    }
}

/// A hash map keyed by a [`SeededState`].
pub(crate) type Map<K, V> = hashbrown::HashMap<K, V, SeededState>;
/// A hash set keyed by a [`SeededState`].
pub(crate) type Set<K> = hashbrown::HashSet<K, SeededState>;
