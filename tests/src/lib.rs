//! Workspace-level tests of ofx live in `multi_host/`; this library is empty.
