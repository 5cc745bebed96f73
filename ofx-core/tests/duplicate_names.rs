//! Two command types with one name: every hub refuses to start, naming both types.
//!
//! A binary of its own, since the duplicate makes every hub in it fail.

use ofx_core::{Command, Error, Hub};
use serde::{Deserialize, Serialize};

/// One command named `shared.name`.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = (), name = "shared.name")]
pub struct First;

/// Another command named `shared.name`.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = (), name = "shared.name")]
pub struct Second;

#[test]
fn a_hub_refuses_two_commands_with_one_name() {
    let error = Hub::new().expect_err("the hub must refuse to start");
    let Error::DuplicateCommandName {
        name,
        first,
        second,
    } = &error
    else {
        panic!("unexpected error: {error:?}");
    };
    assert_eq!(*name, "shared.name");
    let mut types = [*first, *second];
    types.sort_unstable();
    assert_eq!(types, ["duplicate_names::First", "duplicate_names::Second"]);
    let message = error.to_string();
    assert!(
        message.contains("duplicate_names::First") && message.contains("duplicate_names::Second"),
        "{message}"
    );
}
