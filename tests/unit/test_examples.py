"""The examples are Tasks the operator accepts, for agents the chart has presets for."""

from pathlib import Path

import pytest
import yaml

from taskyard.api import parse_task_spec

pytestmark = pytest.mark.unit

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
VALUES = Path(__file__).resolve().parents[2] / "helm" / "taskyard" / "values.yaml"


def example_tasks():
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document and document.get("kind") == "Task":
                yield pytest.param(path.name, document, id=f"{path.stem}/{document['metadata']['name']}")


@pytest.mark.parametrize(("file", "task"), list(example_tasks()))
def test_every_example_task_is_valid_and_names_a_preset(file, task):
    spec = parse_task_spec(task["spec"])
    presets = yaml.safe_load(VALUES.read_text())["agents"]
    assert spec.agent in presets, f"{file}: no preset named {spec.agent}"


@pytest.mark.parametrize("agent", ["claude-code", "codex", "gemini-cli", "opencode"])
def test_each_coding_agent_has_an_example_with_its_secret(agent):
    documents = list(yaml.safe_load_all((EXAMPLES / f"{agent}.yaml").read_text()))
    secret = yaml.safe_load(VALUES.read_text())["agents"][agent]["apiKey"]["secretName"]
    assert any(d["kind"] == "Secret" and d["metadata"]["name"] == secret for d in documents)
    assert any(d["kind"] == "Task" and d["spec"]["agent"] == agent for d in documents)
