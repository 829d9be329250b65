//! Links keystone-lua's test binaries with `--export-dynamic`, as
//! keystone-server's build script does for the `keystone` binary, so that
//! the C modules the tests load with `dlopen` (Debian's lua-cjson, which is
//! not linked against any liblua) resolve LuaJIT's C API from the test
//! executable itself. Libraries depending on this crate are unaffected.
fn main() {
    println!("cargo:rustc-link-arg-tests=-Wl,--export-dynamic");
    println!("cargo:rerun-if-changed=build.rs");
}
