//! The one-shot verbs: `validate` and `check` here, the tooling verbs handed to `tooling`, and
//! the printing they share.
//!
//! Owns what `validate` and `check` print and which [`Exit`] they end with. Every line goes
//! through [`emit`]/[`complain`], which stop quietly at a closed pipe (`wardgate check ... |
//! head -1`), never through `println!`, which panics there. It must never decide anything itself:
//! `check` prints what [`Policy::decide_traced`] returns, which is what `decide` (and the server)
//! returns.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use clap::Args;

use crate::policy::{
    CertificateFacts, CompileLimits, PeerCertificate, Policy, Request, Trace, Verdict,
};
use crate::tooling::Exit;

/// `wardgate check` flags.
#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    /// Bundle file or directory.
    bundle: PathBuf,
    /// Source SPIFFE ID (what Envoy reports as `source.principal`).
    #[arg(long, value_name = "SPIFFE_ID")]
    from: String,
    /// Destination SPIFFE ID.
    #[arg(long, value_name = "SPIFFE_ID")]
    to: Option<String>,
    /// HTTP method.
    #[arg(long, default_value = "GET")]
    method: String,
    /// Raw request path (query allowed; normalised as the server would).
    #[arg(long, default_value = "/")]
    path: String,
    /// Host / :authority.
    #[arg(long, default_value = "")]
    host: String,
    /// Request header, repeatable.
    #[arg(long = "header", value_name = "NAME=VALUE", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// Evaluate at this instant (RFC 3339, e.g. 2026-03-29T02:30:00+01:00); default now.
    #[arg(long, value_name = "RFC3339_INSTANT")]
    at: Option<jiff::Timestamp>,
    /// Simulate a forwarded peer certificate valid for this long (e.g. `24h`), issued to the
    /// source and covering the evaluation instant (see `CertificateFacts::simulated`).
    #[arg(long, value_name = "DURATION")]
    cert_lifetime: Option<jiff::SignedDuration>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// The compile budget.
    #[command(flatten)]
    compile: crate::tooling::budget::CompileArgs,
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not NAME=VALUE"))?;
    if k.is_empty() {
        return Err(format!("`{s}` has an empty header name"));
    }
    Ok((k.to_ascii_lowercase(), v.to_string()))
}

/// Write `text` to standard output and end with `exit`. A closed pipe ends the output quietly
/// (the reader has what it wanted); any other write error is reported as [`Exit::Input`]
/// ("an output file that cannot be written").
pub(crate) fn emit(exit: Exit, text: &str) -> Exit {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => exit,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => exit,
        Err(e) => {
            complain(&format!("error: cannot write to standard output: {e}\n"));
            Exit::Input
        }
    }
}

/// Write `text` to standard error; a closed or failing stderr is ignored (nowhere left to say so).
pub(crate) fn complain(text: &str) {
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// `wardgate validate BUNDLE`: a one-line summary, or every problem as `FILE:LINE:COL: message`
/// and [`Exit::Input`].
pub(crate) fn validate(path: &Path, limits: CompileLimits) -> Exit {
    match Policy::from_path_within(path, limits) {
        Ok(p) => emit(
            Exit::Ok,
            &format!(
                "{}: ok: revision {}, {} rule(s), {} segment(s), {}\n",
                path.display(),
                p.revision(),
                p.rule_count(),
                p.segment_names().count(),
                p.digest()
            ),
        ),
        Err(errors) => {
            let mut text = String::new();
            for d in errors.iter() {
                let _ = writeln!(text, "{d}");
            }
            let _ = writeln!(text, "{}: {} error(s)", path.display(), errors.0.len());
            complain(&text);
            Exit::Input
        }
    }
}

/// `wardgate check`: decide one request and print the decision, the bundle, the instant
/// evaluated and the trace. [`Exit::Ok`] when allowed, [`Exit::No`] when denied.
pub(crate) fn check(args: CheckArgs) -> Exit {
    let policy = match Policy::from_path_within(&args.bundle, args.compile.limits()) {
        Ok(p) => p,
        Err(errors) => {
            complain(&format!("{errors}\n"));
            return Exit::Input;
        }
    };
    let headers: HashMap<String, String> = args.headers.iter().cloned().collect();
    let time = args.at.unwrap_or_else(jiff::Timestamp::now);
    let facts = args
        .cert_lifetime
        .map(|life| CertificateFacts::simulated(&args.from, time, life));
    let mut request = Request::new(&args.method, &args.path);
    request.source = Some(&args.from);
    request.destination = args.to.as_deref();
    request.host = &args.host;
    request.headers = &headers;
    request.time = time;
    if let Some(f) = &facts {
        request.peer_certificate = PeerCertificate::Parsed(f);
    }
    let mut trace = Trace::default();
    let d = policy.decide_traced(&request, &mut trace);
    let exit = match d.verdict {
        Verdict::Allow => Exit::Ok,
        Verdict::Deny => Exit::No,
    };
    let mut text = String::new();
    if args.json {
        let out = serde_json::json!({
            "decision": d.verdict.as_str(),
            "reason": d.reason.as_str(),
            "rule": d.rule,
            "source_segment": d.source_segment,
            "destination_segment": d.destination_segment,
            "revision": policy.revision(),
            "digest": policy.digest(),
            "at": time.to_string(),
            "trace": trace,
        });
        let _ = writeln!(text, "{out}");
    } else {
        let _ = writeln!(text, "decision: {}", d.verdict.as_str());
        let _ = writeln!(text, "reason:   {}", d.reason);
        let _ = writeln!(text, "rule:     {}", d.rule.unwrap_or("-"));
        let _ = writeln!(
            text,
            "segments: {} -> {}",
            d.source_segment.unwrap_or("-"),
            d.destination_segment.unwrap_or("-")
        );
        let _ = writeln!(
            text,
            "bundle:   revision {} ({})",
            policy.revision(),
            policy.digest()
        );
        let source = if args.at.is_some() { "--at" } else { "now" };
        let _ = writeln!(text, "at:       {time} (evaluation instant: {source})");
        let _ = writeln!(text, "trace:");
        for step in &trace.steps {
            let _ = writeln!(text, "  {step}");
        }
    }
    emit(exit, &text)
}

/// `wardgate push BUNDLE REFERENCE`: validate a one-file bundle, then push it, with
/// `BUNDLE.minisig` when that file exists, as a wardgate bundle artifact to the `oci://` tag
/// (see [`crate::reload::oci`]). Exit 3 for a bundle that is unreadable or invalid, 2 for a
/// reference that is not a tag, 1 when the registry cannot be reached or refuses the push.
pub(crate) fn push(bundle: &Path, reference: &str, limits: CompileLimits) -> Exit {
    if !reference.starts_with("oci://") && !reference.starts_with("oci+http://") {
        complain("error: push needs an oci:// (or oci+http://) reference\n");
        return Exit::Usage;
    }
    if bundle.is_dir() {
        complain(&format!(
            "error: {}: push takes one bundle file, not a directory\n",
            bundle.display()
        ));
        return Exit::Input;
    }
    if validate(bundle, limits) != Exit::Ok {
        return Exit::Input;
    }
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let mut sig_path = bundle.as_os_str().to_owned();
    sig_path.push(crate::reload::SIG_SUFFIX);
    let sig_path = PathBuf::from(sig_path);
    let (yaml, signature) = match (read(bundle), sig_path.is_file().then(|| read(&sig_path))) {
        (Ok(y), None) => (y, None),
        (Ok(y), Some(Ok(s))) => (y, Some(s)),
        (Err(e), _) | (_, Some(Err(e))) => {
            complain(&format!("error: {e}\n"));
            return Exit::Input;
        }
    };
    let name = bundle
        .file_name()
        .map_or("bundle.yaml".into(), |n| n.to_string_lossy().into_owned());
    let signed = signature.is_some();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            complain(&format!("error: cannot start the async runtime: {e}\n"));
            return Exit::No;
        }
    };
    let pushed = runtime.block_on(crate::reload::oci::push(
        reference,
        &name,
        yaml,
        signature,
        std::time::Duration::from_secs(30),
    ));
    match pushed {
        Ok(url) => emit(
            Exit::Ok,
            &format!(
                "pushed {name}{} to {url}\n",
                if signed { " with its signature" } else { "" }
            ),
        ),
        Err(e) => {
            complain(&format!("error: {e}\n"));
            match e {
                crate::reload::oci::PushError::Reference(_) => Exit::Usage,
                _ => Exit::No,
            }
        }
    }
}
