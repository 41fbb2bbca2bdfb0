//! Routing-table benchmarks: one PUBLISH topic against subscription tries of
//! growing size, and wildcard queries over a large retained-message map.
//!
//! Memory per entry is printed to stderr from the process's resident set
//! (`/proc/self/statm`, Linux only) before and after filling the 1,000,000
//! entry structures: it is what the allocator really holds, fragmentation
//! included, rather than the sum of requested sizes.

use criterion::{BenchmarkId, Criterion, Throughput};
use roost_core::topic::{SubscriptionTrie, TopicFilter, TopicMap, TopicName};
use std::hint::black_box;

/// The topic every lookup routes.
const TOPIC: &str = "tenant7/device/target/status";

/// Subscriptions that match [`TOPIC`]; every size holds them (size 1 holds
/// the first only).
const MATCHING: [&str; 5] = [
    "tenant7/device/target/status",
    "tenant7/+/target/status",
    "tenant7/#",
    "#",
    "+/device/+/status",
];

/// The `i`th non-matching subscription: mostly distinct exact filters, with
/// one in fifty each ending in `#`, starting with `+`, or with `+` inside.
fn filler(i: usize) -> TopicFilter {
    let tenant = i % 97;
    let s = match i % 50 {
        0 => format!("tenant{tenant}/device/{i}/#"),
        1 => format!("+/device/{i}/status"),
        2 => format!("tenant{tenant}/+/{i}/status"),
        _ => format!("tenant{tenant}/device/{i}/status"),
    };
    TopicFilter::copy_from_str(&s).expect("valid filter")
}

fn retained_topic(i: usize) -> TopicName {
    TopicName::copy_from_str(&format!("tenant{}/device/{i}/status", i % 97)).expect("valid topic")
}

/// Resident set size in bytes, or 0 where `/proc` is missing.
fn rss() -> usize {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<usize>().ok())
        .map_or(0, |pages| pages * 4096)
}

fn build_trie(size: usize) -> SubscriptionTrie<u32, u8> {
    let mut trie = SubscriptionTrie::new();
    let fillers: Vec<TopicFilter> = (0..size.saturating_sub(MATCHING.len()))
        .map(filler)
        .collect();
    let before = rss();
    for (i, f) in MATCHING.iter().take(size).enumerate() {
        trie.insert(
            &TopicFilter::copy_from_str(f).expect("valid filter"),
            i as u32,
            1,
        );
    }
    for (i, f) in fillers.iter().enumerate() {
        trie.insert(f, (i + MATCHING.len()) as u32, 1);
    }
    if size >= 1_000_000 {
        let grown = rss().saturating_sub(before);
        eprintln!(
            "SubscriptionTrie<u32, u8> with {size} subscriptions: {} MiB resident, {} bytes per subscription (filter strings excluded)",
            grown >> 20,
            grown / size
        );
    }
    assert_eq!(trie.len(), size);
    trie
}

/// Fills a map with `size` retained topics, printing the resident memory it
/// took.
fn build_map(size: usize) -> TopicMap<u32> {
    let topics: Vec<TopicName> = (0..size).map(retained_topic).collect();
    let before = rss();
    let mut map = TopicMap::new();
    for (i, t) in topics.iter().enumerate() {
        map.insert(t, i as u32);
    }
    let grown = rss().saturating_sub(before);
    eprintln!(
        "TopicMap<u32> with {size} topics: {} MiB resident, {} bytes per topic (topic strings excluded)",
        grown >> 20,
        grown / size
    );
    map
}

fn subscription_trie(c: &mut Criterion, tries: &[SubscriptionTrie<u32, u8>]) {
    let topic = TopicName::from_static(TOPIC);
    let mut group = c.benchmark_group("subscription_trie_match");
    group.throughput(Throughput::Elements(1));
    for trie in tries {
        let mut matched = 0;
        trie.for_each_match(&topic, |_, _| matched += 1);
        eprintln!("size {}: {matched} matching subscriptions", trie.len());
        group.bench_with_input(BenchmarkId::from_parameter(trie.len()), trie, |b, trie| {
            b.iter(|| {
                let mut sum = 0u32;
                trie.for_each_match(black_box(&topic), |k, v| sum += k + u32::from(*v));
                black_box(sum)
            })
        });
    }
    group.finish();
}

fn topic_map(c: &mut Criterion, map: &TopicMap<u32>) {
    let mut group = c.benchmark_group("topic_map_1M_query");
    let some = 424_242;
    let queries = [
        format!("tenant{}/device/{some}/status", some % 97),
        format!("+/device/{some}/status"),
        format!("tenant{}/device/{some}/#", some % 97),
        "tenant7/device/+/status".to_string(),
        "tenant7/#".to_string(),
    ];
    for q in queries {
        let filter = TopicFilter::copy_from_str(&q).expect("valid filter");
        let mut matched = 0u64;
        map.for_each_match(&filter, |_, _| matched += 1);
        eprintln!("query {q}: {matched} matching topics");
        group.throughput(Throughput::Elements(matched));
        group.bench_with_input(BenchmarkId::from_parameter(&q), &filter, |b, filter| {
            b.iter(|| {
                let mut sum = 0u32;
                map.for_each_match(black_box(filter), |_, v| sum = sum.wrapping_add(*v));
                black_box(sum)
            })
        });
    }
    group.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    // Both large structures are built before anything large is freed, so
    // each resident-set delta counts fresh pages, not reused ones.
    let map = build_map(1_000_000);
    let tries: Vec<_> = [1_000_000, 1_000, MATCHING.len(), 1]
        .into_iter()
        .map(build_trie)
        .collect();
    let mut tries = tries;
    tries.reverse();
    subscription_trie(&mut c, &tries);
    topic_map(&mut c, &map);
    c.final_summary();
}
