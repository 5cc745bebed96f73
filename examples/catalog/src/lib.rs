//! A product catalog in a transactional map (`sku → Product`), with a secondary index
//! (`category → skus`, sorted) kept exact on every host by the map's ordered change
//! notifications: the materialized-view pattern of `ofx_diesel::maps`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), catalog::CatalogError> {
//! use catalog::{AddProduct, CatalogFiles, Host, Product};
//!
//! let files = CatalogFiles::temporary();
//! let a = Host::open("a", &files).await?;
//! let b = Host::open("b", &files).await?;
//! a.commander()
//!     .call(AddProduct { sku: "tea-1".into(), product: Product::new("Green tea", "tea", 450) })
//!     .await?;
//! b.maps.sync().await?;
//! assert_eq!(b.catalog.skus_in("tea"), vec!["tea-1".to_owned()]);
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use ofx_core::{
    Command, CommandContext, Commander, ComputeService, Hub, ScopeFuture, command_handler, service,
};
use ofx_diesel::maps::{
    ManagerObserver, MapAction, MapChange, MapManager, MapObserver, Rebuild, ReliableMap,
    TransactionCommitted,
};
use ofx_diesel::{DbHub, DbSettings, Sqlite};
use ofx_watchers::FsWatcher;
use serde::{Deserialize, Serialize};

/// The map's name.
pub const PRODUCTS: &str = "catalog.products";

/// A product.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    /// Its name.
    pub name: String,
    /// Its category: what the index is by.
    pub category: String,
    /// Its price, in cents.
    pub price_cents: i64,
}

impl Product {
    /// A product.
    pub fn new(name: &str, category: &str, price_cents: i64) -> Self {
        Self {
            name: name.to_owned(),
            category: category.to_owned(),
            price_cents,
        }
    }
}

/// What the catalog's commands fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CatalogError {
    /// No product has this sku.
    #[error("no product {0}")]
    Unknown(String),
    /// The database (a typed map error among them: `MapKeyExists` for a sku added twice).
    #[error(transparent)]
    Db(#[from] ofx_diesel::Error),
    /// The framework.
    #[error(transparent)]
    Ofx(#[from] ofx_core::Error),
    /// The host's files.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Adds a product (refused with `MapKeyExists` when the sku is taken).
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = (), name = "catalog.add")]
pub struct AddProduct {
    /// Its sku.
    pub sku: String,
    /// The product.
    pub product: Product,
}

/// Moves a product to another category.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = (), name = "catalog.recategorize")]
pub struct Recategorize {
    /// The sku.
    pub sku: String,
    /// The new category.
    pub category: String,
}

/// Removes a product.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = (), name = "catalog.discontinue")]
pub struct Discontinue {
    /// The sku.
    pub sku: String,
}

/// Adds a product, discontinues it and adds it again, in one transaction (Service Fabric's
/// Create, Delete, Create: three notifications, in that order, on every host).
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = (), name = "catalog.reintroduce")]
pub struct Reintroduce {
    /// Its sku.
    pub sku: String,
    /// The product.
    pub product: Product,
}

/// Removes every product.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = (), name = "catalog.clear")]
pub struct ClearCatalog;

/// Replaces the whole catalog (a restore from a backup): every host's index is rebuilt.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = (), name = "catalog.restore")]
pub struct RestoreCatalog {
    /// The products, by sku.
    pub products: BTreeMap<String, Product>,
}

/// The secondary index: category → skus (sorted), kept by the map's notifications.
#[derive(Debug, Clone, Default)]
pub struct CategoryIndex {
    by_category: Arc<Mutex<BTreeMap<String, BTreeSet<String>>>>,
}

impl CategoryIndex {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, BTreeSet<String>>> {
        self.by_category
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The index as it is.
    pub fn snapshot(&self) -> BTreeMap<String, BTreeSet<String>> {
        self.lock().clone()
    }

    /// The index of `products`: what the notifications must keep it equal to.
    pub fn of(products: &[(String, Product)]) -> BTreeMap<String, BTreeSet<String>> {
        let mut index: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (sku, product) in products {
            index
                .entry(product.category.clone())
                .or_default()
                .insert(sku.clone());
        }
        index
    }

    fn remove(index: &mut BTreeMap<String, BTreeSet<String>>, category: &str, sku: &str) {
        if let Some(skus) = index.get_mut(category) {
            skus.remove(sku);
            if skus.is_empty() {
                index.remove(category);
            }
        }
    }
}

impl MapObserver<String, Product> for CategoryIndex {
    // Fast and synchronous: a few tree operations under a lock.
    fn changed(&self, change: &MapChange<String, Product>) {
        let mut index = self.lock();
        match &change.action {
            MapAction::Add { key, value } => {
                index
                    .entry(value.category.clone())
                    .or_default()
                    .insert(key.clone());
            }
            MapAction::Update { key, old, new } => {
                Self::remove(&mut index, &old.category, key);
                index
                    .entry(new.category.clone())
                    .or_default()
                    .insert(key.clone());
            }
            MapAction::Remove { key, old } => Self::remove(&mut index, &old.category, key),
            MapAction::Clear => index.clear(),
            // New actions may come: this index would not know them.
            _ => {}
        }
    }

    fn rebuild(&self, mut entries: Rebuild<String, Product>) -> ScopeFuture<'_, ()> {
        Box::pin(async move {
            let mut fresh: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            while let Some((sku, product)) = entries.next().await {
                fresh.entry(product.category).or_default().insert(sku);
            }
            *self.lock() = fresh;
        })
    }
}

/// Counts the transactions this host was told of, with the last commit sequence number.
#[derive(Debug, Clone, Default)]
pub struct Transactions {
    seen: Arc<Mutex<Vec<TransactionCommitted>>>,
}

impl Transactions {
    /// Every transaction told, in order.
    pub fn all(&self) -> Vec<TransactionCommitted> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl ManagerObserver for Transactions {
    fn transaction_committed(&self, committed: &TransactionCommitted) {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(committed.clone());
    }
}

/// The catalog service: commands write the map; reads go through its compute methods or the
/// index.
#[derive(Debug)]
pub struct Catalog {
    hub: Hub,
    products: ReliableMap<String, Product, Sqlite>,
    index: CategoryIndex,
}

impl ComputeService for Catalog {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

#[service]
impl Catalog {
    #[command_handler]
    async fn add(&self, command: AddProduct, ctx: &CommandContext) -> Result<(), CatalogError> {
        self.products
            .add(ctx, &command.sku, &command.product)
            .await?;
        Ok(())
    }

    #[command_handler]
    async fn recategorize(
        &self,
        command: Recategorize,
        ctx: &CommandContext,
    ) -> Result<(), CatalogError> {
        let Some(mut product) = self.products.get_in(ctx, &command.sku).await? else {
            return Err(CatalogError::Unknown(command.sku));
        };
        product.category = command.category;
        self.products.update(ctx, &command.sku, &product).await?;
        Ok(())
    }

    #[command_handler]
    async fn discontinue(
        &self,
        command: Discontinue,
        ctx: &CommandContext,
    ) -> Result<(), CatalogError> {
        match self.products.remove(ctx, &command.sku).await? {
            Some(_) => Ok(()),
            None => Err(CatalogError::Unknown(command.sku)),
        }
    }

    #[command_handler]
    async fn reintroduce(
        &self,
        command: Reintroduce,
        ctx: &CommandContext,
    ) -> Result<(), CatalogError> {
        self.products
            .add(ctx, &command.sku, &command.product)
            .await?;
        self.products.remove(ctx, &command.sku).await?;
        self.products
            .add(ctx, &command.sku, &command.product)
            .await?;
        Ok(())
    }

    #[command_handler]
    async fn clear(
        &self,
        _command: ClearCatalog,
        ctx: &CommandContext,
    ) -> Result<(), CatalogError> {
        self.products.clear(ctx).await?;
        Ok(())
    }

    #[command_handler]
    async fn restore(
        &self,
        command: RestoreCatalog,
        ctx: &CommandContext,
    ) -> Result<(), CatalogError> {
        self.products.restore(ctx, command.products).await?;
        Ok(())
    }
}

impl Catalog {
    /// The skus of `category`, sorted (from the index: this host's view, exact once the
    /// host has delivered every committed change).
    pub fn skus_in(&self, category: &str) -> Vec<String> {
        self.index
            .lock()
            .get(category)
            .map(|skus| skus.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The index.
    pub fn index(&self) -> &CategoryIndex {
        &self.index
    }

    /// A product (a compute method of the map: cached, invalidated on every host).
    ///
    /// # Errors
    /// A database error.
    pub async fn product(&self, sku: &str) -> Result<Option<Product>, Arc<ofx_diesel::Error>> {
        self.products.get(&sku.to_owned()).await
    }

    /// Every product, by sku, read from the table (what the index must match).
    ///
    /// # Errors
    /// A database error.
    pub async fn all_products(&self) -> Result<Vec<(String, Product)>, Arc<ofx_diesel::Error>> {
        self.products.entries().await
    }
}

/// The files two hosts share: the SQLite database and the watcher's directory.
#[derive(Debug)]
pub struct CatalogFiles {
    /// The database.
    pub database: PathBuf,
    /// The directory the hosts' [`FsWatcher`]s share.
    pub watch_dir: PathBuf,
}

impl CatalogFiles {
    /// Fresh files in the temporary directory, removed on drop.
    pub fn temporary() -> Self {
        let id = uuid::Uuid::new_v4().simple();
        let dir = std::env::temp_dir();
        Self {
            database: dir.join(format!("ofx-catalog-{id}.db")),
            watch_dir: dir.join(format!("ofx-catalog-{id}.watch")),
        }
    }
}

impl Drop for CatalogFiles {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.database.display()));
        }
        let _ = std::fs::remove_dir_all(&self.watch_dir);
    }
}

/// One host: its database handle, map manager, catalog service and transaction log.
#[derive(Debug)]
pub struct Host {
    /// The database.
    pub db: DbHub<Sqlite>,
    /// The map manager.
    pub maps: MapManager<Sqlite>,
    /// The catalog.
    pub catalog: Arc<Catalog>,
    /// The transactions this host was told of.
    pub transactions: Transactions,
}

impl Host {
    /// Opens a host on `files` (woken by the file-system watcher), ready.
    ///
    /// # Errors
    /// The database or the watcher cannot start.
    pub async fn open(name: &str, files: &CatalogFiles) -> Result<Self, CatalogError> {
        std::fs::create_dir_all(&files.watch_dir)?;
        let db =
            DbHub::<Sqlite>::open(&files.database.to_string_lossy(), DbSettings::default()).await?;
        db.set_watcher(FsWatcher::factory(&files.watch_dir, "catalog"))?;
        let maps = MapManager::new(&db);
        let transactions = Transactions::default();
        maps.subscribe(transactions.clone());
        let products = maps.map::<String, Product>(PRODUCTS)?;
        let index = CategoryIndex::default();
        // Before the hub starts: the index gets the start's rebuild, then every change.
        products.subscribe(index.clone());
        let hub = Hub::builder()
            .with(db.clone())
            .with(maps.clone())
            .start()
            .await?;
        let catalog = Arc::new(Catalog {
            hub,
            products,
            index,
        });
        catalog.hub.add_service(&catalog)?;
        maps.ready().await?;
        let _ = name;
        Ok(Self {
            db,
            maps,
            catalog,
            transactions,
        })
    }

    /// The host's commander.
    pub fn commander(&self) -> Commander {
        self.catalog.hub.commander()
    }

    /// Stops the host's background tasks.
    pub fn stop(&self) {
        self.catalog.hub.shutdown_token().cancel();
    }
}
