//! Workspace-level test support of ofx: the fault matrix's history [`checker`], the service it
//! runs ([`ledger`]), and servers of a test's own ([`servers`]). The tests themselves live in
//! `multi_host/`, `event_host/` and `faults/`.

pub mod checker;
pub mod ledger;
pub mod servers;

/// Whether the full fault matrix runs (`OFX_FAULTS=full`), rather than its fast tier.
pub fn full_tier() -> bool {
    std::env::var("OFX_FAULTS").is_ok_and(|tier| tier == "full")
}

/// `fast` in the fast tier, `full` in the full one.
pub fn tiered(fast: usize, full: usize) -> usize {
    if full_tier() { full } else { fast }
}
