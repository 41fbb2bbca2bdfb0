//! The broker's routing tables: subscriptions by filter, retained messages by
//! topic.
//!
//! Both are tries keyed by topic level. A [`SubscriptionTrie`] answers "who
//! wants this PUBLISH?": it holds filters and is queried with a topic name. A
//! [`TopicMap`] answers "which retained messages does this SUBSCRIBE see?": it
//! holds topic names and is queried with a filter.
//!
//! ```text
//!   SubscriptionTrie for  a/b, a/+, a/#, #        TopicMap for  a, a/b, $SYS/x
//!
//!        (root)─# ─► {#}                               (root)
//!          │                                          /      \
//!          a ─# ─► {a/#}                             a       $SYS
//!         / \                                        │         │
//!        b   +                                       b         x
//!   {a/b}     {a/+}
//! ```
//!
//! Costs do not depend on how many entries do not match: a lookup hashes one
//! level per step and only ever follows the exact child, the `+` child and
//! the `#` entries of each node it reaches.
//!
//! # Memory
//! - Node keys are [`Bytes`] slices of the filter or topic that created the
//!   node: no copy, but the node keeps that buffer alive. A filter or topic
//!   that shares a large packet buffer keeps the whole buffer alive while its
//!   node exists; callers that keep filters from big packets should copy them
//!   first.
//! - A node's children and subscribers are a small vector that turns into a
//!   hash table past [`SMALL_MAX`] entries and back below half of that, and
//!   every removal prunes the nodes it leaves empty, so memory follows the
//!   live entries rather than the history of churn.
//!
//! # Deep topics
//! Topic names and filters can have tens of thousands of levels. Nothing here
//! recurses over levels: lookups keep their pending branches on a small fixed
//! stack that spills to the heap only past [`STACK_INLINE`] pending branches
//! (never for ordinary topics), and dropping a node dismantles its subtree in a
//! loop.
//!
//! # Order and determinism
//! A [`SubscriptionTrie`] reports matches in an unspecified order. Given the
//! same hasher seed and the same sequence of operations the order is the
//! same on every run; the default hasher is randomly seeded, so pass a
//! seeded one through `with_hasher` where runs must be reproducible. A
//! [`TopicMap`] keeps each node's children sorted and reports matches in
//! topic order, which is what lets a walk over it stop and go on later
//! ([`TopicMap::walk_matches`]).

use super::{TopicFilter, TopicName};
use alloc::boxed::Box;
use alloc::collections::{BTreeMap, btree_map};
use alloc::vec::Vec;
use bytes::Bytes;
use core::borrow::Borrow;
use core::fmt;
use core::hash::{BuildHasher, Hash};
use core::mem;
use core::ops::Bound;
use hashbrown::{DefaultHashBuilder, HashTable, hash_table};

/// Entries a node keeps in a plain vector before switching to a hash table.
///
/// Most nodes have one child and one subscriber; a linear scan over a few
/// entries beats hashing and costs no table overhead.
pub const SMALL_MAX: usize = 8;

/// Pending branches a lookup holds inline before it spills to the heap.
pub const STACK_INLINE: usize = 16;

/// "No level left" as a position in a topic or filter.
const END: usize = usize::MAX;

/// The level of `s` that starts at byte `pos`, and the position of the next
/// level (or [`END`] if this is the last one).
fn level_at(s: &[u8], pos: usize) -> (&[u8], usize) {
    let rest = s.get(pos..).unwrap_or_default();
    match rest.iter().position(|&b| b == b'/') {
        Some(i) => (rest.get(..i).unwrap_or_default(), pos + i + 1),
        None => (rest, END),
    }
}

// ---------------------------------------------------------------------------
// CompactMap: a vector for a few entries, a hash table for many.

/// Pushes with capacities 1, 2, 4, 8 instead of `Vec`'s 4, 8: most nodes
/// hold a single child or subscriber, and four slots of a ~90-byte node per
/// node were measured as the largest part of a 1M-subscription trie.
fn push_small<T>(v: &mut Vec<T>, item: T) {
    if v.len() == v.capacity() {
        v.reserve_exact(v.len().max(1));
    }
    v.push(item);
}

/// A map that stays a vector while small. The hasher lives in the trie, not
/// here, so an empty map costs 24 bytes and no allocation.
enum CompactMap<Kk, Vv> {
    Small(Vec<(Kk, Vv)>),
    // Boxed so the enum is no larger than the vector variant.
    Large(Box<HashTable<(Kk, Vv)>>),
}

impl<Kk, Vv> Default for CompactMap<Kk, Vv> {
    fn default() -> Self {
        CompactMap::Small(Vec::new())
    }
}

impl<Kk: Hash + Eq, Vv> CompactMap<Kk, Vv> {
    fn get<Q, S>(&self, key: &Q, hasher: &S) -> Option<&Vv>
    where
        Kk: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        S: BuildHasher,
    {
        match self {
            CompactMap::Small(v) => v.iter().find(|(k, _)| k.borrow() == key).map(|(_, v)| v),
            CompactMap::Large(t) => t
                .find(hasher.hash_one(key), |(k, _)| k.borrow() == key)
                .map(|(_, v)| v),
        }
    }

    fn get_mut<Q, S>(&mut self, key: &Q, hasher: &S) -> Option<&mut Vv>
    where
        Kk: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        S: BuildHasher,
    {
        match self {
            CompactMap::Small(v) => v
                .iter_mut()
                .find(|(k, _)| k.borrow() == key)
                .map(|(_, v)| v),
            CompactMap::Large(t) => t
                .find_mut(hasher.hash_one(key), |(k, _)| k.borrow() == key)
                .map(|(_, v)| v),
        }
    }

    /// The value under `key`, inserting `make()` first if there is none.
    /// `make` builds the owned key too, so a lookup that finds the entry
    /// never clones a key.
    fn get_or_insert_with<Q, S>(
        &mut self,
        key: &Q,
        make: impl FnOnce() -> (Kk, Vv),
        hasher: &S,
    ) -> &mut Vv
    where
        Kk: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        S: BuildHasher,
    {
        if let CompactMap::Small(v) = self {
            if v.len() >= SMALL_MAX && !v.iter().any(|(k, _)| k.borrow() == key) {
                self.grow(hasher);
            }
        }
        match self {
            CompactMap::Small(v) => {
                let i = match v.iter().position(|(k, _)| k.borrow() == key) {
                    Some(i) => i,
                    None => {
                        push_small(v, make());
                        v.len() - 1
                    }
                };
                // `i` is the position just found, or the last after the
                // push: always in bounds, and no borrow-checker-friendly
                // form without an index exists (returning the `find`
                // borrow conditionally is NLL problem case #3).
                #[allow(clippy::indexing_slicing)]
                let entry = &mut v[i];
                &mut entry.1
            }
            CompactMap::Large(t) => {
                let hash = hasher.hash_one(key);
                let entry = t.entry(
                    hash,
                    |(k, _)| k.borrow() == key,
                    |(k, _)| hasher.hash_one(k),
                );
                &mut entry.or_insert_with(make).into_mut().1
            }
        }
    }

    /// Inserts or replaces; returns the value replaced.
    fn insert<S: BuildHasher>(&mut self, key: Kk, value: Vv, hasher: &S) -> Option<Vv> {
        if let Some(old) = self.get_mut(&key, hasher) {
            return Some(mem::replace(old, value));
        }
        if let CompactMap::Small(v) = self {
            if v.len() >= SMALL_MAX {
                self.grow(hasher);
            }
        }
        match self {
            CompactMap::Small(v) => push_small(v, (key, value)),
            CompactMap::Large(t) => {
                t.insert_unique(hasher.hash_one(&key), (key, value), |(k, _)| {
                    hasher.hash_one(k)
                });
            }
        }
        None
    }

    fn remove<Q, S>(&mut self, key: &Q, hasher: &S) -> Option<Vv>
    where
        Kk: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        S: BuildHasher,
    {
        let removed = match self {
            CompactMap::Small(v) => {
                let i = v.iter().position(|(k, _)| k.borrow() == key)?;
                // `remove`, not `swap_remove`: keeps insertion order, which
                // is what makes small sets report matches in the order they
                // subscribed.
                let (_, value) = v.remove(i);
                if v.is_empty() {
                    *v = Vec::new();
                } else if v.len() * 4 <= v.capacity() {
                    v.shrink_to_fit();
                }
                value
            }
            CompactMap::Large(t) => {
                let hash = hasher.hash_one(key);
                let Ok(entry) = t.find_entry(hash, |(k, _)| k.borrow() == key) else {
                    return None;
                };
                let ((_, value), _) = entry.remove();
                if t.len() <= SMALL_MAX / 2 {
                    self.shrink_to_small();
                } else if t.len() * 4 <= t.capacity() {
                    t.shrink_to_fit(|(k, _)| hasher.hash_one(k));
                }
                value
            }
        };
        Some(removed)
    }

    fn grow<S: BuildHasher>(&mut self, hasher: &S) {
        if let CompactMap::Small(v) = self {
            // Room for the entry being added and a few more, not twice
            // as many: a table for 9 to 14 entries has 16 slots, not 32,
            // and a node's child slot is ~90 bytes (a session's 10
            // subscriptions under one level measured 1.4 KB smaller).
            // Larger tables grow by doubling as usual.
            let mut t = HashTable::with_capacity(v.len() + 1);
            for (k, val) in v.drain(..) {
                t.insert_unique(hasher.hash_one(&k), (k, val), |(k, _)| hasher.hash_one(k));
            }
            *self = CompactMap::Large(Box::new(t));
        }
    }

    fn shrink_to_small(&mut self) {
        if let CompactMap::Large(t) = self {
            let mut v = Vec::with_capacity(t.len());
            v.extend(t.drain());
            *self = CompactMap::Small(v);
        }
    }
}

impl<Kk, Vv> CompactMap<Kk, Vv> {
    /// Moves every value out, leaving the map empty.
    fn take_values(&mut self) -> IntoValues<Kk, Vv> {
        match mem::take(self) {
            CompactMap::Small(v) => IntoValues::Small(v.into_iter()),
            CompactMap::Large(t) => IntoValues::Large(t.into_iter()),
        }
    }
}

impl<Kk, Vv> CompactMap<Kk, Vv> {
    fn len(&self) -> usize {
        match self {
            CompactMap::Small(v) => v.len(),
            CompactMap::Large(t) => t.len(),
        }
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn iter(&self) -> CompactIter<'_, Kk, Vv> {
        match self {
            CompactMap::Small(v) => CompactIter::Small(v.iter()),
            CompactMap::Large(t) => CompactIter::Large(t.iter()),
        }
    }
}

/// Borrowing iterator over a [`CompactMap`].
enum CompactIter<'a, Kk, Vv> {
    Small(core::slice::Iter<'a, (Kk, Vv)>),
    Large(hash_table::Iter<'a, (Kk, Vv)>),
}

impl<'a, Kk, Vv> Iterator for CompactIter<'a, Kk, Vv> {
    type Item = &'a (Kk, Vv);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            CompactIter::Small(i) => i.next(),
            CompactIter::Large(i) => i.next(),
        }
    }
}

/// Owning iterator over the values of a [`CompactMap`].
enum IntoValues<Kk, Vv> {
    Small(alloc::vec::IntoIter<(Kk, Vv)>),
    Large(hash_table::IntoIter<(Kk, Vv)>),
    /// From an [`OrderedMap`].
    Tree(btree_map::IntoValues<Kk, Vv>),
}

impl<Kk, Vv> Iterator for IntoValues<Kk, Vv> {
    type Item = Vv;

    fn next(&mut self) -> Option<Vv> {
        match self {
            IntoValues::Small(i) => i.next().map(|(_, v)| v),
            IntoValues::Large(i) => i.next().map(|(_, v)| v),
            IntoValues::Tree(i) => i.next(),
        }
    }
}

// ---------------------------------------------------------------------------
// OrderedMap: a sorted vector for a few entries, a B-tree for many.

/// The children of a [`TopicMap`] node, in key order: a walk can stop at
/// any topic and later go on from the next one after it, whatever was
/// inserted or removed in between (see [`TopicMap::walk_matches`]). A
/// hash table's order changes as it grows, a sorted map's does not.
enum OrderedMap<Vv> {
    /// Sorted by key.
    Small(Vec<(Bytes, Vv)>),
    // Boxed so the enum is no larger than the vector variant (24 bytes,
    // not 32, in every node).
    #[allow(clippy::box_collection)]
    Large(Box<BTreeMap<Bytes, Vv>>),
}

impl<Vv> Default for OrderedMap<Vv> {
    fn default() -> Self {
        OrderedMap::Small(Vec::new())
    }
}

impl<Vv> OrderedMap<Vv> {
    fn len(&self) -> usize {
        match self {
            OrderedMap::Small(v) => v.len(),
            OrderedMap::Large(t) => t.len(),
        }
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn get(&self, key: &[u8]) -> Option<&Vv> {
        match self {
            OrderedMap::Small(v) => v
                .binary_search_by(|(k, _)| k.as_ref().cmp(key))
                .ok()
                .and_then(|i| v.get(i))
                .map(|(_, v)| v),
            OrderedMap::Large(t) => t.get(key),
        }
    }

    fn get_mut(&mut self, key: &[u8]) -> Option<&mut Vv> {
        match self {
            OrderedMap::Small(v) => {
                let i = v.binary_search_by(|(k, _)| k.as_ref().cmp(key)).ok()?;
                v.get_mut(i).map(|(_, v)| v)
            }
            OrderedMap::Large(t) => t.get_mut(key),
        }
    }

    /// The value under `key`, inserting `make()` first if there is none
    /// (`make` builds the owned key too, as in [`CompactMap`]).
    fn get_or_insert_with(&mut self, key: &[u8], make: impl FnOnce() -> (Bytes, Vv)) -> &mut Vv {
        if let OrderedMap::Small(v) = self {
            if v.len() >= SMALL_MAX && v.binary_search_by(|(k, _)| k.as_ref().cmp(key)).is_err() {
                let t: BTreeMap<Bytes, Vv> = mem::take(v).into_iter().collect();
                *self = OrderedMap::Large(Box::new(t));
            }
        }
        match self {
            OrderedMap::Small(v) => {
                let i = match v.binary_search_by(|(k, _)| k.as_ref().cmp(key)) {
                    Ok(i) => i,
                    Err(i) => {
                        if v.len() == v.capacity() {
                            v.reserve_exact(v.len().max(1));
                        }
                        v.insert(i, make());
                        i
                    }
                };
                // `i` was just found or inserted at: always in bounds (as
                // in `CompactMap::get_or_insert_with`).
                #[allow(clippy::indexing_slicing)]
                let entry = &mut v[i];
                &mut entry.1
            }
            OrderedMap::Large(t) => {
                // One search: the key `make` builds is a slice of the
                // caller's bytes, cheaper than a second descent.
                let (k, value) = make();
                t.entry(k).or_insert(value)
            }
        }
    }

    fn remove(&mut self, key: &[u8]) -> Option<Vv> {
        match self {
            OrderedMap::Small(v) => {
                let i = v.binary_search_by(|(k, _)| k.as_ref().cmp(key)).ok()?;
                let (_, value) = v.remove(i);
                if v.is_empty() {
                    *v = Vec::new();
                } else if v.len() * 4 <= v.capacity() {
                    v.shrink_to_fit();
                }
                Some(value)
            }
            OrderedMap::Large(t) => {
                let value = t.remove(key)?;
                if t.len() <= SMALL_MAX / 2 {
                    let v: Vec<(Bytes, Vv)> = mem::take(&mut **t).into_iter().collect();
                    *self = OrderedMap::Small(v);
                }
                Some(value)
            }
        }
    }

    /// Every entry, in key order.
    fn iter(&self) -> OrderedIter<'_, Vv> {
        self.range(Bound::Unbounded)
    }

    /// The entries from `from` on, in key order.
    fn range(&self, from: Bound<&[u8]>) -> OrderedIter<'_, Vv> {
        match self {
            OrderedMap::Small(v) => {
                let start = match from {
                    Bound::Unbounded => 0,
                    Bound::Included(key) => v.partition_point(|(k, _)| k.as_ref() < key),
                    Bound::Excluded(key) => v.partition_point(|(k, _)| k.as_ref() <= key),
                };
                OrderedIter::Small(v.get(start..).unwrap_or_default().iter())
            }
            OrderedMap::Large(t) => {
                OrderedIter::Large(t.range::<[u8], _>((from, Bound::Unbounded)))
            }
        }
    }

    /// Moves every value out, leaving the map empty.
    fn take_values(&mut self) -> IntoValues<Bytes, Vv> {
        match mem::take(self) {
            OrderedMap::Small(v) => IntoValues::Small(v.into_iter()),
            OrderedMap::Large(t) => IntoValues::Tree((*t).into_values()),
        }
    }
}

/// Borrowing iterator over (part of) an [`OrderedMap`], in key order.
enum OrderedIter<'a, Vv> {
    Small(core::slice::Iter<'a, (Bytes, Vv)>),
    Large(btree_map::Range<'a, Bytes, Vv>),
    /// The one child an exact filter level can match, if any.
    One(Option<(&'a Bytes, &'a Vv)>),
}

impl<'a, Vv> Iterator for OrderedIter<'a, Vv> {
    type Item = (&'a Bytes, &'a Vv);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            OrderedIter::Small(i) => i.next().map(|(k, v)| (k, v)),
            OrderedIter::Large(i) => i.next(),
            OrderedIter::One(one) => one.take(),
        }
    }
}

// ---------------------------------------------------------------------------
// Shared machinery: a stack that lives on the call stack, iterative drop,
// filter steps.

/// A LIFO that holds [`STACK_INLINE`] items without allocating and spills the
/// rest to the heap, so lookups allocate nothing for ordinary topics yet
/// cannot overflow the call stack on pathological ones.
struct Stack<T> {
    inline: heapless::Vec<T, STACK_INLINE>,
    spill: Vec<T>,
}

impl<T> Stack<T> {
    fn new() -> Self {
        Stack {
            inline: heapless::Vec::new(),
            spill: Vec::new(),
        }
    }

    fn push(&mut self, item: T) {
        if let Err(item) = self.inline.push(item) {
            self.spill.push(item);
        }
    }

    fn pop(&mut self) -> Option<T> {
        // Items spill only once `inline` is full, so the spill holds the
        // newest ones.
        self.spill.pop().or_else(|| self.inline.pop())
    }
}

/// The children of a node, moved out of it.
type OwnedChildren<N> = core::iter::Chain<IntoValues<Bytes, N>, core::option::IntoIter<N>>;

/// A trie node whose subtree can be dropped without recursion.
trait Dismantle: Sized {
    /// Moves the node's children out, or `None` if it has none.
    fn take_children(&mut self) -> Option<OwnedChildren<Self>>;
}

/// Drops the subtree below `node` with a heap stack as deep as the subtree,
/// because the drop glue would recurse once per level and a filter or topic
/// can have tens of thousands of levels.
fn dismantle<N: Dismantle>(node: &mut N) {
    let Some(first) = node.take_children() else {
        return;
    };
    let mut stack = Vec::new();
    stack.push(first);
    while let Some(top) = stack.last_mut() {
        match top.next() {
            Some(mut child) => {
                if let Some(grandchildren) = child.take_children() {
                    stack.push(grandchildren);
                }
                // `child` drops here with no children left: no recursion.
            }
            None => {
                stack.pop();
            }
        }
    }
}

/// One level of a filter, as the subscription trie sees it.
enum Step<'a> {
    /// An exact level starting at byte `start` of the filter.
    Level { level: &'a [u8], start: usize },
    /// `+`.
    Plus,
    /// `#` (always the last level of a valid filter).
    Multi,
}

/// The levels of a filter as [`Step`]s.
struct Steps<'a> {
    filter: &'a [u8],
    pos: usize,
}

impl<'a> Steps<'a> {
    fn new(filter: &'a [u8]) -> Self {
        Steps { filter, pos: 0 }
    }
}

impl<'a> Iterator for Steps<'a> {
    type Item = Step<'a>;

    fn next(&mut self) -> Option<Step<'a>> {
        if self.pos == END {
            return None;
        }
        let start = self.pos;
        let (level, next) = level_at(self.filter, start);
        self.pos = next;
        Some(match level {
            b"+" => Step::Plus,
            b"#" => {
                // Validation puts `#` last; stopping here keeps a filter
                // built any other way consistent with `topic::matches`.
                self.pos = END;
                Step::Multi
            }
            _ => Step::Level { level, start },
        })
    }
}

// ---------------------------------------------------------------------------
// SubscriptionTrie

/// The routing table: topic filters to subscribers.
///
/// Each `(filter, key)` pair holds one value (a subscriber's options, say),
/// keyed by `K` (a session handle, say). [`for_each_match`] finds every pair
/// whose filter matches a topic name by the rules of MQTT section 4.7, at a
/// cost that grows with the topic's depth and the number of matches, not
/// with the number of subscriptions.
///
/// Filters are matched as written: strip a `$share/{name}/` prefix with
/// [`TopicFilter::shared`] and insert the inner filter, or the shared
/// subscription will only match topics that literally start with `$share`.
///
/// [`for_each_match`]: SubscriptionTrie::for_each_match
pub struct SubscriptionTrie<K, V, S = DefaultHashBuilder> {
    root: SubNode<K, V>,
    len: usize,
    hasher: S,
}

/// One level of the subscription trie: the filters that pass through it.
struct SubNode<K, V> {
    /// Exact next levels.
    children: CompactMap<Bytes, SubNode<K, V>>,
    /// Subscribers whose filter ends at this node.
    exact: CompactMap<K, V>,
    /// The wildcards below this node, boxed because most nodes have none:
    /// that keeps every node 24 bytes smaller (measured ~10% of a 1M trie).
    wild: Option<Box<Wild<K, V>>>,
}

/// The `+` and `#` below a node.
struct Wild<K, V> {
    /// The `+` next level; kept out of `children` so a lookup never hashes
    /// it and a topic level spelled `+` cannot collide with it.
    plus: Option<SubNode<K, V>>,
    /// Subscribers whose filter is the node's path followed by `/#` (or `#`
    /// alone at the root); `#` is always last, so it needs no node of its
    /// own.
    multi: CompactMap<K, V>,
}

impl<K, V> Default for SubNode<K, V> {
    fn default() -> Self {
        SubNode {
            children: CompactMap::default(),
            exact: CompactMap::default(),
            wild: None,
        }
    }
}

impl<K, V> SubNode<K, V> {
    fn plus(&self) -> Option<&Self> {
        self.wild.as_ref()?.plus.as_ref()
    }

    fn plus_mut(&mut self) -> Option<&mut Self> {
        self.wild.as_mut()?.plus.as_mut()
    }

    fn plus_or_insert(&mut self) -> &mut Self {
        let wild = self.wild.get_or_insert_with(|| {
            Box::new(Wild {
                plus: None,
                multi: CompactMap::default(),
            })
        });
        wild.plus.get_or_insert_with(SubNode::default)
    }

    fn multi_or_insert(&mut self) -> &mut CompactMap<K, V> {
        let wild = self.wild.get_or_insert_with(|| {
            Box::new(Wild {
                plus: None,
                multi: CompactMap::default(),
            })
        });
        &mut wild.multi
    }

    /// Frees the wildcard box once it holds nothing.
    fn tidy_wild(&mut self) {
        if self
            .wild
            .as_ref()
            .is_some_and(|w| w.plus.is_none() && w.multi.is_empty())
        {
            self.wild = None;
        }
    }

    fn has_entries(&self) -> bool {
        !self.exact.is_empty() || self.wild.as_ref().is_some_and(|w| !w.multi.is_empty())
    }

    fn child_count(&self) -> usize {
        self.children.len() + usize::from(self.plus().is_some())
    }

    fn is_empty(&self) -> bool {
        !self.has_entries() && self.child_count() == 0
    }
}

impl<K, V> Dismantle for SubNode<K, V> {
    fn take_children(&mut self) -> Option<OwnedChildren<Self>> {
        if self.child_count() == 0 {
            return None;
        }
        let plus = self.wild.take().and_then(|w| w.plus);
        Some(self.children.take_values().chain(plus))
    }
}

impl<K, V> Drop for SubNode<K, V> {
    fn drop(&mut self) {
        dismantle(self);
    }
}

impl<K, V> SubscriptionTrie<K, V> {
    /// An empty trie with the default (randomly seeded) hasher.
    pub fn new() -> Self {
        Self::with_hasher(DefaultHashBuilder::default())
    }
}

impl<K, V, S: Default> Default for SubscriptionTrie<K, V, S> {
    fn default() -> Self {
        Self::with_hasher(S::default())
    }
}

impl<K, V, S> fmt::Debug for SubscriptionTrie<K, V, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriptionTrie")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl<K, V, S> SubscriptionTrie<K, V, S> {
    /// An empty trie that hashes levels and keys with `hasher`. A seeded
    /// hasher makes the order of matches reproducible.
    pub fn with_hasher(hasher: S) -> Self {
        SubscriptionTrie {
            root: SubNode::default(),
            len: 0,
            hasher,
        }
    }

    /// The number of `(filter, key)` entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the trie holds no entries.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<K: Eq + Hash, V, S: BuildHasher> SubscriptionTrie<K, V, S> {
    /// Subscribes `key` to `filter` with `value`; returns the value it
    /// replaces if `key` was already subscribed to exactly this filter.
    ///
    /// New nodes keep slices of `filter`'s bytes as their keys (see the
    /// module's notes on memory).
    pub fn insert(&mut self, filter: &TopicFilter, key: K, value: V) -> Option<V> {
        let bytes = filter.as_mqtt_str().bytes();
        let hasher = &self.hasher;
        let mut node = &mut self.root;
        let mut multi = false;
        for step in Steps::new(bytes) {
            node = match step {
                Step::Level { level, start } => node.children.get_or_insert_with(
                    level,
                    || (bytes.slice(start..start + level.len()), SubNode::default()),
                    hasher,
                ),
                Step::Plus => node.plus_or_insert(),
                Step::Multi => {
                    multi = true;
                    break;
                }
            };
        }
        let set = if multi {
            node.multi_or_insert()
        } else {
            &mut node.exact
        };
        let old = set.insert(key, value, hasher);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// The value of `key`'s subscription to exactly `filter` (no wildcard
    /// matching: `a/+` finds the subscription to `a/+`, not to `a/b`).
    pub fn get(&self, filter: &TopicFilter, key: &K) -> Option<&V> {
        let mut node = &self.root;
        for step in Steps::new(filter.as_bytes()) {
            node = match step {
                Step::Level { level, .. } => node.children.get(level, &self.hasher)?,
                Step::Plus => node.plus()?,
                Step::Multi => return node.wild.as_ref()?.multi.get(key, &self.hasher),
            };
        }
        node.exact.get(key, &self.hasher)
    }

    /// Unsubscribes `key` from exactly `filter`; returns its value if it was
    /// subscribed. Nodes left without subscribers or children are freed.
    pub fn remove(&mut self, filter: &TopicFilter, key: &K) -> Option<V> {
        let filter = filter.as_bytes();
        let hasher = &self.hasher;
        let mut node = &mut self.root;
        let mut multi = false;
        for step in Steps::new(filter) {
            node = match step {
                Step::Level { level, .. } => node.children.get_mut(level, hasher)?,
                Step::Plus => node.plus_mut()?,
                Step::Multi => {
                    multi = true;
                    break;
                }
            };
        }
        let value = if multi {
            let value = node.wild.as_mut()?.multi.remove(key, hasher)?;
            node.tidy_wild();
            value
        } else {
            node.exact.remove(key, hasher)?
        };
        self.len -= 1;
        self.prune(filter);
        Some(value)
    }

    /// Frees the tail of `filter`'s path that holds nothing any more.
    ///
    /// Two walks down instead of one walk back up: nodes own their children
    /// and have no parent links, which keeps them small.
    fn prune(&mut self, filter: &[u8]) {
        let hasher = &self.hasher;
        // The deepest node of the path that must stay: the root, or one that
        // holds subscribers or branches off the path.
        let mut keep = 0;
        let mut depth = 0;
        let mut node = &self.root;
        for step in Steps::new(filter) {
            let next = match step {
                Step::Level { level, .. } => node.children.get(level, hasher),
                Step::Plus => node.plus(),
                Step::Multi => break,
            };
            let Some(next) = next else { return };
            if node.has_entries() || node.child_count() > 1 {
                keep = depth;
            }
            depth += 1;
            node = next;
        }
        if depth == 0 || !node.is_empty() {
            return;
        }
        let mut node = &mut self.root;
        for (i, step) in Steps::new(filter).enumerate() {
            if i == keep {
                match step {
                    Step::Level { level, .. } => {
                        node.children.remove(level, hasher);
                    }
                    Step::Plus => {
                        if let Some(wild) = &mut node.wild {
                            wild.plus = None;
                        }
                        node.tidy_wild();
                    }
                    Step::Multi => {}
                }
                return;
            }
            let next = match step {
                Step::Level { level, .. } => node.children.get_mut(level, hasher),
                Step::Plus => node.plus_mut(),
                Step::Multi => None,
            };
            let Some(next) = next else { return };
            node = next;
        }
    }

    /// Calls `f` once for every `(key, value)` whose filter matches `topic`;
    /// a key subscribed through several matching filters is visited once per
    /// filter. The order is unspecified.
    ///
    /// Costs one level lookup per topic level on each path that can still
    /// match (the exact child and the `+` child), plus one call per match.
    /// Allocates nothing unless more than [`STACK_INLINE`] `+` branches are
    /// pending at once.
    ///
    /// # DoS
    /// The nodes visited are the filter prefixes that match a prefix of the
    /// topic, so filters such as `+/+/+/x1`, `+/+/+/x2`, … cost a lookup each
    /// even when none matches. A per-client subscription limit bounds this,
    /// as it bounds the trie's memory. Level hashing uses the trie's hasher:
    /// keep it keyed by a secret seed so clients cannot choose colliding
    /// levels.
    pub fn for_each_match(&self, topic: &TopicName, mut f: impl FnMut(&K, &V)) {
        let t = topic.as_bytes();
        let hasher = &self.hasher;
        let mut stack: Stack<(&SubNode<K, V>, usize)> = Stack::new();

        let root = &self.root;
        let (level, next) = level_at(t, 0);
        // A filter starting with a wildcard does not match a topic starting
        // with `$` [MQTT-4.7.2-1]: skip the root's `#` and `+` for those.
        if let (false, Some(wild)) = (topic.is_dollar(), &root.wild) {
            wild.multi.iter().for_each(|(k, v)| f(k, v));
            if let Some(plus) = &wild.plus {
                stack.push((plus, next));
            }
        }
        if let Some(child) = root.children.get(level, hasher) {
            stack.push((child, next));
        }

        while let Some((mut node, mut pos)) = stack.pop() {
            // Follow the exact path in this loop; only `+` branches wait on
            // the stack.
            loop {
                let wild = node.wild.as_deref();
                // `a/#` matches `a` too, so `#` entries match whether or not
                // levels remain.
                if let Some(wild) = wild {
                    wild.multi.iter().for_each(|(k, v)| f(k, v));
                }
                if pos == END {
                    node.exact.iter().for_each(|(k, v)| f(k, v));
                    break;
                }
                let (level, next) = level_at(t, pos);
                if let Some(plus) = wild.and_then(|w| w.plus.as_ref()) {
                    stack.push((plus, next));
                }
                match node.children.get(level, hasher) {
                    Some(child) => {
                        node = child;
                        pos = next;
                    }
                    None => break,
                }
            }
        }
    }

    /// Nodes below the root.
    #[cfg(test)]
    fn node_count(&self) -> usize {
        self.nodes().len()
    }

    /// Nodes below the root that hold neither entries nor children, or that
    /// keep an empty wildcard box; pruning keeps this at zero.
    #[cfg(test)]
    fn empty_node_count(&self) -> usize {
        let empty_wild = |n: &SubNode<K, V>| {
            n.wild
                .as_ref()
                .is_some_and(|w| w.plus.is_none() && w.multi.is_empty())
        };
        let root = usize::from(empty_wild(&self.root));
        root + self
            .nodes()
            .iter()
            .filter(|n| n.is_empty() || empty_wild(n))
            .count()
    }

    #[cfg(test)]
    fn nodes(&self) -> Vec<&SubNode<K, V>> {
        let mut out = Vec::new();
        let mut todo = alloc::vec![&self.root];
        while let Some(n) = todo.pop() {
            let children = n.children.iter().map(|(_, c)| c).chain(n.plus());
            for c in children {
                out.push(c);
                todo.push(c);
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------
// TopicMap

/// Topic names to values, queried by filter: the retained-message store.
///
/// [`for_each_match`] visits the entries whose topic a filter matches, at a
/// cost that grows with the matches and with the subtrees that `+` and `#`
/// must walk, not with the size of the map. [`walk_matches`] does the same
/// a slice at a time: it stops where it is told to and goes on from there
/// later, across any inserts and removals in between.
///
/// Unlike [`SubscriptionTrie`], a node keeps its children in key order (a
/// sorted vector, a B-tree past [`SMALL_MAX`]), so matches come in topic
/// order: level by level, byte-wise, a topic before the topics below it
/// (`a` < `a/b` < `a/c` < `b`). The hasher is kept for the API, not used.
///
/// [`for_each_match`]: TopicMap::for_each_match
/// [`walk_matches`]: TopicMap::walk_matches
pub struct TopicMap<V, S = DefaultHashBuilder> {
    root: MapNode<V>,
    len: usize,
    #[allow(dead_code)]
    hasher: S,
}

/// One level of a [`TopicMap`].
struct MapNode<V> {
    children: OrderedMap<MapNode<V>>,
    /// The topic that ends here, boxed because most nodes are intermediate
    /// levels and should not pay for it.
    entry: Option<Box<(TopicName, V)>>,
}

impl<V> Default for MapNode<V> {
    fn default() -> Self {
        MapNode {
            children: OrderedMap::default(),
            entry: None,
        }
    }
}

impl<V> Dismantle for MapNode<V> {
    fn take_children(&mut self) -> Option<OwnedChildren<Self>> {
        if self.children.is_empty() {
            return None;
        }
        Some(self.children.take_values().chain(None))
    }
}

impl<V> Drop for MapNode<V> {
    fn drop(&mut self) {
        dismantle(self);
    }
}

/// Where a [`TopicMap::walk_matches`] stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Walked {
    /// Every match after the starting point was visited.
    Done,
    /// It stopped after this topic path (the levels of a topic, or of a
    /// level above topics, joined by `/`): pass it back as `after` to go on.
    After(Bytes),
}

/// The children of one node still to visit in a [`TopicMap`] walk.
struct WalkFrame<'a, V> {
    children: OrderedIter<'a, MapNode<V>>,
    /// Where in the filter the children are matched: a `#` level (they
    /// and everything below match), or the level after the one they
    /// matched (`END`: the filter ends at them).
    child_pos: usize,
    skip_dollar: bool,
    /// The level of the node these are the children of (`None`: the root).
    key: Option<&'a Bytes>,
}

impl<V> TopicMap<V> {
    /// An empty map with the default (randomly seeded) hasher.
    pub fn new() -> Self {
        Self::with_hasher(DefaultHashBuilder::default())
    }
}

impl<V, S: Default> Default for TopicMap<V, S> {
    fn default() -> Self {
        Self::with_hasher(S::default())
    }
}

impl<V, S> fmt::Debug for TopicMap<V, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TopicMap")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl<V, S> TopicMap<V, S> {
    /// An empty map. `hasher` is kept for the API only: the map is ordered.
    pub fn with_hasher(hasher: S) -> Self {
        TopicMap {
            root: MapNode::default(),
            len: 0,
            hasher,
        }
    }

    /// The number of topics in the map.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every `(topic, value)`, in topic order.
    pub fn iter(&self) -> Iter<'_, V> {
        Iter {
            stack: alloc::vec![self.root.children.iter()],
            remaining: self.len,
        }
    }

    /// Sets the value of `topic`; returns the value it replaces.
    ///
    /// New nodes keep slices of `topic`'s bytes as their keys (see the
    /// module's notes on memory).
    pub fn insert(&mut self, topic: &TopicName, value: V) -> Option<V> {
        let bytes = topic.bytes();
        let mut node = &mut self.root;
        let mut pos = 0;
        while pos != END {
            let start = pos;
            let (level, next) = level_at(bytes, start);
            node = node.children.get_or_insert_with(level, || {
                (bytes.slice(start..start + level.len()), MapNode::default())
            });
            pos = next;
        }
        match &mut node.entry {
            Some(entry) => Some(mem::replace(&mut entry.1, value)),
            None => {
                node.entry = Some(Box::new((topic.clone(), value)));
                self.len += 1;
                None
            }
        }
    }

    /// The value of `topic`.
    pub fn get(&self, topic: &TopicName) -> Option<&V> {
        let t = topic.as_bytes();
        let mut node = &self.root;
        let mut pos = 0;
        while pos != END {
            let (level, next) = level_at(t, pos);
            node = node.children.get(level)?;
            pos = next;
        }
        node.entry.as_ref().map(|e| &e.1)
    }

    /// Removes `topic`; returns its value. Nodes left empty are freed.
    pub fn remove(&mut self, topic: &TopicName) -> Option<V> {
        let t = topic.as_bytes();
        let mut node = &mut self.root;
        let mut pos = 0;
        while pos != END {
            let (level, next) = level_at(t, pos);
            node = node.children.get_mut(level)?;
            pos = next;
        }
        let (_, value) = *node.entry.take()?;
        self.len -= 1;
        self.prune(t);
        Some(value)
    }

    /// Frees the tail of `topic`'s path that holds nothing any more (see
    /// [`SubscriptionTrie::prune`]).
    fn prune(&mut self, topic: &[u8]) {
        let mut keep = 0;
        let mut depth = 0;
        let mut node = &self.root;
        let mut pos = 0;
        while pos != END {
            let (level, next) = level_at(topic, pos);
            let Some(child) = node.children.get(level) else {
                return;
            };
            if node.entry.is_some() || node.children.len() > 1 {
                keep = depth;
            }
            depth += 1;
            node = child;
            pos = next;
        }
        if node.entry.is_some() || !node.children.is_empty() {
            return;
        }
        let mut node = &mut self.root;
        let mut pos = 0;
        for i in 0.. {
            let (level, next) = level_at(topic, pos);
            if i == keep {
                node.children.remove(level);
                return;
            }
            let Some(child) = node.children.get_mut(level) else {
                return;
            };
            node = child;
            pos = next;
            if pos == END {
                return;
            }
        }
    }

    /// Calls `f` for every `(topic, value)` whose topic `filter` matches, by
    /// the rules of MQTT section 4.7; a filter that starts with `+` or `#`
    /// skips topics that start with `$` [MQTT-4.7.2-1]. Topics come in
    /// topic order (see [`TopicMap`]).
    ///
    /// Costs one lookup per exact level, plus a walk over the children at
    /// each `+` and the whole subtree under a `#`. Its stack of pending
    /// walks is as deep as the deepest topic visited.
    ///
    /// # DoS
    /// A `+` walks every child of its node whether or not anything below
    /// matches: `+/+/+/nothing` visits every three-level prefix in the map.
    /// [`TopicMap::walk_matches`] bounds that work per call.
    pub fn for_each_match(&self, filter: &TopicFilter, mut f: impl FnMut(&TopicName, &V)) {
        self.walk_matches(filter, None, usize::MAX, |t, v| {
            f(t, v);
            true
        });
    }

    /// [`TopicMap::for_each_match`] a slice at a time: visits, in topic
    /// order, the matches of `filter` whose topic comes after the path
    /// `after` (all of them for `None`), until `f` returns `false` (after
    /// that match) or `budget` nodes have been visited, and says where it
    /// stopped.
    ///
    /// Passing that point back as `after` goes on with the next topic,
    /// whatever was inserted or removed in between: a topic is never
    /// visited twice by one walk; one removed before the walk reaches it
    /// is not visited; one inserted behind the walk's position is not
    /// visited. Each call costs one lookup per level of `after`, plus the
    /// nodes it visits (at most `budget`).
    pub fn walk_matches(
        &self,
        filter: &TopicFilter,
        after: Option<&[u8]>,
        mut budget: usize,
        mut f: impl FnMut(&TopicName, &V) -> bool,
    ) -> Walked {
        let filter = filter.as_bytes();
        let mut stack: Vec<WalkFrame<'_, V>> = Vec::new();
        // The frames of the nodes on the path to `after`: each one's
        // children after that path (the nodes on it were visited).
        let mut node = &self.root;
        let mut key = None;
        let mut pos = 0;
        let mut bound = after.map(|a| (a, 0));
        loop {
            let Some((b, bpos)) = bound else {
                stack.push(frame(node, key, filter, pos, None));
                break;
            };
            let (level, bnext) = level_at(b, bpos);
            let top = frame(node, key, filter, pos, Some(level));
            let child_pos = top.child_pos;
            let allowed = match level_at(filter, pos).0 {
                b"#" | b"+" => !(top.skip_dollar && level.first() == Some(&b'$')),
                exact => exact == level,
            };
            stack.push(top);
            let Some((k, child)) = node.children.range(Bound::Included(level)).next() else {
                break;
            };
            if !allowed || k.as_ref() != level || child_pos == END {
                break;
            }
            node = child;
            key = Some(k);
            pos = child_pos;
            bound = (bnext != END).then_some((b, bnext));
        }
        while let Some(top) = stack.last_mut() {
            let child_pos = top.child_pos;
            let skip_dollar = top.skip_dollar;
            let Some((k, child)) = top.children.next() else {
                stack.pop();
                continue;
            };
            if skip_dollar && k.first() == Some(&b'$') {
                continue;
            }
            budget = budget.saturating_sub(1);
            // `a/#` matches `a` too.
            let (matched, below) = if child_pos == END {
                (true, false)
            } else {
                (level_at(filter, child_pos).0 == b"#", true)
            };
            let mut go_on = budget > 0;
            if matched {
                if let Some(entry) = &child.entry {
                    go_on &= f(&entry.0, &entry.1);
                }
            }
            if !go_on {
                return Walked::After(path(&stack, k));
            }
            if below && !child.children.is_empty() {
                stack.push(frame(child, Some(k), filter, child_pos, None));
            }
        }
        Walked::Done
    }

    /// Nodes below the root.
    #[cfg(test)]
    fn node_count(&self) -> usize {
        self.nodes().len()
    }

    /// Nodes below the root that hold neither an entry nor children.
    #[cfg(test)]
    fn empty_node_count(&self) -> usize {
        self.nodes()
            .iter()
            .filter(|n| n.entry.is_none() && n.children.is_empty())
            .count()
    }

    #[cfg(test)]
    fn nodes(&self) -> Vec<&MapNode<V>> {
        let mut out = Vec::new();
        let mut todo = alloc::vec![&self.root];
        while let Some(n) = todo.pop() {
            for (_, c) in n.children.iter() {
                out.push(c);
                todo.push(c);
            }
        }
        out
    }
}

/// The walk over `node`'s children for the filter level at `pos` (not
/// `END`), only those after `after` when given.
fn frame<'a, V>(
    node: &'a MapNode<V>,
    key: Option<&'a Bytes>,
    filter: &[u8],
    pos: usize,
    after: Option<&[u8]>,
) -> WalkFrame<'a, V> {
    let from = after.map_or(Bound::Unbounded, Bound::Excluded);
    let (level, next) = level_at(filter, pos);
    let (children, child_pos) = match level {
        b"#" => (node.children.range(from), pos),
        b"+" => (node.children.range(from), next),
        exact => {
            let after_bound = after.is_none_or(|a| exact > a);
            let one = node
                .children
                .range(Bound::Included(exact))
                .next()
                .filter(|(k, _)| after_bound && k.as_ref() == exact);
            (OrderedIter::One(one), next)
        }
    };
    WalkFrame {
        children,
        child_pos,
        // A wildcard at the root skips `$` topics [MQTT-4.7.2-1].
        skip_dollar: key.is_none() && (level == b"#" || level == b"+"),
        key,
    }
}

/// The path of `last`, a child of the node of the top frame of `stack`.
fn path<V>(stack: &[WalkFrame<'_, V>], last: &Bytes) -> Bytes {
    let keys = stack.iter().filter_map(|f| f.key);
    let len = keys.clone().map(|k| k.len() + 1).sum::<usize>() + last.len();
    let mut out = Vec::with_capacity(len);
    for k in keys {
        out.extend_from_slice(k);
        out.push(b'/');
    }
    out.extend_from_slice(last);
    Bytes::from(out)
}

/// Iterator over a [`TopicMap`], from [`TopicMap::iter`].
pub struct Iter<'a, V> {
    stack: Vec<OrderedIter<'a, MapNode<V>>>,
    remaining: usize,
}

impl<'a, V> Iterator for Iter<'a, V> {
    type Item = (&'a TopicName, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let top = self.stack.last_mut()?;
            match top.next() {
                Some((_, child)) => {
                    if !child.children.is_empty() {
                        self.stack.push(child.children.iter());
                    }
                    if let Some(entry) = &child.entry {
                        self.remaining -= 1;
                        return Some((&entry.0, &entry.1));
                    }
                }
                None => {
                    self.stack.pop();
                }
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl<V> ExactSizeIterator for Iter<'_, V> {}

impl<V> fmt::Debug for Iter<'_, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Iter")
            .field("remaining", &self.remaining)
            .finish_non_exhaustive()
    }
}

impl<'a, V, S> IntoIterator for &'a TopicMap<V, S> {
    type Item = (&'a TopicName, &'a V);
    type IntoIter = Iter<'a, V>;

    fn into_iter(self) -> Iter<'a, V> {
        self.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::matches;
    use alloc::collections::{BTreeMap, BTreeSet};
    use alloc::string::{String, ToString};
    use alloc::vec;
    use proptest::prelude::*;

    fn filter(s: &str) -> TopicFilter {
        TopicFilter::copy_from_str(s).unwrap()
    }

    fn topic(s: &str) -> TopicName {
        TopicName::copy_from_str(s).unwrap()
    }

    /// Sorted (key, value) pairs the trie reports for `t`.
    fn trie_matches<V: Ord + Clone>(trie: &SubscriptionTrie<u32, V>, t: &str) -> Vec<(u32, V)> {
        let mut out = Vec::new();
        trie.for_each_match(&topic(t), |k, v| out.push((*k, v.clone())));
        out.sort();
        out
    }

    /// Sorted topics the map reports for `f`.
    fn map_matches<V>(map: &TopicMap<V>, f: &str) -> Vec<String> {
        let mut out = Vec::new();
        map.for_each_match(&filter(f), |t, _| out.push(t.as_str().to_string()));
        out.sort();
        out
    }

    /// Matching examples of MQTT 3.1.1 and 5.0 section 4.7, plus the `$`
    /// rule, parent-level `#` and empty levels.
    const CASES: &[(&str, &str, bool)] = &[
        ("sport/tennis/player1/#", "sport/tennis/player1", true),
        (
            "sport/tennis/player1/#",
            "sport/tennis/player1/ranking",
            true,
        ),
        (
            "sport/tennis/player1/#",
            "sport/tennis/player1/score/wimbledon",
            true,
        ),
        ("sport/#", "sport", true),
        ("#", "sport/tennis", true),
        ("sport/tennis/#", "sport/tennis", true),
        ("sport/tennis/+", "sport/tennis/player1", true),
        ("sport/tennis/+", "sport/tennis/player1/tournament", false),
        ("sport/+", "sport", false),
        ("sport/+", "sport/", true),
        ("+/+", "/finance", true),
        ("/+", "/finance", true),
        ("+", "/finance", false),
        ("#", "$SYS/broker", false),
        ("+/monitor/Clients", "$SYS/monitor/Clients", false),
        ("$SYS/#", "$SYS/monitor/Clients", true),
        ("$SYS/monitor/+", "$SYS/monitor/Clients", true),
        ("$SYS/#", "$SYS", true),
        ("a/b", "a/b", true),
        ("a/b", "a/b/c", false),
        ("a/b/c", "a/b", false),
        ("a/+/b", "a//b", true),
        ("a//b", "a//b", true),
        ("a//b", "a/b", false),
        ("a/b", "a//b", false),
        ("+/a", "/a", true),
        ("#", "/a", true),
        ("/#", "/a", true),
        ("+", "/", false),
        ("+/+", "/", true),
        ("/", "/", true),
        ("a/$x", "a/$x", true),
        ("a/+", "a/$x", true),
    ];

    #[test]
    fn cases_agree_with_the_reference() {
        for &(f, t, want) in CASES {
            assert_eq!(
                matches(f.as_bytes(), t.as_bytes()),
                want,
                "reference: {f} vs {t}"
            );
        }
    }

    #[test]
    fn trie_follows_section_4_7() {
        for &(f, t, want) in CASES {
            let mut trie = SubscriptionTrie::new();
            trie.insert(&filter(f), 1u32, ());
            assert_eq!(
                trie_matches(&trie, t),
                if want { vec![(1, ())] } else { vec![] },
                "{f} vs {t}"
            );
        }
    }

    #[test]
    fn topic_map_follows_section_4_7() {
        for &(f, t, want) in CASES {
            let mut map = TopicMap::new();
            map.insert(&topic(t), ());
            let expected = if want { vec![t.to_string()] } else { vec![] };
            assert_eq!(map_matches(&map, f), expected, "{f} vs {t}");
        }
    }

    #[test]
    fn all_cases_in_one_trie() {
        let mut trie = SubscriptionTrie::new();
        for (i, &(f, _, _)) in CASES.iter().enumerate() {
            trie.insert(&filter(f), i as u32, ());
        }
        for &(_, t, _) in CASES {
            let expected: Vec<(u32, ())> = CASES
                .iter()
                .enumerate()
                .filter(|(_, (f, _, _))| matches(f.as_bytes(), t.as_bytes()))
                .map(|(i, _)| (i as u32, ()))
                .collect();
            assert_eq!(trie_matches(&trie, t), expected, "{t}");
        }
    }

    #[test]
    fn wildcards_at_the_root_skip_dollar_topics() {
        let mut trie = SubscriptionTrie::new();
        trie.insert(&filter("#"), 1u32, ());
        trie.insert(&filter("+/x"), 2, ());
        trie.insert(&filter("$SYS/#"), 3, ());
        trie.insert(&filter("$SYS/+"), 4, ());
        assert_eq!(trie_matches(&trie, "$SYS/x"), vec![(3, ()), (4, ())]);
        assert_eq!(trie_matches(&trie, "a/x"), vec![(1, ()), (2, ())]);

        let mut map = TopicMap::new();
        for t in ["$SYS/x", "$SYS", "a", "a/$x"] {
            map.insert(&topic(t), ());
        }
        assert_eq!(map_matches(&map, "#"), vec!["a", "a/$x"]);
        assert_eq!(map_matches(&map, "+"), vec!["a"]);
        assert_eq!(map_matches(&map, "+/+"), vec!["a/$x"]);
        assert_eq!(map_matches(&map, "$SYS/#"), vec!["$SYS", "$SYS/x"]);
        assert_eq!(map_matches(&map, "a/+"), vec!["a/$x"]);
    }

    #[test]
    fn multi_level_wildcard_matches_the_parent_level() {
        let mut trie = SubscriptionTrie::new();
        trie.insert(&filter("a/#"), 1u32, ());
        assert_eq!(trie_matches(&trie, "a"), vec![(1, ())]);
        assert_eq!(trie_matches(&trie, "a/b/c"), vec![(1, ())]);
        assert_eq!(trie_matches(&trie, "b"), vec![]);

        let mut map = TopicMap::new();
        for t in ["a", "a/b", "a/b/c", "ab"] {
            map.insert(&topic(t), ());
        }
        assert_eq!(map_matches(&map, "a/#"), vec!["a", "a/b", "a/b/c"]);
    }

    #[test]
    fn each_filter_key_pair_is_visited_once() {
        let mut trie = SubscriptionTrie::new();
        for f in ["a/b", "a/+", "+/b", "a/#", "#", "+/+"] {
            trie.insert(&filter(f), 7u32, f);
        }
        trie.insert(&filter("a/b"), 8, "a/b");
        // Exactly one visit per (filter, key): key 7 through each of its six
        // filters, key 8 through its one.
        let mut want = vec![
            (7, "#"),
            (7, "+/+"),
            (7, "+/b"),
            (7, "a/#"),
            (7, "a/+"),
            (7, "a/b"),
        ];
        want.push((8, "a/b"));
        assert_eq!(trie_matches(&trie, "a/b"), want);
        assert_eq!(trie.len(), 7);
    }

    #[test]
    fn inserting_again_replaces_the_value() {
        let mut trie = SubscriptionTrie::new();
        assert_eq!(trie.insert(&filter("a/+"), 1u32, "qos0"), None);
        assert_eq!(trie.insert(&filter("a/+"), 1, "qos1"), Some("qos0"));
        assert_eq!(trie.len(), 1);
        assert_eq!(trie.get(&filter("a/+"), &1), Some(&"qos1"));
        assert_eq!(trie.get(&filter("a/b"), &1), None);
        assert_eq!(trie_matches(&trie, "a/b"), vec![(1, "qos1")]);

        let mut map = TopicMap::new();
        assert_eq!(map.insert(&topic("a/b"), 1), None);
        assert_eq!(map.insert(&topic("a/b"), 2), Some(1));
        assert_eq!(map.len(), 1);
        assert_eq!(map.get(&topic("a/b")), Some(&2));
    }

    #[test]
    fn filters_ending_in_a_wildcard_are_distinct_from_their_parent() {
        let mut trie = SubscriptionTrie::new();
        trie.insert(&filter("a"), 1u32, "a");
        trie.insert(&filter("a/#"), 1, "a/#");
        trie.insert(&filter("a/+"), 1, "a/+");
        assert_eq!(trie.len(), 3);
        assert_eq!(trie.get(&filter("a/#"), &1), Some(&"a/#"));
        assert_eq!(trie.remove(&filter("a/#"), &1), Some("a/#"));
        assert_eq!(trie.get(&filter("a"), &1), Some(&"a"));
        assert_eq!(trie.get(&filter("a/+"), &1), Some(&"a/+"));
        assert_eq!(trie.remove(&filter("a/#"), &1), None);
    }

    #[test]
    fn removal_prunes_only_what_is_empty() {
        let mut trie = SubscriptionTrie::new();
        trie.insert(&filter("a/b/c/d"), 1u32, ());
        trie.insert(&filter("a/b"), 1, ());
        trie.insert(&filter("a/+/#"), 2, ());
        // a, b, c, d, + = 5 nodes.
        assert_eq!(trie.node_count(), 5);
        assert_eq!(trie.remove(&filter("a/b/c/d"), &1), Some(()));
        assert_eq!(trie.node_count(), 3);
        assert_eq!(trie.remove(&filter("a/b/c/d"), &1), None);
        assert_eq!(
            trie.remove(&filter("a/b"), &2),
            None,
            "wrong key removes nothing"
        );
        assert_eq!(trie.remove(&filter("a/b"), &1), Some(()));
        assert_eq!(trie.node_count(), 2);
        assert_eq!(trie.remove(&filter("a/+/#"), &2), Some(()));
        assert_eq!(trie.node_count(), 0);
        assert!(trie.is_empty());

        let mut map = TopicMap::new();
        map.insert(&topic("a/b/c"), ());
        map.insert(&topic("a"), ());
        map.insert(&topic("a/x"), ());
        assert_eq!(map.node_count(), 4);
        assert_eq!(map.remove(&topic("a/b/c")), Some(()));
        assert_eq!(map.node_count(), 2);
        assert_eq!(map.remove(&topic("a/b")), None);
        assert_eq!(map.remove(&topic("a")), Some(()));
        assert_eq!(map.node_count(), 2, "a stays as the parent of a/x");
        assert_eq!(map.remove(&topic("a/x")), Some(()));
        assert_eq!(map.node_count(), 0);
        assert!(map.is_empty());
    }

    #[test]
    fn large_sets_switch_to_tables_and_back() {
        let mut trie = SubscriptionTrie::new();
        let n = 3 * SMALL_MAX as u32;
        for k in 0..n {
            trie.insert(&filter("a/b"), k, k);
            trie.insert(&filter(&alloc::format!("a/{k}")), k, k);
        }
        assert!(matches!(
            trie.root.children.iter().next().unwrap().1.children,
            CompactMap::Large(_)
        ));
        assert_eq!(trie.get(&filter("a/b"), &5), Some(&5));
        assert_eq!(trie_matches(&trie, "a/b").len(), n as usize);
        assert_eq!(trie_matches(&trie, "a/7"), vec![(7, 7)]);
        for k in 0..n {
            assert_eq!(trie.remove(&filter("a/b"), &k), Some(k));
            assert_eq!(trie.remove(&filter(&alloc::format!("a/{k}")), &k), Some(k));
            let left: Vec<(u32, u32)> = (k + 1..n).map(|k| (k, k)).collect();
            assert_eq!(trie_matches(&trie, "a/b"), left);
            assert_eq!(trie.empty_node_count(), 0);
        }
        assert_eq!(trie.node_count(), 0);
    }

    #[test]
    fn many_pending_plus_branches_spill_and_still_match() {
        // At every level of a/a/.../a there is both an `a` and a `+` child,
        // so more branches wait than the inline stack holds.
        let depth = 3 * STACK_INLINE;
        let mut trie = SubscriptionTrie::new();
        for i in 0..depth {
            let levels: Vec<&str> = (0..depth).map(|j| if j == i { "+" } else { "a" }).collect();
            trie.insert(&filter(&levels.join("/")), i as u32, ());
        }
        let t = vec!["a"; depth].join("/");
        assert_eq!(trie_matches(&trie, &t).len(), depth);
    }

    #[test]
    fn thousands_of_levels_do_not_overflow_the_stack() {
        // 30,000 levels: recursion per level would overflow a 2 MiB test
        // thread in a debug build, in matching, pruning or dropping.
        let deep = vec!["a"; 30_000].join("/");
        let mut trie = SubscriptionTrie::new();
        trie.insert(&filter(&deep), 1u32, ());
        trie.insert(&filter(&(deep.clone() + "/#")), 2, ());
        assert_eq!(trie_matches(&trie, &deep), vec![(1, ()), (2, ())]);
        assert_eq!(trie.remove(&filter(&deep), &1), Some(()));
        assert_eq!(trie.node_count(), 30_000);
        assert_eq!(trie.remove(&filter(&(deep.clone() + "/#")), &2), Some(()));
        assert_eq!(trie.node_count(), 0);
        trie.insert(&filter(&deep), 1u32, ());
        drop(trie);

        let mut map = TopicMap::new();
        map.insert(&topic(&deep), ());
        assert_eq!(map_matches(&map, "#").len(), 1);
        assert_eq!(map_matches(&map, &deep).len(), 1);
        assert_eq!(map.iter().count(), 1);
        assert_eq!(map.remove(&topic(&deep)), Some(()));
        assert_eq!(map.node_count(), 0);
        map.insert(&topic(&deep), ());
        drop(map);
    }

    #[test]
    fn iter_yields_every_topic_once() {
        let mut map = TopicMap::new();
        let topics = ["a", "a/b", "/", "", "$SYS/x", "b/c/d"];
        for (i, t) in topics.iter().enumerate() {
            let t = TopicName::new_allow_empty(crate::MqttStr::copy_from_str(t).unwrap()).unwrap();
            map.insert(&t, i);
        }
        let mut seen: Vec<(String, usize)> = map.iter().map(|(t, v)| (t.to_string(), *v)).collect();
        seen.sort();
        let mut want: Vec<(String, usize)> = topics
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), i))
            .collect();
        want.sort();
        assert_eq!(seen, want);
        assert_eq!(map.iter().len(), topics.len());
    }

    // ----- property tests against `topic::matches` -----

    fn level() -> impl Strategy<Value = &'static str> {
        prop::sample::select(&["a", "b", "$s", ""][..])
    }

    fn topic_string() -> impl Strategy<Value = String> {
        prop::collection::vec(level(), 1..5)
            .prop_map(|l| l.join("/"))
            .prop_filter("topic names are not empty", |s| !s.is_empty())
    }

    fn filter_string() -> impl Strategy<Value = String> {
        let lvl = prop::sample::select(&["a", "b", "$s", "", "+"][..]);
        (prop::collection::vec(lvl, 0..5), any::<bool>()).prop_filter_map(
            "filters are not empty",
            |(mut levels, multi)| {
                if multi {
                    levels.push("#");
                }
                let s = levels.join("/");
                (!s.is_empty()).then_some(s)
            },
        )
    }

    /// Operations on a pool of strings: (insert?, index into the pool, key).
    fn ops() -> impl Strategy<Value = Vec<(bool, usize, u32)>> {
        prop::collection::vec((prop::bool::weighted(0.6), 0..8usize, 0..3u32), 0..60)
    }

    proptest! {
        #[test]
        fn trie_agrees_with_reference(
            pool in prop::collection::vec(filter_string(), 1..8),
            ops in ops(),
            topics in prop::collection::vec(topic_string(), 1..8),
        ) {
            let mut trie = SubscriptionTrie::new();
            let mut model: BTreeMap<(String, u32), usize> = BTreeMap::new();
            for (i, &(insert, idx, key)) in ops.iter().enumerate() {
                let f = &pool[idx % pool.len()];
                if insert {
                    prop_assert_eq!(
                        trie.insert(&filter(f), key, i),
                        model.insert((f.clone(), key), i)
                    );
                } else {
                    prop_assert_eq!(trie.remove(&filter(f), &key), model.remove(&(f.clone(), key)));
                }
                prop_assert_eq!(trie.len(), model.len());
                prop_assert_eq!(trie.empty_node_count(), 0);
            }
            for f in &pool {
                for key in 0..3 {
                    prop_assert_eq!(trie.get(&filter(f), &key), model.get(&(f.clone(), key)));
                }
            }
            for t in &topics {
                let mut want: Vec<(u32, usize)> = model
                    .iter()
                    .filter(|((f, _), _)| matches(f.as_bytes(), t.as_bytes()))
                    .map(|((_, k), v)| (*k, *v))
                    .collect();
                want.sort();
                prop_assert_eq!(trie_matches(&trie, t), want, "topic {}", t);
            }
            for (f, key) in model.keys() {
                prop_assert!(trie.remove(&filter(f), key).is_some());
            }
            prop_assert!(trie.is_empty());
            prop_assert_eq!(trie.node_count(), 0);
        }

        #[test]
        fn topic_map_agrees_with_reference(
            pool in prop::collection::vec(topic_string(), 1..8),
            ops in ops(),
            filters in prop::collection::vec(filter_string(), 1..8),
        ) {
            let mut map = TopicMap::new();
            let mut model: BTreeMap<String, usize> = BTreeMap::new();
            for (i, &(insert, idx, _)) in ops.iter().enumerate() {
                let t = &pool[idx % pool.len()];
                if insert {
                    prop_assert_eq!(map.insert(&topic(t), i), model.insert(t.clone(), i));
                } else {
                    prop_assert_eq!(map.remove(&topic(t)), model.remove(t));
                }
                prop_assert_eq!(map.len(), model.len());
                prop_assert_eq!(map.empty_node_count(), 0);
            }
            for t in &pool {
                prop_assert_eq!(map.get(&topic(t)), model.get(t));
            }
            let mut all: Vec<(String, usize)> =
                map.iter().map(|(t, v)| (t.to_string(), *v)).collect();
            all.sort();
            prop_assert_eq!(all, model.iter().map(|(t, v)| (t.clone(), *v)).collect::<Vec<_>>());
            for f in &filters {
                let mut got = Vec::new();
                map.for_each_match(&filter(f), |t, v| got.push((t.to_string(), *v)));
                got.sort();
                let want: Vec<(String, usize)> = model
                    .iter()
                    .filter(|(t, _)| matches(f.as_bytes(), t.as_bytes()))
                    .map(|(t, v)| (t.clone(), *v))
                    .collect();
                prop_assert_eq!(got, want, "filter {}", f);
            }
            let topics: Vec<String> = model.keys().cloned().collect();
            for t in &topics {
                prop_assert!(map.remove(&topic(t)).is_some());
            }
            prop_assert!(map.is_empty());
            prop_assert_eq!(map.node_count(), 0);
        }

        /// A walk in slices of random size, with random inserts and
        /// removals between the slices, visits each topic at most once, in
        /// topic order, only matches, and every match that was there all
        /// along; its position costs no more than one topic path.
        #[test]
        fn walk_survives_changes_between_slices(
            start in prop::collection::btree_set(wide_topic(), 0..120),
            steps in prop::collection::vec(
                (1..12usize, prop::collection::vec((any::<bool>(), wide_topic()), 0..6)),
                1..40,
            ),
            f in wide_filter(),
        ) {
            let mut map = TopicMap::new();
            for t in &start {
                map.insert(&topic(t), ());
            }
            let f = filter(&f);
            // Topics there from the start and never removed.
            let mut stayed: BTreeSet<String> = start.clone();
            let mut seen: Vec<String> = Vec::new();
            let mut after: Option<Bytes> = None;
            let mut steps = steps.into_iter();
            loop {
                let (budget, changes) = steps.next().unwrap_or((1000, Vec::new()));
                let walked = map.walk_matches(&f, after.as_deref(), budget, |t, _| {
                    seen.push(t.to_string());
                    true
                });
                match walked {
                    Walked::Done => break,
                    Walked::After(at) => {
                        prop_assert!(at.len() <= 64, "position {:?}", at);
                        after = Some(at);
                    }
                }
                for (insert, t) in changes {
                    if insert {
                        map.insert(&topic(&t), ());
                    } else {
                        map.remove(&topic(&t));
                        stayed.remove(&t);
                    }
                }
            }
            let levels = |t: &String| t.split('/').map(String::from).collect::<Vec<_>>();
            for pair in seen.windows(2) {
                prop_assert!(levels(&pair[0]) < levels(&pair[1]), "{:?} then {:?}", pair[0], pair[1]);
            }
            for t in &seen {
                prop_assert!(matches(f.as_bytes(), t.as_bytes()), "{} does not match {}", t, f.as_str());
            }
            for t in stayed.iter().filter(|t| matches(f.as_bytes(), t.as_bytes())) {
                prop_assert!(seen.contains(t), "{} was there all along but not visited", t);
            }
        }

        /// Stopping after each match (`f` returns false) and going on from
        /// there visits exactly what one uninterrupted walk does.
        #[test]
        fn walk_one_at_a_time_is_the_whole_walk(
            start in prop::collection::btree_set(wide_topic(), 0..120),
            f in wide_filter(),
        ) {
            let mut map = TopicMap::new();
            for t in &start {
                map.insert(&topic(t), ());
            }
            let f = filter(&f);
            let mut whole = Vec::new();
            map.for_each_match(&f, |t, _| whole.push(t.to_string()));
            let mut sliced = Vec::new();
            let mut after: Option<Bytes> = None;
            while let Walked::After(at) = map.walk_matches(&f, after.as_deref(), usize::MAX, |t, _| {
                sliced.push(t.to_string());
                false
            }) {
                after = Some(at);
            }
            prop_assert_eq!(sliced, whole);
        }
    }

    /// Topics over a wider alphabet than [`topic_string`], so that nodes
    /// have more than [`SMALL_MAX`] children and become B-trees.
    fn wide_topic() -> impl Strategy<Value = String> {
        let lvl = prop::sample::select(
            &[
                "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "", "$s", "ab",
            ][..],
        );
        prop::collection::vec(lvl, 1..4)
            .prop_map(|l| l.join("/"))
            .prop_filter("topic names are not empty", |s| !s.is_empty())
    }

    fn wide_filter() -> impl Strategy<Value = String> {
        let lvl = prop::sample::select(&["a", "b", "l", "$s", "", "+"][..]);
        (prop::collection::vec(lvl, 0..4), any::<bool>()).prop_filter_map(
            "filters are not empty",
            |(mut levels, multi)| {
                if multi {
                    levels.push("#");
                }
                let s = levels.join("/");
                (!s.is_empty()).then_some(s)
            },
        )
    }
}
