//! The materialized-view pattern under attack: a secondary index kept by an observer on each
//! of three hosts equals the index of the table after random concurrent writes (nested
//! commands, failures, clears, restores) while the log is trimmed again and again under a host
//! that follows only when it writes or syncs.

use std::time::Duration;

use ofx_diesel::maps::MapSettings;
use rand::{Rng, SeedableRng};

use crate::kit::{
    Host, Index, Op, Sql, Step, VALUES, assert_redo_order, deaf, run_on, table, values,
};

backend_tests! {
    an_index_stays_exact_through_writes_trims_and_restores =>
        sqlite_an_index_stays_exact_through_writes_trims_and_restores,
        postgres_an_index_stays_exact_through_writes_trims_and_restores;
    an_index_stays_exact_with_the_followers_own_trims =>
        sqlite_an_index_stays_exact_with_the_followers_own_trims,
        postgres_an_index_stays_exact_with_the_followers_own_trims;
}

/// The followers trim by themselves (a retention of 1 ms, a trim every 20 ms) while writers
/// write on three hosts, one of them deaf: every index equals the table's.
async fn an_index_stays_exact_with_the_followers_own_trims<B: Sql>(url: &str) {
    let indexes = [Index::default(), Index::default(), Index::default()];
    let mut trimming = MapSettings::default();
    trimming.change_retention = Some(Duration::from_millis(1));
    trimming.trim_period = Duration::from_millis(20);
    let mut deaf_trimming = trimming.clone();
    deaf_trimming.poll_period = deaf().poll_period;
    deaf_trimming.read_batch = 4;
    let open = |settings: MapSettings, index: &Index| {
        let index = index.clone();
        Host::<B>::open_with(url, settings, move |maps| {
            maps.map::<String, i64>(VALUES).unwrap().subscribe(index);
        })
    };
    let a = open(trimming.clone(), &indexes[0]).await;
    let b = open(deaf_trimming, &indexes[1]).await;
    let c = open(MapSettings::default(), &indexes[2]).await;
    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..6_u64 {
        let hub = [&a, &b, &c][usize::try_from(writer % 3).unwrap()]
            .hub()
            .clone();
        writers.spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(2000 + writer);
            for _ in 0..50 {
                let _ = run_on(&hub, random_steps(&mut rng, 0)).await;
            }
        });
    }
    while let Some(done) = writers.join_next().await {
        done.unwrap();
    }
    let expected = table(&a.db, VALUES).await;
    for (n, host) in [&a, &b, &c].into_iter().enumerate() {
        host.sync().await;
        assert_eq!(
            indexes[n].snapshot(),
            Index::of(&expected),
            "host {n}'s index ({:?})",
            host.maps.status()
        );
        assert_redo_order(&host.recorder.notes(), false);
        assert_eq!(host.recorder.content(VALUES), expected, "host {n}");
    }
    assert!(
        crate::kit::log_rows(&a.db).await < 20,
        "the followers trimmed the log"
    );
}

fn random_steps(rng: &mut rand::rngs::StdRng, depth: u32) -> Vec<Step> {
    (0..rng.random_range(1..=4))
        .map(|_| {
            let key = format!("k{:02}", rng.random_range(0..40));
            let value = rng.random_range(0..6);
            values(match rng.random_range(0..100) {
                0..35 => Op::Set(key, value),
                35..45 => Op::Add(key, value),
                45..55 => Op::Update(key, value),
                55..72 => Op::Remove(key),
                72..76 => Op::GetOrAdd(key, value),
                76..78 => Op::Clear,
                78..81 => Op::Restore(
                    (0..rng.random_range(0..25))
                        .map(|n| (format!("k{n:02}"), (n + value) % 6))
                        .collect(),
                ),
                81..84 => Op::Fail,
                84..92 if depth < 2 => Op::Nested(random_steps(rng, depth + 1)),
                92..100 if depth < 2 => Op::NestedSwallowed(random_steps(rng, depth + 1)),
                _ => Op::Set(key, value),
            })
        })
        .collect()
}

async fn an_index_stays_exact_through_writes_trims_and_restores<B: Sql>(url: &str) {
    let indexes = [Index::default(), Index::default(), Index::default()];
    let subscribe = |index: &Index| {
        let index = index.clone();
        move |maps: &ofx_diesel::maps::MapManager<B>| {
            maps.map::<String, i64>(VALUES).unwrap().subscribe(index);
        }
    };
    let mut settings = deaf();
    settings.read_batch = 8;
    let a = Host::<B>::open_with(url, MapSettings::default(), subscribe(&indexes[0])).await;
    let b = Host::<B>::open_with(url, settings, subscribe(&indexes[1])).await;
    let c = Host::<B>::open_with(url, MapSettings::default(), subscribe(&indexes[2])).await;
    // Trims while the others write (B is behind: it follows only when it writes): the first
    // writer trims every 12 transactions, in its own loop, so the trims happen however fast
    // the writers go.
    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..6_u64 {
        let hub = [&a, &b, &c][usize::try_from(writer % 3).unwrap()]
            .hub()
            .clone();
        let trimmer = (writer == 0).then(|| a.maps.clone());
        writers.spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(1000 + writer);
            let (mut committed, mut trims) = (0, 0);
            for step in 0..60 {
                if run_on(&hub, random_steps(&mut rng, 0)).await.is_ok() {
                    committed += 1;
                }
                if let Some(maps) = &trimmer
                    && step % 12 == 11
                {
                    maps.trim_changes(Duration::ZERO).await.unwrap();
                    trims += 1;
                }
            }
            (committed, trims)
        });
    }
    let mut trims = 0;
    while let Some(done) = writers.join_next().await {
        let (committed, trimmed) = done.unwrap();
        assert!(committed > 0);
        trims += trimmed;
    }
    assert!(trims > 2, "trimmed while writing ({trims})");
    let expected = table(&a.db, VALUES).await;
    for (n, host) in [&a, &b, &c].into_iter().enumerate() {
        host.sync().await;
        assert_eq!(
            indexes[n].snapshot(),
            Index::of(&expected),
            "host {n}'s index ({:?})",
            host.maps.status()
        );
        assert_redo_order(&host.recorder.notes(), false);
        assert_eq!(host.recorder.content(VALUES), expected, "host {n}");
    }
    // Whether B lost coverage while writing depends on timing (it follows whenever it writes):
    // make sure it does once, deterministically. B is deaf: A's next writes, trimmed before B
    // reads them, are a hole for B.
    for n in 0..3 {
        a.run(vec![values(Op::Set(format!("late{n}"), n))])
            .await
            .unwrap();
    }
    a.maps.trim_changes(Duration::ZERO).await.unwrap();
    let losses = b.maps.status().coverage_losses;
    b.sync().await;
    assert!(b.maps.status().coverage_losses > losses, "B lost coverage");
    let expected = table(&a.db, VALUES).await;
    assert_eq!(
        indexes[1].snapshot(),
        Index::of(&expected),
        "B after its coverage loss"
    );
    // A restore after it all.
    let backup: Vec<(String, i64)> = (0..30).map(|n| (format!("r{n:02}"), n % 4)).collect();
    b.run(vec![
        values(Op::Restore(backup)),
        values(Op::Remove("r03".into())),
    ])
    .await
    .unwrap();
    let expected = table(&a.db, VALUES).await;
    for (n, host) in [&a, &b, &c].into_iter().enumerate() {
        host.sync().await;
        assert_eq!(indexes[n].snapshot(), Index::of(&expected), "host {n}");
    }
}
