#!/usr/bin/env bash
# Copy the example bundle into the Kubernetes overlay and sign the bundles the manifests ship.
#
# kustomize reads files only from inside a kustomization's directory, so the hospital overlay
# holds a copy of deploy/bundles/hospital.yaml; tests/deploy_manifests.rs fails when the copy
# differs from the original by one byte, or when a signature does not verify. Run this script
# after changing either bundle, and commit what it writes:
#
#   deploy/kubernetes/overlays/hospital-lab/hospital.yaml           copy of deploy/bundles/hospital.yaml
#   deploy/kubernetes/overlays/hospital-lab/hospital.yaml.minisig   its signature
#   deploy/kubernetes/base/bundle/bundle.yaml.minisig               the starter bundle's signature
#   deploy/istio/bundle.yaml.minisig                                the Istio bundle's signature
#   deploy/kubernetes/base/keys/bundle-signing.pub                  the public key of all three
#   deploy/istio/keys/bundle-signing.pub                            the same key, for deploy/istio
#
# The key pair is made afresh on every run and the secret key is deleted when the script ends:
# the shipped public key is an example's, whose secret key nobody holds. In production, sign
# with your platform team's key (README, "Signing bundles") and put its public key in
# keys/bundle-signing.pub instead. Needs `minisign` (Debian package minisign).
set -euo pipefail
cd "$(dirname "$0")/.."

command -v minisign >/dev/null || { echo "sign-deploy-bundles: minisign not found (apt-get install minisign)" >&2; exit 1; }

base=deploy/kubernetes/base
overlay=deploy/kubernetes/overlays/hospital-lab
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

minisign -G -W -p "$work/key.pub" -s "$work/key.sec" >/dev/null
cp deploy/bundles/hospital.yaml "$overlay/hospital.yaml"
minisign -S -s "$work/key.sec" -m "$overlay/hospital.yaml" -x "$overlay/hospital.yaml.minisig" \
    -t "wardgate example bundle (hospital), signed by scripts/sign-deploy-bundles.sh" >/dev/null
minisign -S -s "$work/key.sec" -m "$base/bundle/bundle.yaml" -x "$base/bundle/bundle.yaml.minisig" \
    -t "wardgate starter bundle, signed by scripts/sign-deploy-bundles.sh" >/dev/null
minisign -S -s "$work/key.sec" -m deploy/istio/bundle.yaml -x deploy/istio/bundle.yaml.minisig \
    -t "wardgate example bundle (Istio identities), signed by scripts/sign-deploy-bundles.sh" >/dev/null
cp "$work/key.pub" "$base/keys/bundle-signing.pub"
cp "$work/key.pub" deploy/istio/keys/bundle-signing.pub
echo "sign-deploy-bundles: signed $overlay/hospital.yaml, $base/bundle/bundle.yaml and deploy/istio/bundle.yaml; public key in $base/keys/bundle-signing.pub and deploy/istio/keys/" >&2
