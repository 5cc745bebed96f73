//! `OFX_MACROS_DEBUG=<item name>` prints the expansion of that item while compiling.

use proc_macro2::TokenStream;

/// Prints `expansion` to stderr if `OFX_MACROS_DEBUG` names `item` (or is `*`).
pub(crate) fn dump(macro_name: &str, item: &str, expansion: &TokenStream) {
    let Ok(wanted) = std::env::var("OFX_MACROS_DEBUG") else {
        return;
    };
    if wanted == "*" || wanted == item {
        eprintln!("// #[{macro_name}] {item}\n{expansion}\n");
    }
}
