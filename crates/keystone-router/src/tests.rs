//! Table-driven lookups, build errors, a proptest that every literal route
//! is found, and a differential proptest against a matchit tree holding
//! every pattern (what lookups walked before static routes left the tree).

use proptest::prelude::*;

use crate::*;

const OFFSET: u32 = 100;

fn router() -> Router {
    let mut builder = RouterBuilder::new();
    let routes: &[(&str, u32)] = &[
        ("GET /", 1),
        ("GET /users", 2),
        ("POST /users", 3),
        ("GET /users/{id}", 4),
        ("DELETE /users/{id}", 5),
        ("GET /users/me", 6),
        ("GET /users/{id}/posts/{post}", 7),
        ("GET /files/{*path}", 8),
        ("* /any", 9),
        ("HEAD /head-only", 10),
        ("PURGE /cache/{key}", 11),
        ("GET /images/img-{n}.png", 12),
        ("GET /explicit-head", 13),
        ("HEAD /explicit-head", 14),
        ("GET /mixed", 15),
        ("* /mixed", 16),
        ("GET /lit/{{brace}}", 17),
    ];
    for &(key, handler) in routes {
        builder
            .add(key, handler)
            .unwrap_or_else(|error| panic!("{error}"));
    }
    builder.build()
}

/// Expected lookup result: handler and params as (name, text), or a miss.
#[derive(Debug, PartialEq, Eq)]
enum Expected {
    Found(u32, Vec<(&'static str, &'static str)>),
    NotFound,
    NotAllowed(&'static str),
}

fn check(router: &Router, method: &str, path: &str, expected: Expected) {
    // The path sits at OFFSET in a larger buffer; spans must point there.
    let mut buffer = vec![b'#'; OFFSET as usize];
    buffer.extend_from_slice(path.as_bytes());
    let got = match router.lookup(method.as_bytes(), &buffer[OFFSET as usize..], OFFSET) {
        Ok(found) => {
            let params = found
                .params()
                .iter()
                .map(|param| {
                    (
                        param.name,
                        std::str::from_utf8(param.value.slice(&buffer)).expect("utf8"),
                    )
                })
                .collect::<Vec<_>>();
            let params = params
                .into_iter()
                .map(|(name, value)| (leak(name), leak(value)))
                .collect();
            Expected::Found(found.handler, params)
        }
        Err(RouteMiss::NotFound) => Expected::NotFound,
        Err(RouteMiss::MethodNotAllowed { allow }) => {
            Expected::NotAllowed(leak(&allow.to_string()))
        }
    };
    assert_eq!(got, expected, "{method} {path}");
}

fn leak(text: &str) -> &'static str {
    Box::leak(text.to_string().into_boxed_str())
}

#[test]
fn lookups() {
    use Expected::*;
    let router = router();
    let rows: Vec<(&str, &str, Expected)> = vec![
        ("GET", "/", Found(1, vec![])),
        ("GET", "/users", Found(2, vec![])),
        ("POST", "/users", Found(3, vec![])),
        ("HEAD", "/users", Found(2, vec![])),
        ("PUT", "/users", NotAllowed("GET, HEAD, POST")),
        ("GET", "/users/42", Found(4, vec![("id", "42")])),
        ("DELETE", "/users/42", Found(5, vec![("id", "42")])),
        ("POST", "/users/42", NotAllowed("DELETE, GET, HEAD")),
        ("GET", "/users/me", Found(6, vec![])),
        ("GET", "/users/mark", Found(4, vec![("id", "mark")])),
        // A static route shadows a parameter route only for its own
        // methods: DELETE /users/me is DELETE /users/{id} with id "me",
        // and a method neither has lists both's in Allow.
        ("DELETE", "/users/me", Found(5, vec![("id", "me")])),
        ("HEAD", "/users/me", Found(6, vec![])),
        ("POST", "/users/me", NotAllowed("DELETE, GET, HEAD")),
        (
            "GET",
            "/users/7/posts/9",
            Found(7, vec![("id", "7"), ("post", "9")]),
        ),
        (
            "GET",
            "/files/a/b/c.txt",
            Found(8, vec![("path", "a/b/c.txt")]),
        ),
        ("GET", "/files/", NotFound),
        ("GET", "/files", NotFound),
        ("GET", "/any", Found(9, vec![])),
        ("BREW", "/any", Found(9, vec![])),
        ("HEAD", "/head-only", Found(10, vec![])),
        ("GET", "/head-only", NotAllowed("HEAD")),
        ("PURGE", "/cache/k1", Found(11, vec![("key", "k1")])),
        ("purge", "/cache/k1", NotAllowed("PURGE")),
        ("GET", "/images/img-3.png", Found(12, vec![("n", "3")])),
        ("GET", "/images/img-3.jpg", NotFound),
        ("HEAD", "/explicit-head", Found(14, vec![])),
        ("GET", "/mixed", Found(15, vec![])),
        ("HEAD", "/mixed", Found(15, vec![])),
        ("POST", "/mixed", Found(16, vec![])),
        ("GET", "/lit/{brace}", Found(17, vec![])),
        ("GET", "/nope", NotFound),
        ("GET", "", NotFound),
        ("GET", "/users/", NotFound),
        ("GET", "/users//posts/1", NotFound),
        (
            "A-VERY-LONG-METHOD-NAME",
            "/users",
            NotAllowed("GET, HEAD, POST"),
        ),
    ];
    for (method, path, expected) in rows {
        check(&router, method, path, expected);
    }
}

#[test]
fn non_utf8_path_is_not_found() {
    let router = router();
    assert_eq!(
        router.lookup(b"GET", b"/users/\xff", 0),
        Err(RouteMiss::NotFound)
    );
}

#[test]
fn build_errors_name_the_key() {
    let mut builder = RouterBuilder::new();
    builder.add("GET /users/{id}", 1).expect("first");
    builder.add("GET /static", 2).expect("first");
    let rows: &[(&str, RouteError)] = &[
        ("GET/users", bad("GET/users", "expected \"METHOD /path\"")),
        (" /users", bad(" /users", "empty method")),
        (
            "G(T /users",
            bad("G(T /users", "method is not an HTTP token"),
        ),
        (
            "ABCDEFGHIJKLMNOPQ /x",
            bad(
                "ABCDEFGHIJKLMNOPQ /x",
                "method longer than METHOD_BYTES_MAX (16) bytes",
            ),
        ),
        ("GET users", bad("GET users", "path must start with '/'")),
        (
            "GET /a b",
            bad("GET /a b", "path contains whitespace or control bytes"),
        ),
        (
            "GET /{a}{b}",
            bad(
                "GET /{a}{b}",
                "only one parameter is allowed per path segment",
            ),
        ),
        (
            "GET /{}",
            bad(
                "GET /{}",
                "parameters need a name and matching braces ({name}, {*name}; {{ and }} escape)",
            ),
        ),
        (
            "GET /{*rest}/x",
            bad(
                "GET /{*rest}/x",
                "a catch-all {*name} must be the last segment",
            ),
        ),
        (
            "GET /users/{id}",
            RouteError::Duplicate {
                key: "GET /users/{id}".into(),
            },
        ),
        (
            "GET /static",
            RouteError::Duplicate {
                key: "GET /static".into(),
            },
        ),
        (
            "GET /users/{name}",
            RouteError::Conflict {
                key: "GET /users/{name}".into(),
                message: "path conflicts with the route path \"/users/{id}\"".into(),
            },
        ),
        (
            "GET /{a}/{b}/{c}/{d}/{e}/{f}/{g}/{h}/{i}",
            RouteError::TooManyParams {
                key: "GET /{a}/{b}/{c}/{d}/{e}/{f}/{g}/{h}/{i}".into(),
            },
        ),
    ];
    for (key, expected) in rows {
        let error = builder.add(key, 9).expect_err(key);
        assert_eq!(&error, expected, "{key}");
        assert!(
            error.to_string().contains(key),
            "message names the key: {error}"
        );
    }
    // Failed adds leave no trace; exactly PARAMS_MAX parameters is fine.
    builder
        .add("GET /{a}/{b}/{c}/{d}/{e}/{f}/{g}/{h}", 3)
        .expect("at the limit");
    builder
        .add("* /users/{id}", 4)
        .expect("any method on an existing pattern");
    assert_eq!(
        builder.add("* /users/{id}", 5),
        Err(RouteError::Duplicate {
            key: "* /users/{id}".into()
        })
    );
    let router = builder.build();
    let keys: Vec<(&str, u32)> = router.routes().collect();
    assert_eq!(
        keys,
        vec![
            ("GET /users/{id}", 1),
            ("GET /static", 2),
            ("GET /{a}/{b}/{c}/{d}/{e}/{f}/{g}/{h}", 3),
            ("* /users/{id}", 4)
        ]
    );
    let found = router
        .lookup(b"GET", b"/1/2/3/4/5/6/7/8", 0)
        .expect("eight params");
    assert_eq!(found.params().len(), PARAMS_MAX);
    assert_eq!(
        found.params()[7],
        Param {
            name: "h",
            value: Span::new(15, 1)
        }
    );
}

fn bad(key: &str, reason: &'static str) -> RouteError {
    RouteError::BadKey {
        key: key.to_string(),
        reason,
    }
}

#[test]
fn param_spans_are_absolute() {
    let router = router();
    let request = b"GET /users/1234/posts/56 HTTP/1.1";
    let path = &request[4..24];
    let found = router.lookup(b"GET", path, 4).expect("found");
    let params: Vec<(&str, &[u8])> = found
        .params()
        .iter()
        .map(|param| (param.name, param.value.slice(request)))
        .collect();
    assert_eq!(params, vec![("id", &b"1234"[..]), ("post", &b"56"[..])]);
    assert_eq!(found.params()[0].value, Span::new(11, 4));
}

#[test]
fn lookup_into_one_match_again_and_again_gives_each_lookups_answer() {
    let router = router();
    let mut found = RouteMatch::EMPTY;
    router
        .lookup_into(b"GET", b"/users/1234/posts/56", 0, &mut found)
        .expect("two params");
    assert_eq!(
        found,
        router.lookup(b"GET", b"/users/1234/posts/56", 0).unwrap()
    );
    assert_eq!(found.params().len(), 2);
    // A static path after a parameter route: no parameters, whatever the
    // match held before.
    router
        .lookup_into(b"GET", b"/users", 0, &mut found)
        .expect("static");
    assert_eq!(found.params(), &[]);
    assert_eq!(
        found.handler,
        router.lookup(b"GET", b"/users", 0).unwrap().handler
    );
    router
        .lookup_into(b"GET", b"/users/7", 9, &mut found)
        .expect("one param");
    assert_eq!(
        found.params(),
        &[Param {
            name: "id",
            value: Span::new(16, 1)
        }]
    );
    assert_eq!(
        router.lookup_into(b"GET", b"/nowhere", 0, &mut found),
        Err(RouteMiss::NotFound)
    );
    assert!(matches!(
        router.lookup_into(b"DELETE", b"/users", 0, &mut found),
        Err(RouteMiss::MethodNotAllowed { .. })
    ));
}

/// A route pattern of generated segments, its parameters named by
/// position (`{p}` third is `{p2}`), so one position never has two names.
fn pattern_of(segments: &[String]) -> String {
    let named: Vec<String> = segments
        .iter()
        .enumerate()
        .map(|(i, segment)| segment.replace("{p}", &format!("{{p{i}}}")))
        .collect();
    format!("/{}", named.join("/"))
}

proptest! {
    #[test]
    fn every_literal_route_is_found(
        paths in proptest::collection::hash_set("(/[a-z0-9._~-]{1,8}){1,4}", 1..40),
        method in prop::sample::select(vec!["GET", "POST", "PUT", "PURGE"]),
    ) {
        let paths: Vec<String> = paths.into_iter().collect();
        let mut builder = RouterBuilder::new();
        for (handler, path) in paths.iter().enumerate() {
            builder.add(&format!("{method} {path}"), handler as u32).expect("literal routes never conflict");
        }
        let router = builder.build();
        for (handler, path) in paths.iter().enumerate() {
            let found = router.lookup(method.as_bytes(), path.as_bytes(), 0).expect("found");
            prop_assert_eq!(found.handler, handler as u32);
            prop_assert_eq!(found.param_count, 0);
            prop_assert!(router.tree.at(path).is_err(), "static routes are not walked");
        }
    }

    /// Mixed static and parameter routes: for any path, the router answers
    /// what one matchit tree holding every pattern answers (handler and
    /// parameters), so keeping static routes out of the walked tree changes
    /// no match.
    #[test]
    fn lookups_match_a_tree_with_every_pattern(
        routes in proptest::collection::vec(
            proptest::collection::vec(
                prop_oneof![
                    4 => prop::sample::select(vec!["a", "b", "me", "mark", "m"]).prop_map(str::to_owned),
                    2 => Just("{p}".to_owned()),
                    1 => Just("{*rest}".to_owned()),
                ],
                1..4,
            ),
            1..12,
        ),
        paths in proptest::collection::vec(
            proptest::collection::vec(prop::sample::select(vec!["a", "b", "me", "mark", "m", "zz"]), 1..5),
            1..20,
        ),
    ) {
        let mut builder = RouterBuilder::new();
        let mut reference = matchit::Router::new();
        for (handler, segments) in routes.iter().enumerate() {
            let path = pattern_of(segments);
            let accepted = builder.add(&format!("GET {path}"), handler as u32).is_ok();
            let in_reference = reference.insert(path.as_str(), handler as u32).is_ok();
            prop_assert_eq!(accepted, in_reference, "same verdict for {}", path);
        }
        let router = builder.build();
        for segments in &paths {
            let path = format!("/{}", segments.join("/"));
            let ours = router.lookup(b"GET", path.as_bytes(), 0).ok().map(|found| {
                let params: Vec<(String, Vec<u8>)> = found
                    .params()
                    .iter()
                    .map(|p| (p.name.to_owned(), p.value.slice(path.as_bytes()).to_vec()))
                    .collect();
                (found.handler, params)
            });
            let theirs = reference.at(&path).ok().map(|matched| {
                let params: Vec<(String, Vec<u8>)> = matched
                    .params
                    .iter()
                    .map(|(name, value)| (name.to_owned(), value.as_bytes().to_vec()))
                    .collect();
                (*matched.value, params)
            });
            prop_assert_eq!(ours, theirs, "path {}", path);
        }
    }

    /// Routes with different methods: for any method and path, the router
    /// answers what a matchit tree per method (holding every pattern with
    /// a handler for it, literal ones included) answers; a miss is 405
    /// when some method's tree matches, listing those methods, else 404.
    #[test]
    fn lookups_match_a_tree_per_method(
        routes in proptest::collection::vec(
            (
                prop::sample::select(vec!["GET", "POST", "PUT"]),
                proptest::collection::vec(
                    prop_oneof![
                        4 => prop::sample::select(vec!["a", "b", "me"]).prop_map(str::to_owned),
                        2 => Just("{p}".to_owned()),
                        1 => Just("{*rest}".to_owned()),
                    ],
                    1..4,
                ),
            ),
            1..12,
        ),
        paths in proptest::collection::vec(
            proptest::collection::vec(prop::sample::select(vec!["a", "b", "me", "zz"]), 1..5),
            1..20,
        ),
    ) {
        let methods = ["GET", "POST", "PUT"];
        let mut builder = RouterBuilder::new();
        let mut every = matchit::Router::new();
        let mut per_method: Vec<matchit::Router<u32>> =
            methods.iter().map(|_| matchit::Router::new()).collect();
        let mut added: Vec<String> = Vec::new();
        for (handler, (method, segments)) in routes.iter().enumerate() {
            let path = pattern_of(segments);
            if builder.add(&format!("{method} {path}"), handler as u32).is_err() {
                continue;
            }
            if !added.contains(&path) {
                every.insert(path.as_str(), ()).expect("the builder accepted it");
                added.push(path.clone());
            }
            let at = methods.iter().position(|m| m == method).expect("a method");
            per_method[at].insert(path.as_str(), handler as u32).expect("a subset");
        }
        let router = builder.build();
        for segments in &paths {
            let path = format!("/{}", segments.join("/"));
            for (at, method) in methods.iter().enumerate() {
                let ours = match router.lookup(method.as_bytes(), path.as_bytes(), 0) {
                    Ok(found) => {
                        let params: Vec<(String, Vec<u8>)> = found
                            .params()
                            .iter()
                            .map(|p| (p.name.to_owned(), p.value.slice(path.as_bytes()).to_vec()))
                            .collect();
                        Ok((found.handler, params))
                    }
                    Err(RouteMiss::NotFound) => Err(None),
                    Err(RouteMiss::MethodNotAllowed { allow }) => Err(Some(allow.to_string())),
                };
                let theirs = match per_method[at].at(&path) {
                    Ok(matched) => {
                        let params: Vec<(String, Vec<u8>)> = matched
                            .params
                            .iter()
                            .map(|(name, value)| (name.to_owned(), value.as_bytes().to_vec()))
                            .collect();
                        Ok((*matched.value, params))
                    }
                    Err(_) if every.at(&path).is_err() => Err(None),
                    Err(_) => {
                        let mut allow: Vec<&str> = methods
                            .iter()
                            .zip(&per_method)
                            .filter(|(_, tree)| tree.at(&path).is_ok())
                            .map(|(m, _)| *m)
                            .collect();
                        if allow.contains(&"GET") {
                            allow.push("HEAD");
                        }
                        allow.sort_unstable();
                        Err(Some(allow.join(", ")))
                    }
                };
                prop_assert_eq!(ours, theirs, "{} {}", method, path);
            }
        }
    }
}

/// A pattern shadows another only for its own methods, whatever the two
/// are (literal or with parameters): the best pattern that has a handler
/// for the method answers; a 405 lists every method some pattern answers
/// for that path. (matchit refuses a parameter and a catch-all in one
/// position, so those never meet.)
#[test]
fn a_pattern_shadows_another_only_for_its_own_methods() {
    use Expected::*;
    let mut builder = RouterBuilder::new();
    for (key, handler) in [
        ("GET /files/{id}/meta", 1),
        ("POST /files/{id}/{part}", 2),
        ("GET /users/me", 3),
        ("POST /users/{id}", 4),
        ("PUT /users/{id}", 5),
        ("GET /users/{id}/me", 6),
        ("PATCH /users/{id}/{*rest}", 7),
        ("GET /api/{version}/items", 8),
        ("* /api/{version}/{*rest}", 9),
    ] {
        builder
            .add(key, handler)
            .unwrap_or_else(|error| panic!("{error}"));
    }
    let router = builder.build();
    let rows: Vec<(&str, &str, Expected)> = vec![
        ("GET", "/files/7/meta", Found(1, vec![("id", "7")])),
        ("HEAD", "/files/7/meta", Found(1, vec![("id", "7")])),
        (
            "POST",
            "/files/7/meta",
            Found(2, vec![("id", "7"), ("part", "meta")]),
        ),
        ("GET", "/files/7/x", NotAllowed("POST")),
        ("DELETE", "/files/7/meta", NotAllowed("GET, HEAD, POST")),
        ("GET", "/users/me", Found(3, vec![])),
        ("POST", "/users/me", Found(4, vec![("id", "me")])),
        ("PUT", "/users/me", Found(5, vec![("id", "me")])),
        ("DELETE", "/users/me", NotAllowed("GET, HEAD, POST, PUT")),
        ("DELETE", "/users/42", NotAllowed("POST, PUT")),
        ("GET", "/users/42/me", Found(6, vec![("id", "42")])),
        (
            "PATCH",
            "/users/42/me",
            Found(7, vec![("id", "42"), ("rest", "me")]),
        ),
        ("DELETE", "/users/42/me", NotAllowed("GET, HEAD, PATCH")),
        ("GET", "/api/v1/items", Found(8, vec![("version", "v1")])),
        (
            "POST",
            "/api/v1/items",
            Found(9, vec![("version", "v1"), ("rest", "items")]),
        ),
        (
            "BREW",
            "/api/v1/items",
            Found(9, vec![("version", "v1"), ("rest", "items")]),
        ),
        ("GET", "/nope", NotFound),
    ];
    for (method, path, expected) in rows {
        check(&router, method, path, expected);
    }
}

/// Many methods (WebDAV's and more): a 405's Allow still lists every
/// method some pattern answers for the path, POST from the other pattern
/// included.
#[test]
fn many_methods_list_every_pattern_that_answers() {
    let mut builder = RouterBuilder::new();
    let methods = [
        "M0", "M1", "M2", "M3", "M4", "M5", "M6", "M7", "M8", "M9", "M10", "PROPFIND",
    ];
    for (handler, method) in methods.iter().enumerate() {
        builder
            .add(&format!("{method} /r/{{id}}/x"), handler as u32)
            .expect("valid");
    }
    builder.add("POST /r/{id}/{part}", 99).expect("valid");
    let router = builder.build();
    check(
        &router,
        "POST",
        "/r/1/x",
        Expected::Found(99, vec![("id", "1"), ("part", "x")]),
    );
    check(
        &router,
        "GET",
        "/r/1/x",
        Expected::NotAllowed("M0, M1, M10, M2, M3, M4, M5, M6, M7, M8, M9, POST, PROPFIND"),
    );
    check(&router, "GET", "/r/1/y", Expected::NotAllowed("POST"));
}

/// The routes may name at most `METHODS_MAX` distinct methods (HEAD
/// counted with GET): the next new one is refused with its key; a method
/// already named is still accepted. An Allow of every method at its
/// longest fits `ALLOW_BYTES_MAX`, and a short buffer gets whole methods.
#[test]
fn methods_are_bounded_and_their_allow_fits() {
    let mut builder = RouterBuilder::new();
    builder.add("GET /a/{id}", 0).expect("valid");
    // GET and HEAD are two: 62 more fill the set.
    for n in 0..METHODS_MAX - 2 {
        builder
            .add(&format!("LONGMETHODNAME{n:02} /a/{{id}}"), 1 + n as u32)
            .expect("within the limit");
    }
    let err = builder.add("ONEMORE /a/{id}", 100).unwrap_err();
    assert_eq!(
        err,
        RouteError::TooManyMethods {
            key: "ONEMORE /a/{id}".to_string()
        }
    );
    assert!(
        err.to_string().contains("more than 64 distinct methods"),
        "{err}"
    );
    builder
        .add("GET /b", 101)
        .expect("a named method is no new one");
    let router = builder.build();
    let Err(RouteMiss::MethodNotAllowed { allow }) = router.lookup(b"BREW", b"/a/1", 0) else {
        panic!("405 expected");
    };
    assert_eq!(allow.methods().count(), METHODS_MAX);
    let mut buffer = [0; ALLOW_BYTES_MAX];
    let value = allow.write_into(&mut buffer);
    assert_eq!(value.len(), allow.to_string().len());
    assert!(value.starts_with(b"GET, HEAD, LONGMETHODNAME00, "));
    assert!(value.ends_with(b", LONGMETHODNAME61"));
    let mut short = [0; 12];
    assert_eq!(allow.write_into(&mut short), b"GET, HEAD");
}

#[test]
fn server_allow_lists_every_named_method_and_options() {
    assert_eq!(
        router().server_allow(),
        "DELETE, GET, HEAD, OPTIONS, POST, PURGE"
    );
    let mut builder = RouterBuilder::new();
    builder.add("POST /only", 1).expect("valid");
    builder.add("* /any", 2).expect("valid");
    assert_eq!(builder.build().server_allow(), "OPTIONS, POST");
    assert_eq!(RouterBuilder::new().build().server_allow(), "OPTIONS");
}
