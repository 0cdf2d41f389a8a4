"""The pure parts of the `taskyard` command: statistics, tables, ages, log decoding, error lines, options."""

from __future__ import annotations

import base64
import gzip
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import urllib3
from kubernetes.client import ApiException

from taskyard import cli, stats

pytestmark = pytest.mark.unit

NOW = datetime(2025, 3, 4, 12, 0, 0, tzinfo=UTC)


def stamp(seconds_before_now: float) -> str:
    return (NOW - timedelta(seconds=seconds_before_now)).strftime("%Y-%m-%dT%H:%M:%SZ")


def task(
    name: str,
    agent: str = "shell",
    phase: str | None = None,
    run: tuple[int, int] | None = None,
    namespace: str = "team-a",
    priority: str | None = None,
    **status: Any,
) -> dict[str, Any]:
    """A Task as the API returns it; `run` is (start, end) in seconds before NOW."""
    spec: dict[str, Any] = {"agent": agent, "prompt": "echo hi"}
    if priority:
        spec["priority"] = priority
    body: dict[str, Any] = {
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": stamp(600)},
        "spec": spec,
    }
    if phase:
        status["phase"] = phase
    if run:
        status["startTime"], status["completionTime"] = stamp(run[0]), stamp(run[1])
    if status:
        body["status"] = status
    return body


# --- statistics --------------------------------------------------------------------------------------


def test_stats_count_phases_rate_and_durations_per_agent_and_in_total() -> None:
    tasks = [
        task("a1", "shell", "Succeeded", run=(100, 90)),  # 10s
        task("a2", "shell", "Succeeded", run=(100, 80)),  # 20s
        task("a3", "shell", "Failed", run=(100, 40)),  # 60s
        task("a4", "shell", "Running", startTime=stamp(30)),
        task("b1", "coder", "Cancelled", run=(50, 45)),  # 5s: cancelled while running
        task("b2", "coder", "Cancelled"),  # cancelled while queued: no run time
        task("b3", "coder", "Queued"),
        task("b4", "coder"),  # not seen by the operator yet
    ]

    rows = stats.compute_stats(tasks)

    assert [row.agent for row in rows] == ["coder", "shell", "TOTAL"]
    coder, shell, total = rows
    assert shell.phases == {
        "Pending": 0,
        "Queued": 0,
        "Running": 1,
        "Cancelling": 0,
        "Succeeded": 2,
        "Failed": 1,
        "Cancelled": 0,
    }
    assert shell.total == 4
    assert shell.success_rate == pytest.approx(2 / 3)
    assert sorted(shell.durations) == [10, 20, 60]
    assert shell.average == pytest.approx(30)
    assert shell.p95 == 60
    assert coder.phases["Cancelled"] == 2 and coder.phases["Queued"] == 1 and coder.phases["Pending"] == 1
    assert coder.success_rate is None
    assert coder.durations == [5]
    assert total.total == 8
    assert total.phases["Succeeded"] == 2 and total.phases["Failed"] == 1
    assert sorted(total.durations) == [5, 10, 20, 60]
    assert total.average == pytest.approx(23.75)

    headers, cells = stats.stats_table(rows)
    assert headers[:2] == ["AGENT", "TOTAL"] and headers[-5:] == [
        "SUCCESS RATE",
        "AVG DURATION",
        "P95 DURATION",
        "TOKENS",
        "COST",
    ]
    by_agent = {line[0]: dict(zip(headers, line, strict=True)) for line in cells}
    assert by_agent["shell"]["SUCCESS RATE"] == "66.7%"
    assert by_agent["shell"]["AVG DURATION"] == "30s"
    assert by_agent["shell"]["P95 DURATION"] == "1m0s"
    assert by_agent["coder"]["SUCCESS RATE"] == "n/a"
    assert by_agent["coder"]["AVG DURATION"] == "5s"
    assert by_agent["TOTAL"]["AVG DURATION"] == "23.8s"
    assert by_agent["TOTAL"]["SUCCEEDED"] == "2" and by_agent["TOTAL"]["PENDING"] == "1"


def test_stats_sum_the_tokens_and_cost_agents_report() -> None:
    def with_usage(name: str, agent: str, usage: object) -> dict:
        body = task(name, agent, "Succeeded", run=(10, 5))
        body["status"]["result"] = {"summary": "done", "usage": usage}
        return body

    tasks = [
        with_usage("a", "claude-code", {"inputTokens": 9000, "outputTokens": 3000, "costUSD": 0.25}),
        with_usage("b", "claude-code", {"inputTokens": 1000, "outputTokens": 500, "costUSD": 0.5}),
        with_usage("c", "codex", {"inputTokens": 700, "outputTokens": 20}),  # no cost reported
        with_usage("d", "codex", {"inputTokens": "many", "costUSD": -1}),  # nonsense is not counted
        task("e", "shell", "Succeeded", run=(10, 5)),
    ]
    rows = {row.agent: row for row in stats.compute_stats(tasks)}
    assert rows["claude-code"].tokens == 13500 and rows["claude-code"].cost_usd == pytest.approx(0.75)
    assert rows["codex"].tokens == 720 and rows["codex"].costed == 0
    assert rows["TOTAL"].tokens == 14220 and rows["TOTAL"].cost_usd == pytest.approx(0.75)
    headers, cells = stats.stats_table(list(rows.values()))
    shown = {line[0]: dict(zip(headers, line, strict=True)) for line in cells}
    assert (shown["claude-code"]["TOKENS"], shown["claude-code"]["COST"]) == ("14k", "$0.75")
    assert (shown["codex"]["TOKENS"], shown["codex"]["COST"]) == ("720", "-")
    assert (shown["shell"]["TOKENS"], shown["shell"]["COST"]) == ("0", "-")


def test_stats_without_finished_tasks_show_no_rate_and_no_durations() -> None:
    rows = stats.compute_stats([task("q", "shell", "Queued")])
    headers, cells = stats.stats_table(rows)
    shell = dict(zip(headers, cells[0], strict=True))
    assert (shell["SUCCESS RATE"], shell["AVG DURATION"], shell["P95 DURATION"]) == ("n/a", "-", "-")


def test_stats_of_no_tasks_is_an_empty_total() -> None:
    [total] = stats.compute_stats([])
    assert total.agent == "TOTAL" and total.total == 0 and total.success_rate is None and total.p95 is None


def test_stats_across_namespaces_keep_agents_of_each_namespace_apart() -> None:
    tasks = [
        task("a", "shell", "Succeeded", run=(10, 5), namespace="team-b"),
        task("b", "shell", "Failed", run=(10, 5), namespace="team-a"),
        task("c", "shell", "Failed", run=(10, 5), namespace="team-a"),
    ]
    rows = stats.compute_stats(tasks, by_namespace=True)
    assert [(row.namespace, row.agent, row.total) for row in rows] == [
        ("team-a", "shell", 2),
        ("team-b", "shell", 1),
        ("", "TOTAL", 3),
    ]
    headers, cells = stats.stats_table(rows, by_namespace=True)
    assert headers[:2] == ["NAMESPACE", "AGENT"]
    assert cells[-1][:2] == ["-", "TOTAL"]
    assert cells[0][headers.index("SUCCESS RATE")] == "0.0%"
    assert cells[-1][headers.index("SUCCESS RATE")] == "33.3%"


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], None),
        ([7], 7),
        ([3, 1, 2], 3),  # fewer than 20 values: the largest
        (list(range(1, 21)), 19),  # 20 values: ceil(0.95 * 20) = 19th
        (list(range(1, 101)), 95),
        (list(range(100, 0, -1)), 95),  # order does not matter
    ],
)
def test_p95_is_the_nearest_rank_percentile(values: list[float], expected: float | None) -> None:
    assert stats.percentile(values, 95) == expected


def test_run_seconds_only_for_finished_tasks_with_both_times() -> None:
    assert stats.run_seconds(task("a", phase="Succeeded", run=(125, 0))) == 125
    assert stats.run_seconds(task("b", phase="Running", run=(125, 0))) is None
    assert stats.run_seconds(task("c", phase="Failed", startTime=stamp(5))) is None
    # Clock skew between writers never makes a negative run time.
    assert stats.run_seconds(task("d", phase="Failed", run=(0, 5))) == 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-03-04T12:00:00Z", NOW),
        ("2025-03-04T12:00:00.250000Z", NOW + timedelta(milliseconds=250)),
        ("2025-03-04T13:00:00+01:00", NOW),
        ("2025-03-04T12:00:00", None),  # no zone: not an API server timestamp
        ("yesterday", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_time_reads_rfc3339_with_a_zone(text: Any, expected: datetime | None) -> None:
    assert stats.parse_time(text) == expected


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (None, "-"),
        (0, "0s"),
        (5.5, "5.5s"),
        (5.04, "5s"),
        (23.75, "23.8s"),
        (59.96, "1m0s"),
        (65.4, "1m5s"),
        (65.5, "1m6s"),
        (3723, "1h2m3s"),
    ],
)
def test_format_seconds_for_stats(seconds: float | None, expected: str) -> None:
    assert stats.format_seconds(seconds) == expected


def test_success_rate_ignores_cancelled_tasks() -> None:
    assert stats.success_rate(0, 0) is None
    assert stats.format_rate(stats.success_rate(1, 2)) == "33.3%"
    assert stats.format_rate(stats.success_rate(3, 0)) == "100.0%"


# --- tables and columns ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (-5, "<invalid>"),
        (-1, "0s"),
        (0, "0s"),
        (119, "119s"),
        (120, "2m"),
        (200, "3m20s"),
        (599, "9m59s"),
        (600, "10m"),
        (3 * 3600 - 1, "179m"),
        (3 * 3600, "3h"),
        (5 * 3600 + 10 * 60, "5h10m"),
        (8 * 3600 + 59 * 60, "8h"),
        (47 * 3600, "47h"),
        (2 * 86400, "2d"),
        (3 * 86400 + 4 * 3600, "3d4h"),
        (40 * 86400, "40d"),
        (3 * 365 * 86400 + 86400, "3y1d"),
        (9 * 365 * 86400, "9y"),
    ],
)
def test_format_age_like_kubectl(seconds: float, expected: str) -> None:
    assert cli.format_age(seconds) == expected


def test_format_table_aligns_columns_without_trailing_spaces() -> None:
    table = cli.format_table(["NAME", "PHASE", "AGE"], [["a-long-name", "Running", "5s"], ["b", "", "10m"]])
    assert table.splitlines() == [
        "NAME          PHASE     AGE",
        "a-long-name   Running   5s",
        "b                       10m",
    ]
    assert cli.format_table(["A", "B"], []) == "A   B"


def test_list_rows_show_status_columns_and_defaults() -> None:
    done = task("done", "shell", "Succeeded", run=(100, 40), reason="Completed", attempts=2, duration="1m0s")
    running = task("busy", "coder", "Running", priority="high", reason="Running", attempts=1)
    running["status"]["startTime"] = stamp(75)
    new = task("new")

    table = cli.list_table([done, running, new], NOW).splitlines()

    assert table[0].split() == ["NAME", "AGENT", "PRIORITY", "PHASE", "REASON", "ATTEMPTS", "DURATION", "AGE"]
    assert table[1].split() == ["done", "shell", "medium", "Succeeded", "Completed", "2", "1m0s", "10m"]
    # A running Task has no status.duration yet: its time so far is shown.
    assert table[2].split() == ["busy", "coder", "high", "Running", "Running", "1", "1m15s", "10m"]
    assert table[3].split() == ["new", "shell", "medium", "Pending", "-", "0", "-", "10m"]


def test_list_rows_across_namespaces_start_with_the_namespace() -> None:
    table = cli.list_table([task("x", namespace="team-z")], NOW, with_namespace=True).splitlines()
    assert table[0].split()[:2] == ["NAMESPACE", "NAME"]
    assert table[1].split()[:2] == ["team-z", "x"]


def test_select_tasks_filters_by_phase_agent_and_priority() -> None:
    tasks = [
        task("a", "shell", "Succeeded"),
        task("b", "shell", "Failed", priority="high"),
        task("c", "coder", "Failed", priority="low"),
        task("d", "coder"),
    ]

    def names(chosen: list[dict[str, Any]]) -> list[str]:
        return [t["metadata"]["name"] for t in chosen]

    assert names(cli.select_tasks(tasks)) == ["a", "b", "c", "d"]
    assert names(cli.select_tasks(tasks, phases=["Failed"])) == ["b", "c"]
    assert names(cli.select_tasks(tasks, phases=["Succeeded", "Pending"])) == ["a", "d"]
    assert names(cli.select_tasks(tasks, agent="coder")) == ["c", "d"]
    assert names(cli.select_tasks(tasks, priority="medium")) == ["a", "d"]
    assert names(cli.select_tasks(tasks, phases=["Failed"], agent="shell", priority="high")) == ["b"]


def test_status_text_names_phase_reason_and_message_on_one_line() -> None:
    running = task("x", phase="Running", reason="Starting", message="the Job is created;\nwaiting")
    assert cli.status_text(running) == "task/x Running (Starting): the Job is created; waiting"
    assert cli.status_text(task("y", phase="Queued")) == "task/y Queued"
    assert cli.status_text(task("z")) == "task/z Pending: not picked up by the operator yet"


def test_status_line_rewrites_in_place_on_a_terminal_and_prints_changes_otherwise() -> None:
    class Sink:
        def __init__(self) -> None:
            self.text = ""

        def write(self, text: str) -> None:
            self.text += text

        def flush(self) -> None:
            pass

        def isatty(self) -> bool:
            return False

    plain = Sink()
    line = cli.StatusLine(plain)  # type: ignore[arg-type]
    for text in ("a Pending", "a Pending", "a Running", "a Succeeded"):
        line.show(text)
    line.done()
    assert plain.text == "a Pending\na Running\na Succeeded\n"

    terminal = Sink()
    line = cli.StatusLine(terminal, in_place=True)  # type: ignore[arg-type]
    line.show("a Pending")
    line.show("a Succeeded")
    line.done()
    assert terminal.text == "\r\x1b[Ka Pending\r\x1b[Ka Succeeded\n"


# --- pods and kept logs ------------------------------------------------------------------------------


def pod(name: str, created: str, state: dict[str, Any] | None = None) -> dict[str, Any]:
    statuses = [{"name": "agent", "state": state}] if state is not None else []
    return {
        "metadata": {"name": name, "creationTimestamp": created},
        "status": {"phase": "Pending", "containerStatuses": statuses},
    }


def test_pods_sort_by_creation_and_know_whether_the_agent_started() -> None:
    pods = [
        pod("t-b", "2025-03-04T10:00:05Z", {"running": {}}),
        pod("t-a", "2025-03-04T10:00:05Z", {"terminated": {"exitCode": 1}}),
        pod("t-c", "2025-03-04T10:00:01Z", {"waiting": {"reason": "ContainerCreating"}}),
        pod("t-d", "2025-03-04T10:00:09Z"),
    ]
    ordered = cli.sorted_pods(pods)
    assert [p["metadata"]["name"] for p in ordered] == ["t-c", "t-a", "t-b", "t-d"]
    assert [cli.agent_started(p) for p in ordered] == [False, True, True, False]
    assert cli.waiting_reason(ordered[0]) == "ContainerCreating"
    assert cli.waiting_reason(ordered[3]) == "Pending"


def packed(text: str) -> str:
    return base64.b64encode(gzip.compress(text.encode())).decode()


def test_kept_logs_decode_each_attempt_with_its_pod() -> None:
    truncated = "[taskyard: 1024 bytes dropped from the start]\nend of a long run\n"
    config_map = {
        "data": {"attempt-1.pod": "t-abc12", "attempt-10.pod": "t-xyz89"},
        "binaryData": {
            "attempt-1.log.gz": packed("first try\nfailed ✗\n"),
            "attempt-10.log.gz": packed(truncated),
            "attempt-2.log.gz": base64.b64encode(b"not gzip").decode(),  # undecodable: skipped
            "notes.txt": packed("unrelated"),
        },
    }
    logs = cli.kept_logs(config_map)
    assert sorted(logs) == [1, 10]
    assert logs[1] == cli.KeptLog(1, "t-abc12", "first try\nfailed ✗\n")
    assert logs[10].pod == "t-xyz89"
    assert logs[10].text.splitlines()[0] == "[taskyard: 1024 bytes dropped from the start]"
    assert cli.kept_logs({"metadata": {}}) == {}


# --- error lines -------------------------------------------------------------------------------------


def api_error(status: int, reason: str, body: dict[str, Any] | None) -> ApiException:
    error = ApiException(status=status, reason=reason)
    error.body = json.dumps(body) if body is not None else None
    return error


def test_api_errors_become_one_line_naming_the_kind_of_failure() -> None:
    server = "https://10.0.0.1:6443"
    forbidden = api_error(
        403,
        "Forbidden",
        {"message": 'tasks.taskyard.dev is forbidden: User "bob" cannot list resource "tasks"'},
    )
    assert cli.describe_api_error(forbidden, server) == (
        'forbidden: tasks.taskyard.dev is forbidden: User "bob" cannot list resource "tasks"'
    )
    unauthorized = api_error(401, "Unauthorized", {"message": "Unauthorized"})
    assert cli.describe_api_error(unauthorized, server).startswith(
        f"unauthorized: the API server at {server} did not accept the credentials"
    )
    no_crd = api_error(404, "Not Found", {"message": "the server could not find the requested resource"})
    assert "is taskyard installed" in cli.describe_api_error(no_crd, server)
    multi_line = api_error(500, "Internal Server Error", {"message": "etcd\n  is down"})
    assert cli.describe_api_error(multi_line, server) == "etcd is down"
    assert cli.describe_api_error(api_error(502, "Bad Gateway", None), server) == "Bad Gateway"


def test_invalid_reasons_name_each_field_and_drop_the_unchecked_rules_note() -> None:
    error = api_error(
        422,
        "Unprocessable Entity",
        {
            "message": 'Task.taskyard.dev "task-x7" is invalid: [...]',
            "details": {
                "causes": [
                    {
                        "field": "spec.priority",
                        "message": 'Unsupported value: "urgent": supported values: ...',
                    },
                    {
                        "field": "<nil>",
                        "message": "Invalid value: null: some validation rules were not checked because ...",
                    },
                    {"field": "spec.prompt", "message": 'Invalid value: "": should be at least 1 chars long'},
                ]
            },
        },
    )
    assert cli.invalid_reasons(error) == (
        'spec.priority: Unsupported value: "urgent": supported values: ...; '
        'spec.prompt: Invalid value: "": should be at least 1 chars long'
    )
    without_causes = api_error(
        422, "Unprocessable Entity", {"message": 'Task.taskyard.dev "x" is invalid: bad'}
    )
    assert cli.invalid_reasons(without_causes) == "bad"


def test_connection_errors_give_the_underlying_reason() -> None:
    # A real failure: nothing listens on port 1 of the loopback interface.
    with pytest.raises(urllib3.exceptions.MaxRetryError) as caught:
        urllib3.PoolManager(retries=0).request("GET", "http://127.0.0.1:1/")
    assert cli.describe_connection_error(caught.value) == "Connection refused"


# --- options -----------------------------------------------------------------------------------------


def test_cluster_options_work_before_and_after_the_command() -> None:
    parser = cli.build_parser()
    before = parser.parse_args(["-n", "ns1", "--kubeconfig", "/k", "list"])
    after = parser.parse_args(["list", "-n", "ns2", "--context", "c"])
    assert (before.namespace, before.kubeconfig, before.context) == ("ns1", "/k", None)
    assert (after.namespace, after.kubeconfig, after.context) == ("ns2", None, "c")
    both = parser.parse_args(["-n", "ns1", "logs", "t", "-f", "--attempt", "2"])
    assert (both.namespace, both.task, both.follow, both.attempt) == ("ns1", "t", True, 2)


def test_list_phases_are_case_insensitive_and_checked() -> None:
    parser = cli.build_parser()
    assert parser.parse_args(["list", "--phase", "failed", "--phase", "Running"]).phase == [
        "Failed",
        "Running",
    ]
    with pytest.raises(SystemExit) as exited:
        parser.parse_args(["list", "--phase", "Done"])
    assert exited.value.code == 2


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--agent", "shell"],  # no prompt
        ["run", "--agent", "shell", "echo", "-f", "prompt.txt"],  # two prompts
        ["run", "echo"],  # no agent
        ["logs", "t", "--attempt", "0"],
        ["cancel"],
    ],
)
def test_usage_errors_exit_with_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_run_help_documents_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "0 success; with --wait or --follow: the Task Succeeded" in help_text
    assert "1 error (one line on stderr); with --wait or --follow: the Task Failed" in help_text
    assert "with --wait or --follow: the Task was Cancelled" in help_text
    assert cli.OUTCOME_EXIT_CODES == {"Succeeded": 0, "Failed": 1, "Cancelled": 2}


def test_a_missing_kubeconfig_is_one_line_and_exit_1(
    tmp_path: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cli.main(["--kubeconfig", str(tmp_path / "nope"), "list"]) == 1
    assert capsys.readouterr().err == f"error: no kubeconfig: {tmp_path / 'nope'} does not exist\n"

    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert cli.main(["list"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: no kubeconfig: KUBECONFIG={tmp_path / 'missing'} does not exist")
    assert err.count("\n") == 1


def test_the_namespace_comes_from_the_context(tmp_path: Any) -> None:
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        """
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: abc}}]
contexts:
  - {name: with-ns, context: {cluster: c, user: u, namespace: team-a}}
  - {name: without-ns, context: {cluster: c, user: u}}
current-context: with-ns
"""
    )
    assert cli.connect(str(kubeconfig), None).namespace == "team-a"
    assert cli.connect(str(kubeconfig), "without-ns").namespace == "default"
    assert cli.connect(str(kubeconfig), None).server == "https://127.0.0.1:1"
