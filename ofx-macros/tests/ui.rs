//! Compile-fail and compile-pass cases of the macros, checked with trybuild.
//!
//! Bless changed diagnostics with `TRYBUILD=overwrite cargo test -p ofx-macros --test ui`, then
//! read every changed `.stderr`: the caret must land on the user's token and the message must
//! say what to do.

#[test]
fn compute_method() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/compute_method/fail/*.rs");
    cases.pass("tests/ui/compute_method/pass/*.rs");
}

#[test]
fn invalidate() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/invalidate/fail/*.rs");
    cases.pass("tests/ui/invalidate/pass/*.rs");
}

#[test]
fn command_derive() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/command_derive/fail/*.rs");
    cases.pass("tests/ui/command_derive/pass/*.rs");
}

#[test]
fn command_handler() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/command_handler/fail/*.rs");
    cases.pass("tests/ui/command_handler/pass/*.rs");
}

#[test]
fn service() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/service/fail/*.rs");
    cases.pass("tests/ui/service/pass/*.rs");
}
