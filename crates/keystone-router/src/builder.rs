//! Building the route table: validation, matchit insertion, method trees.

use std::collections::HashMap;

use crate::key::{parse_key, KeyMethod};
use crate::{Method, MethodTable, RouteError, Router, METHODS_MAX};

/// Collects routes at start-up; `build` freezes them into a [`Router`].
#[derive(Default)]
pub struct RouterBuilder {
    /// Every pattern: matchit validates each new one against all the others.
    tree: matchit::Router<usize>,
    /// Only the patterns with parameters: the tree lookups walk. Static
    /// paths are answered from `static_paths` before it, and leaving them
    /// out spares the walk the backtracking (and matchit its allocation)
    /// that a static sibling of a parameter causes: `/users/me` beside
    /// `/users/{id}` no longer makes `/users/mark` allocate.
    param_tree: matchit::Router<usize>,
    /// Path pattern as given → index into `tables`.
    patterns: HashMap<String, usize>,
    static_paths: crate::StaticPaths,
    tables: Vec<MethodTable>,
    routes: Vec<(String, u32)>,
    /// Every method some route names so far, each once (bounded by
    /// [`METHODS_MAX`]).
    named: Vec<Method>,
}

impl RouterBuilder {
    pub fn new() -> RouterBuilder {
        RouterBuilder::default()
    }

    /// Adds `key` ("GET /users/{id}", "* /files/{*path}") for `handler`.
    pub fn add(&mut self, key: &str, handler: u32) -> Result<(), RouteError> {
        let parsed = parse_key(key)?;
        let table_index = match self.patterns.get(parsed.path) {
            Some(&index) => index,
            None => self.insert_pattern(key, parsed.path, parsed.is_static)?,
        };
        let table = &mut self.tables[table_index];
        let duplicate = RouteError::Duplicate {
            key: key.to_string(),
        };
        match parsed.method {
            KeyMethod::Any if table.any_method.is_some() => return Err(duplicate),
            KeyMethod::Any => table.any_method = Some(handler),
            KeyMethod::Exact(method) => {
                if table
                    .by_method
                    .iter()
                    .any(|(registered, _)| registered.as_bytes() == method)
                {
                    return Err(duplicate);
                }
                if !self.named.iter().any(|named| named.as_bytes() == method) {
                    let mut methods: Vec<&[u8]> = self.named.iter().map(Method::as_bytes).collect();
                    methods.push(method);
                    add_head_with_get(&mut methods);
                    if methods.len() > METHODS_MAX {
                        return Err(RouteError::TooManyMethods {
                            key: key.to_string(),
                        });
                    }
                    self.named.push(Method::new(method));
                }
                let table = &mut self.tables[table_index];
                table.by_method.push((Method::new(method), handler));
            }
        }
        self.routes.push((key.to_string(), handler));
        Ok(())
    }

    fn insert_pattern(
        &mut self,
        key: &str,
        path: &str,
        is_static: bool,
    ) -> Result<usize, RouteError> {
        let index = self.tables.len();
        self.tree
            .insert(path, index)
            .map_err(|error| insert_error(key, error))?;
        if !is_static {
            // A subset of the patterns just validated: it cannot conflict.
            self.param_tree
                .insert(path, index)
                .map_err(|error| insert_error(key, error))?;
        }
        self.tables.push(MethodTable::default());
        self.patterns.insert(path.to_string(), index);
        if is_static {
            self.static_paths.insert(path.as_bytes().into(), index);
        }
        Ok(index)
    }

    /// Freezes the table and builds the method trees.
    pub fn build(self) -> Router {
        let server_allow = server_allow_value(&self.tables);
        let (method_names, method_trees, any_tree) = self.method_trees();
        Router {
            server_allow,
            tree: self.param_tree,
            static_paths: self.static_paths,
            tables: self.tables,
            routes: self.routes,
            method_trees,
            any_tree,
            method_names,
        }
    }

    /// Every method a route names (HEAD whenever GET is), sorted; for each,
    /// a tree of the parameter patterns with a handler for it; and one of
    /// those with a `*` handler, for every other method.
    fn method_trees(
        &self,
    ) -> (
        Vec<Method>,
        Vec<matchit::Router<usize>>,
        matchit::Router<usize>,
    ) {
        let mut names = named_methods(&self.tables);
        add_head_with_get(&mut names);
        names.sort_unstable();
        let mut patterns: Vec<(usize, &str)> = self
            .patterns
            .iter()
            .filter(|(path, _)| !self.static_paths.contains_key(path.as_bytes()))
            .map(|(path, &index)| (index, path.as_str()))
            .collect();
        patterns.sort_unstable();
        let tree_of = |answers: &dyn Fn(&MethodTable) -> bool| {
            let mut tree = matchit::Router::new();
            for &(index, path) in &patterns {
                if answers(&self.tables[index]) {
                    tree.insert(path, index)
                        .expect("a subset of patterns that were all inserted together");
                }
            }
            tree
        };
        let method_trees = names
            .iter()
            .map(|&name| tree_of(&|table| table.handler(name).is_some()))
            .collect();
        let any_tree = tree_of(&|table| table.any_method.is_some());
        let method_names = names.into_iter().map(Method::new).collect();
        (method_names, method_trees, any_tree)
    }
}

/// matchit's refusal of `key`'s path, as a [`RouteError`] naming the key.
fn insert_error(key: &str, error: matchit::InsertError) -> RouteError {
    match error {
        matchit::InsertError::Conflict { with } => RouteError::Conflict {
            key: key.to_string(),
            message: format!("path conflicts with the route path {with:?}"),
        },
        matchit::InsertError::InvalidParamSegment => RouteError::BadKey {
            key: key.to_string(),
            reason: "only one parameter is allowed per path segment",
        },
        matchit::InsertError::InvalidParam => RouteError::BadKey {
            key: key.to_string(),
            reason:
                "parameters need a name and matching braces ({name}, {*name}; {{ and }} escape)",
        },
        matchit::InsertError::InvalidCatchAll => RouteError::BadKey {
            key: key.to_string(),
            reason: "a catch-all {*name} must be the last segment",
        },
        _ => RouteError::BadKey {
            key: key.to_string(),
            reason: "rejected by the route tree",
        },
    }
}

/// The `Allow` of `OPTIONS *`: every method some route names, plus OPTIONS
/// itself (the engine answers it). A `*` route accepts any method but
/// names none, so it adds nothing a client could rely on.
fn server_allow_value(tables: &[MethodTable]) -> String {
    let mut methods = named_methods(tables);
    if !methods.contains(&&b"OPTIONS"[..]) {
        methods.push(b"OPTIONS");
    }
    join_methods(methods)
}

/// Every method some route names, each once.
fn named_methods(tables: &[MethodTable]) -> Vec<&[u8]> {
    let mut methods: Vec<&[u8]> = Vec::new();
    for table in tables {
        for (method, _) in &table.by_method {
            if !methods.contains(&method.as_bytes()) {
                methods.push(method.as_bytes());
            }
        }
    }
    methods
}

/// HEAD is answered wherever GET is (the GET handler runs).
fn add_head_with_get(methods: &mut Vec<&[u8]>) {
    if methods.contains(&&b"GET"[..]) && !methods.contains(&&b"HEAD"[..]) {
        methods.push(b"HEAD");
    }
}

fn join_methods(mut methods: Vec<&[u8]>) -> String {
    add_head_with_get(&mut methods);
    methods.sort_unstable();
    let methods: Vec<&str> = methods
        .iter()
        .map(|method| std::str::from_utf8(method).expect("methods are ASCII tokens"))
        .collect();
    methods.join(", ")
}
