//! What a run says: one line per failing test (`file:line: name: what was
//! expected and what came`), its details and the app's log under it, a
//! summary `N passed, M failed`, and the same results as JUnit XML for CI.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use mlua::Table;

/// How a test ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Passed,
    /// An assertion failed.
    Failed,
    /// The test raised an error that is no assertion.
    Error,
    Pending,
}

impl Status {
    /// Counts as a failure.
    pub fn failed(self) -> bool {
        matches!(self, Status::Failed | Status::Error)
    }
}

/// One test's result, as the runtime reports it.
#[derive(Clone, Debug)]
pub struct TestResult {
    pub file: String,
    pub name: String,
    pub line: u32,
    pub status: Status,
    pub message: Option<String>,
    pub location: Option<String>,
    pub details: Option<String>,
    pub log: Vec<String>,
    pub time: f64,
}

impl TestResult {
    /// Reads a result table of the runtime's `run`.
    pub fn from_lua(t: &Table) -> mlua::Result<TestResult> {
        // Names and messages are Lua strings: any bytes (a binary body in
        // a failed comparison). Shown lossily, never refused.
        let text = |key: &str| -> mlua::Result<Option<String>> {
            Ok(t.get::<Option<mlua::String>>(key)?
                .map(|s| s.to_string_lossy()))
        };
        let status = match text("status")?.unwrap_or_default().as_str() {
            "passed" => Status::Passed,
            "pending" => Status::Pending,
            "error" => Status::Error,
            _ => Status::Failed,
        };
        let mut log = Vec::new();
        if let Some(lines) = t.get::<Option<Table>>("log")? {
            for line in lines.sequence_values::<mlua::String>() {
                log.push(line?.to_string_lossy());
            }
        }
        Ok(TestResult {
            file: text("file")?.unwrap_or_default(),
            // A name reaches the terminal: no escape sequences in it.
            name: printable(&text("name")?.unwrap_or_default()),
            line: t.get::<Option<u32>>("line")?.unwrap_or(0),
            status,
            message: text("message")?,
            location: text("location")?,
            details: text("details")?,
            log,
            time: t.get::<Option<f64>>("time")?.unwrap_or(0.0),
        })
    }

    /// `file:line` the failure points at (the declaration when unknown).
    fn at(&self) -> String {
        self.location
            .clone()
            .unwrap_or_else(|| format!("{}:{}", self.file, self.line))
    }
}

/// `text` with control characters shown as `\u{..}` escapes.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// The console report.
pub fn print(
    out: &mut dyn Write,
    results: &[TestResult],
    load_errors: &[(String, String)],
    verbose: bool,
    requests: u64,
    elapsed: Duration,
) {
    for (file, message) in load_errors {
        let _ = writeln!(
            out,
            "{file}: the spec did not load: {}",
            first_line(message)
        );
        for line in message.lines().skip(1) {
            let _ = writeln!(out, "    {line}");
        }
    }
    for result in results {
        if result.status.failed() {
            let at = result.at();
            let what = result.message.as_deref().unwrap_or("failed");
            // An error's message often starts with the place it names.
            let what = what
                .strip_prefix(at.as_str())
                .and_then(|rest| rest.strip_prefix(": "))
                .unwrap_or(what);
            let _ = writeln!(out, "{at}: {}: {what}", result.name);
            if let Some(details) = &result.details {
                for line in details.lines() {
                    let _ = writeln!(out, "    {line}");
                }
            }
        } else if result.status == Status::Pending {
            let why = result.message.as_deref().map_or(String::new(), |m| {
                format!(": {}", m.strip_prefix("pending: ").unwrap_or(m))
            });
            let _ = writeln!(
                out,
                "{}:{}: {}: pending{why}",
                result.file, result.line, result.name
            );
        } else if verbose && !result.log.is_empty() {
            let _ = writeln!(
                out,
                "{}:{}: {}: passed",
                result.file, result.line, result.name
            );
        }
        if (result.status.failed() || verbose) && !result.log.is_empty() {
            let _ = writeln!(out, "    the engine's log during the test:");
            for entry in &result.log {
                for line in entry.lines() {
                    let _ = writeln!(out, "      {line}");
                }
            }
        }
    }
    let count = |status: Status| results.iter().filter(|r| r.status == status).count();
    let failed = count(Status::Failed) + count(Status::Error);
    let pending = count(Status::Pending);
    let mut summary = format!("{} passed, {failed} failed", count(Status::Passed));
    if pending > 0 {
        summary.push_str(&format!(", {pending} pending"));
    }
    if !load_errors.is_empty() {
        summary.push_str(&format!(", {} did not load", load_errors.len()));
    }
    let _ = writeln!(
        out,
        "{summary} ({requests} requests in {:.2} s)",
        elapsed.as_secs_f64()
    );
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}

/// Makes `path`'s directory and checks the file can be written, before
/// the run (CI asks for `reports/junit.xml` in a fresh checkout).
pub fn prepare_junit(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map(drop)
}

/// JUnit XML: one `testsuite` per spec file, a `testcase` per test, a
/// `failure`, `error` or `skipped` child, the engine's log as
/// `system-out`; a spec that did not load is a suite with one error.
pub fn write_junit(
    path: &Path,
    results: &[TestResult],
    load_errors: &[(String, String)],
    elapsed: Duration,
) -> std::io::Result<()> {
    let mut files: Vec<&str> = Vec::new();
    for result in results {
        if !files.contains(&result.file.as_str()) {
            files.push(&result.file);
        }
    }
    let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let failures = results
        .iter()
        .filter(|r| r.status == Status::Failed)
        .count();
    let errors = results.iter().filter(|r| r.status == Status::Error).count() + load_errors.len();
    let skipped = results
        .iter()
        .filter(|r| r.status == Status::Pending)
        .count();
    xml.push_str(&format!(
        "<testsuites name=\"keystone test\" tests=\"{}\" failures=\"{failures}\" errors=\"{errors}\" skipped=\"{skipped}\" time=\"{:.3}\">\n",
        results.len() + load_errors.len(),
        elapsed.as_secs_f64()
    ));
    for file in files {
        let cases: Vec<&TestResult> = results.iter().filter(|r| r.file == file).collect();
        let count = |status: Status| cases.iter().filter(|r| r.status == status).count();
        let time: f64 = cases.iter().map(|r| r.time).sum();
        xml.push_str(&format!(
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"{}\" time=\"{time:.3}\">\n",
            escape(file),
            cases.len(),
            count(Status::Failed),
            count(Status::Error),
            count(Status::Pending)
        ));
        for case in cases {
            xml.push_str(&format!(
                "    <testcase classname=\"{}\" name=\"{}\" file=\"{}\" line=\"{}\" time=\"{:.6}\"",
                escape(&case.file),
                escape(&case.name),
                escape(&case.file),
                case.line,
                case.time
            ));
            let mut body = String::new();
            let message = case.message.as_deref().unwrap_or("");
            let text = |case: &TestResult| {
                let mut text = format!("{}: {message}", case.at());
                if let Some(details) = &case.details {
                    text.push('\n');
                    text.push_str(details);
                }
                escape(&text)
            };
            match case.status {
                Status::Passed => {}
                Status::Pending => body.push_str(&format!(
                    "      <skipped message=\"{}\"/>\n",
                    escape(message)
                )),
                Status::Failed => body.push_str(&format!(
                    "      <failure message=\"{}\" type=\"assertion\">{}</failure>\n",
                    escape(message),
                    text(case)
                )),
                Status::Error => body.push_str(&format!(
                    "      <error message=\"{}\" type=\"error\">{}</error>\n",
                    escape(message),
                    text(case)
                )),
            }
            if !case.log.is_empty() {
                body.push_str(&format!(
                    "      <system-out>{}</system-out>\n",
                    escape(&case.log.join("\n"))
                ));
            }
            if body.is_empty() {
                xml.push_str("/>\n");
            } else {
                xml.push_str(">\n");
                xml.push_str(&body);
                xml.push_str("    </testcase>\n");
            }
        }
        xml.push_str("  </testsuite>\n");
    }
    for (file, message) in load_errors {
        xml.push_str(&format!(
            "  <testsuite name=\"{0}\" tests=\"1\" failures=\"0\" errors=\"1\" skipped=\"0\" time=\"0\">\n    <testcase classname=\"{0}\" name=\"(load)\" time=\"0\">\n      <error message=\"the spec did not load\" type=\"load\">{1}</error>\n    </testcase>\n  </testsuite>\n",
            escape(file),
            escape(message)
        ));
    }
    xml.push_str("</testsuites>\n");
    std::fs::write(path, xml)
}

/// XML text and attribute escaping; control characters XML 1.0 cannot
/// carry become U+FFFD.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' | '\t' | '\r' => out.push(c),
            c if (c as u32) < 0x20 => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn xml_escapes_markup_and_control_bytes() {
        assert_eq!(
            escape("a<b & \"c\"\u{1}"),
            "a&lt;b &amp; &quot;c&quot;\u{FFFD}"
        );
    }
}
