//! The catalog's index stays exactly the index of the table: 8 concurrent writers on 2 hosts,
//! then a restore.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use catalog::{
    AddProduct, CatalogFiles, CategoryIndex, Discontinue, Host, Product, Recategorize,
    RestoreCatalog,
};
use rand::{Rng, SeedableRng};

const CATEGORIES: [&str; 4] = ["tea", "coffee", "sweets", "breakfast"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_equals_the_table_after_concurrent_writers_and_a_restore() {
    let files = CatalogFiles::temporary();
    let a = Host::open("a", &files).await.unwrap();
    let b = Host::open("b", &files).await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for writer in 0..8_u64 {
        let commander = if writer % 2 == 0 {
            a.commander()
        } else {
            b.commander()
        };
        tasks.spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(writer);
            for _ in 0..60 {
                let sku = format!("sku-{}", rng.random_range(0..30));
                let category = CATEGORIES[rng.random_range(0..CATEGORIES.len())].to_owned();
                // Refusals (a sku taken, or unknown) are part of the game.
                let _ = match rng.random_range(0..3) {
                    0 => {
                        commander
                            .call(AddProduct {
                                sku,
                                product: Product::new("p", &category, 100),
                            })
                            .await
                    }
                    1 => commander.call(Recategorize { sku, category }).await,
                    _ => commander.call(Discontinue { sku }).await,
                };
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    for host in [&a, &b] {
        host.maps.sync().await.unwrap();
        let table = host.catalog.all_products().await.unwrap();
        assert_eq!(host.catalog.index().snapshot(), CategoryIndex::of(&table));
    }
    assert_eq!(a.transactions.all(), b.transactions.all());

    let backup: BTreeMap<String, Product> = (0..10)
        .map(|n| (format!("r-{n}"), Product::new("r", CATEGORIES[n % 4], 1)))
        .collect();
    a.commander()
        .call(RestoreCatalog { products: backup })
        .await
        .unwrap();
    for host in [&a, &b] {
        host.maps.sync().await.unwrap();
        let table = host.catalog.all_products().await.unwrap();
        assert_eq!(table.len(), 10);
        assert_eq!(host.catalog.index().snapshot(), CategoryIndex::of(&table));
    }
}
