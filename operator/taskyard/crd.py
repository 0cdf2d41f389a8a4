"""CustomResourceDefinitions generated from the models in api.py.

`python -m taskyard.crd` writes them to crds/ at the repository root; `--check` only reports which files
are out of date, for CI.
"""

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from taskyard import api

HEADER = "# Generated from operator/taskyard/api.py by `python -m taskyard.crd`; do not edit.\n"
CRD_DIR = Path(__file__).resolve().parent.parent.parent / "crds"
CATEGORIES = ["taskyard"]

# JSON Schema keywords an apiextensions.k8s.io/v1 structural schema may use. Anything else that pydantic
# emits must be translated or is a mistake in api.py, so it fails loudly instead of reaching the cluster.
_KEYWORD_ORDER = (
    "description",
    "type",
    "format",
    "enum",
    "default",
    "pattern",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "maxProperties",
    "required",
    "properties",
    "additionalProperties",
    "items",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-int-or-string",
    "x-kubernetes-validations",
)
_KEYWORDS = frozenset(_KEYWORD_ORDER)
_DROPPED = frozenset({"title"})
_RULE_KEY_ORDER = ("rule", "message", "messageExpression", "fieldPath", "reason", "optionalOldSelf")


def _definition(ref: str, definitions: Mapping[str, Any]) -> dict[str, Any]:
    prefix = "#/$defs/"
    if not ref.startswith(prefix) or ref[len(prefix) :] not in definitions:
        raise ValueError(f"cannot resolve $ref {ref!r}")
    return definitions[ref[len(prefix) :]]


def _merge(base: dict[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """Overlay wins, except that CEL rules from both sides are kept."""
    merged = dict(base)
    for key, value in overlay.items():
        if key == "x-kubernetes-validations" and key in merged:
            merged[key] = [*merged[key], *value]
        else:
            merged[key] = value
    return merged


def _structural(node: Mapping[str, Any], definitions: Mapping[str, Any], where: str) -> dict[str, Any]:
    own = dict(node)
    result: dict[str, Any] = {}
    if "$ref" in own:
        result = _structural(_definition(own.pop("$ref"), definitions), definitions, where)
    for combinator in ("anyOf", "allOf", "oneOf"):
        if combinator not in own:
            continue
        # Optional[X] is anyOf [X, null]; a structural schema has no null type, and an absent field already
        # means "not set".
        branches = [branch for branch in own.pop(combinator) if branch.get("type") != "null"]
        if len(branches) != 1:
            raise ValueError(
                f"{where}: {combinator} with {len(branches)} non-null branches is not structural"
            )
        result = _merge(result, _structural(branches[0], definitions, where))
    if own.get("default", ...) is None:
        del own["default"]
    if own.get("additionalProperties") is True:
        del own["additionalProperties"]
        own["x-kubernetes-preserve-unknown-fields"] = True

    translated: dict[str, Any] = {}
    for key, value in own.items():
        if key in _DROPPED:
            continue
        if key not in _KEYWORDS:
            raise ValueError(f"{where}: {key!r} is not allowed in a structural schema")
        if key == "properties":
            value = {name: _structural(sub, definitions, f"{where}.{name}") for name, sub in value.items()}
        elif key == "items" or (key == "additionalProperties" and isinstance(value, Mapping)):
            value = _structural(value, definitions, f"{where}[]")
        elif key == "x-kubernetes-validations":
            # pydantic sorts keys alphabetically; the rule reads better before its message.
            value = [{k: rule[k] for k in _RULE_KEY_ORDER if k in rule} for rule in value]
        translated[key] = value
    result = _merge(result, translated)

    untyped = ("x-kubernetes-preserve-unknown-fields", "x-kubernetes-int-or-string")
    if "type" not in result and not any(result.get(key) for key in untyped):
        raise ValueError(f"{where}: a structural schema needs a type")
    return {key: result[key] for key in _KEYWORD_ORDER if key in result}


def structural_schema(model: type[BaseModel], where: str = "spec") -> dict[str, Any]:
    """Turn a model's JSON schema into a Kubernetes structural schema.

    $refs are inlined, Optional[X] becomes X, titles are dropped; descriptions, defaults, enums, patterns,
    bounds and x-kubernetes-* extensions are kept. Raises ValueError for anything Kubernetes cannot take.
    """
    raw = model.model_json_schema(by_alias=True)
    definitions = raw.pop("$defs", {})
    return _structural(raw, definitions, where)


def _object_schema(description: str, spec: dict[str, Any], status: dict[str, Any] | None) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "apiVersion": {
            "description": "Versioned schema of this representation of an object.",
            "type": "string",
        },
        "kind": {"description": "REST resource this object represents.", "type": "string"},
        "metadata": {"type": "object"},
        "spec": spec,
    }
    if status is not None:
        properties["status"] = status
    return {"description": description, "type": "object", "required": ["spec"], "properties": properties}


def _crd(
    kind: str,
    plural: str,
    scope: str,
    short_names: list[str],
    schema: dict[str, Any],
    columns: list[dict[str, Any]],
    with_status: bool,
) -> dict[str, Any]:
    version: dict[str, Any] = {
        "name": api.VERSION,
        "served": True,
        "storage": True,
        "schema": {"openAPIV3Schema": schema},
    }
    if with_status:
        version["subresources"] = {"status": {}}
    version["additionalPrinterColumns"] = columns
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{api.GROUP}"},
        "spec": {
            "group": api.GROUP,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": short_names,
                "categories": CATEGORIES,
            },
            "scope": scope,
            "versions": [version],
        },
    }


_AGE_COLUMN = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}

_TASK_COLUMNS = [
    {"name": "Agent", "type": "string", "jsonPath": ".spec.agent"},
    {"name": "Priority", "type": "string", "jsonPath": ".spec.priority"},
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    # Reason is noisy in the default view, so only `kubectl get -o wide` shows it.
    {"name": "Reason", "type": "string", "jsonPath": ".status.reason", "priority": 1},
    {"name": "Attempts", "type": "integer", "jsonPath": ".status.attempts"},
    {"name": "Duration", "type": "string", "jsonPath": ".status.duration"},
    _AGE_COLUMN,
]

_AGENT_COLUMNS = [
    {"name": "Image", "type": "string", "jsonPath": ".spec.image"},
    {"name": "Max Concurrent", "type": "integer", "jsonPath": ".spec.maxConcurrent"},
    _AGE_COLUMN,
]


def build_crds() -> list[dict[str, Any]]:
    """The CustomResourceDefinitions of Task, Agent and ClusterAgent, in that order."""
    task_schema = _object_schema(
        "A Task runs one prompt through an agent as a Kubernetes Job.",
        structural_schema(api.TaskSpec),
        structural_schema(api.TaskStatus, "status"),
    )
    agent_spec = structural_schema(api.AgentSpec)
    agent_schema = _object_schema(
        "An Agent says how to run a coding agent for the Tasks of its namespace.", agent_spec, None
    )
    cluster_agent_schema = _object_schema(
        "A ClusterAgent says how to run a coding agent for Tasks of any namespace.", agent_spec, None
    )
    return [
        _crd("Task", "tasks", "Namespaced", ["ytask", "yt"], task_schema, _TASK_COLUMNS, with_status=True),
        _crd("Agent", "agents", "Namespaced", ["yagent"], agent_schema, _AGENT_COLUMNS, with_status=False),
        _crd(
            "ClusterAgent",
            "clusteragents",
            "Cluster",
            ["ycagent"],
            cluster_agent_schema,
            _AGENT_COLUMNS,
            with_status=False,
        ),
    ]


class _Dumper(yaml.SafeDumper):
    # Definitions reused in several places would otherwise come out as YAML anchors and aliases.
    def ignore_aliases(self, data: Any) -> bool:
        return True


def render_crd_yaml() -> dict[str, str]:
    """Map each CRD's path relative to the repository root (crds/...) to its YAML text."""
    files = {}
    for crd in build_crds():
        plural = crd["spec"]["names"]["plural"]
        body = yaml.dump(crd, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=110)
        files[f"crds/{api.GROUP}_{plural}.yaml"] = HEADER + body
    return files


def main(argv: list[str] | None = None) -> int:
    """Write the CRDs into crds/, or with --check return 1 and name each file that differs."""
    parser = argparse.ArgumentParser(
        prog="python -m taskyard.crd", description="Generate crds/ from operator/taskyard/api.py."
    )
    parser.add_argument("--check", action="store_true", help="only report files that are out of date")
    args = parser.parse_args(argv)

    repo_root = CRD_DIR.parent
    stale = []
    for relative, text in render_crd_yaml().items():
        path = repo_root / relative
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(relative)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    for relative in stale:
        print(
            f"{relative} differs from operator/taskyard/api.py; run `python -m taskyard.crd`", file=sys.stderr
        )
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
