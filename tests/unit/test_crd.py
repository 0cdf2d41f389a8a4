"""The CRDs generated from api.py: up to date in crds/, structural, and carrying the intended rules."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from taskyard import api, crd

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[2]


def _crds() -> dict[str, dict[str, Any]]:
    return {item["spec"]["names"]["kind"]: item for item in crd.build_crds()}


def _schema(kind: str) -> dict[str, Any]:
    return _crds()[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _nodes(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from _nodes(sub, f"{path}.{name}")
    if "items" in schema:
        yield from _nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _nodes(schema["additionalProperties"], f"{path}{{}}")


def test_crds_directory_is_up_to_date():
    """Fails when api.py changed without `python -m taskyard.crd`."""
    rendered = crd.render_crd_yaml()
    assert sorted(rendered) == [
        "crds/taskyard.dev_agents.yaml",
        "crds/taskyard.dev_clusteragents.yaml",
        "crds/taskyard.dev_tasks.yaml",
    ]
    for relative, text in rendered.items():
        assert (REPO_ROOT / relative).read_text(encoding="utf-8") == text, f"{relative} is stale"


def test_rendered_yaml_has_the_header_and_parses_back_to_the_crd():
    built = {item["metadata"]["name"]: item for item in crd.build_crds()}
    for text in crd.render_crd_yaml().values():
        assert text.startswith(
            "# Generated from operator/taskyard/api.py by `python -m taskyard.crd`; do not edit.\n"
        )
        parsed = yaml.safe_load(text)
        assert parsed == built[parsed["metadata"]["name"]]
        assert "&id" not in text and "*id" not in text


def test_main_writes_then_checks_and_names_stale_files(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(crd, "CRD_DIR", tmp_path / "crds")
    assert crd.main(["--check"]) == 1
    assert crd.main([]) == 0
    assert crd.main(["--check"]) == 0
    stale = tmp_path / "crds" / "taskyard.dev_agents.yaml"
    stale.write_text(stale.read_text() + "# edited\n")
    capsys.readouterr()
    assert crd.main(["--check"]) == 1
    errors = capsys.readouterr().err
    assert "crds/taskyard.dev_agents.yaml" in errors
    assert "taskyard.dev_tasks.yaml" not in errors


def test_names_scope_and_subresources():
    crds = _crds()
    task, agent, cluster_agent = crds["Task"], crds["Agent"], crds["ClusterAgent"]
    assert task["metadata"]["name"] == "tasks.taskyard.dev"
    assert task["spec"]["names"]["plural"] == "tasks"
    assert task["spec"]["names"]["singular"] == "task"
    assert task["spec"]["names"]["shortNames"] == ["ytask", "yt"]
    assert task["spec"]["scope"] == "Namespaced"
    assert task["spec"]["versions"][0]["subresources"] == {"status": {}}

    assert agent["metadata"]["name"] == "agents.taskyard.dev"
    assert agent["spec"]["names"]["shortNames"] == ["yagent"]
    assert agent["spec"]["scope"] == "Namespaced"
    assert cluster_agent["metadata"]["name"] == "clusteragents.taskyard.dev"
    assert cluster_agent["spec"]["names"]["shortNames"] == ["ycagent"]
    assert cluster_agent["spec"]["scope"] == "Cluster"
    for item in crds.values():
        assert item["apiVersion"] == "apiextensions.k8s.io/v1"
        assert item["spec"]["group"] == "taskyard.dev"
        assert item["spec"]["names"]["categories"] == ["taskyard"]
        (version,) = item["spec"]["versions"]
        assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert "subresources" not in agent["spec"]["versions"][0]
    assert "subresources" not in cluster_agent["spec"]["versions"][0]


def test_printer_columns():
    crds = _crds()
    columns = crds["Task"]["spec"]["versions"][0]["additionalPrinterColumns"]
    by_name = {column["name"]: column for column in columns}
    assert [column["name"] for column in columns if "priority" not in column] == [
        "Agent",
        "Priority",
        "Phase",
        "Attempts",
        "Duration",
        "Age",
    ]
    assert by_name["Agent"]["jsonPath"] == ".spec.agent"
    assert by_name["Priority"]["jsonPath"] == ".spec.priority"
    assert by_name["Phase"]["jsonPath"] == ".status.phase"
    assert (by_name["Attempts"]["jsonPath"], by_name["Attempts"]["type"]) == (".status.attempts", "integer")
    assert by_name["Duration"]["jsonPath"] == ".status.duration"
    assert (by_name["Age"]["jsonPath"], by_name["Age"]["type"]) == (".metadata.creationTimestamp", "date")
    assert (by_name["Reason"]["jsonPath"], by_name["Reason"]["priority"]) == (".status.reason", 1)
    for kind in ("Agent", "ClusterAgent"):
        columns = crds[kind]["spec"]["versions"][0]["additionalPrinterColumns"]
        assert [(c["name"], c["type"], c["jsonPath"]) for c in columns] == [
            ("Image", "string", ".spec.image"),
            ("Max Concurrent", "integer", ".spec.maxConcurrent"),
            ("Age", "date", ".metadata.creationTimestamp"),
        ]


@pytest.mark.parametrize("kind", ["Task", "Agent", "ClusterAgent"])
def test_schema_is_structural(kind):
    schema = _schema(kind)
    assert schema["required"] == ["spec"]
    assert schema["type"] == "object"
    for path, node in _nodes(schema):
        assert not {"$ref", "$defs", "anyOf", "allOf", "oneOf", "not", "title", "nullable"} & set(node), path
        assert node.get("additionalProperties") is not True, path
        untyped = node.get("x-kubernetes-preserve-unknown-fields") or node.get("x-kubernetes-int-or-string")
        assert "type" in node or untyped, path
        # The API server refuses a type beside x-kubernetes-int-or-string.
        assert not ("type" in node and node.get("x-kubernetes-int-or-string")), path
        if "properties" in node:
            assert node["type"] == "object", path
        if node.get("type") == "array":
            assert "items" in node, path
        for default in [node["default"]] if "default" in node else []:
            assert default is not None, path


@pytest.mark.parametrize("kind", ["Task", "Agent"])
def test_every_spec_field_is_described_for_kubectl_explain(kind):
    for path, node in _nodes(_schema(kind)["properties"]["spec"], ".spec"):
        if path.endswith(("[]", "{}")) and node["type"] != "object":
            continue  # a list of strings needs no second description for its items
        assert node.get("description"), path


def test_defaults_reach_the_schema():
    task = _schema("Task")["properties"]["spec"]["properties"]
    assert task["priority"]["default"] == "medium"
    assert task["priority"]["enum"] == ["critical", "high", "medium", "low"]
    assert task["cancel"]["default"] is False
    assert task["workspace"]["properties"]["keep"]["default"] is True
    assert "default" not in task["retries"]
    agent = _schema("Agent")["properties"]["spec"]["properties"]
    assert agent["retries"]["default"] == 0
    assert (agent["retries"]["minimum"], agent["retries"]["maximum"]) == (0, 20)
    assert agent["nonRetryableExitCodes"]["default"] == []
    assert agent["nonRetryableExitCodes"]["maxItems"] == 32
    assert (
        agent["nonRetryableExitCodes"]["items"]["minimum"],
        agent["nonRetryableExitCodes"]["items"]["maximum"],
    ) == (
        1,
        255,
    )
    assert agent["automountServiceAccountToken"]["default"] is False
    assert agent["terminationGracePeriodSeconds"]["default"] == 10
    assert agent["image"]["minLength"] == 1
    assert agent["nodeSelector"]["additionalProperties"] == {"type": "string"}
    for field in ("resources", "envFrom", "tolerations"):
        opaque = agent[field]["items"] if agent[field]["type"] == "array" else agent[field]
        assert opaque["x-kubernetes-preserve-unknown-fields"] is True, field


def test_status_schema():
    status = _schema("Task")["properties"]["status"]["properties"]
    assert status["phase"]["enum"] == [
        "Pending",
        "Queued",
        "Running",
        "Cancelling",
        "Succeeded",
        "Failed",
        "Cancelled",
    ]
    condition = status["conditions"]["items"]
    assert condition["properties"]["status"]["enum"] == ["True", "False", "Unknown"]
    assert condition["properties"]["lastTransitionTime"]["format"] == "date-time"
    assert status["conditions"]["x-kubernetes-list-map-keys"] == ["type"]
    for field in ("queuedAt", "startTime", "completionTime"):
        assert status[field] == {
            "description": status[field]["description"],
            "type": "string",
            "format": "date-time",
        }
    for field in ("attempts", "exitCode", "observedGeneration"):
        assert status[field]["type"] == "integer", field
    for field in ("reason", "message", "jobName", "podName", "duration", "logTail", "workspace"):
        assert status[field]["type"] == "string", field
    result = status["result"]["properties"]
    assert result["changedFiles"]["type"] == "array" and result["changedFiles"]["items"] == {"type": "string"}
    usage = result["usage"]["properties"]
    assert {name: usage[name]["type"] for name in usage} == {
        "inputTokens": "integer",
        "outputTokens": "integer",
        "costUSD": "number",
        "turns": "integer",
    }


def _rules(node: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {rule["rule"]: rule for rule in node.get("x-kubernetes-validations", [])}


def test_task_spec_is_immutable_except_cancel():
    spec = _schema("Task")["properties"]["spec"]
    rules = _rules(spec)
    fields = set(spec["properties"])
    assert fields == {
        "agent", "prompt", "promptFrom", "priority", "provider", "model", "timeout", "retries", "workspace",
        "repository", "limits", "env", "cancel", "ttlSecondsAfterFinished",
    }  # fmt: skip
    for field in fields - {"cancel"}:
        unchanged = f"(!has(self.{field}) || self.{field} == oldSelf.{field})"
        rule = rules[f"has(self.{field}) == has(oldSelf.{field}) && {unchanged}"]
        assert (
            rule["message"] == f"spec.{field} is immutable once the Task exists; only spec.cancel can change"
        )
        assert rule["fieldPath"] == f".{field}"
    assert not [text for text in rules if "self.cancel ==" in text]
    unset = [rule for rule in rules.values() if rule["message"] == "spec.cancel cannot be unset once set"]
    assert len(unset) == 1
    assert "oldSelf.cancel" in unset[0]["rule"]
    assert len(rules) == len(fields) - 1 + 2  # one per immutable field, exactly-one-prompt, cancel stays set


def test_exactly_one_prompt_rules():
    spec = _schema("Task")["properties"]["spec"]
    assert _rules(spec)["has(self.prompt) != has(self.promptFrom)"]["message"] == (
        "set exactly one of spec.prompt or spec.promptFrom"
    )
    prompt_from = spec["properties"]["promptFrom"]
    assert "has(self.configMapKeyRef) != has(self.secretKeyRef)" in _rules(prompt_from)


def test_prompt_gets_a_readable_limit_and_a_backstop_max_length():
    prompt = _schema("Task")["properties"]["spec"]["properties"]["prompt"]
    rule = _rules(prompt)["size(self) <= 32768"]
    assert rule["message"] == (
        "spec.prompt is limited to 32768 characters; put a larger prompt in a ConfigMap or Secret and "
        "reference it with spec.promptFrom"
    )
    # The API server skips CEL rules once maxLength fails, so maxLength must sit above the CEL limit.
    assert prompt["maxLength"] > api.PROMPT_MAX_CHARS
    assert prompt["minLength"] == 1


def test_everything_the_task_rules_compare_is_bounded_for_cel_cost_estimates():
    spec = _schema("Task")["properties"]["spec"]
    for path, node in _nodes(spec, ".spec"):
        if path.startswith(".spec.env[]"):
            continue  # compared as a whole list, which CEL costs by item count
        if node.get("type") == "string":
            assert "maxLength" in node or "enum" in node, path
        if node.get("type") == "array":
            assert "maxItems" in node, path
    assert spec["properties"]["env"]["maxItems"] == 64


def test_timeout_pattern_and_non_zero_rule():
    for kind in ("Task", "Agent"):
        timeout = _schema(kind)["properties"]["spec"]["properties"]["timeout"]
        assert timeout["pattern"] == api.DURATION_PATTERN
        assert "self.matches('[1-9]')" in _rules(timeout)


def test_env_items_require_a_name_and_keep_unknown_fields():
    for kind in ("Task", "Agent"):
        items = _schema(kind)["properties"]["spec"]["properties"]["env"]["items"]
        assert items["type"] == "object"
        assert items["required"] == ["name"]
        assert items["x-kubernetes-preserve-unknown-fields"] is True


def test_security_context_ids_reject_root_with_a_message_saying_so():
    context = _schema("Agent")["properties"]["spec"]["properties"]["securityContext"]["properties"]
    for field in ("runAsUser", "runAsGroup", "fsGroup"):
        assert context[field]["minimum"] == 1
        assert "root" in _rules(context[field])["self >= 1"]["message"]


def test_agent_and_cluster_agent_share_the_spec_schema():
    assert _schema("Agent")["properties"]["spec"] == _schema("ClusterAgent")["properties"]["spec"]
    assert _schema("Agent")["properties"]["spec"]["required"] == ["image"]
    assert "status" not in _schema("Agent")["properties"]


def test_structural_schema_refuses_what_kubernetes_cannot_express():
    class Ambiguous(BaseModel):
        value: int | str

    with pytest.raises(ValueError, match="value: anyOf with 2 non-null branches is not structural"):
        crd.structural_schema(Ambiguous)
