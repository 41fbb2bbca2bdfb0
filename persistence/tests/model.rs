//! Stores against the reference semantics, `Recovered::apply`.

mod common;

use common::{batches, normalise, reference};
use proptest::prelude::*;
use roost_persistence::{Durability, FjallStore, MemoryStore, Store};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn memory_store_matches_the_reference(batches in batches(40)) {
        let mut store = MemoryStore::new();
        for batch in &batches {
            store.apply(batch).unwrap();
        }
        store.commit().unwrap();
        prop_assert_eq!(normalise(store.recover().unwrap()), reference(&batches));
    }
}

proptest! {
    // Each case opens a database on disk: fewer of them.
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn fjall_store_matches_the_reference(
        batches in batches(40),
        commit_every in 1usize..8,
        periodic in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let durability = if periodic { Durability::Periodic } else { Durability::Sync };
        let mut store = FjallStore::open(dir.path(), durability).unwrap();
        for (i, batch) in batches.iter().enumerate() {
            store.apply(batch).unwrap();
            if i % commit_every == 0 {
                store.commit().unwrap();
            }
            // Staged batches are visible before they are committed.
            if i % 7 == 3 {
                prop_assert_eq!(store.recover().unwrap(), reference(&batches[..=i]));
            }
        }
        store.commit().unwrap();
        let expected = reference(&batches);
        prop_assert_eq!(store.recover().unwrap(), expected.clone());
        drop(store);
        let mut store = FjallStore::open(dir.path(), durability).unwrap();
        prop_assert_eq!(store.recover().unwrap(), expected.clone());
        // The reopened store goes on from where it was: session numbers
        // assigned after a restart do not collide with stored ones.
        let more = common::fixed_batches(10);
        for batch in &more {
            store.apply(batch).unwrap();
        }
        store.commit().unwrap();
        prop_assert_eq!(
            store.recover().unwrap(),
            reference(batches.iter().chain(&more))
        );
    }
}
