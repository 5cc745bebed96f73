//! [`Projection`]: how a state is computed from its stream.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A state computed from a stream of domain events: a name and a version (which key its
/// snapshots), the state before any event, and a pure `apply` of one event.
///
/// `apply` must be deterministic (every host applies the same events in the same order and
/// must reach the same state) and do no I/O. It may reject an event ([`Rejection`]): the
/// event is then quarantined and the state stays as it was before it, whatever `apply` did to
/// it (the service applies the batch again without it); a panic is treated the same way.
///
/// Change [`VERSION`](Self::VERSION) whenever `apply` or the state's shape changes: snapshots
/// of another version are ignored and the state is rebuilt from the stream.
///
/// ```
/// use ofx_diesel::state::{Projection, Rejection};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Serialize, Deserialize)]
/// enum CounterEvent { Added(u64), Reset }
///
/// struct Counter;
///
/// impl Projection for Counter {
///     type Event = CounterEvent;
///     type State = u64;
///     const NAME: &'static str = "counter";
///     const VERSION: u32 = 1;
///
///     fn initial(&self) -> u64 { 0 }
///
///     fn apply(&self, state: &mut u64, event: CounterEvent, _position: u64) -> Result<(), Rejection> {
///         match event {
///             CounterEvent::Added(n) => {
///                 *state = state.checked_add(n).ok_or_else(|| Rejection::new("overflow"))?;
///             }
///             CounterEvent::Reset => *state = 0,
///         }
///         Ok(())
///     }
/// }
/// ```
pub trait Projection: Send + Sync + 'static {
    /// The stream's domain events.
    type Event: Serialize + DeserializeOwned + Send + Sync + 'static;
    /// The projected state. Cloned once per applied batch: prefer a persistent collection
    /// (`imbl`, `rpds`) for a large one.
    type State: Clone + Serialize + DeserializeOwned + Send + Sync + 'static;

    /// The projection's name: keys its snapshots and quarantine, names it in logs and status.
    const NAME: &'static str;
    /// The projection's version: a snapshot of another version is ignored.
    const VERSION: u32;
    /// The stream it follows (its name by default). Several projections may follow one
    /// stream.
    const STREAM: &'static str = Self::NAME;

    /// The state before any event.
    fn initial(&self) -> Self::State;

    /// Applies the event at `position` (from 1) to `state`.
    ///
    /// # Errors
    /// A [`Rejection`] when the event cannot apply to this state: it is quarantined and the
    /// stream goes on.
    fn apply(
        &self,
        state: &mut Self::State,
        event: Self::Event,
        position: u64,
    ) -> Result<(), Rejection>;
}

/// Why [`Projection::apply`] refused an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Rejection(String);

impl Rejection {
    /// A rejection with this reason.
    pub fn new(reason: impl std::fmt::Display) -> Self {
        Self(reason.to_string())
    }

    /// The reason.
    pub fn reason(&self) -> &str {
        &self.0
    }
}
