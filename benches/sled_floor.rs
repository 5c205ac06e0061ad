//! What sled 0.34 itself costs for the writes one ingested complaint makes,
//! and for cheaper layouts of the same data: the floor under the store's
//! commit, without complaintd's own work (`docs/PERFORMANCE.md`, "Ingest").
//!
//! `cargo bench --bench sled_floor [-- --complaints N --batch N]`
//!
//! The shapes (keys per complaint, key and value sizes, which keys arrive in
//! order and which at random places) are those a default-policy complaint
//! wrote with store schema 2, measured from a store the ingest benchmark
//! filled, and what schema 3 (in two steps) and a further layout make of them.

#[path = "common/cpu_time.rs"]
mod cpu_time;

use cpu_time::thread_cpu_time;

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use sled::transaction::{ConflictableTransactionError, TransactionalTree};
use sled::{Batch, Transactional};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Where a tree's keys land: appended at the end, or all over the tree.
#[derive(Clone, Copy)]
enum Order {
    Ascending,
    Scattered,
}

/// One tree's writes per complaint: `per_mille` keys per 1,000 complaints.
#[derive(Clone, Copy)]
struct Shape {
    tree: &'static str,
    per_mille: u64,
    key_bytes: usize,
    value_bytes: usize,
    order: Order,
}

const fn shape(
    tree: &'static str,
    per_mille: u64,
    key_bytes: usize,
    value_bytes: usize,
    order: Order,
) -> Shape {
    Shape {
        tree,
        per_mille,
        key_bytes,
        value_bytes,
        order,
    }
}

use Order::{Ascending, Scattered};

/// Store schema 2's writes, per complaint of the default policy.
const SCHEMA_2: &[Shape] = &[
    shape("cases", 1000, 14, 1004, Ascending),
    shape("events", 1000, 26, 3667, Ascending),
    shape("counters", 3000, 25, 8, Ascending),
    shape("message_ids_in", 1000, 33, 94, Scattered),
    shape("message_ids_out", 2600, 33, 94, Ascending),
    shape("idx_sender", 1000, 61, 27, Scattered),
    shape("idx_category", 1000, 42, 27, Ascending),
    shape("idx_subject", 1000, 70, 27, Scattered),
    shape("idx_tag", 790, 45, 27, Scattered),
    shape("timers", 4000, 53, 0, Ascending),
    shape("timer_clocks", 1000, 33, 200, Ascending),
    shape("outbox", 2600, 22, 441, Ascending),
    shape("outbox_bodies", 2600, 22, 3027, Ascending),
    shape("outbox_due", 2600, 34, 0, Ascending),
    shape("attachment_refs", 1000, 82, 194, Ascending),
    shape("ack_counters", 1000, 39, 8, Scattered),
];

/// One counter record per case, outgoing Message-IDs answered from the
/// outbox, one timer key per clock: schema 3 but for the mails' bytes.
const FEWER_INDEX_KEYS: &[Shape] = &[
    shape("cases", 1000, 14, 1004, Ascending),
    shape("events", 1000, 26, 3667, Ascending),
    shape("counters", 1000, 19, 40, Ascending),
    shape("message_ids_in", 1000, 33, 94, Scattered),
    shape("idx_sender", 1000, 61, 27, Scattered),
    shape("idx_category", 1000, 42, 27, Ascending),
    shape("idx_subject", 1000, 70, 27, Scattered),
    shape("idx_tag", 790, 45, 27, Scattered),
    shape("timers", 1000, 53, 0, Ascending),
    shape("timer_clocks", 1000, 33, 200, Ascending),
    shape("outbox", 2600, 22, 441, Ascending),
    shape("outbox_bodies", 2600, 22, 3027, Ascending),
    shape("outbox_due", 2600, 34, 0, Ascending),
    shape("attachment_refs", 1000, 82, 194, Ascending),
    shape("ack_counters", 1000, 39, 8, Scattered),
];

/// Schema 3 (today): the above, and each mail's bytes in its outbox record.
const SCHEMA_3: &[Shape] = &[
    shape("cases", 1000, 14, 1004, Ascending),
    shape("events", 1000, 26, 3667, Ascending),
    shape("counters", 1000, 19, 40, Ascending),
    shape("message_ids_in", 1000, 33, 94, Scattered),
    shape("idx_sender", 1000, 61, 27, Scattered),
    shape("idx_category", 1000, 42, 27, Ascending),
    shape("idx_subject", 1000, 70, 27, Scattered),
    shape("idx_tag", 790, 45, 27, Scattered),
    shape("timers", 1000, 53, 0, Ascending),
    shape("timer_clocks", 1000, 33, 200, Ascending),
    shape("outbox", 2600, 22, 441 + 3027, Ascending),
    shape("outbox_due", 2600, 34, 0, Ascending),
    shape("attachment_refs", 1000, 82, 194, Ascending),
    shape("ack_counters", 1000, 39, 8, Scattered),
];

/// The same bytes in fewer keys still: the case record carrying its
/// counters, clocks and outbox entries, and one record for its mails' bytes.
const BUNDLED: &[Shape] = &[
    shape(
        "cases",
        1000,
        14,
        1004 + 40 + 200 + 2600 * 441 / 1000,
        Ascending,
    ),
    shape("events", 1000, 26, 3667, Ascending),
    shape("message_ids_in", 1000, 33, 94, Scattered),
    shape("idx_sender", 1000, 61, 27, Scattered),
    shape("idx_category", 1000, 42, 27, Ascending),
    shape("idx_subject", 1000, 70, 27, Scattered),
    shape("idx_tag", 790, 45, 27, Scattered),
    shape("timers", 1000, 53, 0, Ascending),
    shape("outbox_bodies", 1000, 22, 2600 * 3027 / 1000, Ascending),
    shape("outbox_due", 2600, 34, 0, Ascending),
    shape("attachment_refs", 1000, 82, 194, Ascending),
    shape("ack_counters", 1000, 39, 8, Scattered),
];

/// How a batch of complaints is written.
#[derive(Clone, Copy, Debug)]
enum Write {
    /// One sled transaction over all trees (what the store does).
    Transaction,
    /// `apply_batch` per tree: no atomicity across trees; shows what the
    /// transaction itself adds.
    BatchPerTree,
    /// Every tree's keys behind a one-byte tree prefix in a single tree,
    /// written with one atomic `apply_batch`.
    OneTree,
}

struct Args {
    complaints: u64,
    batch: u64,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        complaints: 5_000,
        batch: 500,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--complaints" => args.complaints = it.next().unwrap_or_default().parse()?,
            "--batch" => args.batch = it.next().unwrap_or_default().parse()?,
            // cargo bench passes --bench.
            "--bench" => {}
            other => bail!("unknown argument {other:?}"),
        }
    }
    Ok(args)
}

fn main() -> Result<()> {
    let args = parse_args()?;
    println!(
        "sled floor: {} complaints in batches of {}; CPU time of the writing thread per complaint",
        args.complaints, args.batch
    );
    for (name, layout) in [
        ("schema 2", SCHEMA_2),
        ("fewer index keys", FEWER_INDEX_KEYS),
        ("schema 3", SCHEMA_3),
        ("bundled", BUNDLED),
    ] {
        let keys: u64 = layout.iter().map(|s| s.per_mille).sum();
        let bytes: u64 = layout
            .iter()
            .map(|s| s.per_mille * (s.key_bytes + s.value_bytes) as u64)
            .sum();
        for write in [Write::Transaction, Write::BatchPerTree, Write::OneTree] {
            let (cpu, wall) = run(layout, write, &args)?;
            println!(
                "  {name:18} {:5.1} keys, {:5.1} KB per complaint, {:14}: {:6.1} µs CPU, {:6.1} µs wall",
                keys as f64 / 1000.0,
                bytes as f64 / 1000.0 / 1024.0,
                format!("{write:?}"),
                cpu.as_secs_f64() * 1e6 / args.complaints as f64,
                wall.as_secs_f64() * 1e6 / args.complaints as f64,
            );
        }
    }
    Ok(())
}

/// The key of a complaint's `n`th write to a tree.
fn key(shape: &Shape, complaint: u64, n: u64) -> Vec<u8> {
    let mut key = vec![b'k'; shape.key_bytes.max(17)];
    let position = match shape.order {
        Order::Ascending => complaint << 8 | n,
        // A multiplicative hash spreads consecutive complaints over the tree.
        Order::Scattered => (complaint << 8 | n).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    };
    key[..8].copy_from_slice(&position.to_be_bytes());
    key.truncate(shape.key_bytes.max(8));
    key
}

/// The writes of one complaint: (tree index, key, value).
fn writes(layout: &[Shape], complaint: u64) -> Vec<(usize, Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    for (tree, shape) in layout.iter().enumerate() {
        // Spread fractional counts evenly: complaint c writes the keys that
        // take the running total past a whole number.
        let before = complaint * shape.per_mille / 1000;
        let after = (complaint + 1) * shape.per_mille / 1000;
        for n in 0..after - before {
            let value = vec![(complaint % 251) as u8; shape.value_bytes];
            out.push((tree, key(shape, complaint, n), value));
        }
    }
    out
}

fn run(layout: &[Shape], write: Write, args: &Args) -> Result<(Duration, Duration)> {
    let dir = tempfile::tempdir()?;
    let db = sled::Config::new()
        .path(dir.path())
        .cache_capacity(64 * 1024 * 1024)
        .open()?;
    let trees: Vec<sled::Tree> = layout
        .iter()
        .map(|s| db.open_tree(s.tree))
        .collect::<Result<_, _>>()?;
    let single = db.open_tree("all")?;
    let mut cpu = Duration::ZERO;
    let mut wall = Duration::ZERO;
    let mut complaint = 0;
    while complaint < args.complaints {
        let end = (complaint + args.batch).min(args.complaints);
        let batch: Vec<_> = (complaint..end).flat_map(|c| writes(layout, c)).collect();
        let cpu_before = thread_cpu_time();
        let start = Instant::now();
        match write {
            Write::Transaction => {
                trees
                    .as_slice()
                    .transaction(|tx: &Vec<TransactionalTree>| {
                        for (tree, key, value) in &batch {
                            tx[*tree].insert(key.as_slice(), value.as_slice())?;
                        }
                        Ok::<_, ConflictableTransactionError<()>>(())
                    })
                    .map_err(|e| anyhow::anyhow!("transaction failed: {e:?}"))?;
            }
            Write::BatchPerTree => {
                let mut batches: Vec<Batch> = trees.iter().map(|_| Batch::default()).collect();
                for (tree, key, value) in &batch {
                    batches[*tree].insert(key.as_slice(), value.as_slice());
                }
                for (tree, batch) in trees.iter().zip(batches) {
                    tree.apply_batch(batch)?;
                }
            }
            Write::OneTree => {
                let mut one = Batch::default();
                for (tree, key, value) in &batch {
                    let mut prefixed = vec![*tree as u8];
                    prefixed.extend_from_slice(key);
                    one.insert(prefixed, value.as_slice());
                }
                single.apply_batch(one)?;
            }
        }
        db.flush()?;
        cpu += thread_cpu_time() - cpu_before;
        wall += start.elapsed();
        complaint = end;
    }
    Ok((cpu, wall))
}
