//! `consolidate`: "if the new result equals the old one (`PartialEq`), [the values computed from
//! it] stay cached, as computed from the new one, and the change stops there; otherwise they
//! are invalidated". The invariant attacked: once everything settled, no cached value differs
//! from a fresh computation, and a dependent is never left consistent when what it read
//! changed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use ofx_core::{ComputedState, capture, invalidate};

use crate::lab::{
    BUCKET, Lab, PATIENCE, SLOW, checked_label_of, label_of, not_left_stale, settle, top_of,
};

/// (a) The recomputation read `value(1) == 3` (odd, as before) and is held; `value(1)` then
/// becomes 4 (even) and is invalidated: the recomputation's result is out of date before it is
/// compared, so the label cannot be kept as computed from it.
#[tokio::test]
async fn a_dependency_invalidated_during_the_recomputation_reaches_the_dependents() {
    let lab = Lab::new();
    let (label, computed) = capture(lab.label(1)).await.unwrap();
    assert_eq!(label, "1 is odd");

    lab.set(1, 3);
    lab.gates.hold(1);
    invalidate! { lab.value(1); }
    lab.gates.entered(1).await; // parity's recomputation read 3 and waits
    lab.set(1, 4);
    invalidate! { lab.value(1); }
    lab.gates.release(1);
    lab.consolidations("parity", 1).await;

    not_left_stale(&computed, &label, &label_of(1, 4)).await;
    settle(|| lab.label(1), "1 is even").await;
}

/// (a) The same, with the consolidating value itself invalidated during its recomputation
/// (`invalidate!` of `parity(1)` and of the value it read).
#[tokio::test]
async fn the_consolidating_value_invalidated_during_its_recomputation_reaches_the_dependents() {
    let lab = Lab::new();
    let (label, computed) = capture(lab.label(5)).await.unwrap();

    lab.set(5, 7);
    lab.gates.hold(5);
    invalidate! { lab.value(5); }
    lab.gates.entered(5).await;
    lab.set(5, 8);
    invalidate! { lab.parity(5); lab.value(5); }
    lab.gates.release(5);
    lab.consolidations("parity", 1).await;

    not_left_stale(&computed, &label, &label_of(5, 8)).await;
    settle(|| lab.label(5), "5 is even").await;
}

/// (b) The dependent is invalidated and recomputed while the consolidation runs; the
/// consolidation finds the value unchanged. The new dependent is still reached by the next
/// change.
#[tokio::test]
async fn a_dependent_recomputed_during_the_recomputation_is_reached_by_the_next_change() {
    let lab = Lab::new();
    let (_, first) = capture(lab.label(3)).await.unwrap();

    lab.set(3, 5);
    lab.gates.hold(3);
    invalidate! { lab.value(3); }
    lab.gates.entered(3).await;
    invalidate! { lab.label(3); }
    assert_eq!(first.state(), ComputedState::Invalidated);
    let reader = tokio::spawn({
        let lab = Arc::clone(&lab);
        async move { capture(lab.label(3)).await.unwrap() }
    });
    tokio::task::yield_now().await;
    lab.gates.release(3);
    let (label, second) = tokio::time::timeout(PATIENCE, reader)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(label, "3 is odd");
    lab.consolidations("parity", 1).await;
    assert_eq!(first.state(), ComputedState::Invalidated, "not revived");

    lab.set(3, 6);
    invalidate! { lab.value(3); }
    not_left_stale(&second, &label, &label_of(3, 6)).await;
    settle(|| lab.label(3), "3 is even").await;
}

/// (c) The dependent is read while the consolidation runs: served as it was (documented), then
/// invalidated when the new value differs.
#[tokio::test]
async fn a_dependent_read_during_the_recomputation_is_served_then_invalidated() {
    let lab = Lab::new();
    let (label, computed) = capture(lab.label(7)).await.unwrap();

    lab.set(7, 8);
    lab.gates.hold(7);
    invalidate! { lab.value(7); }
    lab.gates.entered(7).await;
    assert_eq!(lab.label(7).await, "7 is odd", "served as it was meanwhile");
    assert!(computed.is_consistent());
    lab.gates.release(7);
    lab.consolidations("parity", 1).await;
    assert_eq!(computed.state(), ComputedState::Invalidated);
    assert_eq!(label, "7 is odd");
    assert_eq!(lab.label(7).await, "7 is even");
}

/// (c) A reader that computes a new dependent while the consolidation runs gets the new value,
/// and the old dependent is invalidated.
#[tokio::test]
async fn a_new_dependent_computed_during_the_recomputation_gets_the_new_value() {
    let lab = Lab::new();
    let (label, computed) = capture(lab.label(9)).await.unwrap();

    lab.set(9, 10);
    lab.gates.hold(9);
    invalidate! { lab.value(9); }
    lab.gates.entered(9).await;
    let reader = tokio::spawn({
        let lab = Arc::clone(&lab);
        async move { lab.slow_label(9).await }
    });
    tokio::task::yield_now().await;
    lab.gates.release(9);
    assert_eq!(
        tokio::time::timeout(PATIENCE, reader)
            .await
            .unwrap()
            .unwrap(),
        "9 is even"
    );
    lab.consolidations("parity", 1).await;
    not_left_stale(&computed, &label, "9 is even").await;
    settle(|| lab.slow_label(9), "9 is even").await;
}

/// (b) A dependent still computing when the consolidation adopts it (unchanged value) ends
/// consistent, and the next change still reaches it.
#[tokio::test]
async fn a_dependent_computing_across_an_unchanged_consolidation_is_reached_by_the_next_change() {
    let lab = Lab::new();
    lab.gates.hold(SLOW + 11);
    let reader = tokio::spawn({
        let lab = Arc::clone(&lab);
        async move { capture(lab.slow_label(11)).await.unwrap() }
    });
    lab.gates.entered(SLOW + 11).await; // slow_label read parity(11) == 1, and waits

    lab.set(11, 13);
    invalidate! { lab.value(11); }
    lab.consolidations("parity", 1).await; // unchanged: slow_label adopted
    lab.gates.release(SLOW + 11);
    let (label, computed) = tokio::time::timeout(PATIENCE, reader)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(label, "11 is odd");

    lab.set(11, 14);
    invalidate! { lab.value(11); }
    lab.consolidations("parity", 2).await;
    not_left_stale(&computed, &label, &label_of(11, 14)).await;
    settle(|| lab.slow_label(11), "11 is even").await;
}

/// (b) A dependent still computing when the consolidation finds a change is not cached.
#[tokio::test]
async fn a_dependent_computing_across_a_changed_consolidation_is_not_cached() {
    let lab = Lab::new();
    lab.gates.hold(SLOW + 12);
    let reader = tokio::spawn({
        let lab = Arc::clone(&lab);
        async move { capture(lab.slow_label(12)).await.unwrap() }
    });
    lab.gates.entered(SLOW + 12).await;

    lab.set(12, 13);
    invalidate! { lab.value(12); }
    lab.consolidations("parity", 1).await; // changed
    lab.gates.release(SLOW + 12);
    let (label, computed) = tokio::time::timeout(PATIENCE, reader)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(label, "12 is even", "computed before the change");
    assert_eq!(computed.state(), ComputedState::Invalidated);
    assert_eq!(lab.slow_label(12).await, "12 is odd");
}

/// A dependent of two consolidating values, one changed and one not: the changed one
/// invalidates it first, then the unchanged one's adoption must not bring it back.
#[tokio::test]
async fn an_adoption_after_an_invalidation_does_not_revive_the_dependent() {
    let lab = Lab::new();
    let (both, computed) = capture(lab.both(13, 14)).await.unwrap();
    assert_eq!(both, (1, 0));

    lab.set(13, 15); // unchanged
    lab.set(14, 15); // changed
    lab.gates.hold(13);
    lab.gates.hold(14);
    invalidate! { lab.value(13); lab.value(14); }
    lab.gates.entered(13).await;
    lab.gates.entered(14).await;
    lab.gates.release(14);
    lab.consolidations("parity", 1).await;
    assert_eq!(computed.state(), ComputedState::Invalidated);
    lab.gates.release(13);
    lab.consolidations("parity", 2).await;
    assert_eq!(computed.state(), ComputedState::Invalidated, "not revived");
    let (both, fresh) = capture(lab.both(13, 14)).await.unwrap();
    assert_eq!(both, (1, 1));

    // Both edges of the new dependent are live.
    lab.set(13, 16);
    invalidate! { lab.value(13); }
    lab.consolidations("parity", 3).await;
    assert_eq!(fresh.state(), ComputedState::Invalidated);
    assert_eq!(lab.both(13, 14).await, (0, 1));
}

/// (d) `top` reads `bucket_parity` (consolidating) reads `bucket` (consolidating) reads
/// `value`: every change stops where the value stops changing, and every later change still
/// reaches `top`.
#[tokio::test]
async fn a_chain_of_consolidating_methods_follows_every_change() {
    let lab = Lab::new();
    lab.set(20, 10);
    let (mut served, mut computed) = capture(lab.top(20)).await.unwrap();
    assert_eq!(served, top_of(20, 10));
    let mut buckets = 0;
    let mut parities = 0;
    // 15: same bucket; 25: bucket and parity change; 45: bucket changes, parity not; 47 and
    // 65: same again; 75: parity changes; 70; 10: parity changes.
    for v in [15, 25, 45, 47, 65, 75, 70, 10] {
        let before = lab.get(20);
        lab.set(20, v);
        invalidate! { lab.value(20); }
        buckets += 1;
        lab.consolidations("bucket", buckets).await;
        if before / 10 != v / 10 {
            parities += 1;
            lab.consolidations("bucket_parity", parities).await;
        }
        not_left_stale(&computed, &served, &top_of(20, v)).await;
        if served == top_of(20, v) {
            assert!(computed.is_consistent(), "{v}: an unchanged top is kept");
        }
        computed = settle(|| lab.top(20), &top_of(20, v)).await;
        served = top_of(20, v);
    }
}

/// (d) The chain, with the inner recomputation held while the leaf changes twice.
#[tokio::test]
async fn a_chain_with_its_inner_recomputation_overtaken_settles_to_fresh_values() {
    let lab = Lab::new();
    lab.set(21, 10);
    let (served, computed) = capture(lab.top(21)).await.unwrap();

    lab.set(21, 15); // same bucket
    lab.gates.hold(BUCKET + 21);
    invalidate! { lab.value(21); }
    lab.gates.entered(BUCKET + 21).await;
    lab.set(21, 25); // bucket 2: parity 0
    invalidate! { lab.value(21); }
    lab.gates.release(BUCKET + 21);
    lab.consolidations("bucket", 1).await;

    not_left_stale(&computed, &served, &top_of(21, 25)).await;
    settle(|| lab.top(21), &top_of(21, 25)).await;
}

/// (e) The value flips (1 → 2) and flips back (→ 3) while the recomputation that saw 2 is held.
#[tokio::test]
async fn a_value_that_flips_and_flips_back_during_the_recomputation_settles() {
    let lab = Lab::new();
    let (label, computed) = capture(lab.label(15)).await.unwrap();

    lab.set(15, 16);
    lab.gates.hold(15);
    invalidate! { lab.value(15); }
    lab.gates.entered(15).await; // saw 16: even
    lab.set(15, 17);
    invalidate! { lab.value(15); }
    lab.gates.release(15);
    lab.consolidations("parity", 1).await;

    not_left_stale(&computed, &label, &label_of(15, 17)).await;
    settle(|| lab.label(15), "15 is odd").await;
    // And the next change still arrives.
    let (_, computed) = capture(lab.label(15)).await.unwrap();
    lab.set(15, 18);
    invalidate! { lab.value(15); }
    tokio::time::timeout(PATIENCE, computed.when_invalidated())
        .await
        .expect("the next change reaches the label");
}

/// (e) Even → odd → even, flipped back before the recomputation compares: the label may be
/// kept, but must be right.
#[tokio::test]
async fn a_value_that_flips_back_to_what_the_dependents_saw_settles() {
    let lab = Lab::new();
    let (label, computed) = capture(lab.label(16)).await.unwrap();
    assert_eq!(label, "16 is even");

    lab.set(16, 17);
    lab.gates.hold(16);
    invalidate! { lab.value(16); }
    lab.gates.entered(16).await; // saw 17: odd
    lab.set(16, 18);
    invalidate! { lab.value(16); }
    lab.gates.release(16);
    lab.consolidations("parity", 1).await;
    settle(|| lab.label(16), "16 is even").await;
    // Whatever became of the first label, a change reaches the label now cached.
    let (_, now) = capture(lab.label(16)).await.unwrap();
    lab.set(16, 19);
    invalidate! { lab.value(16); }
    tokio::time::timeout(PATIENCE, now.when_invalidated())
        .await
        .expect("the next change reaches the label");
    drop(computed);
}

/// `Err` results compare too: `Ok` → `Err` → `Err` → `Ok`, every dependent right after each.
#[tokio::test]
async fn results_that_become_errors_and_back_reach_the_dependents() {
    let lab = Lab::new();
    let (mut served, mut computed) = capture(lab.checked_label(22)).await.unwrap();
    for v in [0, 0, 24, 26, 0, 27] {
        lab.set(22, v);
        invalidate! { lab.value(22); }
        not_left_stale(&computed, &served, &checked_label_of(22, v)).await;
        computed = settle(|| lab.checked_label(22), &checked_label_of(22, v)).await;
        served = checked_label_of(22, v);
    }
}

/// An `Err` expires (error lifetime 100ms) and is recomputed equal: its dependent is kept, as
/// computed from the new `Err`, and so is still reached when the value heals.
#[tokio::test]
async fn a_dependent_kept_through_an_error_expiry_is_reached_when_the_value_heals() {
    let lab = Lab::new();
    lab.set(23, 0);
    let (served, computed) = capture(lab.checked_label(23)).await.unwrap();
    assert_eq!(served, "23: zero");
    lab.consolidations("checked", 1).await; // the error expired, and was recomputed equal
    assert!(
        computed.is_consistent(),
        "an equal error keeps the dependent"
    );
    lab.set(23, 5);
    invalidate! { lab.value(23); }
    not_left_stale(&computed, &served, "23: 1").await;
    settle(|| lab.checked_label(23), "23: 1").await;
}

/// (f) Many concurrent invalidations on a multi-thread runtime, with readers; once the writers
/// stop, every value read is what a fresh computation returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_invalidations_settle_to_fresh_values() {
    const KEYS: usize = 8;
    /// Reads the readers make during the writes, at least (the writers go on until they have).
    const READS: usize = 200;
    let lab = Lab::new();
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for writer in 0..4_u64 {
        let lab = Arc::clone(&lab);
        let reads = Arc::clone(&reads);
        tasks.push(tokio::spawn(async move {
            let mut seed = 0x9e37_79b9_7f4a_7c15_u64 ^ writer;
            // 3,000 writes each, and more while the readers have not read enough (however the
            // machine's load shares the two threads between them).
            let mut written = 0;
            while written < 3_000 || reads.load(Ordering::SeqCst) < READS {
                written += 1;
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let k = 24 + (seed as usize % KEYS);
                lab.set(k, (seed >> 8) % 40);
                invalidate! { lab.value(k); }
                if seed.is_multiple_of(7) {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    let mut readers = Vec::new();
    for reader in 0..2_usize {
        let lab = Arc::clone(&lab);
        let stop = Arc::clone(&stop);
        let reads = Arc::clone(&reads);
        readers.push(tokio::spawn(async move {
            let mut i = reader;
            let mut handles = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let k = 24 + i % KEYS;
                handles.push((k, true, capture(lab.label(k)).await.unwrap()));
                handles.push((k, false, capture(lab.top(k)).await.unwrap()));
                lab.both(k, 24 + (i + 1) % KEYS).await;
                reads.fetch_add(2, Ordering::SeqCst);
                if i.is_multiple_of(5) {
                    invalidate! { lab.parity(k); lab.bucket(k); }
                }
                i += 1;
                tokio::task::yield_now().await;
            }
            handles
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    let mut handles = Vec::new();
    for reader in readers {
        handles.extend(reader.await.unwrap());
    }
    assert!(handles.len() >= READS, "{} reads", handles.len());

    // Every value read during the run that is still consistent is what a fresh computation
    // returns (or gets invalidated).
    for (k, is_label, (served, computed)) in &handles {
        let fresh = if *is_label {
            label_of(*k, lab.get(*k))
        } else {
            top_of(*k, lab.get(*k))
        };
        not_left_stale(computed, served, &fresh).await;
    }
    for k in 24..24 + KEYS {
        let v = lab.get(k);
        settle(|| lab.label(k), &label_of(k, v)).await;
        settle(|| lab.top(k), &top_of(k, v)).await;
        let next = 24 + (k - 24 + 1) % KEYS;
        let expected = format!("{:?}", (v % 2, lab.get(next) % 2));
        settle(
            || async { format!("{:?}", lab.both(k, next).await) },
            &expected,
        )
        .await;
    }
}

/// Dropping the test's `Arc` of the service while its consolidation is held: the consolidation
/// ends, and a changed value still reaches the dependents.
#[tokio::test]
async fn dropping_the_service_during_a_consolidation_leaves_no_stale_dependent() {
    let lab = Lab::new();
    let hub = lab.hub.clone();
    let gates = Arc::clone(&lab.gates);
    let (label, computed) = capture(lab.label(40)).await.unwrap();

    lab.set(40, 41);
    gates.hold(40);
    invalidate! { lab.value(40); }
    gates.entered(40).await;
    drop(lab);
    gates.release(40);
    not_left_stale(&computed, &label, &label_of(40, 41)).await;
    drop(hub);
}

/// Dropping the service and the hub while the consolidation is held.
#[tokio::test]
async fn dropping_the_service_and_its_hub_during_a_consolidation_leaves_no_stale_dependent() {
    let lab = Lab::new();
    let gates = Arc::clone(&lab.gates);
    let (label, computed) = capture(lab.label(43)).await.unwrap();

    lab.set(43, 44);
    gates.hold(43);
    invalidate! { lab.value(43); }
    gates.entered(43).await;
    drop(lab);
    gates.release(43);
    not_left_stale(&computed, &label, &label_of(43, 44)).await;
}

/// A dropped service cannot recompute: its method's invalidation must reach the dependents.
#[tokio::test]
async fn a_consolidating_value_of_a_dropped_service_invalidates_its_dependents() {
    let lab = Lab::new();
    let hub = lab.hub.clone();
    let (_, parity) = capture(lab.parity(41)).await.unwrap();
    let (_, label) = capture(lab.label(41)).await.unwrap();
    assert!(label.dependencies().iter().any(|d| d.ptr_eq(&parity)));
    drop(lab);
    parity.invalidate();
    tokio::time::timeout(PATIENCE, label.when_invalidated())
        .await
        .expect("the dependents of a value that cannot be recomputed are invalidated");
    drop(hub);
}

/// "If the recomputation panics or is cancelled, the dependents are invalidated": the runtime
/// running a held recomputation shuts down.
#[test]
fn a_recomputation_cancelled_by_the_runtime_shutting_down_invalidates_the_dependents() {
    let lab = Lab::new();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (_, computed) = runtime.block_on(capture(lab.label(42))).unwrap();
    lab.set(42, 44); // unchanged: only the cancellation can invalidate the label
    lab.gates.hold(42);
    runtime.block_on(async {
        invalidate! { lab.value(42); }
        lab.gates.entered(42).await;
    });
    drop(runtime);
    assert_eq!(computed.state(), ComputedState::Invalidated);
}

/// After an unchanged consolidation the kept dependent is "computed from the new one": its
/// dependency is the value now cached, and consistent.
#[tokio::test]
async fn a_kept_dependent_depends_on_the_value_now_cached() {
    let lab = Lab::new();
    let (_, label) = capture(lab.label(44)).await.unwrap();
    lab.set(44, 46);
    invalidate! { lab.value(44); }
    lab.consolidations("parity", 1).await;
    assert!(label.is_consistent());
    let (_, parity) = capture(lab.parity(44)).await.unwrap();
    let dependencies = label.dependencies();
    assert!(
        dependencies.iter().any(|d| d.ptr_eq(&parity)),
        "{dependencies:?} does not hold the cached {parity:?}"
    );
    assert!(
        dependencies.iter().all(|d| d.is_consistent()),
        "{dependencies:?}"
    );
    assert!(parity.dependents().iter().any(|d| d.ptr_eq(&label)));
}

/// `invalidate_everything` while a consolidation is held: the dependents go at once and the
/// consolidation's end does not bring them back; a dependent computed afterwards follows the
/// next change.
#[tokio::test]
async fn invalidate_everything_during_a_consolidation_is_not_undone() {
    let lab = Lab::new();
    let (_, first) = capture(lab.label(45)).await.unwrap();
    lab.set(45, 47);
    lab.gates.hold(45);
    invalidate! { lab.value(45); }
    lab.gates.entered(45).await;
    lab.hub.invalidate_everything();
    assert_eq!(first.state(), ComputedState::Invalidated);
    let (served, second) = capture(lab.label(45)).await.unwrap();
    assert_eq!(served, "45 is odd");
    lab.gates.release(45);
    lab.consolidations("parity", 1).await;
    assert_eq!(first.state(), ComputedState::Invalidated, "not revived");
    lab.set(45, 48);
    invalidate! { lab.value(45); }
    not_left_stale(&second, &served, "45 is even").await;
    settle(|| lab.label(45), "45 is even").await;
}

/// Eviction of what the held recomputation read (capacity 4, values in use beyond it): the
/// consolidation may keep or drop the label, but a later change must still reach whatever
/// label is cached.
#[tokio::test]
async fn eviction_during_a_consolidation_leaves_the_dependents_reachable() {
    let lab = Lab::small(4);
    let (_, first) = capture(lab.label(46)).await.unwrap();
    lab.set(46, 48); // unchanged
    lab.gates.hold(46);
    invalidate! { lab.value(46); }
    lab.gates.entered(46).await;
    for k in 0..16 {
        lab.value(k).await;
    }
    lab.gates.release(46);
    lab.consolidations("parity", 1).await;
    for k in 16..24 {
        lab.value(k).await;
    }
    let (_, cached) = capture(lab.label(46)).await.unwrap();
    lab.set(46, 49);
    invalidate! { lab.value(46); }
    for computed in [&first, &cached] {
        if computed.is_consistent() {
            tokio::time::timeout(PATIENCE, computed.when_invalidated())
                .await
                .unwrap_or_else(|_| panic!("{computed:?} not reached by the change"));
        }
    }
    settle(|| lab.label(46), "46 is odd").await;
}

/// Unchanged consolidations, round after round, do not pile up in the kept dependent: it is
/// computed from the latest value only, and the values it replaced are freed. Freed when the
/// cache's map reclaims them: a removed entry is dropped once its bucket needs the room and the
/// readers that might see it moved on (threads of other tests reading meanwhile put that off),
/// so a few dozen superseded values may still be alive; the rounds go on until the count is
/// back under a bound, which a count growing with the rounds never gets.
#[tokio::test]
async fn a_kept_dependent_does_not_keep_superseded_values_alive() {
    const FEW: u64 = 2 + 64;
    let lab = Lab::new();
    let (_, label) = capture(lab.tracked_label(47)).await.unwrap();
    let mut round = 0_u64;
    loop {
        round += 1;
        lab.set(47, 47 + 2 * round);
        invalidate! { lab.value(47); }
        lab.consolidations("tracked_parity", round).await;
        if round >= 200 && lab.live.load(Ordering::SeqCst) <= FEW {
            break;
        }
        if round == 5_000 {
            break;
        }
    }
    assert!(label.is_consistent());
    let dependencies = label.dependencies();
    let live = lab.live.load(Ordering::SeqCst);
    assert!(
        live <= FEW && dependencies.len() == 1,
        "{live} live values of tracked_parity(47) after {round} rounds; the label has {} \
         dependencies, {} of them invalidated",
        dependencies.len(),
        dependencies.iter().filter(|d| !d.is_consistent()).count()
    );
}

/// `consolidate` with `invalidation_delay`: the change is carried out after the delay, then
/// consolidated; an unchanged value keeps its dependents and a changed one reaches them.
#[tokio::test(start_paused = true)]
async fn a_delayed_consolidating_value_settles_to_fresh_values() {
    let lab = Lab::new();
    let (served, computed) = capture(lab.delayed_label(50)).await.unwrap();
    assert_eq!(served, "50 is even");
    lab.set(50, 52);
    invalidate! { lab.value(50); }
    lab.delayed_consolidations(1).await;
    assert!(computed.is_consistent(), "unchanged: kept");
    lab.set(50, 53);
    invalidate! { lab.value(50); }
    lab.delayed_consolidations(2).await;
    not_left_stale(&computed, &served, "50 is odd").await;
    settle(|| lab.delayed_label(50), "50 is odd").await;
}
