//! Printing analysis results: terminal text, Graphviz DOT, and SVG (through `dot -Tsvg` when
//! Graphviz is installed, otherwise drawn here so `--svg` always works).
//!
//! Everything here formats data computed by `analyze`; it must never compute a claim itself.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use super::analyze::{Finding, Grant, Matrix, Reach};

/// Column-aligned table.
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = widths[c]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn cell_text(m: &Matrix, from: &str, to: &str) -> String {
    match m.cell(from, to) {
        None => "-".to_string(),
        Some(c) => match (c.rules.len(), c.break_glass.is_empty()) {
            (0, _) => "bg".to_string(),
            (n, true) => n.to_string(),
            (n, false) => format!("{n} +bg"),
        },
    }
}

/// The matrix as a terminal table followed by the rules of each non-empty cell.
pub(crate) fn matrix_text(m: &Matrix) -> String {
    let mut out = String::from(
        "segment matrix (rows: source, columns: destination; n = allow rules, bg = break-glass entries)\n\n",
    );
    let mut rows = vec![std::iter::once("from \\ to".to_string())
        .chain(m.destinations.iter().cloned())
        .collect::<Vec<_>>()];
    for s in &m.sources {
        rows.push(
            std::iter::once(s.clone())
                .chain(m.destinations.iter().map(|d| cell_text(m, s, d)))
                .collect(),
        );
    }
    out.push_str(&table(&rows));
    for c in &m.cells {
        let _ = writeln!(out, "\n{} -> {}", c.from, c.to);
        if !c.rules.is_empty() {
            let _ = writeln!(out, "  rules        {}", wrap(&abridge(&c.rules), 15));
        }
        if !c.break_glass.is_empty() {
            let _ = writeln!(out, "  break-glass  {}", c.break_glass.join(", "));
        }
        let _ = writeln!(out, "  e.g.         {}", c.example.describe());
    }
    if !m.notes.is_empty() {
        out.push('\n');
        for n in &m.notes {
            let _ = writeln!(out, "note: {n}");
        }
    }
    out
}

/// At most [`SHOWN`] names, then how many more (the JSON output lists them all).
fn abridge(items: &[String]) -> Vec<String> {
    if items.len() <= SHOWN {
        return items.to_vec();
    }
    let mut v = items[..SHOWN - 1].to_vec();
    v.push(format!(
        "... and {} more (--format json lists them all)",
        items.len() - (SHOWN - 1)
    ));
    v
}

/// Names listed per line item in text output.
const SHOWN: usize = 12;

fn wrap(items: &[String], indent: usize) -> String {
    let mut out = String::new();
    let mut width = indent;
    for (i, it) in items.iter().enumerate() {
        let piece = if i + 1 < items.len() {
            format!("{it}, ")
        } else {
            it.clone()
        };
        if width + piece.len() > 100 && width > indent {
            while out.ends_with(' ') {
                out.pop();
            }
            out.push('\n');
            out.push_str(&" ".repeat(indent));
            width = indent;
        }
        width += piece.len();
        out.push_str(&piece);
    }
    out.trim_end().to_string()
}

fn grant_text(out: &mut String, g: &Grant) {
    let _ = writeln!(
        out,
        "\n  {} [{}]  {}:{}{}",
        g.rule,
        g.kind.replace('_', "-"),
        g.file,
        g.line,
        if g.effective {
            ""
        } else {
            "  (fully carved out: never allows)"
        }
    );
    let _ = writeln!(
        out,
        "    from      {}  ({})",
        g.from.join(", "),
        g.from_segments.join(", ")
    );
    let _ = writeln!(out, "    to        {}", g.to.join(", "));
    let any = |v: &Option<Vec<String>>| v.as_ref().map_or("any".to_string(), |v| v.join(", "));
    let _ = writeln!(out, "    methods   {}", any(&g.methods));
    let _ = writeln!(out, "    paths     {}", any(&g.paths));
    if g.hosts.is_some() {
        let _ = writeln!(out, "    hosts     {}", any(&g.hosts));
    }
    for c in &g.conditions {
        let _ = writeln!(out, "    when      {c}");
    }
    for e in &g.except {
        let _ = writeln!(
            out,
            "    except    {} [{}]: {}",
            e.by,
            e.kind.replace('_', "-"),
            e.only.join("; ")
        );
    }
}

/// `--who-can-reach` as text.
pub(crate) fn reach_text(r: &Reach) -> String {
    let mut out = format!(
        "who can reach {} ({})\n",
        r.target,
        r.target_patterns.join(", ")
    );
    if r.sources.is_empty() {
        out.push_str("\nnothing: every request to it is denied\n");
    } else {
        out.push_str("\nsources\n");
        let width = r.sources.iter().map(|x| x.source.len()).max().unwrap_or(0) + 4;
        for x in &r.sources {
            let mut items = abridge(&x.rules);
            if !x.break_glass.is_empty() {
                items.push(format!("break-glass: {}", x.break_glass.join(", ")));
            }
            let _ = writeln!(
                out,
                "  {:<w$}{}",
                x.source,
                wrap(&items, width + 2),
                w = width
            );
        }
    }
    if !r.grants.is_empty() {
        out.push_str("\ngrants");
        for g in &r.grants {
            grant_text(&mut out, g);
        }
    }
    out
}

/// Findings as text.
pub(crate) fn findings_text(f: &[Finding]) -> String {
    let mut out = format!("findings ({})\n", f.len());
    for x in f {
        let _ = write!(out, "\n  {:<8} {}", x.severity, x.kind);
        if let Some(l) = &x.location {
            let _ = write!(out, "  {l}");
        }
        let _ = writeln!(out, "\n           {}", x.message);
        if !x.related.is_empty() && x.kind != "crosses-into-sensitive" {
            let _ = writeln!(out, "           related: {}", x.related.join(", "));
        }
        if let Some(e) = &x.example {
            let _ = writeln!(out, "           e.g. {}", e.describe());
        }
    }
    out
}

fn dot_id(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn edge_label(rules: &[String], bg: &[String]) -> String {
    let mut parts: Vec<String> = if rules.len() <= 4 {
        rules.to_vec()
    } else {
        vec![format!("{} rules", rules.len())]
    };
    if !bg.is_empty() {
        parts.push(format!("break-glass: {}", bg.join(", ")));
    }
    parts.join("\\n")
}

/// The matrix as a Graphviz digraph; `sensitive` segments are drawn in red.
pub(crate) fn matrix_dot(m: &Matrix, sensitive: &[String]) -> String {
    let mut out = String::from(
        "digraph wardgate {\n  rankdir=LR;\n  node [shape=box, style=\"rounded,filled\", fillcolor=\"#e8eef8\", fontname=\"Helvetica\"];\n  edge [fontname=\"Helvetica\", fontsize=10];\n",
    );
    let mut nodes: Vec<&String> = m.sources.iter().chain(&m.destinations).collect();
    nodes.sort();
    nodes.dedup();
    for n in nodes {
        let fill = if sensitive.contains(n) {
            ", fillcolor=\"#f8d8d8\""
        } else {
            ""
        };
        let _ = writeln!(out, "  {} [label={}{fill}];", dot_id(n), dot_id(n));
    }
    for c in &m.cells {
        let style = if c.rules.is_empty() {
            ", style=dashed, color=\"#c03030\""
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "  {} -> {} [label=\"{}\"{style}];",
            dot_id(&c.from),
            dot_id(&c.to),
            edge_label(&c.rules, &c.break_glass).replace('"', "\\\"")
        );
    }
    out.push_str("}\n");
    out
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Estimated advance width, in px, of `text` in the bold sans-serif the SVG names or falls back
/// to: Helvetica or Arial (macOS, Windows), or DejaVu Sans Bold, what `sans-serif` usually is
/// on Linux and the widest of them by far.
///
/// Conservative: each glyph counts as the widest member of its class in those fonts (narrow
/// `i l .` 0.38 em, `f t r - _` 0.5, other lower-case letters and digits 0.72, `w` 0.93, `m`
/// 1.05, capitals 0.86, `M W` 1.11), and anything else, non-ASCII included, as 1.2 em. The
/// drawing reserves this much, so a label is never wider than the room made for it.
fn text_width(text: &str, size: f64) -> f64 {
    let em: f64 = text
        .chars()
        .map(|c| match c {
            'i' | 'j' | 'l' | 'I' | 'J' | '.' | ',' | '|' | '/' | '\'' | ' ' => 0.38,
            'f' | 't' | 'r' | '-' | '_' | '(' | ')' | '[' | ']' | '!' | ':' | ';' => 0.5,
            'm' => 1.05,
            'w' => 0.93,
            'M' | 'W' => 1.11,
            'A'..='Z' => 0.86,
            'a'..='z' | '0'..='9' => 0.72,
            _ => 1.2,
        })
        .sum();
    (em * size).ceil()
}

/// The matrix drawn directly as a grid: rows are sources, columns destinations; a filled cell
/// lists the rules that let its row reach its column (dashed: break-glass only). The label
/// column and the cells are sized by the longest segment names, so no label is clipped.
pub(crate) fn matrix_svg_builtin(m: &Matrix, sensitive: &[String]) -> String {
    const MARGIN: f64 = 10.0;
    const LABEL_SIZE: f64 = 13.0;
    const CELL_H: f64 = 86.0;
    const TOP: f64 = 70.0;
    const HEAD_H: f64 = 34.0;
    const LINES: usize = 4;
    const SUBTITLE: &str = "rows: source, columns: destination; a filled cell lists the rules that allow it (dashed: break-glass only)";
    let widest = |labels: Vec<String>| {
        labels
            .iter()
            .map(|l| text_width(l, LABEL_SIZE))
            .fold(0.0, f64::max)
    };
    // Row labels end MARGIN left of the first cell and start at least MARGIN from the edge.
    let head_w =
        (2.0 * MARGIN + widest(m.sources.iter().map(|s| format!("from {s}")).collect())).max(150.0);
    let cell_w = (widest(m.destinations.iter().map(|d| format!("to {d}")).collect())
        + 2.0 * MARGIN)
        .max(230.0);
    let w = (head_w + cell_w * m.destinations.len() as f64 + 20.0)
        .max(2.0 * MARGIN + text_width(SUBTITLE, 11.0));
    let h = TOP + HEAD_H + CELL_H * m.sources.len() as f64 + 40.0;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"Helvetica, Arial, sans-serif\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"10\" y=\"26\" font-size=\"16\" font-weight=\"bold\">wardgate segment matrix</text>\n<text x=\"10\" y=\"46\" font-size=\"11\" fill=\"#555\">{SUBTITLE}</text>\n"
    );
    let red = |name: &str| {
        if sensitive.iter().any(|x| x == name) {
            "#b02020"
        } else {
            "#222"
        }
    };
    for (c, d) in m.destinations.iter().enumerate() {
        let x = head_w + cell_w * c as f64 + cell_w / 2.0;
        let _ = writeln!(
            s,
            "<text x=\"{x:.1}\" y=\"{:.1}\" font-size=\"13\" font-weight=\"bold\" text-anchor=\"middle\" fill=\"{}\">to {}</text>",
            TOP + HEAD_H / 2.0 + 4.0,
            red(d),
            xml(d)
        );
    }
    for (r, src) in m.sources.iter().enumerate() {
        let y = TOP + HEAD_H + CELL_H * r as f64;
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"13\" font-weight=\"bold\" text-anchor=\"end\" fill=\"{}\">from {}</text>",
            head_w - MARGIN,
            y + CELL_H / 2.0 + 4.0,
            red(src),
            xml(src)
        );
        for (c, dst) in m.destinations.iter().enumerate() {
            let x = head_w + cell_w * c as f64;
            let cell = m.cell(src, dst);
            let (fill, dash) = match cell {
                None => ("#f4f4f4", ""),
                Some(c) if c.rules.is_empty() => ("#fbe3d4", " stroke-dasharray=\"5 3\""),
                Some(_) if sensitive.iter().any(|x| x == dst) && src != dst => ("#f8d8d8", ""),
                Some(_) => ("#dcefdc", ""),
            };
            let _ = writeln!(
                s,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" rx=\"6\" fill=\"{fill}\" stroke=\"#888\"{dash}/>",
                x + 3.0,
                y + 3.0,
                cell_w - 6.0,
                CELL_H - 6.0
            );
            let mut lines: Vec<String> = Vec::new();
            match cell {
                None => lines.push("-".to_string()),
                Some(c) => {
                    let mut head = format!(
                        "{} rule{}",
                        c.rules.len(),
                        if c.rules.len() == 1 { "" } else { "s" }
                    );
                    if !c.break_glass.is_empty() {
                        head.push_str(" + break-glass");
                    }
                    lines.push(head);
                    let names: Vec<&String> = c.rules.iter().chain(&c.break_glass).collect();
                    for (k, n) in names.iter().enumerate() {
                        if k + 1 == LINES && names.len() > LINES {
                            lines.push(format!("... {} more", names.len() - k));
                            break;
                        }
                        let mut t = n.to_string();
                        if t.len() > 36 {
                            t.truncate(34);
                            t.push_str("..");
                        }
                        lines.push(t);
                    }
                }
            }
            for (k, line) in lines.iter().enumerate() {
                let _ = writeln!(
                    s,
                    "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"{}\" text-anchor=\"middle\"{}>{}</text>",
                    x + cell_w / 2.0,
                    y + 20.0 + 14.0 * k as f64,
                    if k == 0 { 12 } else { 10 },
                    if k == 0 { " font-weight=\"bold\"" } else { "" },
                    xml(line)
                );
            }
        }
    }
    s.push_str("</svg>\n");
    s
}

/// Write the matrix as SVG: through Graphviz (`$WARDGATE_DOT`, default `dot`) when it runs,
/// otherwise drawn directly. Returns which renderer was used.
pub(crate) fn write_matrix_svg(
    m: &Matrix,
    sensitive: &[String],
    file: &Path,
) -> std::io::Result<&'static str> {
    let dot = std::env::var("WARDGATE_DOT").unwrap_or_else(|_| "dot".to_string());
    let source = matrix_dot(m, sensitive);
    let rendered = Command::new(&dot)
        .arg("-Tsvg")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .and_then(|mut child| {
            if let Some(mut stdin) = child.stdin.take() {
                stdin.write_all(source.as_bytes())?;
            }
            child.wait_with_output()
        });
    match rendered {
        Ok(out) if out.status.success() && !out.stdout.is_empty() => {
            std::fs::write(file, out.stdout)?;
            Ok("graphviz")
        }
        _ => {
            std::fs::write(file, matrix_svg_builtin(m, sensitive))?;
            Ok("built-in")
        }
    }
}
