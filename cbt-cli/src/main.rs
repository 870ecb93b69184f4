//! The `cbt` command-line tool.
fn main() {}
