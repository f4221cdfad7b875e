"""Checks Kubernetes manifests offline: every object against Kubernetes' own schemas, with the
`kubernetes-validate` command in strict mode, and the custom resources that command has no schema
for (Kueue, the Prometheus Operator's ServiceMonitor) against the schemas below.

    python validate.py KUBERNETES_VERSION FILE...

Run by deploy/check.sh with the interpreter of the virtual environment that holds
kubernetes-validate (so PyYAML and jsonschema are there too). Exits non-zero on any problem,
including an object of a kind that neither knows: nothing is skipped silently.

The custom-resource schemas are hand-written subsets of the upstream CRDs (Kueue's
kueue.x-k8s.io/v1beta2 API types, the Prometheus Operator's monitoring.coreos.com/v1
ServiceMonitor): they list only the fields ferry's chart and examples use, with their types, and
refuse every other field (so a misspelt field fails here as it would on a cluster with the
CRD). A new field in the chart or the examples must be added here, checked against the upstream
API, before it passes.
"""

import os
import subprocess
import sys
import tempfile

import jsonschema
import yaml

DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
QUANTITY = {"anyOf": [{"type": "integer", "minimum": 0},
                      {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|Pi|M|G|T|P)?$"}]}
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}


def closed(properties, required=()):
    """An object with exactly these properties (some required)."""
    return {"type": "object", "properties": properties, "required": list(required),
            "additionalProperties": False}


METADATA = closed({"name": {"type": "string", "pattern": DNS_SUBDOMAIN, "maxLength": 253},
                   "namespace": {"type": "string", "pattern": DNS_SUBDOMAIN},
                   "labels": STRING_MAP, "annotations": STRING_MAP}, ["name"])
LABEL_SELECTOR = closed({
    "matchLabels": STRING_MAP,
    "matchExpressions": {"type": "array", "items": closed({
        "key": {"type": "string"},
        "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
        "values": {"type": "array", "items": {"type": "string"}}}, ["key", "operator"])}})
EFFECT = {"enum": ["NoSchedule", "PreferNoSchedule", "NoExecute"]}
TAINT = closed({"key": {"type": "string"}, "value": {"type": "string"}, "effect": EFFECT},
               ["key", "effect"])
TOLERATION = closed({"key": {"type": "string"}, "operator": {"enum": ["Exists", "Equal"]},
                     "value": {"type": "string"}, "effect": EFFECT,
                     "tolerationSeconds": {"type": "integer"}})
STOP_POLICY = {"enum": ["None", "Hold", "HoldAndDrain"]}


def resource(api_version, kind, spec, spec_required=True):
    """A whole object: apiVersion, kind, metadata and spec."""
    return closed({"apiVersion": {"const": api_version}, "kind": {"const": kind},
                   "metadata": METADATA, "spec": spec},
                  ["apiVersion", "kind", "metadata"] + (["spec"] if spec_required else []))


KUEUE = "kueue.x-k8s.io/v1beta2"
CUSTOM = {
    (KUEUE, "ResourceFlavor"): resource(KUEUE, "ResourceFlavor", closed({
        "nodeLabels": {**STRING_MAP, "maxProperties": 8},
        "nodeTaints": {"type": "array", "items": TAINT, "maxItems": 8},
        "tolerations": {"type": "array", "items": TOLERATION, "maxItems": 8}}), False),
    (KUEUE, "ClusterQueue"): resource(KUEUE, "ClusterQueue", closed({
        "cohortName": {"type": "string", "pattern": DNS_SUBDOMAIN},
        "namespaceSelector": LABEL_SELECTOR,
        "queueingStrategy": {"enum": ["StrictFIFO", "BestEffortFIFO"]},
        "stopPolicy": STOP_POLICY,
        "preemption": closed({
            "reclaimWithinCohort": {"enum": ["Never", "LowerPriority", "Any"]},
            "withinClusterQueue": {"enum": ["Never", "LowerPriority", "LowerOrNewerEqualPriority"]},
            "borrowWithinCohort": closed({"policy": {"enum": ["Never", "LowerPriority"]},
                                          "maxPriorityThreshold": {"type": "integer"}})}),
        "flavorFungibility": closed({
            "whenCanBorrow": {"enum": ["MayStopSearch", "TryNextFlavor"]},
            "whenCanPreempt": {"enum": ["MayStopSearch", "TryNextFlavor"]}}),
        "resourceGroups": {"type": "array", "maxItems": 16, "items": closed({
            "coveredResources": {"type": "array", "items": {"type": "string"},
                                 "minItems": 1, "maxItems": 64},
            "flavors": {"type": "array", "minItems": 1, "maxItems": 64, "items": closed({
                "name": {"type": "string", "pattern": DNS_SUBDOMAIN},
                "resources": {"type": "array", "minItems": 1, "maxItems": 64, "items": closed({
                    "name": {"type": "string"}, "nominalQuota": QUANTITY,
                    "borrowingLimit": QUANTITY, "lendingLimit": QUANTITY},
                    ["name", "nominalQuota"])}}, ["name", "resources"])}},
            ["coveredResources", "flavors"])}})),
    (KUEUE, "LocalQueue"): resource(KUEUE, "LocalQueue", closed({
        "clusterQueue": {"type": "string", "pattern": DNS_SUBDOMAIN},
        "stopPolicy": STOP_POLICY}, ["clusterQueue"])),
    ("monitoring.coreos.com/v1", "ServiceMonitor"): resource(
        "monitoring.coreos.com/v1", "ServiceMonitor", closed({
            "selector": LABEL_SELECTOR,
            "namespaceSelector": closed({"any": {"type": "boolean"},
                                         "matchNames": {"type": "array", "items": {"type": "string"}}}),
            "jobLabel": {"type": "string"},
            "endpoints": {"type": "array", "items": closed({
                "port": {"type": "string"}, "path": {"type": "string"},
                "scheme": {"enum": ["http", "https"]},
                "interval": {"type": "string", "pattern": r"^(0|(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
                "scrapeTimeout": {"type": "string", "pattern": r"^(0|(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
                "honorLabels": {"type": "boolean"}})}}, ["selector", "endpoints"])),
}


def kueue_quota_rows_match(obj):
    """Kueue's CEL rule: each flavor lists as many resources as its group covers."""
    problems = []
    for g, group in enumerate(obj.get("spec", {}).get("resourceGroups", [])):
        covered = group.get("coveredResources", [])
        for flavor in group.get("flavors", []):
            names = [r.get("name") for r in flavor.get("resources", [])]
            if names != covered:
                problems.append(f"spec.resourceGroups[{g}] flavor {flavor.get('name')}: resources "
                                f"{names} must list the covered resources {covered} in order")
    return problems


def check_core(version, core):
    """Runs kubernetes-validate on the other objects (a copy of each input without its custom
    resources; messages name the input); any kind without a schema is a failure."""
    with tempfile.TemporaryDirectory() as tmp:
        copies = {}
        for i, (path, docs) in enumerate(core.items()):
            if docs:
                copy = os.path.join(tmp, f"{i}.yaml")
                copies[copy] = path
                with open(copy, "w", encoding="utf-8") as out:
                    yaml.safe_dump_all(docs, out, sort_keys=False)
        if not copies:
            return 0
        run = subprocess.run(["kubernetes-validate", "--strict", "-k", version, *copies],
                             capture_output=True, text=True, check=False)
    report = run.stdout + run.stderr
    for copy, path in copies.items():
        report = report.replace(copy, path)
    print(report, end="")
    unknown = [line for line in report.splitlines() if "Couldn't find schema" in line]
    for line in unknown:
        print(f"ERROR no schema for this kind, neither Kubernetes' nor a subset here: {line}")
    return 1 if run.returncode != 0 or unknown else 0


def main(argv):
    if len(argv) < 3:
        sys.exit("usage: validate.py KUBERNETES_VERSION FILE...")
    version, files = argv[1], argv[2:]
    core, failures, custom = {}, 0, 0
    for path in files:
        with open(path, encoding="utf-8") as f:
            docs = [d for d in yaml.safe_load_all(f) if d is not None]
        if not docs:
            print(f"ERROR {path}: no objects")
            failures += 1
        core[path] = []
        for doc in docs:
            where = f"{path}: {doc.get('kind')} {doc.get('metadata', {}).get('name')}"
            schema = CUSTOM.get((doc.get("apiVersion"), doc.get("kind")))
            if schema is None:
                core[path].append(doc)
                continue
            custom += 1
            errors = [f"{'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
                      for e in jsonschema.Draft202012Validator(schema).iter_errors(doc)]
            if doc.get("kind") == "ClusterQueue":
                errors += kueue_quota_rows_match(doc)
            for e in errors:
                print(f"ERROR {where}: {e}")
            failures += bool(errors)
            if not errors:
                print(f"INFO {where} passed against the subset schema of {doc['apiVersion']} "
                      f"{doc['kind']} in deploy/ci/validate.py")
    failures += check_core(version, core)
    count = sum(len(docs) for docs in core.values())
    print(f"{count} object(s) checked by kubernetes-validate --strict -k {version}, "
          f"{custom} custom resource(s) by the subset schemas: "
          + ("all valid" if failures == 0 else f"{failures} problem(s)"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
