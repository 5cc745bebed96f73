//! [`HostId`]: which host an operation came from.

use std::fmt;
use std::sync::Arc;

/// The identity of one host: machine name, process id and a value unique to one [`Hub`](crate::Hub).
///
/// Two hubs in one process are two hosts, so each hub gets its own id. The id is compared as a
/// whole; its parts are for people reading logs.
///
/// ```
/// let a = ofx_core::HostId::new();
/// let b = ofx_core::HostId::new();
/// assert_ne!(a, b);
/// assert!(a.as_str().contains(&std::process::id().to_string()));
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostId(Arc<str>);

impl HostId {
    /// A new id for this machine and process, unique among all hosts.
    pub fn new() -> Self {
        let machine = gethostname::gethostname();
        let machine = machine.to_string_lossy();
        let unique = uuid::Uuid::new_v4().simple().to_string();
        Self(format!("{machine}-{}-{}", std::process::id(), &unique[..12]).into())
    }

    /// An id with the given text, such as one read back from an operation log.
    pub fn from_string(text: impl Into<Arc<str>>) -> Self {
        Self(text.into())
    }

    /// The id as text: `machine-pid-unique`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for HostId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for HostId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for HostId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HostId({})", self.0)
    }
}

impl serde::Serialize for HostId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for HostId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Ok(Self(Arc::from(text.as_ref())))
    }
}
