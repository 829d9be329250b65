//! keystone-router: assigns meaning to a request.
//!
//! Job: map `(method, path)` to a handler id and the path parameters, as
//! spans into the request bytes, with a matchit radix tree built once at
//! start-up; a miss is `NotFound` or `MethodNotAllowed` with the set of
//! methods its `Allow` lists.
//!
//! Owns: route key syntax (`"METHOD /path"`, `{param}`, `{*catch_all}`,
//! `*` for any method), build-time validation with precise errors, and the
//! HEAD → GET fallback.
//!
//! Never depends on: keystone-parser, keystone-exchange, keystone-lua,
//! keystone-response, keystone-files, keystone-conn, keystone-app, keystone-reactor, keystone-ebpf,
//! keystone-ops, keystone-upstream, keystone-tls, keystone-spec, keystone-server (layer 3 sees only layer 1,
//! `keystone-ringbuf`, for `Span`; it takes the path as bytes).
//!
//! # Implementation notes
//!
//! Paths without parameters are answered by an exact-match table; the
//! others by a matchit tree holding only the patterns with parameters (a
//! second tree with every pattern exists while building, so matchit
//! validates each route against all the others). A path equal to a static
//! route is caught by the table first, which keeps matchit's priority
//! (static before parameter); any other path could never end on a static
//! leaf, so leaving those out of the walked tree changes no answer.
//!
//! A pattern shadows another only for its own methods: when the best
//! pattern for a path (static or not) has no handler for the method, the
//! path is looked up again in that method's tree — the parameter patterns
//! that answer it, one tree per method a route names (HEAD with GET), and
//! one of the `*` patterns for every other method — so `POST /files/7/meta`
//! reaches `POST /files/{id}/{part}` beside `GET /files/{id}/meta`. Only then is it
//! 405, whose `Allow` lists every method some pattern answers for that
//! path. Those second lookups happen only on that path, never for a
//! request whose best pattern answers it.
//!
//! Not promised: "no allocation" holds for static paths and for parameter
//! routes with at most 3 parameters whose lookup needs no backtracking.
//! matchit 0.9 itself allocates (a) when a match has more than 3 parameters
//! (its `Params` spills to a `Vec`) and (b) when a lookup passes a node that
//! has both a static child matching the next byte and a parameter child
//! (it records the parameter child for backtracking). Static routes are not
//! in the walked tree, so (b) needs a static *segment inside a parameter
//! route* (`/users/me/{tab}` beside `/users/{id}`, looking up `/users/mark`);
//! `/users/me` beside `/users/{id}` does not. `tests/no_alloc.rs` pins both
//! sides.

mod builder;
mod key;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;

pub use builder::RouterBuilder;
pub use keystone_ringbuf::Span;

/// Most parameters one route may declare. 8 covers deep REST paths
/// (`/orgs/{o}/repos/{r}/issues/{i}/comments/{c}` is 4) with room to spare
/// and keeps `RouteMatch` a fixed array (8 x 24 bytes); `add` rejects more.
pub const PARAMS_MAX: usize = 8;

/// Longest method a route key may name. Registered methods are at most 17
/// bytes (`UPDATEREDIRECTREF`), common ones at most 7; 16 covers every
/// method in practical use (`VERSION-CONTROL` is 15) and lets a method be
/// stored inline as a fixed array.
pub const METHOD_BYTES_MAX: usize = 16;

const _: () = assert!(PARAMS_MAX <= u8::MAX as usize);
const _: () = assert!(METHOD_BYTES_MAX <= u8::MAX as usize);

/// A route that cannot be added; every variant names the key as given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteError {
    /// The key is not `"METHOD /path"` or its path syntax is invalid.
    BadKey { key: String, reason: &'static str },
    /// The same method and path were already added.
    Duplicate { key: String },
    /// The path overlaps an existing pattern ambiguously (matchit's message).
    Conflict { key: String, message: String },
    /// More than `PARAMS_MAX` parameters.
    TooManyParams { key: String },
    /// The key's method would make more than [`METHODS_MAX`] distinct
    /// methods (HEAD counted whenever GET is named).
    TooManyMethods { key: String },
}

impl fmt::Display for RouteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteError::BadKey { key, reason } => write!(f, "route {key:?}: {reason}"),
            RouteError::Duplicate { key } => write!(f, "route {key:?} is registered twice"),
            RouteError::Conflict { key, message } => write!(f, "route {key:?}: {message}"),
            RouteError::TooManyParams { key } => {
                write!(f, "route {key:?} has more than {PARAMS_MAX} parameters")
            }
            RouteError::TooManyMethods { key } => write!(
                f,
                "route {key:?}: the routes name more than {METHODS_MAX} distinct methods"
            ),
        }
    }
}

impl std::error::Error for RouteError {}

/// One path parameter: its name from the route key and its value as an
/// absolute span (`path_offset` + position in the path).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Param<'r> {
    pub name: &'r str,
    pub value: Span,
}

impl Param<'_> {
    const EMPTY: Param<'static> = Param {
        name: "",
        value: Span::EMPTY,
    };
}

/// A found route: the handler id and its parameters, in path order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteMatch<'r> {
    pub handler: u32,
    /// The first `param_count` entries are valid.
    pub params: [Param<'r>; PARAMS_MAX],
    pub param_count: u8,
}

impl<'r> RouteMatch<'r> {
    /// No handler, no parameters: what [`Router::lookup_into`] writes into.
    pub const EMPTY: RouteMatch<'static> = RouteMatch {
        handler: 0,
        params: [Param::EMPTY; PARAMS_MAX],
        param_count: 0,
    };

    pub fn params(&self) -> &[Param<'r>] {
        &self.params[..self.param_count as usize]
    }
}

/// Why no handler was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteMiss<'r> {
    /// No route has this path: 404.
    NotFound,
    /// The path exists for other methods: 405 with `Allow:` the methods of
    /// every pattern that matches it, e.g. "GET, HEAD, POST" (sorted; HEAD
    /// listed whenever GET is).
    MethodNotAllowed { allow: Allow<'r> },
}

/// Most distinct methods the routes may name, HEAD included whenever GET
/// is: a 405's [`Allow`] is a set of them in one `u64`. Apps name a handful
/// (GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS is 7; WebDAV adds 7).
pub const METHODS_MAX: usize = 64;

/// Bytes an [`Allow`] value can take: every method at its longest, each
/// with its ", ".
pub const ALLOW_BYTES_MAX: usize = METHODS_MAX * (METHOD_BYTES_MAX + 2);

/// The methods a 405 lists: a set of the router's named methods (sorted).
/// Written out only when a 405 is answered, into the caller's buffer, so a
/// miss costs no allocation and no per-combination string exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allow<'r> {
    names: &'r [Method],
    set: u64,
}

impl<'r> Allow<'r> {
    /// The methods in the set, in the router's sorted order.
    pub fn methods(self) -> impl Iterator<Item = &'r [u8]> {
        self.names
            .iter()
            .enumerate()
            .filter(move |&(bit, _)| self.set & (1 << bit) != 0)
            .map(|(_, name)| name.as_bytes())
    }

    /// Writes the header value ("GET, HEAD, POST") into `out` and returns
    /// it. `out` of [`ALLOW_BYTES_MAX`] bytes always has room; a shorter
    /// one gets the methods that fit whole.
    pub fn write_into(self, out: &mut [u8]) -> &[u8] {
        let mut len = 0;
        for method in self.methods() {
            let separator: &[u8] = if len == 0 { b"" } else { b", " };
            let end = len + separator.len() + method.len();
            if end > out.len() {
                break;
            }
            out[len..len + separator.len()].copy_from_slice(separator);
            out[end - method.len()..end].copy_from_slice(method);
            len = end;
        }
        &out[..len]
    }
}

impl fmt::Display for Allow<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buffer = [0; ALLOW_BYTES_MAX];
        let value = self.write_into(&mut buffer);
        f.write_str(std::str::from_utf8(value).expect("methods are ASCII tokens"))
    }
}

/// A method stored inline (at most `METHOD_BYTES_MAX` bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Method {
    bytes: [u8; METHOD_BYTES_MAX],
    len: u8,
}

impl Method {
    pub(crate) fn new(method: &[u8]) -> Method {
        assert!(method.len() <= METHOD_BYTES_MAX);
        let mut bytes = [0; METHOD_BYTES_MAX];
        bytes[..method.len()].copy_from_slice(method);
        Method {
            bytes,
            len: method.len() as u8,
        }
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

/// Handlers for one path pattern.
#[derive(Debug, Default)]
pub(crate) struct MethodTable {
    pub(crate) by_method: Vec<(Method, u32)>,
    /// Handler for key method "*".
    pub(crate) any_method: Option<u32>,
}

impl MethodTable {
    pub(crate) fn handler(&self, method: &[u8]) -> Option<u32> {
        let exact = |wanted: &[u8]| {
            self.by_method
                .iter()
                .find(|(registered, _)| registered.as_bytes() == wanted)
                .map(|&(_, handler)| handler)
        };
        exact(method)
            .or_else(|| {
                if method == b"HEAD" {
                    exact(b"GET")
                } else {
                    None
                }
            })
            .or(self.any_method)
    }
}

/// The static paths' table: every lookup hashes the request's path here
/// first, so its hasher is FNV-1a, not the standard library's keyed
/// SipHash. Keying buys nothing: the keys are the app's, fixed at load,
/// and a lookup only probes (a crafted path can collide with a route's
/// bucket, never grow one). On a short path FNV-1a is a few nanoseconds,
/// SipHash-1-3 several times that (the `route` micro-benchmark).
pub(crate) type StaticPaths = HashMap<Box<[u8]>, usize, BuildFnv>;

/// Builds [`Fnv`] hashers.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct BuildFnv;

impl std::hash::BuildHasher for BuildFnv {
    type Hasher = Fnv;

    fn build_hasher(&self) -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

/// 64-bit FNV-1a.
pub(crate) struct Fnv(u64);

impl std::hash::Hasher for Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 ^= u64::from(byte);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The built, immutable route table.
pub struct Router {
    /// The patterns with parameters (static ones are in `static_paths`).
    pub(crate) tree: matchit::Router<usize>,
    /// Paths without parameters → table index: answered without the tree.
    pub(crate) static_paths: StaticPaths,
    pub(crate) tables: Vec<MethodTable>,
    /// Keys as given, in insertion order.
    pub(crate) routes: Vec<(String, u32)>,
    /// Precomputed `Allow` of `OPTIONS *`.
    pub(crate) server_allow: String,
    /// Every method a route names (HEAD whenever GET is), sorted: what an
    /// [`Allow`]'s bits name.
    pub(crate) method_names: Vec<Method>,
    /// Per entry of `method_names`: the parameter patterns with a handler
    /// for that method, for a path whose best pattern has none.
    pub(crate) method_trees: Vec<matchit::Router<usize>>,
    /// The same for every other method: the patterns with a `*` handler.
    pub(crate) any_tree: matchit::Router<usize>,
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router")
            .field("routes", &self.routes)
            .finish()
    }
}

impl Router {
    /// Finds the handler for `method` and `path` (the path without query).
    /// Parameter spans are absolute: `path_offset` + position in `path`.
    /// HEAD falls back to GET; a path that is not UTF-8 is `NotFound`.
    /// Returns the match by value; the request path uses
    /// [`Router::lookup_into`], which writes into the caller's match.
    pub fn lookup<'r>(
        &'r self,
        method: &[u8],
        path: &[u8],
        path_offset: u32,
    ) -> Result<RouteMatch<'r>, RouteMiss<'r>> {
        let mut found = RouteMatch::EMPTY;
        self.lookup_into(method, path, path_offset, &mut found)?;
        Ok(found)
    }

    /// [`Router::lookup`] into `found`: its handler, parameter count and
    /// the parameters found are written (the entries past the count are
    /// left as they were). A match is 200 bytes; returned by value it was
    /// copied out on every request (a third of a static lookup's time,
    /// measured), written in place it is not.
    pub fn lookup_into<'r>(
        &'r self,
        method: &[u8],
        path: &[u8],
        path_offset: u32,
        found: &mut RouteMatch<'r>,
    ) -> Result<(), RouteMiss<'r>> {
        let table_index = match self.static_paths.get(path) {
            Some(&index) => {
                found.param_count = 0;
                index
            }
            None => self.tree_match(path, path_offset, found)?,
        };
        let table = &self.tables[table_index];
        if let Some(handler) = table.handler(method) {
            found.handler = handler;
            return Ok(());
        }
        self.shadowed(method, path, path_offset, table_index, found)
    }

    /// The best pattern for `path` (table `best`) has no handler for
    /// `method`: the best of those that have one answers, with its own
    /// parameters; else 405 with every method some pattern answers here.
    #[cold]
    fn shadowed<'r>(
        &'r self,
        method: &[u8],
        path: &[u8],
        path_offset: u32,
        best: usize,
        found: &mut RouteMatch<'r>,
    ) -> Result<(), RouteMiss<'r>> {
        let tree = self
            .method_names
            .iter()
            .position(|named| named.as_bytes() == method)
            .map_or(&self.any_tree, |at| &self.method_trees[at]);
        if let Ok(index) = Self::tree_match_in(tree, path, path_offset, found) {
            found.handler = self.tables[index]
                .handler(method)
                .expect("a method's tree holds only patterns with a handler for it");
            return Ok(());
        }
        Err(RouteMiss::MethodNotAllowed {
            allow: self.allow_for(path, best),
        })
    }

    /// The `Allow` of a 405 for `path`, whose best pattern is table `best`:
    /// the methods of every pattern that matches it.
    fn allow_for(&self, path: &[u8], best: usize) -> Allow<'_> {
        let table = &self.tables[best];
        let text = std::str::from_utf8(path).ok();
        let mut set = 0;
        let trees = self.method_names.iter().zip(&self.method_trees);
        for (bit, (named, tree)) in trees.enumerate() {
            let answers = table.handler(named.as_bytes()).is_some()
                || text.is_some_and(|text| tree.at(text).is_ok());
            if answers {
                set |= 1 << bit;
            }
        }
        Allow {
            names: &self.method_names,
            set,
        }
    }

    /// Matches `path` against the parameter patterns; writes the
    /// parameters into `found` and returns the pattern's table.
    fn tree_match<'r>(
        &'r self,
        path: &[u8],
        path_offset: u32,
        found: &mut RouteMatch<'r>,
    ) -> Result<usize, RouteMiss<'r>> {
        Self::tree_match_in(&self.tree, path, path_offset, found)
    }

    /// [`Router::tree_match`] in `tree`.
    fn tree_match_in<'r>(
        tree: &'r matchit::Router<usize>,
        path: &[u8],
        path_offset: u32,
        found: &mut RouteMatch<'r>,
    ) -> Result<usize, RouteMiss<'r>> {
        // Only the tree needs text (a static key matched bytes).
        let Ok(path_text) = std::str::from_utf8(path) else {
            return Err(RouteMiss::NotFound);
        };
        let matched = tree.at(path_text).map_err(|_| RouteMiss::NotFound)?;
        // add() rejects keys with more than PARAMS_MAX parameters.
        assert!(matched.params.len() <= PARAMS_MAX);
        for (slot, (name, value)) in found.params.iter_mut().zip(matched.params.iter()) {
            let start = value.as_ptr() as usize - path.as_ptr() as usize;
            debug_assert!(start + value.len() <= path.len());
            *slot = Param {
                name,
                value: Span::new(path_offset + start as u32, value.len() as u32),
            };
        }
        found.param_count = matched.params.len() as u8;
        Ok(*matched.value)
    }

    /// The `Allow` value for `OPTIONS *` (RFC 9110 §9.3.7: the server's
    /// own capabilities): every method a route names, HEAD with GET, and
    /// OPTIONS; sorted, e.g. "GET, HEAD, OPTIONS, POST".
    pub fn server_allow(&self) -> &str {
        &self.server_allow
    }

    /// Every route as `(key as given, handler)`, in insertion order.
    pub fn routes(&self) -> impl Iterator<Item = (&str, u32)> {
        self.routes
            .iter()
            .map(|(key, handler)| (key.as_str(), *handler))
    }
}
