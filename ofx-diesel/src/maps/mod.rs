//! Transactional maps with ordered change notifications on every host (Service Fabric's
//! reliable dictionaries and their notifications, on ofx's operation log).
//!
//! A [`ReliableMap<K, V, B>`] is a typed map stored in the `ofx_map_entries` table, written
//! only inside a command's operation ([`add`](ReliableMap::add),
//! [`update`](ReliableMap::update), [`set`](ReliableMap::set),
//! [`remove`](ReliableMap::remove), [`clear`](ReliableMap::clear),
//! [`get_or_add`](ReliableMap::get_or_add), [`restore`](ReliableMap::restore)). Each write
//! records its change (action, key, old and new value) in the change log (the stream
//! [`MAPS_STREAM`] of `ofx_stream_events`) in the same transaction, so that the change exists
//! exactly when the write does. Reads ([`get`](ReliableMap::get), [`len`](ReliableMap::len),
//! [`entries`](ReliableMap::entries)) are compute methods: every host invalidates them as the
//! changes reach it, with no invalidation branch to write, and the host that committed does
//! before its `call` returns.
//!
//! # Order
//!
//! Map writers queue on one lock per database (PostgreSQL: a transaction-scoped advisory lock;
//! SQLite: its write lock), taken at a transaction's first map write (or
//! [`get_in`](ReliableMap::get_in), so that a read-then-write decides on what it writes over)
//! and held until it commits, so the change log's positions are dense and in commit order. Every host's
//! [`MapManager`] follows the log (woken by the watchers, polling as a safety net) and
//! delivers, on every host the same, in **redo order**:
//!
//! 1. each change of a transaction, in write order, to the observers of its map
//!    ([`MapObserver::changed`]): a transaction that adds X, removes X and adds X again gives
//!    `Add`, `Remove`, `Add`;
//! 2. then [`ManagerObserver::transaction_committed`] with its **commit sequence number**
//!    (the position of its last change: strictly increasing, the same on every host for the
//!    same transaction) and its operation id;
//! 3. transactions one after another, in commit order. The host that wrote gets its own
//!    changes the same way, in the same order, once they are committed.
//!
//! # Rebuild
//!
//! An observer first gets [`MapObserver::rebuild`]: the map's whole content as an async
//! stream ([`Rebuild`]), read from one consistent snapshot of the database, as of a commit
//! sequence number; then every change after it. A rebuild is delivered again when the manager
//! starts (recovery: [`ManagerChange::Rebuild`] first), when its follower lost coverage of the
//! log (it fell behind what [`MapSettings::change_retention`] trimmed: the equivalent of a full
//! copy), and after [`ReliableMap::restore`] replaced the content (a restore from a backup).
//! A rebuild handler replaces everything it derived from the map.
//!
//! # The materialized-view pattern
//!
//! Keep a view (a secondary index, a count, a cache keyed otherwise) in memory and keep it
//! exact with an observer: clear and reload it in `rebuild`, apply each change in `changed`.
//! Subscribe from [`ManagerChange::Added`] (or before the hub starts) to miss nothing.
//!
//! # No undo
//!
//! Service Fabric notifies changes a replica applied before they were durable and later sends
//! "undo" notifications for this false progress. Here a change is delivered only once its
//! transaction committed in the database (read back from the log, on every host, the writer
//! included), and a commit is durable: nothing delivered is ever taken back, so there is no
//! undo notification. A command that fails rolls back its writes and their changes together:
//! nobody is told.
//!
//! # Contracts
//!
//! `changed` and the manager's observers are synchronous and run on the follower: **keep them
//! fast**, with no I/O. `rebuild` is async. [`MapAction`] and [`ManagerChange`] are
//! `#[non_exhaustive]`: match them with a wildcard arm. All map writers of a database queue on
//! one lock: a transaction that writes maps (or reads them with `get_in`) should be short.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use ofx_diesel::maps::{MapAction, MapChange, MapManager, MapObserver, Rebuild};
//! use ofx_diesel::{DbHub, DbSettings, Sqlite};
//! use std::sync::atomic::{AtomicI64, Ordering};
//!
//! /// The total of every value, kept exact by notifications (clones share it).
//! #[derive(Clone, Default)]
//! struct Total(std::sync::Arc<AtomicI64>);
//!
//! impl MapObserver<String, i64> for Total {
//!     fn changed(&self, change: &MapChange<String, i64>) {
//!         match &change.action {
//!             MapAction::Add { value, .. } => self.0.fetch_add(*value, Ordering::Relaxed),
//!             MapAction::Update { old, new, .. } => self.0.fetch_add(new - old, Ordering::Relaxed),
//!             MapAction::Remove { old, .. } => self.0.fetch_sub(*old, Ordering::Relaxed),
//!             MapAction::Clear => self.0.swap(0, Ordering::Relaxed),
//!             _ => 0,
//!         };
//!     }
//!
//!     fn rebuild(&self, mut entries: Rebuild<String, i64>) -> ofx_core::ScopeFuture<'_, ()> {
//!         Box::pin(async move {
//!             let mut total = 0;
//!             while let Some((_, value)) = entries.next().await {
//!                 total += value;
//!             }
//!             self.0.store(total, Ordering::Relaxed);
//!         })
//!     }
//! }
//!
//! let db = DbHub::<Sqlite>::open("app.db", DbSettings::default()).await?;
//! let maps = MapManager::new(&db);
//! let balances = maps.map::<String, i64>("balances")?;
//! let total = Total::default();
//! balances.subscribe(total.clone());
//! let hub = ofx_core::Hub::builder().with(db.clone()).with(maps.clone()).start().await?;
//! maps.ready().await?;
//! // In a command handler: balances.set(ctx, &"alice".to_owned(), &10).await?;
//! # Ok(()) }
//! ```

mod change;
mod follower;
mod manager;
mod map;

pub use change::{ManagerChange, MapAction, MapChange, TransactionCommitted};
pub use manager::{ManagerObserver, MapManager, MapSettings, MapStatus};
pub use map::{MapKey, MapObserver, Rebuild, ReliableMap};

/// The stream of `ofx_stream_events` that holds the maps' change log (names starting with
/// `ofx.` are ofx's own: a state service must not use them).
pub const MAPS_STREAM: &str = "ofx.maps";
