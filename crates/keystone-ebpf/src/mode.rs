//! `--ebpf auto|require|off`: what the server does about steering.

use std::fmt;
use std::str::FromStr;

/// Whether the server steers connections with eBPF.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EbpfMode {
    /// Attach if the kernel allows it; otherwise log why and let the
    /// kernel's own reuseport hashing spread connections.
    Auto,
    /// Attach or refuse to start.
    Require,
    /// Never load BPF.
    Off,
}

impl EbpfMode {
    /// The spellings [`FromStr`] accepts, in the order the error lists them.
    pub const NAMES: [&'static str; 3] = ["auto", "require", "off"];

    pub fn as_str(self) -> &'static str {
        match self {
            EbpfMode::Auto => "auto",
            EbpfMode::Require => "require",
            EbpfMode::Off => "off",
        }
    }
}

impl fmt::Display for EbpfMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A mode string that is none of [`EbpfMode::NAMES`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseEbpfModeError {
    pub input: String,
}

impl fmt::Display for ParseEbpfModeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid eBPF mode {:?}: expected one of {}",
            self.input,
            EbpfMode::NAMES.join(", ")
        )
    }
}

impl std::error::Error for ParseEbpfModeError {}

impl FromStr for EbpfMode {
    type Err = ParseEbpfModeError;

    /// Exact, lower-case spellings only: a flag is not prose.
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        match input {
            "auto" => Ok(EbpfMode::Auto),
            "require" => Ok(EbpfMode::Require),
            "off" => Ok(EbpfMode::Off),
            _ => Err(ParseEbpfModeError {
                input: input.to_owned(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: Result<EbpfMode, &str>) {
        let actual = input.parse::<EbpfMode>().map_err(|error| error.to_string());
        assert_eq!(actual, expected.map_err(str::to_owned), "input {input:?}");
    }

    #[test]
    fn parses_exact_names_only() {
        check("auto", Ok(EbpfMode::Auto));
        check("require", Ok(EbpfMode::Require));
        check("off", Ok(EbpfMode::Off));
        let expected = "invalid eBPF mode \"Auto\": expected one of auto, require, off";
        check("Auto", Err(expected));
        check(
            "",
            Err("invalid eBPF mode \"\": expected one of auto, require, off"),
        );
        check(
            "on",
            Err("invalid eBPF mode \"on\": expected one of auto, require, off"),
        );
    }

    #[test]
    fn display_round_trips() {
        for name in EbpfMode::NAMES {
            let mode: EbpfMode = name.parse().expect("a listed name parses");
            assert_eq!(mode.to_string(), name);
        }
    }
}
