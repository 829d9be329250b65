//! Route key syntax: `"METHOD /path"`.

use crate::{RouteError, METHOD_BYTES_MAX, PARAMS_MAX};

/// The method part of a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyMethod<'k> {
    Any,
    Exact(&'k [u8]),
}

/// A validated key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Key<'k> {
    pub method: KeyMethod<'k>,
    pub path: &'k str,
    /// No `{`/`}` at all: matchable by exact comparison.
    pub is_static: bool,
}

fn is_token_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

pub(crate) fn parse_key(key: &str) -> Result<Key<'_>, RouteError> {
    let bad = |reason: &'static str| RouteError::BadKey {
        key: key.to_string(),
        reason,
    };
    let (method, path) = key
        .split_once(' ')
        .ok_or(bad("expected \"METHOD /path\""))?;
    let method = match method.as_bytes() {
        b"" => return Err(bad("empty method")),
        b"*" => KeyMethod::Any,
        bytes if !bytes.iter().all(|&byte| is_token_byte(byte)) => {
            return Err(bad("method is not an HTTP token"))
        }
        bytes if bytes.len() > METHOD_BYTES_MAX => {
            return Err(bad("method longer than METHOD_BYTES_MAX (16) bytes"))
        }
        bytes => KeyMethod::Exact(bytes),
    };
    if !path.starts_with('/') {
        return Err(bad("path must start with '/'"));
    }
    if path.bytes().any(|byte| byte <= b' ' || byte == 0x7f) {
        return Err(bad("path contains whitespace or control bytes"));
    }
    if count_params(path) > PARAMS_MAX {
        return Err(RouteError::TooManyParams {
            key: key.to_string(),
        });
    }
    let is_static = !path.contains(['{', '}']);
    Ok(Key {
        method,
        path,
        is_static,
    })
}

/// Parameters in a matchit pattern: each `{` that is not an escaped `{{`.
fn count_params(path: &str) -> usize {
    let bytes = path.as_bytes();
    let mut count = 0;
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'{' {
            if bytes.get(index + 1) == Some(&b'{') {
                index += 2;
                continue;
            }
            count += 1;
        }
        index += 1;
    }
    count
}
