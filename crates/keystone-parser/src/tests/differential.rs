//! Differential proptest with httparse as the oracle.
//!
//! Documented divergences (our stricter rules, each a test row in `head`):
//! * target form: httparse accepts any URI-token target ("x", "*" with GET,
//!   "host:443"); we require origin-form, http(s) absolute-form with a path,
//!   or `OPTIONS *`;
//! * target bytes: httparse accepts `"`, `<`, `>`, `\\`, `^`, `` ` ``, `{`,
//!   `|`, `}` and `#` (its URI-token), we refuse them as RFC 3986 and 9112 do
//!   (`is_target_byte`); both refuse bytes >= 0x80;
//! * Host: httparse leaves the value to its caller, we hold it to
//!   `uri-host [ ":" port ]` (`BadHost`, never `Malformed`);
//! * a path that percent-encodes a control byte (`/a%00`): we refuse it;
//! * a method over `MAX_METHOD_BYTES`: `MethodTooLong` (400), never `Malformed`;
//! * with `last_len`, a head fed in pieces that contains a bad line can stay
//!   `Partial` until its blank line arrives (or the head limit is hit), where
//!   a one-shot parse says `Malformed` at once;
//! * framing/Host/obs-fold rules httparse leaves to its caller give their
//!   own error variants, never `Malformed`.

use proptest::prelude::*;

use super::head::{outcome, Outcome, BASE};
use crate::target::{is_target_byte, path_escapes_a_control, split_target};
use crate::*;

fn header_strategy() -> impl Strategy<Value = (String, String)> {
    ("X-[A-Za-z0-9-]{1,12}", "[!-~]([ -~]{0,20}[!-~])?")
}

prop_compose! {
    fn valid_request()(
        method in prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "PATCH", "PURGE", "M-SEARCH"]),
        path in "/([a-zA-Z0-9._~/-]|%[2-6][0-9A-F]){0,30}",
        query in proptest::option::of("[a-z0-9=&%]{0,20}"),
        minor_version in 0_u8..=1,
        headers in proptest::collection::vec(header_strategy(), 0..10),
    ) -> (Vec<u8>, String, String, u8, Vec<(String, String)>) {
        let target = match query {
            Some(query) => format!("{path}?{query}"),
            None => path,
        };
        let mut all_headers = vec![("Host".to_string(), "example.com".to_string())];
        all_headers.extend(headers);
        let mut request = format!("{method} {target} HTTP/1.{minor_version}\r\n");
        for (name, value) in &all_headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        (request.into_bytes(), method.to_string(), target, minor_version, all_headers)
    }
}

/// httparse's verdict: Some(head length) when complete, None when partial, Err when invalid.
fn oracle(input: &[u8]) -> Result<Option<usize>, httparse::Error> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_CAPACITY];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(input)? {
        httparse::Status::Complete(len) => Ok(Some(len)),
        httparse::Status::Partial => Ok(None),
    }
}

/// The request-target httparse saw, to explain a divergence.
fn oracle_target(input: &[u8]) -> (String, String) {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_CAPACITY];
    let mut request = httparse::Request::new(&mut headers);
    request.parse(input).expect("complete");
    (
        request.method.unwrap_or("").to_string(),
        request.path.unwrap_or("").to_string(),
    )
}

fn mutated_request() -> impl Strategy<Value = Vec<u8>> {
    (
        valid_request(),
        proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0_u8..3), 1..4),
    )
        .prop_map(|((mut bytes, ..), mutations)| {
            for (index, byte, kind) in mutations {
                let position = index.index(bytes.len());
                match kind {
                    0 => bytes[position] = byte,
                    1 => bytes.insert(position, byte),
                    _ => {
                        bytes.remove(position);
                    }
                }
            }
            bytes
        })
}

/// When httparse accepts a complete head we must not call it Malformed,
/// except for the documented target-form rule.
fn check_against_oracle(input: &[u8]) -> Result<(), TestCaseError> {
    let limits = Limits {
        max_headers: HEADERS_CAPACITY as u16,
        ..Limits::default()
    };
    let ours = outcome(input, &limits);
    if let Ok(Some(_)) = oracle(input) {
        if ours == Outcome::Error(ParseError::Malformed) {
            let (method, target) = oracle_target(input);
            let version_ok = matches!(
                version_of(input).as_slice(),
                [b'H', b'T', b'T', b'P', b'/', major, b'.', minor] if major.is_ascii_digit() && minor.is_ascii_digit()
            );
            prop_assert!(
                split_target(method.as_bytes(), target.as_bytes()).is_err()
                    || !target.bytes().all(is_target_byte)
                    || path_escapes_a_control(target.as_bytes())
                    || !version_ok,
                "httparse accepts, we say Malformed: {:?}",
                String::from_utf8_lossy(input)
            );
        }
    }
    if let Outcome::Complete(_) = ours {
        prop_assert!(
            matches!(oracle(input), Ok(Some(_))),
            "we accept, httparse does not: {:?} {:?}",
            String::from_utf8_lossy(input),
            oracle(input)
        );
    }
    Ok(())
}

/// The request line's version bytes, as the first non-empty line has them.
fn version_of(input: &[u8]) -> Vec<u8> {
    let line = input
        .split(|&byte| byte == b'\n')
        .find(|line| !line.is_empty() && *line != b"\r")
        .unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    line.rsplit(|&byte| byte == b' ')
        .next()
        .unwrap_or_default()
        .to_vec()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn valid_requests_match_httparse((input, method, target, minor_version, headers) in valid_request()) {
        // Dot-segments are refused on purpose (ParseError::DotSegment):
        // httparse leaves them to its caller.
        let path = target.split('?').next().unwrap_or_default();
        prop_assume!(!crate::target::has_dot_segment(path.as_bytes()));
        let expected_len = oracle(&input).expect("httparse accepts").expect("complete");
        let mut parser = Parser::new();
        let mut head = Head::new();
        prop_assert_eq!(parser.parse(&input, BASE, &Limits::default(), &mut head), Ok(ParseStatus::Complete));
        let text = |span: Span| &input[(span.offset - BASE) as usize..(span.end() - BASE) as usize];
        prop_assert_eq!(head.head_len as usize, expected_len);
        prop_assert_eq!(text(head.method), method.as_bytes());
        prop_assert_eq!(text(head.target), target.as_bytes());
        prop_assert_eq!(head.minor_version, minor_version);
        prop_assert_eq!(head.headers().len(), headers.len());
        for (parsed, (name, value)) in head.headers().iter().zip(&headers) {
            prop_assert_eq!(text(parsed.name), name.as_bytes());
            prop_assert_eq!(text(parsed.value), value.as_bytes());
        }
        let mut split = parser_split(&input);
        split.sort();
        prop_assert!(split.windows(2).all(|pair| pair[0] == pair[1]) || split.is_empty());
    }

    #[test]
    fn mutated_requests_agree_with_httparse(input in mutated_request()) {
        check_against_oracle(&input)?;
    }

    #[test]
    fn random_bytes_agree_with_httparse(input in proptest::collection::vec(any::<u8>(), 0..200)) {
        check_against_oracle(&input)?;
    }

    #[test]
    fn incremental_equals_one_shot_on_mutations(input in mutated_request()) {
        let one_shot = outcome(&input, &Limits::default());
        let incremental = super::head::incremental_outcome(&input, &Limits::default());
        // picohttpparser's last_len fast path only looks for the blank line
        // that ends the head, so a fed-in-pieces head with a bad line may stay
        // Partial until it completes or hits the head limit.
        let deferred = incremental == Outcome::Partial && matches!(one_shot, Outcome::Error(_));
        prop_assert!(deferred || incremental == one_shot, "{:?} vs {:?}", incremental, one_shot);
    }
}

/// Parsing a valid request after it was split in two gives one head length.
fn parser_split(input: &[u8]) -> Vec<u32> {
    let limits = Limits::default();
    let mut lengths = Vec::new();
    for split in [1, input.len() / 2, input.len() - 1] {
        let mut parser = Parser::new();
        let mut head = Head::new();
        assert_eq!(
            parser.parse(&input[..split], BASE, &limits, &mut head),
            Ok(ParseStatus::Partial)
        );
        assert_eq!(
            parser.parse(input, BASE, &limits, &mut head),
            Ok(ParseStatus::Complete)
        );
        lengths.push(head.head_len);
    }
    lengths
}
