//! Links the `keystone` binary with `--export-dynamic` so that Lua C modules
//! loaded with `dlopen` (lua-cjson and friends, which are not linked against
//! any liblua) resolve LuaJIT's C API symbols from the executable itself.
fn main() {
    println!("cargo:rustc-link-arg-bins=-Wl,--export-dynamic");
    println!("cargo:rerun-if-changed=build.rs");
}
