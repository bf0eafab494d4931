//! The README's command-line examples, run as written against the built binary.
//!
//! Every `$ wardgate ...` (or `$ cargo run -q -- ...`) command in a ```console block of README.md
//! is extracted, run from a directory where the README's relative paths resolve (`deploy/` and
//! `docs/` of this repository; the 12,000 generated requests the `learn` example reads), and
//! checked: it exits with the code this test expects for it, and every line the README shows as
//! its output appears in what it printed, in the same order (`...` and `[... elided ...]` stand
//! for lines left out; `error:`/`warning:` lines are looked for on stderr). The list of commands
//! is checked too, so an example that is removed, or changed so that it no longer runs or prints
//! what the README says, fails this test.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use wardgate::policy::Policy;

mod traffic;

/// Every README example this test knows, with the exit code it must end with. An example the
/// README gains must be added here; one it loses fails the test until it is removed here.
const EXPECTED: &[(&str, i32)] = &[
    ("check deploy/bundles/hospital.yaml --from spiffe://hospital.example/ns/clinical/sa/ehr --to spiffe://hospital.example/ns/clinical/sa/lab --path /admin/?view=full", 1),
    ("check deploy/bundles/hospital.yaml --from spiffe://partner-lab.example/ns/vendor/sa/reflab --to spiffe://hospital.example/ns/admin/sa/interface-engine --method POST --path /inbound/results --cert-lifetime 24h", 1),
    ("check deploy/bundles/hospital.yaml --from spiffe://hospital.example/ns/admin/sa/hr --to spiffe://hospital.example/ns/admin/sa/scheduling --path /rosters/week-48 --at 2026-11-22T12:00:00+01:00", 1),
    ("test deploy/bundles/hospital.yaml deploy/bundles/hospital.tests.yaml", 0),
    ("analyze deploy/bundles/hospital.yaml --matrix", 0),
    ("analyze deploy/bundles/hospital.yaml --who-can-reach clinical", 0),
    ("analyze deploy/bundles/hospital.yaml --findings", 0),
    ("diff deploy/bundles/hospital.yaml docs/examples/candidate.yaml", 4),
    ("replay docs/examples/candidate-2.yaml --log docs/examples/decisions.jsonl --baseline deploy/bundles/hospital.yaml", 4),
    ("replay docs/examples/candidate-2.yaml --log docs/examples/decisions.jsonl --max-undetermined 0", 6),
    ("replay docs/examples/candidate-2.yaml --log docs/examples/envoy-access.log", 3),
    ("learn --log decisions.jsonl --base deploy/bundles/hospital.yaml -o learned.yaml --tests learned.tests.yaml", 0),
];

/// One example: the command's arguments (after the program name) and the output shown.
#[derive(Debug)]
struct Example {
    /// README line of the `$` prompt.
    line: usize,
    args: Vec<String>,
    shown: Vec<String>,
}

/// Split a command line as a POSIX shell would for the quoting the README uses: blanks
/// separate words, '...' and "..." quote, a backslash escapes the next character.
fn words(command: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = command.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                for q in chars.by_ref() {
                    if q == '\'' {
                        break;
                    }
                    word.push(q);
                }
            }
            '"' => {
                in_word = true;
                while let Some(q) = chars.next() {
                    match q {
                        '"' => break,
                        '\\' => word.extend(chars.next()),
                        _ => word.push(q),
                    }
                }
            }
            '\\' => {
                in_word = true;
                word.extend(chars.next());
            }
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        out.push(word);
    }
    out
}

/// Every wardgate command of README.md's console blocks, with the output shown under it.
fn examples(readme: &str) -> Vec<Example> {
    let mut out: Vec<Example> = Vec::new();
    let mut in_console = false;
    let mut lines = readme.lines().enumerate().peekable();
    while let Some((i, line)) = lines.next() {
        if !in_console {
            in_console = line.trim_end() == "```console";
            continue;
        }
        if line.trim_end() == "```" {
            in_console = false;
            continue;
        }
        if let Some(cmd) = line.strip_prefix("$ ") {
            let mut command = cmd.to_string();
            while command.ends_with('\\') {
                command.pop();
                match lines.next() {
                    Some((_, next)) => command.push_str(next),
                    None => break,
                }
            }
            let mut w = words(&command);
            let program: Vec<String> = match w.first().map(String::as_str) {
                Some("wardgate") => w.drain(..1).collect(),
                Some("cargo") if w.get(1..4) == Some(&["run".into(), "-q".into(), "--".into()]) => {
                    w.drain(..4).collect()
                }
                _ => panic!(
                    "README.md:{}: a console example that is not a wardgate command: {line}",
                    i + 1
                ),
            };
            assert!(!program.is_empty());
            out.push(Example {
                line: i + 1,
                args: w,
                shown: Vec::new(),
            });
        } else if let Some(ex) = out.last_mut() {
            ex.shown.push(line.trim_end().to_string());
        }
    }
    out
}

/// The lines of `shown` the output must contain: without elisions (`...`, and `[... elided
/// ...]` blocks, which may span lines) and blank lines.
fn required(shown: &[String]) -> Vec<&str> {
    let mut out = Vec::new();
    let mut in_elision = false;
    for l in shown {
        let t = l.trim();
        if in_elision || (t.starts_with('[') && t.contains("elided")) {
            in_elision = !t.ends_with(']');
            continue;
        }
        if t.is_empty() || t == "..." {
            continue;
        }
        out.push(l.as_str());
    }
    out
}

/// Whether an output line is the one the README shows. The one line that differs on every run
/// is `check`'s evaluation instant when it is "now".
fn same_line(shown: &str, got: &str) -> bool {
    if shown.ends_with("(evaluation instant: now)") {
        return got.starts_with("at:") && got.ends_with("(evaluation instant: now)");
    }
    shown == got.trim_end()
}

/// The first line of `shown` (in order) missing from `got`, if any.
fn first_missing<'a>(shown: &[&'a str], got: &str) -> Option<&'a str> {
    let mut got = got.lines();
    shown
        .iter()
        .find(|s| !got.by_ref().any(|g| same_line(s, g)))
        .copied()
}

/// A directory where the README's relative paths resolve, holding the `learn` example's log.
fn workdir() -> tempfile::TempDir {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().expect("tempdir");
    for sub in ["deploy", "docs"] {
        std::os::unix::fs::symlink(repo.join(sub), dir.path().join(sub)).expect("symlink");
    }
    // "On 12,000 generated requests (`cargo run --example gen_traffic`)": its defaults.
    let policy = Policy::from_path(&repo.join("deploy/bundles/hospital.yaml")).expect("hospital");
    let mut log = traffic::generate(&policy, 12_000, 17).join("\n");
    log.push('\n');
    std::fs::write(dir.path().join("decisions.jsonl"), log).expect("write log");
    dir
}

fn run(dir: &Path, args: &[String]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wardgate"))
        .args(args)
        .current_dir(dir)
        .env("WARDGATE_DOT", "/nonexistent/dot")
        .output()
        .expect("run wardgate")
}

fn readme() -> (PathBuf, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let text = std::fs::read_to_string(&path).expect("README.md");
    (path, text)
}

#[test]
fn every_readme_example_runs_as_shown() {
    let (_, text) = readme();
    let found = examples(&text);
    let listed: Vec<String> = found.iter().map(|e| e.args.join(" ")).collect();
    let expected: Vec<&str> = EXPECTED.iter().map(|(c, _)| *c).collect();
    for e in &expected {
        assert!(
            listed.iter().any(|l| l == e),
            "README.md no longer has the example `wardgate {e}` (examples found: {listed:#?})"
        );
    }
    let dir = workdir();
    let mut failures = Vec::new();
    for ex in &found {
        let command = ex.args.join(" ");
        let Some(&(_, code)) = EXPECTED.iter().find(|(c, _)| *c == command) else {
            failures.push(format!(
                "README.md:{}: `wardgate {command}` is not in this test's list: add it to EXPECTED with its exit code",
                ex.line
            ));
            continue;
        };
        let o = run(dir.path(), &ex.args);
        let stdout = String::from_utf8_lossy(&o.stdout);
        let stderr = String::from_utf8_lossy(&o.stderr);
        if o.status.code() != Some(code) {
            failures.push(format!(
                "README.md:{}: `wardgate {command}` exited {:?}, expected {code}\n{stdout}{stderr}",
                ex.line,
                o.status.code()
            ));
            continue;
        }
        let shown = required(&ex.shown);
        let (on_stderr, on_stdout): (Vec<&str>, Vec<&str>) = shown
            .iter()
            .partition(|l| l.starts_with("error:") || l.starts_with("warning:"));
        for (lines, got, stream) in [
            (on_stdout, &stdout, "stdout"),
            (on_stderr, &stderr, "stderr"),
        ] {
            if let Some(missing) = first_missing(&lines, got) {
                failures.push(format!(
                    "README.md:{}: `wardgate {command}` does not print, in the README's order, on {stream}:\n  {missing}\nit printed:\n{got}",
                    ex.line
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// The extraction itself: quoting and continuation lines as the README writes them, output
/// lines attached to their command, elisions dropped, and a missing line detected.
#[test]
fn extraction_reads_the_readme_as_a_shell_would() {
    let md = "text\n```console\n$ wardgate check b.yaml \\\n    --path '/admin/?view=full' --header \"x-a=b c\"\ndecision: deny\n...\n  [2 grants elided here: a,\n   b]\nresult: ok (exit 1)\n$ cargo run -q -- validate b.yaml\nb.yaml: ok\n```\n```sh\n$ not a wardgate command\n```\n";
    let ex = examples(md);
    assert_eq!(ex.len(), 2);
    assert_eq!(
        ex[0].args,
        [
            "check",
            "b.yaml",
            "--path",
            "/admin/?view=full",
            "--header",
            "x-a=b c"
        ]
    );
    assert_eq!(ex[0].line, 3);
    assert_eq!(
        required(&ex[0].shown),
        ["decision: deny", "result: ok (exit 1)"]
    );
    assert_eq!(ex[1].args, ["validate", "b.yaml"]);
    let shown = required(&ex[0].shown);
    assert_eq!(
        first_missing(&shown, "decision: deny\nx\nresult: ok (exit 1)\n"),
        None
    );
    assert_eq!(
        first_missing(&shown, "result: ok (exit 1)\ndecision: deny\n"),
        Some("result: ok (exit 1)"),
        "order matters"
    );
    assert_eq!(
        first_missing(&shown, "decision: allow\nresult: ok (exit 1)\n"),
        Some("decision: deny")
    );
}
