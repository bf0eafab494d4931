#!/usr/bin/env bash
# The whole benchmark suite (issue 7), in well under 15 minutes on the 2-core build machine:
#
#   decide      criterion: Policy::decide at 100 .. 100,000 rules, compile time; then its hooks:
#               compile time and resident memory at 10,000 rules, validate of 100,000 (issue 14)
#   reload      criterion: bundle reload under load
#   check_path  criterion: what metrics and the decision log cost per check (if present)
#   regorus     wardgate vs regorus (Rego) on the same bundle and requests
#   grpc_load   gRPC Check load: wardgate (10,000 rules) vs an allow-all server, TCP and UDS
#   envoy_load  through the real Envoy with mTLS SVID clients: alone, RBAC, allow-all, wardgate
#   replay      `wardgate replay` (release binary) over 10,000 and 100,000 generated decision-log
#               records (`--example gen_traffic`), against a candidate, with and without a baseline
#
# Release build into target/bench (CARGO_TARGET_DIR), so it never fights other builds. Each bench's
# output goes to benches/results/<bench>.txt; the load benches' final `BENCH_JSON {...}` lines to
# benches/results/<bench>.json; then benches/results/results.md (tables) and chart.svg are
# written from them (python3, standard library only).
#
# Usage: scripts/bench.sh [bench ...]   (default: all of the above)
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/bench}"
RESULTS=benches/results
mkdir -p "$RESULTS"
start=$(date +%s)

if [ -z "${WARDGATE_ENVOY:-}" ]; then
    WARDGATE_ENVOY="$(bash scripts/install-test-deps.sh | tail -n1)"
    export WARDGATE_ENVOY
fi

benches=("$@")
if [ ${#benches[@]} -eq 0 ]; then
    benches=(decide reload regorus grpc_load envoy_load replay)
    [ -f benches/check_path.rs ] && benches+=(check_path)
fi
# `replay` is not a cargo bench: it times the release binary (below).
want_replay=0
for i in "${!benches[@]}"; do
    if [ "${benches[$i]}" = replay ]; then
        want_replay=1
        unset 'benches[i]'
    fi
done
benches=("${benches[@]}")

echo "== release build of the benches into $CARGO_TARGET_DIR"
# Built once, then the executables are run directly: a source change by someone else during the
# run cannot trigger a rebuild half-way, so every bench of one run measures the same build.
declare -A exe
# Executables of bench targets, "name path" per line, from cargo's JSON messages.
executables() {
    python3 -c 'import json, sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and "bench" in m["target"]["kind"]:
        print(m["target"]["name"], m["executable"])'
}
if [ ${#benches[@]} -gt 0 ]; then
    # shellcheck disable=SC2046 # one --bench flag per name
    while read -r name path; do exe[$name]=$path; done < <(
        cargo bench --no-run --locked --message-format=json-render-diagnostics \
            $(printf -- '--bench %s ' "${benches[@]}") | executables || true)
fi
for b in "${benches[@]}"; do
    # Not every bench built together: build the missing ones on their own.
    [ -n "${exe[$b]:-}" ] && continue
    while read -r name path; do exe[$name]=$path; done < <(
        cargo bench --no-run --locked --message-format=json-render-diagnostics --bench "$b" |
            executables || true)
    [ -n "${exe[$b]:-}" ] || echo "!! $b does not build; skipped"
done
status=0
for b in "${benches[@]}"; do
    echo "== $b ($(( $(date +%s) - start )) s so far)"
    if [ -z "${exe[$b]:-}" ]; then
        status=1
        continue
    fi
    if "${exe[$b]}" --bench 2>&1 | tee "$RESULTS/$b.txt"; then
        grep '^BENCH_JSON ' "$RESULTS/$b.txt" | tail -n1 | sed 's/^BENCH_JSON //' > "$RESULTS/$b.json" || true
        [ -s "$RESULTS/$b.json" ] || rm -f "$RESULTS/$b.json"
    else
        echo "!! $b failed" | tee -a "$RESULTS/$b.txt"
        status=1
    fi
done

if [ "$want_replay" = 1 ]; then
    echo "== replay: 10,000 and 100,000 generated records (release binary)"
    cargo build --release --locked --bin wardgate --example gen_traffic
    work=$(mktemp -d)
    sed -e 's/^revision: 1$/revision: 2/' \
        -e '/^  - name: billing-reads-encounter-codes$/,/^$/d' \
        deploy/bundles/hospital.yaml > "$work/candidate.yaml"
    : > "$RESULTS/replay.txt"
    for n in 10000 100000; do
        "$CARGO_TARGET_DIR/release/examples/gen_traffic" --requests "$n" > "$work/d$n.jsonl"
        for base in "" "--baseline deploy/bundles/hospital.yaml"; do
            # shellcheck disable=SC2086 # $base is two words or none
            /usr/bin/time -f "%e s %M KiB" -o "$work/time" "$CARGO_TARGET_DIR/release/wardgate" replay \
                "$work/candidate.yaml" --log "$work/d$n.jsonl" $base --json > "$work/out.json" || true
            read -r secs _ kib _ < "$work/time"
            echo "replay $n records${base:+ with baseline}: $secs s, max RSS $kib KiB, $(python3 -c \
                'import json,sys; print(json.load(open(sys.argv[1]))["result"])' "$work/out.json")" |
                tee -a "$RESULTS/replay.txt"
        done
    done
    rm -rf "$work"
fi

if [ -n "${exe[decide]:-}" ]; then
    # Issue 14 (fleet scale): compile time and resident memory at 10,000 rules, validate of
    # 100,000 rules, each in a fresh process, ENGINE_RUNS times (default 3) for a range.
    echo "== engine: compile time, resident memory, validate of 100,000 rules (decide bench hooks)"
    for _ in $(seq "${ENGINE_RUNS:-3}"); do
        WARDGATE_PROFILE=compile-time:10000 "${exe[decide]}" 2>/dev/null
        WARDGATE_PROFILE=memory:10000 "${exe[decide]}" 2>/dev/null
        WARDGATE_PROFILE=serve-memory:10000 "${exe[decide]}" 2>/dev/null
        WARDGATE_PROFILE=log-view:10000 "${exe[decide]}" 2>/dev/null
        WARDGATE_PROFILE=validate:100000 "${exe[decide]}" 2>/dev/null
        WARDGATE_PROFILE=compile-time-json:10000 "${exe[decide]}" 2>/dev/null
        WARDGATE_PROFILE=validate-json:100000 "${exe[decide]}" 2>/dev/null
    done | grep -E '^(compile|memory|serve-memory|log-view|validate) ' | tee "$RESULTS/engine.txt" || status=1
fi

echo "== writing $RESULTS/results.md and $RESULTS/chart.svg"
python3 - "$RESULTS" "$CARGO_TARGET_DIR" "$(( $(date +%s) - start ))" <<'PY'
import json, os, sys, datetime, html

results, target, elapsed = sys.argv[1], sys.argv[2], int(sys.argv[3])

def load(name):
    try:
        with open(os.path.join(results, name + ".json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

def criterion_median(group, case, size):
    p = os.path.join(target, "criterion", group, case, str(size), "new", "estimates.json")
    try:
        with open(p) as f:
            return json.load(f)["median"]["point_estimate"]
    except (OSError, ValueError, KeyError):
        return None

def met(ok):
    return "met" if ok else "**not met**"

out = []
targets = []  # (target, measured, verdict)
cpus = os.cpu_count()
out.append("# Benchmark results\n")
out.append(f"Full run of `scripts/bench.sh` on {datetime.date.today().isoformat()}, "
           f"{elapsed // 60} min {elapsed % 60} s, on a shared {cpus}-core machine: load generators, "
           "servers, Envoy and the upstream all share those cores, so absolute throughput is that "
           "box's; the ratios, measured within one run, are the figures to compare. Raw output of "
           "each bench is beside this file (`<bench>.txt`, `<bench>.json`). "
           "![chart](chart.svg)\n")

# decide
sizes = [100, 1000, 10000, 100000]
rows = []
for case in ["hit-early", "hit-late", "miss"]:
    m = [criterion_median("decide", case, n) for n in sizes]
    if m[0] is None:
        continue
    cells = [f"{v:.0f} ns ({v / m[0]:.2f}x)" if v is not None else "-" for v in m]
    rows.append(f"| {case} | " + " | ".join(cells) + " |")
    if m[3] is not None:
        targets.append((f"decide 100k rules within 2x of 100 rules ({case})", f"{m[3] / m[0]:.2f}x", met(m[3] / m[0] <= 2)))
    if m[2] is not None:
        targets.append((f"decide p50 < 1 us at 10k rules ({case})", f"{m[2]:.0f} ns", met(m[2] < 1000)))
if rows:
    out.append("## `Policy::decide` (criterion median; ratio to 100 rules)\n")
    out.append("| case | 100 rules | 1,000 | 10,000 | 100,000 |")
    out.append("|---|---|---|---|---|")
    out += rows
    out.append("")

# regorus
r = load("regorus")
if r:
    out.append("## wardgate vs regorus (Rego) on the same bundle and requests\n")
    out.append("| rules | requests (all agree) | wardgate per decision | regorus per decision | ratio |")
    out.append("|---|---|---|---|---|")
    for s in r["sizes"]:
        out.append(f"| {s['rules']:,} | {s['requests']} | {s['wardgate_ns']:.0f} ns | "
                   f"{s['regorus_ns'] / 1000:,.1f} us | {s['ratio']:,.0f}x |")
        targets.append((f"at least 50x faster than regorus ({s['rules']:,} rules)", f"{s['ratio']:,.0f}x", met(s['ratio'] >= 50)))
    out.append("")

# grpc_load
g = load("grpc_load")
if g:
    out.append(f"## gRPC Check load ({g['conns']} connections x {g['inflight']} in flight, "
               f"{g['rules']:,}-rule bundle; server runtime {g['server_threads']} thread, load "
               f"generator {g['client_threads']} thread, same process)\n")
    out.append("| target | req/s | p50 | p99 | p99.9 |")
    out.append("|---|---|---|---|---|")
    for t in g["targets"]:
        out.append(f"| {t['name']} | {t['rps']:,.0f} | {t['p50_us']} us | {t['p99_us']} us | {t['p999_us']} us |")
    out.append("")
    for tr in ["tcp", "uds"]:
        x = g["ratios"][f"throughput_{tr}"]
        p = g["ratios"][f"p99_{tr}"]
        targets.append((f"gRPC throughput >= 0.95x allow-all ({tr})", f"{x:.3f}x", met(x >= 0.95)))
        targets.append((f"gRPC p99 <= 1.1x allow-all ({tr})", f"{p:.3f}x", met(p <= 1.1)))

# envoy_load
e = load("envoy_load")
if e and not e.get("skipped"):
    out.append(f"## Through Envoy (mTLS HTTP/2, {e['conns']} connections x {e['inflight']} streams, "
               f"Envoy --concurrency 1, wardgate with {e['rules']:,} rules)\n")
    out.append("| variant | req/s | p50 | p99 | p99.9 | authorizer CPU s / 10k checks |")
    out.append("|---|---|---|---|---|---|")
    for v in e["variants"]:
        cpu = v.get("authz_cpu_s_per_10k")
        cpu = f"{cpu:.3f}" if cpu is not None else "-"
        out.append(f"| {v['name']} | {v['rps']:,.0f} | {v['p50_us']} us | {v['p99_us']} us | {v['p999_us']} us | {cpu} |")
    out.append("")
    x = e["ratios"]["wardgate_uds_vs_allow_tcp"]
    targets.append(("through Envoy, wardgate UDS >= 0.95x allow-all TCP", f"{x:.3f}x", met(x >= 0.95)))
    targets.append(("through Envoy, wardgate TCP vs allow-all TCP (no target)", f"{e['ratios']['wardgate_tcp_vs_allow_tcp']:.3f}x", "-"))

fleet = []  # issue 14: (measure, goal, measured range, verdict on the worst run)
try:
    lines = [l.strip() for l in open(os.path.join(results, "replay.txt")) if l.strip()]
    if lines:
        out.append("## `wardgate replay` (release binary, generated hospital traffic)\n")
        out += [f"- {l}" for l in lines]
        out.append("")
except OSError:
    pass

try:
    import re
    engine = open(os.path.join(results, "engine.txt")).read()

    def fleet_row(measure, goal, values, unit, limit, fmt="{:.1f}"):
        if not values:
            return
        lo, hi = min(values), max(values)
        rng = (fmt.format(lo) if lo == hi else f"{fmt.format(lo)}-{fmt.format(hi)}") + f" {unit}"
        fleet.append((measure, goal, f"{rng} ({len(values)} runs)", met(hi < limit)))

    fleet_row("compile (parse + validate + index) of 10,000 rules, best of 5", "< 50 ms",
              [float(v) for v in re.findall(r"compile 10000 rules: best of 5 ([0-9.]+) ms", engine)],
              "ms", 50)
    fleet_row("the same, the bundle written as JSON (`*.json`)", "< 50 ms",
              [float(v) for v in re.findall(r"compile 10000 rules \(JSON\): best of 5 ([0-9.]+) ms", engine)],
              "ms", 50)
    mem = re.findall(r"memory 10000 rules: rss ([0-9.]+) MiB \(\+[0-9.]+ MiB\), policy heap ([0-9.]+) MiB, "
                     r"peak rss [0-9.]+ MiB, rss before trim ([0-9.]+) MiB", engine)
    fleet_row("resident memory holding 10,000 rules, after the trim `serve` does", "< 30 MiB",
              [float(m[0]) for m in mem], "MiB", 30)
    fleet_row("resident memory holding 10,000 rules, without the trim (before issue 14)", "< 30 MiB",
              [float(m[2]) for m in mem], "MiB", 30)
    fleet_row("heap of the compiled 10,000-rule policy (counted)", "-", [float(m[1]) for m in mem], "MiB", float("inf"))
    if fleet and fleet[-1][1] == "-":
        fleet[-1] = fleet[-1][:3] + ("-",)
    serve = re.findall(r"serve-memory 10000 rules: rss ([0-9.]+) MiB \(\+[0-9.]+ MiB\), ([0-9.]+) MiB after three "
                       r"scrapes, [0-9.]+ MiB after another trim; policy ([0-9.]+) MiB in [0-9]+ blocks "
                       r"\([0-9]+ allocations made\); telemetry at swap ([0-9.]+) MiB", engine)
    fleet_row("resident memory holding 10,000 rules and the telemetry `serve` builds for them, after the trim",
              "< 30 MiB", [float(m[0]) for m in serve], "MiB", 30)
    fleet_row("the same, after three scrapes of `/metrics`", "< 30 MiB", [float(m[1]) for m in serve], "MiB", 30)
    fleet_row("heap of the telemetry's per-rule state at 10,000 rules (counted)", "-",
              [float(m[3]) for m in serve], "MiB", float("inf"))
    if fleet and fleet[-1][1] == "-":
        fleet[-1] = fleet[-1][:3] + ("-",)
    view = re.findall(r"log-view 10000 rules: view ([0-9.]+) MiB", engine)
    fleet_row("heap of the decision log's view of the 10,000-rule policy (counted)", "-",
              [float(v) for v in view], "MiB", float("inf"), "{:.2f}")
    if fleet and fleet[-1][1] == "-":
        fleet[-1] = fleet[-1][:3] + ("-",)
    val = re.findall(r"validate 100000 rules: ([0-9.]+) s, peak rss ([0-9.]+) MiB", engine)
    fleet_row("validate of 100,000 rules, time", "< 1 s", [float(v[0]) for v in val], "s", 1, "{:.2f}")
    fleet_row("validate of 100,000 rules, peak resident memory", "< 150 MiB", [float(v[1]) for v in val], "MiB", 150)
    val = re.findall(r"validate 100000 rules \(JSON\): ([0-9.]+) s, peak rss ([0-9.]+) MiB", engine)
    fleet_row("validate of 100,000 rules written as JSON, time", "< 1 s", [float(v[0]) for v in val], "s", 1, "{:.2f}")
    fleet_row("validate of 100,000 rules written as JSON, peak resident memory", "< 150 MiB",
              [float(v[1]) for v in val], "MiB", 150)
except OSError:
    pass

# Through Envoy (one envoy_load run, its rounds pooled): the authorizer's own CPU and throughput.
el = load("envoy_load")
if el and not el.get("skipped"):
    for key, what in [("wardgate_idle_rss_mib", "idle after the load"),
                      ("wardgate_scraped_rss_mib", "idle after the load and three /metrics scrapes")]:
        if el.get(key) is not None:
            fleet.append((f"resident memory of the real `wardgate serve` ({el['rules']:,} rules, its defaults), {what}",
                          "< 30 MiB", f"{el[key]:.1f} MiB (1 run)", met(el[key] < 30)))
    by = {v["name"]: v for v in el["variants"]}
    allow = by.get("envoy+allow-all tcp")
    for name in ["envoy+wardgate uds", "envoy+wardgate tcp"]:
        w = by.get(name)
        if not (allow and w and allow.get("authz_cpu_s_per_10k") and w.get("authz_cpu_s_per_10k")):
            continue
        cpu = w["authz_cpu_s_per_10k"] / allow["authz_cpu_s_per_10k"]
        fleet.append((f"CPU per 10,000 checks through Envoy, {name.split('+')[1]} vs allow-all over TCP",
                      "<= 1.2x", f"{cpu:.2f}x ({w['authz_cpu_s_per_10k']:.3f} vs "
                      f"{allow['authz_cpu_s_per_10k']:.3f} s, 1 run)", met(cpu <= 1.2)))
        tput = w["rps"] / allow["rps"]
        fleet.append((f"throughput through Envoy, {name.split('+')[1]} vs allow-all over TCP", ">= 0.95x",
                      f"{tput:.2f}x (1 run)", met(tput >= 0.95)))

if fleet:
    out.insert(2, "## Issue 14 (fleet scale): measured vs goal\n\nRange over fresh processes of one run; "
               "the verdict is the worst run's.\n\n| measure | goal | measured | |\n|---|---|---|---|\n" +
               "\n".join(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in fleet) + "\n")
    for a, b, c, d in fleet:
        print(f"measured vs goal: {a}: {c} vs goal {b}: {d}")

if targets:
    out.insert(2, "## Issue 7 targets in this run\n\n| target | measured | |\n|---|---|---|\n" +
               "\n".join(f"| {a} | {b} | {c} |" for a, b, c in targets) + "\n")

with open(os.path.join(results, "results.md"), "w") as f:
    f.write("\n".join(out) + "\n")

# chart.svg: horizontal bars of throughput, one panel per load bench, plain SVG.
panels = []
if g:
    panels.append(("gRPC Check, req/s", [(t["name"], t["rps"]) for t in g["targets"]]))
if e and not e.get("skipped"):
    panels.append(("Through Envoy (mTLS HTTP/2), req/s", [(v["name"], v["rps"]) for v in e["variants"]]))
if r:
    panels.append(("regorus time / wardgate time per decision (log10)",
                   [(f"{s['rules']:,} rules", s["ratio"]) for s in r["sizes"]]))
W, bar, gap, left, right = 760, 22, 8, 190, 110
y = 20
parts = []
for title, bars in panels:
    parts.append(f'<text x="10" y="{y + 14}" font-size="15" font-weight="bold">{html.escape(title)}</text>')
    y += 26
    log = "log10" in title
    import math
    vals = [math.log10(max(v, 1)) if log else v for _, v in bars]
    top = max(vals) or 1
    for (name, v), sv in zip(bars, vals):
        w = (W - left - right) * sv / top
        color = "#2b7bb9" if "wardgate" in name or log else "#9aa5b1"
        label = f"{v:,.0f}x" if log else f"{v:,.0f}"
        parts.append(f'<text x="{left - 8}" y="{y + bar - 6}" font-size="13" text-anchor="end">{html.escape(name)}</text>')
        parts.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar}" fill="{color}"/>')
        parts.append(f'<text x="{left + w + 6:.1f}" y="{y + bar - 6}" font-size="13">{label}</text>')
        y += bar + gap
    y += 18
svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{y}" '
       f'font-family="sans-serif"><rect width="100%" height="100%" fill="white"/>'
       + "".join(parts) + "</svg>\n")
with open(os.path.join(results, "chart.svg"), "w") as f:
    f.write(svg)
print(open(os.path.join(results, "results.md")).read())
PY
echo "== done in $(( $(date +%s) - start )) s"
exit $status
