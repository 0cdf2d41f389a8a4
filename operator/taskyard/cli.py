"""`taskyard`: create, watch, list, cancel and inspect taskyard Tasks from the command line.

Also installed as `kubectl-taskyard`, so it works as the kubectl plugin `kubectl taskyard ...`. It finds
the cluster the way kubectl does: --kubeconfig, else $KUBECONFIG, else ~/.kube/config, and in a pod
without a kubeconfig its service account. The namespace is -n, else the context's namespace, else
"default".

Errors are one line on stderr and exit code 1; usage errors exit with 2. `run --wait` and
`run --follow` exit with the Task's outcome: 0 Succeeded, 1 Failed, 2 Cancelled.

The pure parts (formatting, row building, reading the operator's collected logs) are plain functions
below; the statistics live in taskyard.stats.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import gzip
import json
import logging
import os
import re
import shutil
import sys
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import urllib3
import yaml
from kubernetes import client, config
from kubernetes.client import ApiException
from kubernetes.config.config_exception import ConfigException

from taskyard import stats
from taskyard.api import API_VERSION, GROUP, LABEL_TASK, PHASES, PRIORITIES, VERSION, format_duration
from taskyard.render import CONTAINER_NAME, job_name_for, label_value_for

PLURAL = "tasks"
FINAL_PHASES = frozenset(stats.FINAL_PHASES)
# Exit codes of `run --wait` / `run --follow` by the Task's final phase. 1 is also every other error.
OUTCOME_EXIT_CODES = {"Succeeded": 0, "Failed": 1, "Cancelled": 2}
EXIT_ERROR = 1
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141

# (connect, read) seconds. A followed log can stay silent for long, but the client insists on a read
# timeout; a day is as good as none for a human at a terminal.
REQUEST_TIMEOUT = (10, 60)
STREAM_TIMEOUT = (10, 24 * 3600)
WATCH_SECONDS = 55
POLL_SECONDS = 1.0

LOGS_CONFIGMAP_SUFFIX = "-logs"
_KEPT_LOG_KEY = re.compile(r"attempt-([0-9]+)\.log\.gz")
_SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class CLIError(Exception):
    """An error to show as one line on stderr, exiting with `code`."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


# --- pure helpers: formatting ----------------------------------------------------------------------


def one_line(text: Any) -> str:
    """Any text with its whitespace (newlines included) collapsed to single spaces."""
    return " ".join(str(text).split())


def format_age(seconds: float) -> str:
    """A compact age like kubectl's AGE column: "45s", "3m20s", "25m", "5h10m", "20h", "3d4h", "40d", "2y".

    More precision for young objects, less for old ones: seconds up to two minutes, minutes and seconds
    below ten minutes, whole minutes below three hours, and so on.
    """
    if seconds < -1:
        return "<invalid>"
    total = max(0, int(seconds))
    minutes, hours, days = total // 60, total // 3600, total // 86400

    def pair(big: int, big_unit: str, small: int, small_unit: str) -> str:
        return f"{big}{big_unit}{small}{small_unit}" if small else f"{big}{big_unit}"

    if total < 120:
        return f"{total}s"
    if minutes < 10:
        return pair(minutes, "m", total % 60, "s")
    if hours < 3:
        return f"{minutes}m"
    if hours < 8:
        return pair(hours, "h", minutes % 60, "m")
    if hours < 48:
        return f"{hours}h"
    if days < 8:
        return pair(days, "d", hours % 24, "h")
    if days < 2 * 365:
        return f"{days}d"
    if days < 8 * 365:
        return pair(days // 365, "y", days % 365, "d")
    return f"{days // 365}y"


def format_table(headers: Sequence[str], rows: Iterable[Sequence[str]], gap: int = 3) -> str:
    """Left-aligned columns separated by `gap` spaces, as kubectl prints them; no trailing spaces."""
    table = [list(headers), *(list(row) for row in rows)]
    widths = [max(len(row[column]) for row in table) for column in range(len(headers))]
    lines = []
    for row in table:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        lines.append((" " * gap).join(cells).rstrip())
    return "\n".join(lines)


def _seconds_since(timestamp: Any, now: datetime) -> float | None:
    moment = stats.parse_time(timestamp)
    return None if moment is None else (now - moment).total_seconds()


def task_duration(task: dict[str, Any], now: datetime) -> str:
    """The DURATION cell: status.duration, or for a running Task the time since it started, else "-"."""
    status = task.get("status") or {}
    if status.get("duration"):
        return str(status["duration"])
    running_for = _seconds_since(status.get("startTime"), now)
    if stats.phase_of(task) == "Running" and running_for is not None:
        return format_duration(running_for)
    return "-"


LIST_HEADERS = ("NAME", "AGENT", "PRIORITY", "PHASE", "REASON", "ATTEMPTS", "DURATION", "AGE")


def task_row(task: dict[str, Any], now: datetime, with_namespace: bool = False) -> list[str]:
    """One line of `taskyard list` for a Task object."""
    meta, spec, status = task.get("metadata") or {}, task.get("spec") or {}, task.get("status") or {}
    age = _seconds_since(meta.get("creationTimestamp"), now)
    row = [meta.get("namespace", "")] if with_namespace else []
    row += [
        meta.get("name", ""),
        spec.get("agent") or "-",
        spec.get("priority") or "medium",
        stats.phase_of(task),
        status.get("reason") or "-",
        str(status.get("attempts") or 0),
        task_duration(task, now),
        "-" if age is None else format_age(age),
    ]
    return row


def list_table(tasks: Sequence[dict[str, Any]], now: datetime, with_namespace: bool = False) -> str:
    headers = (["NAMESPACE"] if with_namespace else []) + list(LIST_HEADERS)
    return format_table(headers, (task_row(task, now, with_namespace) for task in tasks))


def select_tasks(
    tasks: Iterable[dict[str, Any]],
    phases: Sequence[str] = (),
    agent: str | None = None,
    priority: str | None = None,
) -> list[dict[str, Any]]:
    """The Tasks matching every filter given: any of `phases`, the agent, the priority."""
    chosen = []
    for task in tasks:
        spec = task.get("spec") or {}
        if phases and stats.phase_of(task) not in phases:
            continue
        if agent is not None and spec.get("agent") != agent:
            continue
        if priority is not None and (spec.get("priority") or "medium") != priority:
            continue
        chosen.append(task)
    return chosen


def status_text(task: dict[str, Any]) -> str:
    """One line about where a Task stands: "task/x Running (Starting): the Job is created; ..."."""
    status = task.get("status") or {}
    text = f"task/{(task.get('metadata') or {}).get('name', '?')} {stats.phase_of(task)}"
    if not status.get("phase"):
        return f"{text}: not picked up by the operator yet"
    if status.get("reason"):
        text += f" ({status['reason']})"
    if status.get("message"):
        text += f": {one_line(status['message'])}"
    return text


def sorted_pods(pods: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pods oldest first (creation time, then name): the order of a Task's attempts."""
    return sorted(
        pods,
        key=lambda pod: (pod["metadata"].get("creationTimestamp") or "", pod["metadata"].get("name", "")),
    )


def agent_state(pod: dict[str, Any]) -> dict[str, Any]:
    """The state of the pod's agent container ({"running": ...}, {"waiting": ...}, ...), {} if unknown."""
    for item in (pod.get("status") or {}).get("containerStatuses") or []:
        if item.get("name") == CONTAINER_NAME:
            return item.get("state") or {}
    return {}


def agent_started(pod: dict[str, Any]) -> bool:
    """Whether the agent container has started, so that the pod has a log to read."""
    state = agent_state(pod)
    return "running" in state or "terminated" in state


def waiting_reason(pod: dict[str, Any]) -> str:
    return (agent_state(pod).get("waiting") or {}).get("reason") or (pod.get("status") or {}).get(
        "phase", "Pending"
    )


@dataclass(frozen=True)
class KeptLog:
    """The log of one attempt as the operator kept it in the Task's logs ConfigMap."""

    attempt: int
    pod: str | None
    text: str


def kept_logs(config_map: dict[str, Any]) -> dict[int, KeptLog]:
    """The attempts' logs in a logs ConfigMap: `binaryData["attempt-<n>.log.gz"]` (base64 of gzip of UTF-8)
    and the pod name in `data["attempt-<n>.pod"]`. Entries that cannot be decoded are skipped."""
    data = config_map.get("data") or {}
    logs: dict[int, KeptLog] = {}
    for key, value in (config_map.get("binaryData") or {}).items():
        match = _KEPT_LOG_KEY.fullmatch(key)
        if match is None:
            continue
        attempt = int(match[1])
        try:
            text = gzip.decompress(base64.b64decode(value)).decode("utf-8", errors="replace")
        except (binascii.Error, OSError, EOFError, zlib.error):
            continue
        logs[attempt] = KeptLog(attempt, data.get(f"attempt-{attempt}.pod"), text)
    return logs


def _error_body(error: ApiException) -> dict[str, Any]:
    try:
        body = json.loads(error.body or "")
    except (TypeError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def describe_api_error(error: ApiException, server: str) -> str:
    """One line for an error response of the API server, led by what kind of failure it was."""
    body = _error_body(error)
    message = one_line(body.get("message") or error.reason or f"HTTP {error.status}")
    if error.status == 403:
        return f"forbidden: {message}"
    if error.status == 401:
        return f"unauthorized: the API server at {server} did not accept the credentials ({message})"
    if error.status == 404 and not (body.get("details") or {}).get("name"):
        return (
            f"the API server at {server} does not serve {PLURAL}.{GROUP}; is taskyard installed "
            f"(its CRDs applied)? ({message})"
        )
    return message


_UNCHECKED_RULES = "some validation rules were not checked"


def invalid_reasons(error: ApiException) -> str:
    """What the API server found wrong with an object it refused (422), one "field: problem" after another.

    Leaves out the note that further rules were not checked, which names no field and helps nobody.
    """
    body = _error_body(error)
    causes = [
        cause
        for cause in (body.get("details") or {}).get("causes") or []
        if _UNCHECKED_RULES not in str(cause.get("message", ""))
    ]
    if not causes:
        message = one_line(body.get("message") or error.reason or "")
        return re.sub(r'^\S+ "[^"]*" is invalid: ', "", message)
    parts = []
    for cause in causes:
        field, message = cause.get("field"), one_line(cause.get("message", ""))
        parts.append(f"{field}: {message}" if field and field != "<nil>" else message)
    return "; ".join(parts)


def describe_connection_error(error: BaseException) -> str:
    """The underlying reason of a urllib3 failure, without urllib3's object reprs around it."""
    reason: Any = error
    while isinstance(reason, urllib3.exceptions.MaxRetryError) and reason.reason is not None:
        reason = reason.reason
    text = str(reason)
    text = re.sub(r"^<[^>]*>: ", "", text)  # "<urllib3.connection.HTTPSConnection object at 0x..>: "
    text = re.sub(r"^\w*Connection\(host=[^)]*\): ", "", text)  # urllib3 2: "HTTPSConnection(host=..): "
    text = text.replace("Failed to establish a new connection: ", "")
    text = re.sub(r"\[Errno -?\d+\] ", "", text)
    return one_line(text) or type(reason).__name__


# --- talking to the cluster ------------------------------------------------------------------------


@dataclass(frozen=True)
class Connection:
    api: client.ApiClient
    namespace: str
    server: str


def _in_cluster() -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and (_SERVICE_ACCOUNT_DIR / "token").is_file()


def connect(kubeconfig: str | None, context: str | None) -> Connection:
    """A client for the kubeconfig (or the pod's service account), and the context's namespace."""
    configuration = client.Configuration()
    if kubeconfig is None:
        from_env = os.environ.get("KUBECONFIG", "")
        paths = [path for path in from_env.split(os.pathsep) if path] or [str(Path.home() / ".kube/config")]
        existing = [path for path in paths if Path(path).expanduser().is_file()]
        if not existing:
            if _in_cluster() and context is None:
                config.load_incluster_config(client_configuration=configuration)
                namespace_file = _SERVICE_ACCOUNT_DIR / "namespace"
                namespace = namespace_file.read_text().strip() if namespace_file.is_file() else ""
                return Connection(client.ApiClient(configuration), namespace or "default", configuration.host)
            where = f"KUBECONFIG={from_env}" if from_env else "~/.kube/config"
            raise CLIError(
                f"no kubeconfig: {where} does not exist and this is not a pod; "
                "pass --kubeconfig PATH or set KUBECONFIG"
            )
        kubeconfig = os.pathsep.join(existing)
    elif not Path(kubeconfig).expanduser().is_file():
        raise CLIError(f"no kubeconfig: {kubeconfig} does not exist")
    try:
        config.load_kube_config(
            config_file=kubeconfig, context=context, client_configuration=configuration, persist_config=False
        )
        contexts, active = config.list_kube_config_contexts(config_file=kubeconfig)
    except yaml.YAMLError as error:
        raise CLIError(f"unusable kubeconfig {kubeconfig}: {one_line(error)}") from None
    chosen = next((c for c in contexts if c.get("name") == context), None) if context else active
    namespace = ((chosen or {}).get("context") or {}).get("namespace") or "default"
    return Connection(client.ApiClient(configuration), namespace, configuration.host)


def _read_json(response: Any) -> Any:
    try:
        return json.loads(response.data or b"null")
    finally:
        response.release_conn()


def _discard(response: Any) -> None:
    """Closes a streamed response, read to the end or not, so its connection is not reused half-read."""
    response.close()
    response.release_conn()


class Kube:
    """The API calls of the command, on plain JSON (no model classes between us and the server)."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.namespace = namespace
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)

    def not_found(self, name: str) -> CLIError:
        return CLIError(f'task "{name}" not found in namespace "{self.namespace}"')

    def get_task(self, name: str) -> dict[str, Any]:
        try:
            response = self.custom.get_namespaced_custom_object(
                GROUP,
                VERSION,
                self.namespace,
                PLURAL,
                name,
                _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT,
            )
        except ApiException as error:
            if error.status == 404 and (_error_body(error).get("details") or {}).get("name") == name:
                raise self.not_found(name) from None
            raise
        return _read_json(response)

    def list_tasks(self, all_namespaces: bool = False) -> list[dict[str, Any]]:
        if all_namespaces:
            response = self.custom.list_cluster_custom_object(
                GROUP, VERSION, PLURAL, _preload_content=False, _request_timeout=REQUEST_TIMEOUT
            )
        else:
            response = self.custom.list_namespaced_custom_object(
                GROUP,
                VERSION,
                self.namespace,
                PLURAL,
                _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT,
            )
        return _read_json(response).get("items") or []

    def create_task(self, body: dict[str, Any]) -> dict[str, Any]:
        response = self.custom.create_namespaced_custom_object(
            GROUP,
            VERSION,
            self.namespace,
            PLURAL,
            body,
            _preload_content=False,
            _request_timeout=REQUEST_TIMEOUT,
        )
        return _read_json(response)

    def merge_patch_task(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        try:
            response = self.custom.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                self.namespace,
                PLURAL,
                name,
                patch,
                _content_type="application/merge-patch+json",
                _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT,
            )
        except ApiException as error:
            if error.status == 404 and (_error_body(error).get("details") or {}).get("name") == name:
                raise self.not_found(name) from None
            raise
        return _read_json(response)

    def task_events(self, name: str, resource_version: str) -> Iterator[dict[str, Any]]:
        """Watch events of one Task after `resource_version`, for up to WATCH_SECONDS."""
        response = self.custom.list_namespaced_custom_object(
            GROUP,
            VERSION,
            self.namespace,
            PLURAL,
            field_selector=f"metadata.name={name}",
            resource_version=resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=WATCH_SECONDS,
            watch=True,
            _preload_content=False,
            _request_timeout=(REQUEST_TIMEOUT[0], WATCH_SECONDS + 30),
        )
        try:
            for line in response:
                if line.strip():
                    yield json.loads(line)
        finally:
            _discard(response)

    def pods(self, task_name: str) -> list[dict[str, Any]]:
        """The Task's pods, oldest first."""
        response = self.core.list_namespaced_pod(
            self.namespace,
            label_selector=f"{LABEL_TASK}={label_value_for(task_name)}",
            _preload_content=False,
            _request_timeout=REQUEST_TIMEOUT,
        )
        return sorted_pods(_read_json(response).get("items") or [])

    def pod(self, name: str) -> dict[str, Any] | None:
        return self._read_or_none(self.core.read_namespaced_pod, name)

    def pod_log(self, pod: str, follow: bool) -> Any:
        """The agent container's log as a streaming response; the caller reads and releases it."""
        return self.core.read_namespaced_pod_log(
            pod,
            self.namespace,
            container=CONTAINER_NAME,
            follow=follow,
            _preload_content=False,
            _request_timeout=STREAM_TIMEOUT if follow else REQUEST_TIMEOUT,
        )

    def config_map(self, name: str) -> dict[str, Any] | None:
        return self._read_or_none(self.core.read_namespaced_config_map, name)

    def _read_or_none(self, read: Any, name: str) -> dict[str, Any] | None:
        """One object of this namespace as plain JSON, or None when it does not exist."""
        try:
            response = read(name, self.namespace, _preload_content=False, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return _read_json(response)


# --- waiting and following -------------------------------------------------------------------------


class StatusLine:
    """Where a Task stands, on stderr: rewritten in place on a terminal, else one line per change."""

    def __init__(self, stream: TextIO, in_place: bool | None = None) -> None:
        self.stream = stream
        if in_place is None:
            in_place = stream.isatty() and os.environ.get("TERM") != "dumb"
        self.in_place = in_place
        self.last: str | None = None

    def show(self, text: str) -> None:
        if text == self.last:
            return
        self.last = text
        if self.in_place:
            width = shutil.get_terminal_size().columns - 1
            shown = text if len(text) <= width else text[: max(width - 3, 0)] + "..."
            self.stream.write("\r\033[K" + shown)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def done(self) -> None:
        """Ends the line in place, so that what follows starts on a line of its own."""
        if self.in_place and self.last is not None:
            self.stream.write("\n")
            self.stream.flush()
        self.last = None


def watch_task(kube: Kube, name: str) -> Iterator[dict[str, Any]]:
    """The Task now, then again each time it changes. Raises CLIError if it is deleted meanwhile."""
    task = kube.get_task(name)
    yield task
    version = task["metadata"].get("resourceVersion", "")
    while True:
        try:
            for event in kube.task_events(name, version):
                kind, body = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if body.get("code") == 410:  # our version is too old: start over from a fresh read
                        raise ApiException(status=410, reason="Expired")
                    raise CLIError(f"watching task {name} failed: {one_line(body.get('message', body))}")
                version = (body.get("metadata") or {}).get("resourceVersion") or version
                if kind == "DELETED":
                    raise CLIError(f'task "{name}" was deleted while waiting for it')
                if kind in ("ADDED", "MODIFIED"):
                    yield body
        except ApiException as error:
            if error.status != 410:
                raise
            task = kube.get_task(name)
            version = task["metadata"].get("resourceVersion", "")
            yield task


def wait_for_outcome(kube: Kube, name: str, line: StatusLine) -> dict[str, Any]:
    """Shows the Task's status until it reaches a final phase, and returns the Task then."""
    for task in watch_task(kube, name):
        line.show(status_text(task))
        if stats.phase_of(task) in FINAL_PHASES:
            line.done()
            return task
    raise AssertionError("watch_task never ends")  # pragma: no cover


def copy_log(kube: Kube, pod: str, follow: bool, out: BinaryIO) -> bool:
    """Writes the pod's agent log to `out` as it arrives. False if the pod or its log is gone."""
    try:
        response = kube.pod_log(pod, follow)
    except ApiException as error:
        if error.status in (400, 404):  # deleted, or its container never ran
            return False
        raise
    try:
        for chunk in response.stream(64 * 1024, decode_content=True):
            out.write(chunk)
            out.flush()
    except urllib3.exceptions.ProtocolError:
        # The pod was deleted (cancel, timeout) while we followed it: its log simply ends here.
        pass
    finally:
        _discard(response)
    return True


def follow_attempts(
    kube: Kube, name: str, out: BinaryIO, line: StatusLine | None, skip: Iterable[str] = ()
) -> dict[str, Any]:
    """Follows the log of each attempt's pod in turn, oldest first, until the Task reaches a final phase.

    Pods named in `skip` are not shown. Returns the Task in its final phase.
    """
    followed = set(skip)
    while True:
        task = kube.get_task(name)
        if line is not None:
            line.show(status_text(task))
        startable = [
            pod for pod in kube.pods(name) if pod["metadata"]["name"] not in followed and agent_started(pod)
        ]
        if startable:
            pod_name = startable[0]["metadata"]["name"]
            followed.add(pod_name)
            copy_log(kube, pod_name, follow=True, out=out)
            continue
        if stats.phase_of(task) in FINAL_PHASES:
            if line is not None:
                line.done()
            return task
        time.sleep(POLL_SECONDS)


# --- commands --------------------------------------------------------------------------------------


def _stdout_bytes() -> BinaryIO:
    sys.stdout.flush()
    return sys.stdout.buffer


def read_prompt(args: argparse.Namespace) -> str:
    source = args.file if args.file is not None else args.prompt
    if source == "-":
        return sys.stdin.read()
    if args.file is None:
        return args.prompt
    try:
        return Path(args.file).read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise CLIError(f"cannot read the prompt from {args.file}: {one_line(error)}") from None


def cmd_run(kube: Kube, args: argparse.Namespace) -> int:
    spec: dict[str, Any] = {"agent": args.agent, "prompt": read_prompt(args)}
    if args.priority is not None:
        spec["priority"] = args.priority
    if args.timeout is not None:
        spec["timeout"] = args.timeout
    if args.retries is not None:
        spec["retries"] = args.retries
    metadata = {"name": args.name} if args.name else {"generateName": "task-"}
    body = {"apiVersion": API_VERSION, "kind": "Task", "metadata": metadata, "spec": spec}
    try:
        name = kube.create_task(body)["metadata"]["name"]
    except ApiException as error:
        if error.status != 422:
            raise
        what = f'task "{args.name}"' if args.name else "the Task"
        raise CLIError(f"{what} is invalid: {invalid_reasons(error)}") from None
    print(f"task/{name} created", flush=True)
    if not (args.wait or args.follow):
        return 0
    try:
        if args.follow:
            task = follow_attempts(kube, name, _stdout_bytes(), StatusLine(sys.stderr, in_place=False))
        else:
            task = wait_for_outcome(kube, name, StatusLine(sys.stderr))
    except KeyboardInterrupt:
        print(f"\nstopped waiting; task/{name} goes on (`taskyard cancel {name}` stops it)", file=sys.stderr)
        return EXIT_INTERRUPTED
    return OUTCOME_EXIT_CODES[stats.phase_of(task)]


def cmd_list(kube: Kube, args: argparse.Namespace) -> int:
    tasks = select_tasks(kube.list_tasks(args.all_namespaces), args.phase or (), args.agent, args.priority)
    if not tasks:
        where = "any namespace" if args.all_namespaces else f'namespace "{kube.namespace}"'
        print(f"no tasks found in {where}", file=sys.stderr)
        return 0
    print(list_table(tasks, datetime.now(UTC), args.all_namespaces))
    return 0


def kept_logs_of_task(config_map: dict[str, Any] | None, task: dict[str, Any]) -> dict[int, KeptLog]:
    """The kept logs of the Task's logs ConfigMap; none when it is missing or another Task's."""
    if config_map is None:
        return {}
    owners = config_map["metadata"].get("ownerReferences") or []
    if owners and all(owner.get("uid") != task["metadata"].get("uid") for owner in owners):
        return {}  # left over from an earlier Task of the same name
    return kept_logs(config_map)


def _kept_logs_of(kube: Kube, task: dict[str, Any]) -> dict[int, KeptLog]:
    config_map = kube.config_map(job_name_for(task["metadata"]["name"]) + LOGS_CONFIGMAP_SUFFIX)
    return kept_logs_of_task(config_map, task)


def _wait_until_started(kube: Kube, pod_name: str) -> bool:
    while True:
        pod = kube.pod(pod_name)
        if pod is None:
            return False
        if agent_started(pod):
            return True
        time.sleep(POLL_SECONDS)


def cmd_logs(kube: Kube, args: argparse.Namespace) -> int:
    name, attempt = args.task, args.attempt
    task = kube.get_task(name)
    pods = kube.pods(name)
    phase = stats.phase_of(task)
    out = _stdout_bytes()
    if args.follow and attempt is None and (pods or phase not in FINAL_PHASES):
        if not pods:
            print(f"task/{name} has not started ({phase}); waiting for its pod", file=sys.stderr)
        follow_attempts(kube, name, out, None, skip=[pod["metadata"]["name"] for pod in pods[:-1]])
        return 0
    pod = None
    if pods:
        if attempt is None:
            pod = pods[-1]
        elif attempt <= len(pods):
            pod = pods[attempt - 1]
    if pod is not None:
        pod_name = pod["metadata"]["name"]
        if args.follow:
            if _wait_until_started(kube, pod_name) and copy_log(kube, pod_name, True, out):
                return 0
        elif not agent_started(pod):
            raise CLIError(
                f"no logs for task {name} yet: its pod {pod_name} is waiting to start ({waiting_reason(pod)})"
            )
        elif copy_log(kube, pod_name, False, out):
            return 0
    kept = _kept_logs_of(kube, task)
    if kept:
        chosen = max(kept) if attempt is None else attempt
        if chosen not in kept:
            have = ", ".join(str(number) for number in sorted(kept))
            raise CLIError(f"no logs kept for attempt {attempt} of task {name} (kept: attempt {have})")
        out.write(kept[chosen].text.encode())
        out.flush()
        return 0
    status = task.get("status") or {}
    if not pods and not status.get("startTime") and not status.get("jobName"):
        if phase in FINAL_PHASES:
            raise CLIError(f"no logs for task {name}: it never started ({phase})")
        raise CLIError(f"no logs for task {name}: it has not started ({phase})")
    if attempt is not None:
        raise CLIError(f"no logs kept for attempt {attempt} of task {name}")
    raise CLIError(f"no logs kept for task {name}: its pods are gone and no collected logs exist")


def cmd_cancel(kube: Kube, args: argparse.Namespace) -> int:
    name = args.task
    phase = stats.phase_of(kube.get_task(name))
    if phase in FINAL_PHASES:
        raise CLIError(f"task {name} already finished ({phase})")
    kube.merge_patch_task(name, {"spec": {"cancel": True}})
    print(f"task/{name} cancelled")
    return 0


def cmd_stats(kube: Kube, args: argparse.Namespace) -> int:
    tasks = kube.list_tasks(args.all_namespaces)
    if not tasks:
        where = "any namespace" if args.all_namespaces else f'namespace "{kube.namespace}"'
        print(f"no tasks found in {where}", file=sys.stderr)
        return 0
    headers, rows = stats.stats_table(stats.compute_stats(tasks, args.all_namespaces), args.all_namespaces)
    print(format_table(headers, rows))
    return 0


# --- command line ----------------------------------------------------------------------------------

_DESCRIPTION = """\
Create, watch, list, cancel and inspect taskyard Tasks: AI coding agents run as Kubernetes Jobs.
Uses the kubeconfig like kubectl does (--kubeconfig, $KUBECONFIG, ~/.kube/config; in a pod, its
service account). Also works as `kubectl taskyard ...`."""

_EXIT_CODES = """\
exit codes:
  0  success; with --wait or --follow: the Task Succeeded
  1  error (one line on stderr); with --wait or --follow: the Task Failed
  2  usage error; with --wait or --follow: the Task was Cancelled
  130 interrupted (Ctrl-C) while waiting; the Task goes on"""


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is too small: attempts count from 1")
    return value


def _phase(text: str) -> str:
    for phase in PHASES:
        if phase.lower() == text.lower():
            return phase
    raise argparse.ArgumentTypeError(f"{text!r} is not a phase; use one of {', '.join(PHASES)}")


def _global_options(parser: argparse.ArgumentParser, in_subcommand: bool) -> None:
    # Repeated on each subcommand, so they can come after it as with kubectl; SUPPRESS there keeps a
    # value given before the subcommand.
    default = argparse.SUPPRESS if in_subcommand else None
    group = parser.add_argument_group("cluster options")
    group.add_argument("--kubeconfig", metavar="PATH", default=default, help="kubeconfig file to use")
    group.add_argument("--context", metavar="NAME", default=default, help="kubeconfig context to use")
    group.add_argument(
        "-n",
        "--namespace",
        metavar="NS",
        default=default,
        help="namespace (default: the context's namespace, else default)",
    )


def build_parser(prog: str = "taskyard") -> argparse.ArgumentParser:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog=prog, description=_DESCRIPTION, epilog=_EXIT_CODES, formatter_class=formatter
    )
    _global_options(parser, in_subcommand=False)
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, in_subcommand=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        parents=[common],
        formatter_class=formatter,
        help="create a Task, and optionally wait for it or follow its logs",
        description="Create a Task and print its name. The prompt comes from the argument, a file (-f) "
        "or stdin (-).",
        epilog=_EXIT_CODES,
    )
    run.add_argument("prompt", nargs="?", metavar="PROMPT", help="the prompt; - reads it from stdin")
    run.add_argument("-f", "--file", metavar="FILE", help="read the prompt from FILE (- for stdin)")
    run.add_argument("--agent", required=True, help="Agent or ClusterAgent that runs the Task")
    run.add_argument("--priority", help=f"one of {', '.join(PRIORITIES)} (default: medium)")
    run.add_argument("--timeout", help="longest the Task may run, e.g. 90s, 30m, 1h30m")
    run.add_argument("--retries", type=int, help="how often a failed attempt is retried")
    run.add_argument("--name", help="name of the Task (default: generated, task-xxxxx)")
    run.add_argument(
        "--wait", action="store_true", help="show the Task's status until it finishes; exit with its outcome"
    )
    run.add_argument(
        "--follow",
        action="store_true",
        help="stream the agent's logs until the Task finishes; exit with its outcome",
    )
    run.set_defaults(handler=cmd_run)

    listing = commands.add_parser("list", parents=[common], help="list Tasks", description="List Tasks.")
    listing.add_argument(
        "--phase", type=_phase, action="append", help="only Tasks in this phase (repeatable)"
    )
    listing.add_argument("--agent", help="only Tasks of this agent")
    listing.add_argument("--priority", choices=PRIORITIES, help="only Tasks of this priority")
    listing.add_argument("-A", "--all-namespaces", action="store_true", help="Tasks of every namespace")
    listing.set_defaults(handler=cmd_list)

    logs = commands.add_parser(
        "logs",
        parents=[common],
        help="print the agent's log of a Task",
        description="Print the agent's log of the Task's newest pod; once its pods are gone, the log the "
        "operator kept.",
    )
    logs.add_argument("task", metavar="TASK")
    logs.add_argument("-f", "--follow", action="store_true", help="stream the log as it is written")
    logs.add_argument("--attempt", type=_positive, metavar="N", help="the Nth attempt (1 is the first)")
    logs.set_defaults(handler=cmd_logs)

    cancel = commands.add_parser(
        "cancel", parents=[common], help="cancel a Task", description="Cancel a Task (spec.cancel=true)."
    )
    cancel.add_argument("task", metavar="TASK")
    cancel.set_defaults(handler=cmd_cancel)

    summary = commands.add_parser(
        "stats",
        parents=[common],
        help="counts, success rate and durations per agent",
        description="Tasks per phase, success rate (Succeeded / (Succeeded + Failed)) and the average and "
        "p95 run time of finished Tasks, per agent and in total.",
    )
    summary.add_argument("-A", "--all-namespaces", action="store_true", help="Tasks of every namespace")
    summary.set_defaults(handler=cmd_stats)

    serve = commands.add_parser(
        "serve",
        parents=[common],
        help="run the task API (and dashboard) on this machine",
        description="Serve the task API (docs/api-http.md) against the kubeconfig's cluster. Callers "
        "send their own Kubernetes bearer token; the kubeconfig only says where the API server is.",
    )
    from taskyard.web.__main__ import add_serve_options

    add_serve_options(serve)
    serve.set_defaults(handler=None)
    return parser


def _prog_name() -> str:
    return "kubectl taskyard" if Path(sys.argv[0]).name.startswith("kubectl-") else "taskyard"


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(_prog_name())
    args = parser.parse_args(argv)
    if args.command == "run" and (args.prompt is None) == (args.file is None):
        parser.error("run: give the prompt as an argument, or with -f FILE, or - for stdin (exactly one)")
    # urllib3 logs each retry as a warning; the error we print says it better, in one line.
    logging.getLogger("urllib3").setLevel(logging.CRITICAL)
    if args.command == "serve":
        from taskyard.web.__main__ import run as serve

        try:
            return serve(args, args.kubeconfig, args.context)
        except ConfigException as error:
            _fail(f"unusable kubeconfig: {one_line(error)}")
            return EXIT_ERROR
    server = "(unknown)"
    try:
        connection = connect(args.kubeconfig, args.context)
        server = connection.server
        kube = Kube(connection.api, args.namespace or connection.namespace)
        handler: Callable[[Kube, argparse.Namespace], int] = args.handler
        return handler(kube, args)
    except CLIError as error:
        _fail(str(error))
        return error.code
    except ApiException as error:
        _fail(describe_api_error(error, server))
    except urllib3.exceptions.HTTPError as error:
        _fail(f"cannot reach the Kubernetes API server at {server}: {describe_connection_error(error)}")
    except ConfigException as error:
        _fail(f"unusable kubeconfig: {one_line(error)}")
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`taskyard logs x | head`): stop quietly, as a killed writer would.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
