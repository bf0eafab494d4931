#!/usr/bin/env python3
"""Validate rendered Kubernetes objects, strictly, for the oldest and newest Kubernetes versions
that kubernetes-validate (PyPI) has schemas for.

Usage: validate_k8s.py RENDERED.yaml...

Built-in kinds are checked with kubernetes_validate in strict mode (unknown fields are errors).
kubernetes-validate has no schemas for custom resources, so the two this project ships are
checked against the fields their CRDs define, listed below by hand from the Go types they are
generated from:
  PodMonitor       prometheus-operator pkg/apis/monitoring/v1/podmonitor_types.go (PodMonitorSpec,
                   PodMetricsEndpoint) and prometheus_types.go (RelabelConfig), commit 6adcebc5076c
  ClusterSPIFFEID  spire-controller-manager api/v1alpha1/clusterspiffeid_types.go
                   (ClusterSPIFFEIDSpec), commit 430567cc024f
  AuthorizationPolicy, PeerAuthentication (security.istio.io/v1)
                   istio manifests/charts/base/files/crd-all.gen.yaml, commit 86c9f01fd735
An object of any other kind without a schema is an error, not a warning.

Prints one line per object and version, then `validated N objects against OLDEST and NEWEST`;
exits 1 on any problem.
"""
import sys

import yaml
import kubernetes_validate.utils as kv

STR, INT, BOOL, DURATION = "string", "integer", "boolean", "duration"

LABEL_SELECTOR = {
    "matchLabels": {"*": STR},
    "matchExpressions": [{"key": STR, "operator": STR, "values": [STR]}],
}
OBJECT_META = {"name": STR, "namespace": STR, "labels": {"*": STR}, "annotations": {"*": STR}}

RELABEL_CONFIG = {
    "sourceLabels": [STR], "separator": STR, "targetLabel": STR, "regex": STR,
    "modulus": INT, "replacement": STR, "action": STR,
}
RELABEL_ACTIONS = {
    "replace", "Replace", "keep", "Keep", "drop", "Drop", "hashmod", "HashMod", "labelmap",
    "LabelMap", "labeldrop", "LabelDrop", "labelkeep", "LabelKeep", "lowercase", "Lowercase",
    "uppercase", "Uppercase", "keepequal", "KeepEqual", "dropequal", "DropEqual",
}

CUSTOM = {
    ("monitoring.coreos.com/v1", "PodMonitor"): {
        "apiVersion": STR, "kind": STR, "metadata": OBJECT_META,
        "spec": {
            "jobLabel": STR, "podTargetLabels": [STR],
            "podMetricsEndpoints": [{
                "port": STR, "portNumber": INT, "path": STR, "scheme": STR,
                "params": {"*": [STR]}, "interval": DURATION, "scrapeTimeout": DURATION,
                "honorLabels": BOOL, "honorTimestamps": BOOL, "filterRunning": BOOL,
                "metricRelabelings": [RELABEL_CONFIG], "relabelings": [RELABEL_CONFIG],
            }],
            "selector": LABEL_SELECTOR,
            "namespaceSelector": {"any": BOOL, "matchNames": [STR]},
            "sampleLimit": INT, "targetLimit": INT,
        },
    },
    ("spire.spiffe.io/v1alpha1", "ClusterSPIFFEID"): {
        "apiVersion": STR, "kind": STR,
        # Cluster-scoped: a namespace would be a mistake.
        "metadata": {"name": STR, "labels": {"*": STR}, "annotations": {"*": STR}},
        "spec": {
            "spiffeIDTemplate": STR, "ttl": DURATION, "jwtTtl": DURATION,
            "dnsNameTemplates": [STR], "workloadSelectorTemplates": [STR],
            "federatesWith": [STR], "namespaceSelector": LABEL_SELECTOR,
            "podSelector": LABEL_SELECTOR, "admin": BOOL, "downstream": BOOL,
            "autoPopulateDNSNames": BOOL, "className": STR, "fallback": BOOL, "hint": STR,
        },
    },
    ("security.istio.io/v1", "AuthorizationPolicy"): {
        "apiVersion": STR, "kind": STR, "metadata": OBJECT_META,
        "spec": {
            "selector": {"matchLabels": {"*": STR}},
            "targetRef": {"group": STR, "kind": STR, "name": STR, "namespace": STR},
            "targetRefs": [{"group": STR, "kind": STR, "name": STR, "namespace": STR}],
            "action": STR,
            "provider": {"name": STR},
            "rules": [{
                "from": [{"source": {k: [STR] for k in (
                    "principals", "notPrincipals", "requestPrincipals", "notRequestPrincipals",
                    "namespaces", "notNamespaces", "ipBlocks", "notIpBlocks",
                    "remoteIpBlocks", "notRemoteIpBlocks", "serviceAccounts", "notServiceAccounts")}}],
                "to": [{"operation": {k: [STR] for k in (
                    "hosts", "notHosts", "ports", "notPorts", "methods", "notMethods",
                    "paths", "notPaths")}}],
                "when": [{"key": STR, "values": [STR], "notValues": [STR]}],
            }],
        },
    },
    ("security.istio.io/v1", "PeerAuthentication"): {
        "apiVersion": STR, "kind": STR, "metadata": OBJECT_META,
        "spec": {
            "selector": {"matchLabels": {"*": STR}},
            "mtls": {"mode": STR},
            "portLevelMtls": {"*": {"mode": STR}},
        },
    },
}
ENUMS = {
    "AuthorizationPolicy": [(("spec", "action"), {"ALLOW", "DENY", "AUDIT", "CUSTOM"})],
    "PeerAuthentication": [(("spec", "mtls", "mode"), {"UNSET", "DISABLE", "PERMISSIVE", "STRICT"})],
}
REQUIRED = {
    "PodMonitor": [("spec", "selector"), ("spec", "podMetricsEndpoints")],
    "ClusterSPIFFEID": [("spec", "spiffeIDTemplate")],
    "AuthorizationPolicy": [],
    "PeerAuthentication": [],
}


def is_duration(value):
    # metav1.Duration / monitoring Duration: Go duration strings such as 1h, 15s, 1h30m.
    import re
    return isinstance(value, str) and re.fullmatch(r"(\d+(\.\d+)?(ns|us|µs|ms|s|m|h|d|w|y))+", value)


def check(value, schema, path, problems):
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            problems.append(f"{path}: expected an object")
            return
        for key, item in value.items():
            sub = schema.get(key, schema.get("*"))
            if sub is None:
                problems.append(f"{path}.{key}: unknown field")
            else:
                check(item, sub, f"{path}.{key}", problems)
    elif isinstance(schema, list):
        if not isinstance(value, list):
            problems.append(f"{path}: expected a list")
            return
        for i, item in enumerate(value):
            check(item, schema[0], f"{path}[{i}]", problems)
    elif schema == STR and not isinstance(value, str):
        problems.append(f"{path}: expected a string")
    elif schema == INT and (not isinstance(value, int) or isinstance(value, bool)):
        problems.append(f"{path}: expected an integer")
    elif schema == BOOL and not isinstance(value, bool):
        problems.append(f"{path}: expected a boolean")
    elif schema == DURATION and not is_duration(value):
        problems.append(f"{path}: `{value}` is not a duration")


def check_custom(obj):
    key = (obj.get("apiVersion"), obj.get("kind"))
    problems = []
    check(obj, CUSTOM[key], obj["kind"], problems)
    for required in REQUIRED[obj["kind"]]:
        node = obj
        for part in required:
            node = node.get(part) if isinstance(node, dict) else None
        if node in (None, [], {}):
            problems.append(f"{obj['kind']}.{'.'.join(required)}: required")
    for path, allowed in ENUMS.get(obj["kind"], []):
        node = obj
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None and node not in allowed:
            problems.append(f"{obj['kind']}.{'.'.join(path)}: `{node}` is not one of {sorted(allowed)}")
    if obj["kind"] == "AuthorizationPolicy":
        spec = obj.get("spec", {})
        if (spec.get("action") == "CUSTOM") != ("provider" in spec):
            problems.append("AuthorizationPolicy: `provider` goes with action CUSTOM, and only with it")
    for endpoint in obj.get("spec", {}).get("podMetricsEndpoints", []) or []:
        for relabel in (endpoint.get("relabelings") or []) + (endpoint.get("metricRelabelings") or []):
            if "action" in relabel and relabel["action"] not in RELABEL_ACTIONS:
                problems.append(f"PodMonitor relabel action `{relabel['action']}` is not one the CRD allows")
    return problems


def main(paths):
    versions = sorted(set(kv.all_versions()), key=kv.major_minor)
    oldest, newest = versions[0], versions[-1]
    failures = 0
    count = 0
    for path in paths:
        with open(path, encoding="utf-8") as f:
            objects = [o for o in yaml.safe_load_all(f) if o]
        for obj in objects:
            count += 1
            name = f"{path}: {obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
            if (obj.get("apiVersion"), obj.get("kind")) in CUSTOM:
                problems = check_custom(obj)
                label = "custom resource, CRD fields"
                for p in problems:
                    print(f"ERROR {name}: {p}")
                failures += bool(problems)
                print(f"{'ok   ' if not problems else 'FAIL '} {name} ({label})")
                continue
            for version in (oldest, newest):
                try:
                    kv.validate(obj, version, strict=True)
                    print(f"ok    {name} (Kubernetes {version}, strict)")
                except kv.SchemaNotFoundError:
                    failures += 1
                    print(f"ERROR {name}: no schema for Kubernetes {version}")
                except kv.ValidationError as e:
                    failures += 1
                    where = ".".join(str(p) for p in e.path)
                    print(f"ERROR {name}: Kubernetes {version} (strict): {where}: {e.message}")
    print(f"validated {count} objects against {oldest} and {newest}")
    return 1 if failures or count == 0 else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
