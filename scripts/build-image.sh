#!/usr/bin/env bash
# Build wardgate's container image without a registry or a container daemon: an OCI image
# layout assembled with umoci around the static release binary, with the user, entrypoint,
# command and labels of deploy/container/Containerfile's runtime stage.
#
#   scripts/build-image.sh [--binary PATH] [OUT_DIR]      (OUT_DIR default: target/image)
#
# Without --binary (or $WARDGATE_RELEASE_BINARY) it builds the binary the way the Containerfile
# does: `cargo build --release --locked --target <host>` with RUSTFLAGS=-C target-feature=+crt-static.
# Writes OUT_DIR/oci (the image layout, tag wardgate:<version>) and prints the image reference
# `OUT_DIR/oci:wardgate:<version>` (skopeo's `oci:` syntax) on the last line of stdout; progress
# goes to stderr. Inspect it with `skopeo inspect oci:<reference>`; push it where a registry is
# reachable with `skopeo copy oci:<reference> docker://registry.example.org/wardgate:<version>`.
# Needs umoci and skopeo (Debian packages umoci, skopeo; scripts/install-test-deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

binary="${WARDGATE_RELEASE_BINARY:-}"
out=""
while [ $# -gt 0 ]; do
    case "$1" in
        --binary) binary="$2"; shift 2 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) out="$1"; shift ;;
    esac
done
out="${out:-target/image}"
containerfile=deploy/container/Containerfile

for tool in umoci skopeo python3; do
    command -v "$tool" >/dev/null || { echo "build-image: $tool not found (scripts/install-test-deps.sh installs it)" >&2; exit 1; }
done

if [ -z "$binary" ]; then
    host="$(rustc -vV | sed -n 's/^host: //p')"
    echo "build-image: building the static release binary for $host" >&2
    RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --target "$host" >&2
    binary="target/$host/release/wardgate"
fi
[ -x "$binary" ] || { echo "build-image: $binary is not an executable file" >&2; exit 1; }
# The runtime image has no libc: the binary must not need a dynamic loader.
if ldd "$binary" 2>&1 | grep -q '=>'; then
    echo "build-image: $binary is dynamically linked; build it with RUSTFLAGS=-C target-feature=+crt-static" >&2
    exit 1
fi
version="$("$binary" --version | head -n1 | awk '{print $2}')"
[ -n "$version" ] || { echo "build-image: $binary --version printed no version" >&2; exit 1; }
ca_roots=/etc/ssl/certs/ca-certificates.crt
[ -f "$ca_roots" ] || { echo "build-image: $ca_roots missing (Debian package ca-certificates)" >&2; exit 1; }

# USER, ENTRYPOINT, CMD and LABELs of the Containerfile's last stage, as umoci config flags.
mapfile -t config_flags < <(python3 - "$containerfile" <<'PY'
import json, re, shlex, sys
text = open(sys.argv[1], encoding="utf-8").read()
text = re.sub(r"\\\n\s*", " ", text)                       # join continued lines
lines = [l.strip() for l in text.splitlines() if l.strip() and not l.strip().startswith("#")]
last = max(i for i, l in enumerate(lines) if l.upper().startswith("FROM "))
for line in lines[last + 1:]:
    word, _, rest = line.partition(" ")
    word = word.upper()
    if word == "USER":
        print(f"--config.user={rest.strip()}")
    elif word in ("ENTRYPOINT", "CMD"):
        flag = "--config.entrypoint" if word == "ENTRYPOINT" else "--config.cmd"
        for part in json.loads(rest):
            print(f"{flag}={part}")
    elif word == "LABEL":
        for pair in shlex.split(rest):
            print(f"--config.label={pair}")
PY
)

layout="$out/oci"
tag="wardgate:$version"
rm -rf "$out"
mkdir -p "$out"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "build-image: assembling $layout:$tag" >&2
umoci init --layout "$layout"
umoci new --image "$layout:$tag"
umoci unpack --image "$layout:$tag" "$work/bundle" >/dev/null
install -D -m 0755 "$binary" "$work/bundle/rootfs/usr/local/bin/wardgate"
install -D -m 0644 "$ca_roots" "$work/bundle/rootfs/etc/ssl/certs/ca-certificates.crt"
umoci repack --image "$layout:$tag" "$work/bundle"
revision="$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
umoci config --image "$layout:$tag" \
    "${config_flags[@]}" \
    --config.label "org.opencontainers.image.version=$version" \
    --config.label "org.opencontainers.image.revision=$revision" \
    --author "scripts/build-image.sh" \
    --history.comment "wardgate $version ($revision) and CA roots, from $containerfile"
umoci gc --layout "$layout"

skopeo inspect "oci:$layout:$tag" >&2
echo "$layout:$tag"
