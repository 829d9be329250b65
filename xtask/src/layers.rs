//! `check-layers`: every dependency edge between workspace crates must be in
//! the layer DAG below. The check is a pure function over [`Graph`], so the
//! tests can feed it synthetic graphs; [`graph_from_metadata`] builds the real
//! one from `cargo metadata --no-deps --format-version 1`.

use std::fmt;

use anyhow::{bail, Context as _, Result};

/// What a workspace crate may depend on (normal, build and dev edges alike:
/// a layer's tests are part of the layer, so they may reach only lower
/// layers too).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Allowed {
    /// Exactly these workspace crates, by full package name.
    Only(&'static [&'static str]),
    /// Anything in the workspace: test, bench and tool crates are leaves
    /// that no layer may depend on, so they cannot create a cycle.
    Leaf,
}

/// Every layer crate below the server, i.e. what keystone-server wires.
const LAYER_CRATES: &[&str] = &[
    "keystone-ringbuf",
    "keystone-parser",
    "keystone-router",
    "keystone-exchange",
    "keystone-lua",
    "keystone-response",
    "keystone-files",
    "keystone-conn",
    "keystone-reactor",
    "keystone-ebpf",
    "keystone-ops",
    "keystone-upstream",
    "keystone-tls",
    "keystone-app",
    "keystone-spec",
];

/// The layer DAG (mirrored in ARCHITECTURE.md). A workspace crate missing
/// from this table fails the check: adding a crate means deciding its layer.
pub const LAYER_DAG: &[(&str, Allowed)] = &[
    // Owns request bytes; the bottom of the stack.
    ("keystone-ringbuf", Allowed::Only(&[])),
    // Marks structure as spans into the ring buffer.
    ("keystone-parser", Allowed::Only(&["keystone-ringbuf"])),
    // Assigns meaning to spans; never sees the parser's internals.
    ("keystone-router", Allowed::Only(&["keystone-ringbuf"])),
    // TLS as a byte transform between the ring and the connection: it
    // lends and takes back the byte layer's loans and knows no HTTP; the
    // worker submits what it asks for.
    ("keystone-tls", Allowed::Only(&["keystone-ringbuf"])),
    // Binds the memory contract over bytes, structure and route.
    (
        "keystone-exchange",
        Allowed::Only(&["keystone-ringbuf", "keystone-parser", "keystone-router"]),
    ),
    // Where a proxied request goes (pools, balancing, passive health) and
    // the head sent there; response heads come from the parser. No I/O.
    // A `tls = true` pool's client configuration is keystone-tls' to build.
    (
        "keystone-upstream",
        Allowed::Only(&["keystone-ringbuf", "keystone-parser", "keystone-tls"]),
    ),
    // Lua expresses policy over the exchange; it never reaches the reactor.
    // It reads the app table's `upstreams` into keystone-upstream's
    // declarations.
    (
        "keystone-lua",
        Allowed::Only(&[
            "keystone-exchange",
            "keystone-router",
            "keystone-parser",
            "keystone-ringbuf",
            "keystone-upstream",
        ]),
    ),
    // Commits the exchange's state as bytes; knows no Lua.
    (
        "keystone-response",
        Allowed::Only(&["keystone-exchange", "keystone-parser", "keystone-ringbuf"]),
    ),
    // File serving as decisions (paths, validators, ranges, the open-file
    // cache); the parser's text helpers and the response's date and
    // Content-Range formatting, and no syscalls, so no ring and no reactor.
    (
        "keystone-files",
        Allowed::Only(&["keystone-parser", "keystone-response"]),
    ),
    // The HTTP/1.1 server connection as a sans-I/O state machine: bytes
    // and completions in, intents out. It frames requests (parser), commits
    // responses (response, exchange for policy's headers), decides file
    // answers (files) and lends buffer regions (ringbuf); policy (router,
    // Lua) sits behind a trait the server implements, and the reactor that
    // executes its intents is never seen.
    (
        "keystone-conn",
        Allowed::Only(&[
            "keystone-ringbuf",
            "keystone-parser",
            "keystone-exchange",
            "keystone-response",
            "keystone-files",
        ]),
    ),
    // The io_uring proactor knows no HTTP: it sees the byte layer only for
    // the loans its operations carry.
    ("keystone-reactor", Allowed::Only(&["keystone-ringbuf"])),
    // Kernel-side steering knows no HTTP either.
    ("keystone-ebpf", Allowed::Only(&[])),
    // Operator tooling: counters, metrics, admin listener, access-log
    // lines; it reads the observers and borrows the response's date and
    // status helpers, and never reaches a request's bytes or the ring.
    (
        "keystone-ops",
        Allowed::Only(&["keystone-ebpf", "keystone-response"]),
    ),
    // The app as the connection's policy: routes and Lua say what the answer
    // is; it counts and logs each one. No reactor, no kernel programs.
    // Its upstream connections to `tls = true` pools run through a
    // keystone-tls link it owns with the connection (so pooled ones keep it).
    (
        "keystone-app",
        Allowed::Only(&[
            "keystone-ringbuf",
            "keystone-parser",
            "keystone-router",
            "keystone-exchange",
            "keystone-lua",
            "keystone-response",
            "keystone-conn",
            "keystone-ops",
            "keystone-upstream",
            "keystone-tls",
        ]),
    ),
    // `keystone test`: spec files drive the app (its policy, its Lua
    // state) through the connection machine in memory; it executes the
    // connection's and the upstream side's intents itself, so it never
    // sees the reactor, the kernel programs or the server.
    (
        "keystone-spec",
        Allowed::Only(&[
            "keystone-ringbuf",
            "keystone-parser",
            "keystone-lua",
            "keystone-response",
            "keystone-conn",
            "keystone-app",
            "keystone-ops",
            "keystone-upstream",
        ]),
    ),
    // The thin wiring crate: every layer, nothing above it.
    ("keystone-server", Allowed::Only(LAYER_CRATES)),
    // Leaves: end-to-end tests, benches and developer tasks.
    ("keystone-tests", Allowed::Leaf),
    ("keystone-benches", Allowed::Leaf),
    ("xtask", Allowed::Leaf),
];

/// Which dependency table an edge came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EdgeKind {
    Normal,
    Build,
    Dev,
}

/// One dependency edge between two workspace crates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Edge {
    pub from: String,
    pub to: String,
    pub kind: EdgeKind,
}

/// Workspace crates and the dependency edges among them (edges to
/// crates.io packages are not part of the graph).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Graph {
    pub crates: Vec<String>,
    pub edges: Vec<Edge>,
}

/// A rule broken by the workspace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    Forbidden {
        edge: Edge,
        allowed: &'static [&'static str],
    },
    UnknownCrate {
        name: String,
    },
}

/// `keystone-parser` → `parser`, for short messages.
fn short_name(name: &str) -> &str {
    name.strip_prefix("keystone-").unwrap_or(name)
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::Forbidden { edge, allowed } => {
                let kind = match edge.kind {
                    EdgeKind::Normal => "",
                    EdgeKind::Build => " (build-dependency)",
                    EdgeKind::Dev => " (dev-dependency)",
                };
                let allowed: Vec<&str> = allowed.iter().map(|name| short_name(name)).collect();
                write!(
                    f,
                    "{} → {}{kind}: {} may depend only on [{}]",
                    edge.from,
                    edge.to,
                    short_name(&edge.from),
                    allowed.join(", ")
                )
            }
            Violation::UnknownCrate { name } => {
                write!(
                    f,
                    "{name}: unknown crate, add it to the DAG in xtask/src/layers.rs"
                )
            }
        }
    }
}

fn rule_for(name: &str) -> Option<Allowed> {
    LAYER_DAG
        .iter()
        .find(|(crate_name, _)| *crate_name == name)
        .map(|(_, allowed)| *allowed)
}

/// Checks every crate and edge of `graph` against [`LAYER_DAG`]; returns the
/// violations in a stable order (unknown crates first, then edges in graph
/// order). Empty means the workspace respects the layers.
pub fn check(graph: &Graph) -> Vec<Violation> {
    let mut violations = Vec::new();
    for name in &graph.crates {
        if rule_for(name).is_none() {
            violations.push(Violation::UnknownCrate { name: name.clone() });
        }
    }
    for edge in &graph.edges {
        // A crate's dev-dependency on itself (to turn on a feature for its
        // own tests, as keystone-conn does for `sim`) is no layer edge.
        if edge.from == edge.to {
            continue;
        }
        // An unknown source is already reported once above.
        let Some(allowed) = rule_for(&edge.from) else {
            continue;
        };
        match allowed {
            Allowed::Leaf => {}
            Allowed::Only(targets) => {
                if !targets.contains(&edge.to.as_str()) {
                    violations.push(Violation::Forbidden {
                        edge: edge.clone(),
                        allowed: targets,
                    });
                }
            }
        }
    }
    violations
}

/// Builds the graph from `cargo metadata --no-deps --format-version 1`
/// output: packages are the workspace members, and an edge is a declared
/// dependency whose package name is another member (renames keep `name`).
pub fn graph_from_metadata(metadata: &serde_json::Value) -> Result<Graph> {
    let packages = metadata["packages"]
        .as_array()
        .context("cargo metadata: no `packages` array")?;
    let mut graph = Graph::default();
    for package in packages {
        let name = package["name"]
            .as_str()
            .context("cargo metadata: package without a name")?;
        graph.crates.push(name.to_owned());
    }
    for package in packages {
        let from = package["name"].as_str().unwrap_or_default();
        let dependencies = package["dependencies"]
            .as_array()
            .with_context(|| format!("cargo metadata: {from} has no `dependencies` array"))?;
        for dependency in dependencies {
            let to = dependency["name"]
                .as_str()
                .with_context(|| format!("cargo metadata: {from} has a dependency without name"))?;
            if !graph.crates.iter().any(|name| name == to) {
                continue;
            }
            let kind = match dependency["kind"].as_str() {
                None => EdgeKind::Normal,
                Some("build") => EdgeKind::Build,
                Some("dev") => EdgeKind::Dev,
                Some(other) => bail!("cargo metadata: {from} → {to} has unknown kind {other:?}"),
            };
            graph.edges.push(Edge {
                from: from.to_owned(),
                to: to.to_owned(),
                kind,
            });
        }
    }
    Ok(graph)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(from: &str, to: &str, kind: EdgeKind) -> Edge {
        Edge {
            from: from.to_owned(),
            to: to.to_owned(),
            kind,
        }
    }

    fn graph(crates: &[&str], edges: &[(&str, &str, EdgeKind)]) -> Graph {
        Graph {
            crates: crates.iter().map(|name| (*name).to_owned()).collect(),
            edges: edges
                .iter()
                .map(|(from, to, kind)| edge(from, to, *kind))
                .collect(),
        }
    }

    /// A graph shaped like the intended workspace: every allowed edge.
    fn clean_graph() -> Graph {
        let crates: Vec<&str> = LAYER_DAG.iter().map(|(name, _)| *name).collect();
        let mut edges = Vec::new();
        for (from, allowed) in LAYER_DAG {
            let targets: &[&str] = match allowed {
                Allowed::Only(targets) => targets,
                Allowed::Leaf => LAYER_CRATES,
            };
            for to in targets {
                edges.push((*from, *to, EdgeKind::Normal));
            }
        }
        graph(&crates, &edges)
    }

    #[test]
    fn clean_graph_passes() {
        assert_eq!(check(&clean_graph()), Vec::new());
    }

    #[test]
    fn leaves_may_depend_on_anything() {
        let graph = graph(
            &["keystone-tests", "keystone-server", "xtask"],
            &[
                ("keystone-tests", "keystone-server", EdgeKind::Dev),
                ("xtask", "keystone-tests", EdgeKind::Normal),
            ],
        );
        assert_eq!(check(&graph), Vec::new());
    }

    #[test]
    fn forbidden_edge_is_reported_with_allow_list() {
        let mut graph = clean_graph();
        graph
            .edges
            .push(edge("keystone-parser", "keystone-lua", EdgeKind::Normal));
        let violations = check(&graph);
        assert_eq!(violations.len(), 1);
        assert_eq!(
            violations[0].to_string(),
            "keystone-parser → keystone-lua: parser may depend only on [ringbuf]"
        );
    }

    #[test]
    fn a_dev_dependency_on_itself_is_no_layer_edge() {
        let graph = graph(
            &["keystone-conn"],
            &[("keystone-conn", "keystone-conn", EdgeKind::Dev)],
        );
        assert_eq!(check(&graph), Vec::new());
    }

    #[test]
    fn forbidden_dev_and_build_edges_count() {
        let graph = graph(
            &["keystone-reactor", "keystone-ringbuf", "keystone-exchange"],
            &[
                ("keystone-reactor", "keystone-exchange", EdgeKind::Dev),
                ("keystone-ringbuf", "keystone-exchange", EdgeKind::Build),
            ],
        );
        let messages: Vec<String> = check(&graph).iter().map(ToString::to_string).collect();
        assert_eq!(
            messages,
            [
                "keystone-reactor → keystone-exchange (dev-dependency): reactor may depend only on [ringbuf]",
                "keystone-ringbuf → keystone-exchange (build-dependency): ringbuf may depend only on []",
            ]
        );
    }

    #[test]
    fn no_layer_may_depend_on_server_or_leaves() {
        for (from, _) in LAYER_DAG
            .iter()
            .filter(|(_, allowed)| *allowed != Allowed::Leaf)
        {
            for to in [
                "keystone-server",
                "keystone-tests",
                "keystone-benches",
                "xtask",
            ] {
                if *from == to {
                    continue;
                }
                let graph = graph(&[from, to], &[(from, to, EdgeKind::Normal)]);
                assert_eq!(check(&graph).len(), 1, "{from} → {to} must be forbidden");
            }
        }
    }

    #[test]
    fn unknown_crate_is_reported_once() {
        let graph = graph(
            &["keystone-ringbuf", "keystone-cache"],
            &[("keystone-cache", "keystone-ringbuf", EdgeKind::Normal)],
        );
        let violations = check(&graph);
        assert_eq!(
            violations,
            [Violation::UnknownCrate {
                name: "keystone-cache".to_owned()
            }]
        );
        assert!(violations[0]
            .to_string()
            .contains("unknown crate, add it to the DAG"));
    }

    /// The table itself: names unique, targets known, and acyclic (a layer
    /// only names crates listed before it, so the order is a topological one).
    #[test]
    fn dag_table_is_a_topologically_ordered_dag() {
        for (index, (name, allowed)) in LAYER_DAG.iter().enumerate() {
            let earlier: Vec<&str> = LAYER_DAG[..index].iter().map(|(n, _)| *n).collect();
            assert!(!earlier.contains(name), "{name} listed twice");
            if let Allowed::Only(targets) = allowed {
                for target in *targets {
                    assert!(earlier.contains(target), "{name} → {target} points up");
                }
            }
        }
    }

    #[test]
    fn metadata_json_is_parsed_into_workspace_edges() {
        let metadata = serde_json::json!({
            "packages": [
                {"name": "keystone-ringbuf", "dependencies": [
                    {"name": "libc", "kind": null},
                ]},
                {"name": "keystone-parser", "dependencies": [
                    {"name": "keystone-ringbuf", "kind": null},
                    {"name": "keystone-lua", "kind": "dev"},
                    {"name": "cc", "kind": "build"},
                ]},
                {"name": "keystone-lua", "dependencies": []},
            ]
        });
        let graph = graph_from_metadata(&metadata).expect("valid metadata");
        assert_eq!(
            graph.crates,
            ["keystone-ringbuf", "keystone-parser", "keystone-lua"]
        );
        assert_eq!(
            graph.edges,
            [
                edge("keystone-parser", "keystone-ringbuf", EdgeKind::Normal),
                edge("keystone-parser", "keystone-lua", EdgeKind::Dev),
            ]
        );
        let messages: Vec<String> = check(&graph).iter().map(ToString::to_string).collect();
        assert_eq!(
            messages,
            ["keystone-parser → keystone-lua (dev-dependency): parser may depend only on [ringbuf]"]
        );
    }
}
