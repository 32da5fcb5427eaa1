#!/usr/bin/env python3
"""Validates every Kubernetes manifest under examples/k8s with
kubernetes-validate (strict: unknown fields are errors), for the oldest
Kubernetes the examples support (1.30, for the preStop sleep action) and
the newest the tool knows. Custom resources it has no schema for
(ServiceMonitor) are checked against the schemas below, written from the
Prometheus Operator's CRD for the fields the examples use; any other kind
without a schema is an error.

Then it proves it can fail: broken copies of the manifests must be refused.

    target/ci-venv/bin/python .ci/validate_k8s.py examples/k8s/*.yaml
"""
import copy
import sys
import tomllib

import jsonschema
import kubernetes_validate.utils as kv
import yaml

VERSIONS = ["1.30.0", kv.latest_version()]

LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
LABEL_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": LABELS,
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["key", "operator"],
                "properties": {
                    "key": {"type": "string"},
                    "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                    "values": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}
DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
CUSTOM = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": "ServiceMonitor"},
            "metadata": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                    "namespace": {"type": "string"},
                    "labels": LABELS,
                    "annotations": LABELS,
                },
            },
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["selector", "endpoints"],
                "properties": {
                    "selector": LABEL_SELECTOR,
                    "namespaceSelector": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "any": {"type": "boolean"},
                            "matchNames": {"type": "array", "items": {"type": "string"}},
                        },
                    },
                    "jobLabel": {"type": "string"},
                    "endpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "port": {"type": "string"},
                                "targetPort": {"type": ["string", "integer"]},
                                "path": {"type": "string", "pattern": "^/"},
                                "scheme": {"enum": ["http", "https"]},
                                "interval": DURATION,
                                "scrapeTimeout": DURATION,
                                "honorLabels": {"type": "boolean"},
                            },
                        },
                    },
                },
            },
        },
    },
}


def errors_of(resource, version):
    """The validation errors of one resource, [] when it is valid."""
    key = (resource.get("apiVersion"), resource.get("kind"))
    try:
        kv.validate(resource, version, strict=True)
        return toml_errors(resource)
    except kv.SchemaNotFoundError as e:
        if key not in CUSTOM:
            return [e.message + " (and no schema in .ci/validate_k8s.py)"]
        validator = jsonschema.Draft202012Validator(CUSTOM[key])
        return [f"{'.'.join(map(str, err.absolute_path))}: {err.message}" for err in validator.iter_errors(resource)]
    except kv.ValidationError as e:
        return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"]


def toml_errors(resource):
    """A ConfigMap's *.toml entries must at least parse (wsbridge check
    validates the keys themselves)."""
    if resource.get("kind") != "ConfigMap":
        return []
    errors = []
    for key, text in (resource.get("data") or {}).items():
        if key.endswith(".toml"):
            try:
                tomllib.loads(text)
            except tomllib.TOMLDecodeError as e:
                errors.append(f"data.{key}: not TOML: {e}")
    return errors


def load(paths):
    resources = []
    for path in paths:
        with open(path) as f:
            for doc in yaml.safe_load_all(f):
                if doc is not None:
                    resources.append((path, doc))
    return resources


def name(resource):
    return f"{resource.get('kind')}/{resource.get('metadata', {}).get('name')}"


def broken_copies(resources):
    """Resources that must be refused, made from the real ones."""
    by_kind = {r["kind"]: r for _, r in resources}
    broken = []
    d = copy.deepcopy(by_kind["Deployment"])
    d["spec"]["template"]["spec"]["containers"][1]["ports"][0]["containerPort"] = "http"
    broken.append(("a Deployment with a port that is no number", d))
    d = copy.deepcopy(by_kind["Deployment"])
    d["spec"]["replica"] = 2
    broken.append(("a Deployment with a misspelt field", d))
    p = copy.deepcopy(by_kind["PodDisruptionBudget"])
    p["spec"]["maxUnavailable"] = [1]
    broken.append(("a PodDisruptionBudget with a list for a count", p))
    s = copy.deepcopy(by_kind["ServiceMonitor"])
    s["spec"]["endpoints"][0]["interval"] = 30
    broken.append(("a ServiceMonitor with a number for an interval", s))
    s = copy.deepcopy(by_kind["ServiceMonitor"])
    s["spec"]["endpoint"] = s["spec"].pop("endpoints")
    broken.append(("a ServiceMonitor with a misspelt field", s))
    c = copy.deepcopy(by_kind["ConfigMap"])
    c["data"]["proxy.toml"] += "\n[server\n"
    broken.append(("a ConfigMap whose proxy.toml is no TOML", c))
    u = copy.deepcopy(by_kind["ServiceMonitor"])
    u["apiVersion"] = "example.com/v1"
    u["kind"] = "Unheard"
    broken.append(("a kind with no schema", u))
    return broken


def main(paths):
    resources = load(paths)
    failed = False
    for version in VERSIONS:
        for path, resource in resources:
            errors = errors_of(resource, version)
            status = "ok" if not errors else "FAILED"
            print(f"{status}: {path} {name(resource)} (Kubernetes {version})")
            for e in errors:
                print(f"    {e}")
            failed |= bool(errors)
    kinds = {r["kind"] for _, r in resources}
    for need in ["Deployment", "PodDisruptionBudget", "NetworkPolicy", "ServiceMonitor"]:
        if need not in kinds:
            print(f"FAILED: no {need} among the manifests")
            failed = True
    if not failed:
        for what, resource in broken_copies(resources):
            if errors_of(resource, VERSIONS[0]):
                print(f"ok: refused {what}")
            else:
                print(f"FAILED: the validator accepted {what}")
                failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: validate_k8s.py FILE.yaml...")
    sys.exit(main(sys.argv[1:]))
