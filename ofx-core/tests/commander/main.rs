//! Integration tests of commands: the pipeline, the two branches, operation items, nested
//! commands, replays on another hub, backend commands and failures.

// Tests state their expectations with `unwrap`/`expect`: a failure is the test failing.
#![allow(clippy::unwrap_used)]

mod common;

mod calls;
mod generic;
mod lifecycle;
mod pipeline;
mod replay;
mod reprocess;
