//! The catalog demo: two hosts on one SQLite file, woken by the file-system watcher; a
//! secondary index (category → skus) on each, kept exact by the map's ordered change
//! notifications; a transaction that adds, removes and re-adds one sku; a restore.

// A demo prints what happens.
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use catalog::{
    AddProduct, CatalogError, CatalogFiles, CategoryIndex, ClearCatalog, Host, Product,
    Recategorize, Reintroduce, RestoreCatalog,
};

fn show(host: &str, index: &CategoryIndex) {
    let index = index.snapshot();
    let parts: Vec<String> = index
        .iter()
        .map(|(category, skus)| {
            format!(
                "{category}: {}",
                skus.iter().cloned().collect::<Vec<_>>().join(", ")
            )
        })
        .collect();
    println!("   {host}'s index: {{{}}}", parts.join("; "));
}

/// Waits until `host`'s index equals the index of the table.
async fn converged(host: &Host) -> Result<Duration, CatalogError> {
    let start = Instant::now();
    host.maps.sync().await?;
    let table = host
        .catalog
        .all_products()
        .await
        .map_err(|error| CatalogError::Unknown(error.to_string()))?;
    assert_eq!(
        host.catalog.index().snapshot(),
        CategoryIndex::of(&table),
        "the index is the index of the table"
    );
    Ok(start.elapsed())
}

#[tokio::main]
async fn main() -> Result<(), CatalogError> {
    let files = CatalogFiles::temporary();
    println!("catalog: two hosts on {}", files.database.display());
    let a = Host::open("a", &files).await?;
    let b = Host::open("b", &files).await?;

    println!("\n1. products added on host A");
    for (sku, name, category, price) in [
        ("tea-1", "Green tea", "tea", 450),
        ("tea-2", "Black tea", "tea", 390),
        ("cof-1", "Espresso beans", "coffee", 1290),
    ] {
        a.commander()
            .call(AddProduct {
                sku: sku.into(),
                product: Product::new(name, category, price),
            })
            .await?;
    }
    show("A", a.catalog.index());
    let waited = converged(&b).await?;
    show("B", b.catalog.index());
    println!("   B caught up in {:.1} ms", waited.as_secs_f64() * 1e3);

    println!("\n2. a product moved to another category on host B");
    b.commander()
        .call(Recategorize {
            sku: "tea-2".into(),
            category: "breakfast".into(),
        })
        .await?;
    converged(&a).await?;
    show("A", a.catalog.index());
    println!(
        "   product(tea-2) on A: {:?}",
        a.catalog
            .product("tea-2")
            .await
            .map_err(|error| CatalogError::Unknown(error.to_string()))?
    );

    println!(
        "\n3. one transaction adds, discontinues and re-adds a sku: three notifications, in order"
    );
    a.commander()
        .call(Reintroduce {
            sku: "cof-2".into(),
            product: Product::new("Filter coffee", "coffee", 990),
        })
        .await?;
    converged(&b).await?;
    let on_a = a.transactions.all();
    let on_b = b.transactions.all();
    println!(
        "   commit sequence numbers on A: {:?}",
        on_a.iter().map(|t| t.sequence).collect::<Vec<_>>()
    );
    println!(
        "   commit sequence numbers on B: {:?} (the same transactions: {})",
        on_b.iter().map(|t| t.sequence).collect::<Vec<_>>(),
        on_a == on_b
    );
    if let Some(last) = on_b.last() {
        println!(
            "   the last transaction on B: {} changes (add, remove, add), sequence {}",
            last.changes, last.sequence
        );
    }
    show("B", b.catalog.index());

    println!("\n4. a sku added twice is refused (typed error, nothing written)");
    let refused = a
        .commander()
        .call(AddProduct {
            sku: "tea-1".into(),
            product: Product::new("Again", "tea", 1),
        })
        .await;
    println!(
        "   {}",
        refused.err().map(|e| e.to_string()).unwrap_or_default()
    );

    println!("\n5. a restore from a backup: every host's index is rebuilt");
    let backup: BTreeMap<String, Product> = [
        ("tea-9".to_owned(), Product::new("Oolong", "tea", 800)),
        (
            "choc-1".to_owned(),
            Product::new("Dark chocolate", "sweets", 350),
        ),
    ]
    .into_iter()
    .collect();
    b.commander()
        .call(RestoreCatalog { products: backup })
        .await?;
    converged(&a).await?;
    converged(&b).await?;
    show("A", a.catalog.index());
    show("B", b.catalog.index());
    println!("   A's status: {:?}", a.maps.status());

    b.commander().call(ClearCatalog).await?;
    converged(&a).await?;
    show("A (after clear)", a.catalog.index());
    a.stop();
    b.stop();
    Ok(())
}
