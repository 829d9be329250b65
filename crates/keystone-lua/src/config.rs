//! How `require` resolves modules: the engine's Lua options (rocks trees,
//! allowed C modules, the sandbox switch) and the search paths built from
//! them with LuaRocks' semantics.
//!
//! Order of the Lua path (the C path follows the same order with `?.so`
//! templates): the app's directory (`?.lua`, `?/init.lua`), each
//! `--rocks-tree` in order, each tree of the app table's `rocks_trees` (known
//! only once the chunk has returned), then `LUA_PATH` with `;;` standing for
//! LuaJIT's default path, or that default when `LUA_PATH` is unset. A tree
//! `T` adds `T/share/lua/5.1/?.lua`, `T/share/lua/5.1/?/init.lua` and
//! `T/lib/lua/5.1/?.so`, as `luarocks path` does. Keystone never runs
//! luarocks itself.

use std::path::{Path, PathBuf};

/// LuaJIT's default `package.path` (its `luaconf.h`), what `;;` in
/// `LUA_PATH` stands for.
pub const DEFAULT_LUA_PATH: &str = "./?.lua;/usr/local/share/luajit-2.1/?.lua;\
/usr/local/share/lua/5.1/?.lua;/usr/local/share/lua/5.1/?/init.lua;\
/usr/share/lua/5.1/?.lua;/usr/share/lua/5.1/?/init.lua";

/// LuaJIT's default `package.cpath` as Debian builds it (with the multiarch
/// directory where `lua-cjson` and friends install), what `;;` in
/// `LUA_CPATH` stands for.
#[cfg(target_arch = "x86_64")]
pub const DEFAULT_LUA_CPATH: &str = "./?.so;/usr/local/lib/lua/5.1/?.so;\
/usr/lib/x86_64-linux-gnu/lua/5.1/?.so;/usr/lib/lua/5.1/?.so;/usr/local/lib/lua/5.1/loadall.so";
/// LuaJIT's default `package.cpath` as Debian builds it.
#[cfg(target_arch = "aarch64")]
pub const DEFAULT_LUA_CPATH: &str = "./?.so;/usr/local/lib/lua/5.1/?.so;\
/usr/lib/aarch64-linux-gnu/lua/5.1/?.so;/usr/lib/lua/5.1/?.so;/usr/local/lib/lua/5.1/loadall.so";
/// LuaJIT's default `package.cpath`.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub const DEFAULT_LUA_CPATH: &str =
    "./?.so;/usr/local/lib/lua/5.1/?.so;/usr/lib/lua/5.1/?.so;/usr/local/lib/lua/5.1/loadall.so";

/// Options for loading an app's Lua side, from the command line and the
/// environment. `Default` is hermetic: no trees, no C modules, the sandbox
/// on, and `LUA_PATH`/`LUA_CPATH` treated as unset.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LuaConfig {
    /// LuaRocks trees (`--rocks-tree DIR`, repeatable), searched after the
    /// app's directory and before the app table's own `rocks_trees`.
    pub rocks_trees: Vec<PathBuf>,
    /// C modules the sandbox's `require` may load (`--allow-c-module NAME`),
    /// by module name (`cjson`, `cjson.safe`); added to the app table's
    /// `allow_c_modules`. Unlike those, they apply to the chunk itself.
    pub allow_c_modules: Vec<String>,
    /// `--unsafe-lua`: no sandbox; user code gets the real globals (`io`,
    /// `os`, `ffi`, `require` of anything). Logged at every load.
    pub unsafe_lua: bool,
    /// `LUA_PATH`; `None` when unset (the default path applies).
    pub lua_path: Option<String>,
    /// `LUA_CPATH`; `None` when unset (the default C path applies).
    pub lua_cpath: Option<String>,
    /// A pool's peer whose name does not resolve here is kept, with the
    /// unspecified address, instead of failing the load: `keystone test`
    /// points pools at fakes, and a spec must load on a machine that
    /// cannot resolve the production names. `serve` never sets it.
    pub unresolved_peers: bool,
}

impl LuaConfig {
    /// Every `--rocks-tree` is a directory this process can read: checked
    /// before a server binds its port, so a typo or a permission problem is
    /// a start-up error (exit 2) instead of a `module not found` at the
    /// first request.
    pub fn check_trees(&self) -> Result<(), String> {
        for tree in &self.rocks_trees {
            if let Err(err) = std::fs::read_dir(tree) {
                return Err(format!(
                    "cannot read --rocks-tree {}: {err}",
                    tree.display()
                ));
            }
        }
        Ok(())
    }

    /// `package.path` and `package.cpath` as `require` would search them
    /// from `dir` (none: the trees and the environment only), for Lua
    /// states that are not an app's (the spec files' of `keystone test`).
    pub fn package_paths(&self, dir: Option<&Path>) -> Result<(String, String), String> {
        let paths = SearchPaths::build(self, dir, &[]).map_err(|err| err.message)?;
        Ok((paths.lua.join(";"), paths.c.join(";")))
    }

    /// The hermetic default plus `LUA_PATH` and `LUA_CPATH` from the process
    /// environment.
    pub fn from_env() -> LuaConfig {
        let var =
            |name: &str| std::env::var_os(name).map(|value| value.to_string_lossy().into_owned());
        LuaConfig {
            lua_path: var("LUA_PATH"),
            lua_cpath: var("LUA_CPATH"),
            ..LuaConfig::default()
        }
    }
}

/// The Lua and C search templates for one app, in the order `require`
/// tries them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SearchPaths {
    /// `?.lua` templates.
    pub lua: Vec<String>,
    /// `?.so` templates.
    pub c: Vec<String>,
}

/// Why a search path could not be built.
#[derive(Debug)]
pub(crate) struct PathError {
    pub message: String,
}

impl SearchPaths {
    /// The app's directory, the configured trees, then `app_trees`
    /// (relative ones resolved against the app's directory), then the
    /// environment's paths or LuaJIT's defaults.
    pub fn build(
        config: &LuaConfig,
        app_dir: Option<&Path>,
        app_trees: &[PathBuf],
    ) -> Result<SearchPaths, PathError> {
        let mut paths = SearchPaths {
            lua: Vec::new(),
            c: Vec::new(),
        };
        if let Some(dir) = app_dir {
            let dir = template_dir(dir, "the app's directory")?;
            paths.lua.push(format!("{dir}/?.lua"));
            paths.lua.push(format!("{dir}/?/init.lua"));
            paths.c.push(format!("{dir}/?.so"));
        }
        for tree in &config.rocks_trees {
            paths.add_tree(tree, "--rocks-tree")?;
        }
        for tree in app_trees {
            let resolved = match app_dir {
                Some(dir) if tree.is_relative() => dir.join(tree),
                _ => tree.clone(),
            };
            paths.add_tree(&resolved, "rocks_trees")?;
        }
        paths
            .lua
            .extend(expand(config.lua_path.as_deref(), DEFAULT_LUA_PATH));
        paths
            .c
            .extend(expand(config.lua_cpath.as_deref(), DEFAULT_LUA_CPATH));
        Ok(paths)
    }

    fn add_tree(&mut self, tree: &Path, origin: &str) -> Result<(), PathError> {
        let tree = template_dir(tree, origin)?;
        self.lua.push(format!("{tree}/share/lua/5.1/?.lua"));
        self.lua.push(format!("{tree}/share/lua/5.1/?/init.lua"));
        self.c.push(format!("{tree}/lib/lua/5.1/?.so"));
        Ok(())
    }
}

/// A directory as template text: UTF-8, without the `;` and `?` that
/// templates give meaning to, and without a trailing slash.
fn template_dir(dir: &Path, origin: &str) -> Result<String, PathError> {
    let Some(text) = dir.to_str() else {
        return Err(PathError {
            message: format!("{origin} {} is not valid UTF-8", dir.display()),
        });
    };
    if text.contains([';', '?']) {
        return Err(PathError {
            message: format!(
                "{origin} '{text}' contains ';' or '?', which search templates reserve"
            ),
        });
    }
    let trimmed = text.trim_end_matches('/');
    Ok(if trimmed.is_empty() && !text.is_empty() {
        String::new() // "/": templates start with "/" themselves.
    } else {
        trimmed.to_string()
    })
}

/// `LUA_PATH` semantics: unset means `default`; `;;` stands for `;default;`;
/// empty entries are dropped.
fn expand(value: Option<&str>, default: &str) -> Vec<String> {
    let text = match value {
        None => default.to_string(),
        Some(value) => value.replace(";;", &format!(";{default};")),
    };
    text.split(';')
        .filter(|entry| !entry.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(config: &LuaConfig, app_dir: Option<&str>, app_trees: &[&str], lua: &[&str]) {
        let trees: Vec<PathBuf> = app_trees.iter().map(PathBuf::from).collect();
        let paths = SearchPaths::build(config, app_dir.map(Path::new), &trees).unwrap();
        assert_eq!(paths.lua, lua);
    }

    #[test]
    fn default_is_luajit_default() {
        let paths = SearchPaths::build(&LuaConfig::default(), None, &[]).unwrap();
        assert_eq!(paths.lua.join(";"), DEFAULT_LUA_PATH);
        assert_eq!(paths.c.join(";"), DEFAULT_LUA_CPATH);
    }

    #[test]
    fn order_is_app_dir_cli_trees_app_trees_env() {
        let config = LuaConfig {
            rocks_trees: vec![PathBuf::from("/cli/")],
            lua_path: Some("/env/?.lua".into()),
            lua_cpath: Some("/env/?.so;;".into()),
            ..LuaConfig::default()
        };
        check(
            &config,
            Some("/app"),
            &["lua_modules", "/abs"],
            &[
                "/app/?.lua",
                "/app/?/init.lua",
                "/cli/share/lua/5.1/?.lua",
                "/cli/share/lua/5.1/?/init.lua",
                "/app/lua_modules/share/lua/5.1/?.lua",
                "/app/lua_modules/share/lua/5.1/?/init.lua",
                "/abs/share/lua/5.1/?.lua",
                "/abs/share/lua/5.1/?/init.lua",
                "/env/?.lua",
            ],
        );
        let paths = SearchPaths::build(&config, Some(Path::new("/app")), &[]).unwrap();
        let mut expected = vec![
            "/app/?.so".to_string(),
            "/cli/lib/lua/5.1/?.so".into(),
            "/env/?.so".into(),
        ];
        expected.extend(DEFAULT_LUA_CPATH.split(';').map(str::to_string));
        assert_eq!(paths.c, expected);
    }

    #[test]
    fn double_semicolon_is_the_default_in_place() {
        let config = LuaConfig {
            lua_path: Some("/a/?.lua;;/b/?.lua".into()),
            ..LuaConfig::default()
        };
        let paths = SearchPaths::build(&config, None, &[]).unwrap();
        assert_eq!(paths.lua.first().map(String::as_str), Some("/a/?.lua"));
        assert_eq!(paths.lua.last().map(String::as_str), Some("/b/?.lua"));
        assert_eq!(paths.lua.len(), DEFAULT_LUA_PATH.split(';').count() + 2);
    }

    #[test]
    fn reserved_characters_in_trees_are_refused() {
        let config = LuaConfig {
            rocks_trees: vec![PathBuf::from("/a;b")],
            ..LuaConfig::default()
        };
        let err = SearchPaths::build(&config, None, &[]).unwrap_err();
        assert!(
            err.message.contains("--rocks-tree '/a;b'"),
            "{}",
            err.message
        );
        let err =
            SearchPaths::build(&LuaConfig::default(), None, &[PathBuf::from("/x?")]).unwrap_err();
        assert!(err.message.contains("rocks_trees '/x?'"), "{}", err.message);
    }
}
