"""`make bench`: what taskyard costs on top of Kubernetes itself, and how it scales.

Runs against the cluster of $KUBECONFIG with the operator out of cluster (``python -m taskyard``), and
prints figures; it is not a test. Seven measurements:

1. burst  - N Tasks applied as fast as a client can; time until every Task has its Job and a status
            (and, beside it, until every pod exists), and apply→Job latency per Task (from watch event
            receipt times).
2. floor  - the same N Tasks handled by a minimal controller that only makes the writes no operator
            can avoid (create the Job, one status patch), same client library and concurrency.
            operator / floor is the headline figure.
3. sustained - Tasks applied at a steady rate (20/s for 2 minutes): apply→Job latency while the
            operator is never idle.
4. queue  - N Tasks of mixed priorities under a concurrency limit, real pods that exit at once:
            admission-order inversions, the most running at once, Tasks finished per minute.
5. simulated - 10,000 Tasks at once under a limit of 2,000, their pods run for about a minute on
            nodes simulated by kwok: the most Jobs active at once, inversions, the operator's CPU
            and memory.
6. api    - taskyard-api under load: 200 SSE clients on the logs of 20 running Tasks and 50 status
            reads a second for a minute; the API server's request rate (and the operator's alone,
            before), read latency, and the component's CPU and memory.
7. scale  - N finished Tasks, each with the Job and the pod it had, and a freshly started operator
            (twice: with the Jobs inside the retention period and past it): how soon its cache is
            synced and a new Task admitted, the writes it makes, its memory and CPU.

Burst, floor, sustained and scale use an Agent whose pods are never scheduled (a schedulerName no
scheduler serves), so neither the scheduler nor the kubelet does any work, and the figures are the
operator's and the API server's alone;
the queue run uses real pods, the simulated run pods that kwok plays. Results go to
docs/benchmarks.json (compared with the previous run) and are printed.

Environment: BENCH_BURST="100,500,1000", BENCH_RATE=20, BENCH_RATE_SECONDS=120, BENCH_QUEUE=1000,
BENCH_QUEUE_LIMIT=10, BENCH_SIMULATED=10000, BENCH_SIMULATED_LIMIT=2000, BENCH_SIMULATED_NODES=20,
BENCH_API_CLIENTS=200, BENCH_API_TASKS=20, BENCH_API_RATE=50, BENCH_API_SECONDS=60,
BENCH_SCALE="10000", BENCH_CONCURRENCY=16, BENCH_ONLY="burst,sustained,queue,api,simulated,scale".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import aiohttp
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.rest import ApiException

from taskyard.api import GROUP, VERSION, parse_agent_spec, parse_task_spec
from taskyard.render import TaskRef, render_job

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS = REPO_ROOT / "docs" / "benchmarks.json"
SHELL_IMAGE = "localhost/taskyard/shell:dev"
# A scheduler that does not exist: the pods are never looked at, so neither the scheduler nor the
# kubelet adds work (or pod updates) of its own.
PARKED_AGENT = {
    "image": SHELL_IMAGE,
    "command": ["sh", "/etc/taskyard/prompt"],
    "schedulerName": "bench-parked",
    "timeout": "2h",
}
QUICK_AGENT = {"image": SHELL_IMAGE, "command": ["sh", "/etc/taskyard/prompt"], "timeout": "10m"}
SIMULATED = "taskyard.dev/bench"  # label and taint of the simulated nodes, value "simulated"
SIMULATED_AGENT = {
    "image": SHELL_IMAGE,
    "command": ["sh", "/etc/taskyard/prompt"],
    "nodeSelector": {SIMULATED: "simulated"},
    "tolerations": [{"key": SIMULATED, "operator": "Exists", "effect": "NoSchedule"}],
    "timeout": "1h",
}
KWOK_STAGES = REPO_ROOT / "hack" / "kwok-stages.yaml"
PRIORITIES = ("critical", "high", "medium", "low")
DELETES = 'taskyard_api_requests_total{method="DELETE"}'


def env_list(name: str, default: str) -> list[int]:
    return [int(item) for item in os.environ.get(name, default).split(",") if item.strip()]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(round(fraction * (len(ordered) - 1)), len(ordered) - 1)
    return ordered[index]


# Processes whose CPU each timed section reports, by the name the kernel gives them (comm).
CONTROL_PLANE = ("kube-apiserver", "etcd", "kube-controller", "kube-scheduler", "kubelet", "kube-proxy")


class CpuProfile:
    """CPU seconds spent by each control-plane process, the benchmark client and the machine as a
    whole over a window: on two shared cores, where a section's time goes decides what can be
    improved by the controller under test and what only by a bigger machine."""

    def __init__(self, operator: Operator | None = None) -> None:
        self.operator = operator
        self.operator_cpu_before = operator.resources()[1] if operator is not None else 0.0
        self.started = time.monotonic()
        self.before, self.busy_before = self._sample(), self._machine_busy()

    @staticmethod
    def _sample() -> dict[str, float]:
        ticks, totals = os.sysconf("SC_CLK_TCK"), {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            comm = stat[stat.index("(") + 1 : stat.rindex(")")]
            name = "benchmark client" if int(entry.name) == os.getpid() else None
            name = name or next((n for n in CONTROL_PLANE if comm.startswith(n)), None)
            if name is not None:
                fields = stat.rsplit(")", 1)[1].split()
                totals[name] = totals.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
        return totals

    @staticmethod
    def _machine_busy() -> float:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK")

    def result(self) -> dict[str, Any]:
        """CPU seconds per process over the window, and the share of the machine's cores in use."""
        wall = time.monotonic() - self.started
        after = self._sample()
        spent = {name: round(after[name] - self.before.get(name, 0.0), 1) for name in after}
        if self.operator is not None and self.operator.process.poll() is None:
            spent["operator"] = round(self.operator.resources()[1] - self.operator_cpu_before, 1)
        busy = self._machine_busy() - self.busy_before
        return {
            "wall_seconds": round(wall, 1),
            "cpu_seconds_by_process": dict(sorted(spent.items(), key=lambda item: -item[1])),
            "machine_busy": round(busy / (wall * (os.cpu_count() or 1)), 2),
        }


def cpu_line(result: dict[str, Any]) -> str:
    """One line of where a section's CPU went, busiest first."""
    spent = ", ".join(f"{name} {seconds}s" for name, seconds in result["cpu_seconds_by_process"].items())
    return f"machine {round(result['machine_busy'] * 100)} % busy over {result['wall_seconds']}s: {spent}"


def requests_by_method(samples: dict[str, float]) -> dict[str, int]:
    """The operator's API requests per HTTP method, from its metrics."""
    return {
        key.split('"')[1]: int(value)
        for key, value in samples.items()
        if key.startswith("taskyard_api_requests_total{")
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ChildProcess:
    """A process the benchmark starts, its output in a log file; stopped gently, then not."""

    process: subprocess.Popen[bytes]
    log: IO[bytes]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()

    def resources(self) -> tuple[float, float]:
        """Resident memory (MiB) and CPU seconds (user + system) of the process so far."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        rss_kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return rss_kib / 1024, (int(fields[11]) + int(fields[12])) / ticks


class Operator(ChildProcess):
    """The operator as a child process, watching one namespace, with its metrics endpoint."""

    def __init__(self, namespace: str, **env: str) -> None:
        self.port = free_port()
        self.log = open(REPO_ROOT / ".cluster" / f"bench-operator-{namespace}.log", "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "taskyard", "--namespace", namespace],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TASKYARD_METRICS_PORT": str(self.port), **env},
        )
        self.started = time.monotonic()

    def metrics(self) -> dict[str, float]:
        """Samples of the metrics endpoint, keyed "name{labels}"; empty while it is not up yet."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as response:
                text = response.read().decode()
        except OSError:
            return {}
        samples = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                samples[key] = float(value)
        return samples


class TaskApi(ChildProcess):
    """taskyard-api as a child process on a loopback port, reaching the API server of $KUBECONFIG."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(REPO_ROOT / ".cluster" / "bench-task-api.log", "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "taskyard.web", "--port", str(self.port)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def up(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=2):
                return True
        except OSError:
            return False


class Kwok(ChildProcess):
    """kwok serving the simulated nodes: to the API server, scheduler and Job controller they are
    nodes like any other, and their pods run and finish without a kubelet (hack/kwok-stages.yaml).
    Their kubelet endpoint is kwok's own server on loopback, so a log read fails at once instead of
    waiting for a node that does not exist."""

    def __init__(self) -> None:
        binary = os.environ.get("TASKYARD_KWOK") or shutil.which("kwok")
        if not binary:
            raise RuntimeError("kwok not found: run hack/build-tools.sh kwok (make bench does)")
        kubeconfig = os.environ.get("KUBECONFIG", str(Path.home() / ".kube" / "config"))
        self.log = open(REPO_ROOT / ".cluster" / "bench-kwok.log", "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                binary,
                f"--kubeconfig={kubeconfig}",
                f"--config={KWOK_STAGES}",
                f"--manage-nodes-with-label-selector={SIMULATED}=simulated",
                "--node-ip=127.0.0.1",
                f"--node-port={free_port()}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )


class RawWatch(watch.Watch):
    """Watch events as the API server's JSON, never turned into client models: at thousands of
    events a second, building models cost the benchmark client more CPU than the operator used."""

    def get_return_type(self, func: Any) -> None:
        return None


class Bench:
    def __init__(self, api: client.ApiClient, concurrency: int) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.batch = client.BatchV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.concurrency = concurrency

    # --- plumbing -------------------------------------------------------------------------------

    async def namespace(self, prefix: str) -> str:
        name = f"bench-{prefix}-{uuid.uuid4().hex[:6]}"
        await self.core.create_namespace({"metadata": {"name": name}})
        return name

    async def drop_namespace(self, name: str) -> None:
        # Collections first, one request each, so the namespace controller has little left to do. With
        # ten thousand objects a collection delete can outlast the server's request timeout; the
        # namespace's deletion below finishes the job either way.
        collections = (
            lambda: self.custom.delete_collection_namespaced_custom_object(GROUP, VERSION, name, "tasks"),
            lambda: self.batch.delete_collection_namespaced_job(name, propagation_policy="Background"),
            lambda: self.core.delete_collection_namespaced_pod(name, grace_period_seconds=0),
        )
        for delete in collections:
            with contextlib.suppress(ApiException, aiohttp.ClientError, asyncio.TimeoutError):
                await delete()
        with contextlib.suppress(ApiException):
            await self.core.delete_namespace(name)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                await self.core.read_namespace(name)
            except ApiException as error:
                if error.status == 404:
                    return
            await asyncio.sleep(2)

    async def agent(self, namespace: str, name: str, spec: dict[str, Any]) -> None:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Agent", "metadata": {"name": name}, "spec": spec}
        await self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "agents", body)

    async def create_tasks(
        self,
        namespace: str,
        specs: dict[str, dict[str, Any]],
        status: dict[str, Any] | None = None,
        rate: float | None = None,
    ) -> dict[str, float]:
        """Creates the Tasks with bounded concurrency, as fast as the server takes them or at ``rate``
        per second; returns when each create was acknowledged."""
        acknowledged: dict[str, float] = {}
        # At a set rate the pace is the limit: enough requests in flight that a slow answer does not
        # hold back the next create.
        gate = asyncio.Semaphore(self.concurrency if rate is None else max(self.concurrency, 128))
        started = time.monotonic()

        async def one(index: int, name: str, spec: dict[str, Any]) -> None:
            body = {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "Task",
                "metadata": {"name": name},
                "spec": spec,
            }
            if rate is not None:
                await asyncio.sleep(started + index / rate - time.monotonic())
            async with gate:
                await self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "tasks", body)
                acknowledged[name] = time.monotonic()
                if status is not None:
                    await self.custom.patch_namespaced_custom_object_status(
                        GROUP,
                        VERSION,
                        namespace,
                        "tasks",
                        name,
                        {"status": status},
                        _content_type="application/merge-patch+json",
                    )

        await asyncio.gather(*(one(i, name, spec) for i, (name, spec) in enumerate(specs.items())))
        return acknowledged

    async def watch(
        self,
        list_call: Callable[..., Awaitable[Any]],
        on_event: Callable[[str, dict[str, Any], float], None],
        stop: asyncio.Event,
        **kwargs: Any,
    ) -> None:
        """Streams watch events (as plain dicts) to ``on_event`` until ``stop`` is set. A watch that
        ends resumes where it was, so the client does not receive every object again each time."""
        version: str | None = None
        while not stop.is_set():
            stream = RawWatch()
            resume = {"resource_version": version} if version else {}
            try:
                async with stream.stream(
                    list_call, timeout_seconds=30, _request_timeout=40, **resume, **kwargs
                ) as events:
                    async for event in events:
                        body = event["raw_object"]
                        if event["type"] == "ERROR":
                            version = None  # expired (410): start again from a fresh list
                            break
                        version = body["metadata"].get("resourceVersion") or version
                        on_event(event["type"], body, time.monotonic())
                        if stop.is_set():
                            break
            except (TimeoutError, ApiException) as error:
                if isinstance(error, ApiException) and error.status == 410:
                    version = None
                await asyncio.sleep(0.1)

    async def watch_tasks(
        self, namespace: str, on_event: Callable[[str, dict[str, Any], float], None], stop: asyncio.Event
    ) -> None:
        """Streams the namespace's Task events to ``on_event`` until ``stop`` is set."""
        await self.watch(
            self.custom.list_namespaced_custom_object,
            on_event,
            stop,
            group=GROUP,
            version=VERSION,
            namespace=namespace,
            plural="tasks",
        )

    async def watch_jobs(self, namespace: str, seen: dict[str, float], stop: asyncio.Event) -> None:
        """Records in ``seen`` when each Task's Job was first seen, until ``stop`` is set."""

        def on_job(kind: str, body: dict[str, Any], at: float) -> None:
            task = body["metadata"].get("labels", {}).get("taskyard.dev/task")
            if task:
                seen.setdefault(task, at)

        await self.watch(self.batch.list_namespaced_job, on_job, stop, namespace=namespace)

    async def start_operator(self, namespace: str, **env: str) -> Operator:
        operator = Operator(namespace, **env)
        await self.wait_until("the operator's metrics endpoint", lambda: bool(operator.metrics()), 60)
        return operator

    async def wait_until(
        self, what: str, done: Callable[[], bool], timeout: float, interval: float = 0.05
    ) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
            await asyncio.sleep(interval)

    # --- 1 and 2: burst against the floor ---------------------------------------------------------

    async def burst(self, n: int, controller: str) -> dict[str, Any]:
        """N parked Tasks; `controller` is "operator" or "floor"."""
        namespace = await self.namespace(f"{controller}-{n}")
        await self.agent(namespace, "parked", PARKED_AGENT)
        job_seen: dict[str, float] = {}
        status_seen: dict[str, float] = {}
        pod_seen: dict[str, float] = {}
        stop = asyncio.Event()

        def on_task(kind: str, body: dict[str, Any], at: float) -> None:
            if (body.get("status") or {}).get("phase"):
                status_seen.setdefault(body["metadata"]["name"], at)

        def on_pod(kind: str, body: dict[str, Any], at: float) -> None:
            task = (body["metadata"].get("labels") or {}).get("taskyard.dev/task")
            if task:
                pod_seen.setdefault(task, at)

        watchers = [
            asyncio.create_task(self.watch_jobs(namespace, job_seen, stop)),
            asyncio.create_task(self.watch_tasks(namespace, on_task, stop)),
            asyncio.create_task(self.watch(self.core.list_namespaced_pod, on_pod, stop, namespace=namespace)),
        ]
        operator = floor = None
        if controller == "operator":
            operator = await self.start_operator(namespace)
        else:
            floor = asyncio.create_task(self.floor_controller(namespace, stop))
        await asyncio.sleep(1)  # watches established

        specs = {f"t-{i:05d}": {"agent": "parked", "prompt": "true"} for i in range(n)}
        profile = CpuProfile(operator)
        started = time.monotonic()
        acknowledged = await self.create_tasks(namespace, specs)
        applied = time.monotonic() - started
        await self.wait_until(
            f"{n} Jobs, pods and statuses",
            lambda: len(job_seen) >= n and len(status_seen) >= n and len(pod_seen) >= n,
            timeout=60 + n,
        )
        cpu = profile.result()
        handled = max(max(job_seen.values()), max(status_seen.values()))
        finished = max(handled, max(pod_seen.values()))
        latencies = [job_seen[name] - acknowledged[name] for name in specs]
        result = {
            "n": n,
            "controller": controller,
            "apply_seconds": round(applied, 3),
            # Until every Task has its Job and a status: what the controller under test does.
            "total_seconds": round(handled - started, 3),
            # Until every Task also has its pod. The Job controller's pod creates load the same API
            # server; the floor's total stops before most of them, the operator's longer run overlaps
            # them. Shown beside the total, not instead of it: the Job controller's own client rate
            # limit sets most of this figure, for both.
            "with_pods_seconds": round(finished - started, 3),
            "latency_p50_ms": round(percentile(latencies, 0.5) * 1000, 1),
            "latency_p95_ms": round(percentile(latencies, 0.95) * 1000, 1),
            "latency_p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
            **cpu,
        }
        if operator is not None:
            samples = operator.metrics()
            result["api_requests"] = int(
                sum(v for k, v in samples.items() if k.startswith("taskyard_api_requests_total"))
            )
            result["api_requests_by_method"] = requests_by_method(samples)
            result["rss_mib"], result["cpu_seconds"] = (round(x, 1) for x in operator.resources())
            operator.stop()
        stop.set()
        for task in [*watchers, *([floor] if floor else [])]:
            task.cancel()
        await asyncio.gather(*watchers, *([floor] if floor else []), return_exceptions=True)
        await self.drop_namespace(namespace)
        return result

    async def floor_controller(self, namespace: str, stop: asyncio.Event) -> None:
        """Only the writes no operator can avoid: one Job create and one status patch per Task."""
        agent = parse_agent_spec(PARKED_AGENT)
        gate = asyncio.Semaphore(self.concurrency)
        pending: set[asyncio.Task[None]] = set()

        async def handle(body: dict[str, Any]) -> None:
            meta = body["metadata"]
            ref = TaskRef(meta["name"], namespace, meta["uid"], parse_task_spec(body["spec"]))
            async with gate:
                await self.batch.create_namespaced_job(namespace, render_job(ref, agent, "parked"))
                await self.custom.patch_namespaced_custom_object_status(
                    GROUP,
                    VERSION,
                    namespace,
                    "tasks",
                    meta["name"],
                    {"status": {"phase": "Running", "jobName": meta["name"]}},
                    _content_type="application/merge-patch+json",
                )

        handled: set[str] = set()

        def on_task(kind: str, body: dict[str, Any], at: float) -> None:
            # A watch that times out lists again and repeats ADDED for every Task: each is handled once.
            if kind == "ADDED" and body["metadata"]["uid"] not in handled:
                handled.add(body["metadata"]["uid"])
                task = asyncio.create_task(handle(body))
                pending.add(task)
                task.add_done_callback(pending.discard)

        await self.watch_tasks(namespace, on_task, stop)

    # --- 3: a sustained rate ------------------------------------------------------------------------

    async def sustained(self, rate: float, seconds: float, controller: str) -> dict[str, Any]:
        """Parked Tasks applied at a steady rate: apply→Job latency while the controller is never idle.
        `controller` is "operator" or "floor", as in the burst."""
        namespace = await self.namespace(f"sustained-{controller}")
        await self.agent(namespace, "parked", PARKED_AGENT)
        job_seen: dict[str, float] = {}
        stop = asyncio.Event()
        watchers = [asyncio.create_task(self.watch_jobs(namespace, job_seen, stop))]
        operator = None
        if controller == "operator":
            operator = await self.start_operator(namespace)
        else:
            watchers.append(asyncio.create_task(self.floor_controller(namespace, stop)))
        await asyncio.sleep(1)  # watches established
        n = round(rate * seconds)
        specs = {f"r-{i:05d}": {"agent": "parked", "prompt": "true"} for i in range(n)}
        profile = CpuProfile(operator)
        started = time.monotonic()
        acknowledged = await self.create_tasks(namespace, specs, rate=rate)
        applied = time.monotonic() - started
        await self.wait_until(f"{n} Jobs", lambda: len(job_seen) >= n, timeout=60 + n)
        cpu = profile.result()
        latencies = [job_seen[name] - acknowledged[name] for name in specs]
        result = {
            "controller": controller,
            "n": n,
            "rate": rate,
            "seconds": seconds,
            "applied_rate": round(n / applied, 1),
            "latency_p50_ms": round(percentile(latencies, 0.5) * 1000, 1),
            "latency_p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
            "latency_max_ms": round(max(latencies) * 1000, 1),
            **cpu,
        }
        if operator is not None:
            rss, cpu_seconds = operator.resources()
            result.update(rss_mib=round(rss, 1), cpu_seconds=round(cpu_seconds, 1))
            result["api_requests_by_method"] = requests_by_method(operator.metrics())
            operator.stop()
        stop.set()
        for watcher in watchers:
            watcher.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        await self.drop_namespace(namespace)
        return result

    # --- 4: the queue -------------------------------------------------------------------------------

    async def queue(self, n: int, limit: int) -> dict[str, Any]:
        namespace = await self.namespace(f"queue-{n}")
        await self.agent(namespace, "quick", QUICK_AGENT)
        pod_started: dict[str, float] = {}
        pod_ended: dict[str, float] = {}
        succeeded: dict[str, float] = {}
        stop = asyncio.Event()

        def on_pod(kind: str, body: dict[str, Any], at: float) -> None:
            name = body["metadata"]["name"]
            pod_started.setdefault(name, at)
            if (body.get("status") or {}).get("phase") in ("Succeeded", "Failed") or kind == "DELETED":
                pod_ended.setdefault(name, at)

        def on_task(kind: str, body: dict[str, Any], at: float) -> None:
            if (body.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                succeeded.setdefault(body["metadata"]["name"], at)

        watchers = [
            asyncio.create_task(self.watch(self.core.list_namespaced_pod, on_pod, stop, namespace=namespace)),
            asyncio.create_task(self.watch_tasks(namespace, on_task, stop)),
        ]
        # Aging off: this run checks strict priority order, which aging deliberately relaxes.
        operator = await self.start_operator(
            namespace, TASKYARD_MAX_CONCURRENT=str(limit), TASKYARD_AGING_SECONDS="0"
        )
        await asyncio.sleep(1)
        specs = {
            f"q-{i:05d}": {"agent": "quick", "prompt": "true", "priority": PRIORITIES[(i * 7) % 4]}
            for i in range(n)
        }
        started = time.monotonic()
        acknowledged = await self.create_tasks(namespace, specs)
        await self.wait_until(f"{n} Tasks to finish", lambda: len(succeeded) >= n, timeout=120 + 3 * n)
        elapsed = max(succeeded.values()) - started
        operator.stop()
        stop.set()
        for task in watchers:
            task.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)

        admitted = await self.admission_times(namespace)
        tasks = (await self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "tasks"))["items"]
        failed = sum(1 for t in tasks if t.get("status", {}).get("phase") != "Succeeded")
        # Map acknowledgement times (monotonic) onto the wall clock of the admitted-at annotations.
        offset = time.time() - time.monotonic()
        created = {name: at + offset for name, at in acknowledged.items()}
        inversions = len(find_inversions(specs, created, admitted, grace=1.0))
        intervals = [(pod_started[p], pod_ended.get(p, float("inf"))) for p in pod_started]
        result = {
            "n": n,
            "limit": limit,
            "jobs": len(admitted),
            "failed": failed,
            "inversions": inversions,
            "max_running": max_overlap(intervals),
            "tasks_per_minute": round(n / elapsed * 60, 1),
            "seconds": round(elapsed, 1),
        }
        await self.drop_namespace(namespace)
        return result

    # --- the task API under load --------------------------------------------------------------------

    async def api_server_requests(
        self, metric: str = "apiserver_request_total"
    ) -> dict[tuple[str, str, str], float]:
        """A request counter of the API server's metrics by (verb, resource, subresource): by default
        requests finished; apiserver_longrunning_requests for those open now (watches, log follows)."""
        raw = await self.api.call_api(
            "/metrics", "GET", auth_settings=["BearerToken"], _preload_content=False
        )
        text = (await (raw[0] if isinstance(raw, tuple) else raw).read()).decode()
        totals: dict[tuple[str, str, str], float] = {}
        for line in text.splitlines():
            if not line.startswith(metric + "{"):
                continue
            labels_text, _, value = line.rpartition(" ")
            labels = dict(part.split("=", 1) for part in labels_text[len(metric) + 1 : -1].split(","))
            key = tuple(labels.get(name, '""').strip('"') for name in ("verb", "resource", "subresource"))
            totals[key] = totals.get(key, 0.0) + float(value)
        return totals

    async def reader_token(self, namespace: str) -> str:
        """A ServiceAccount allowed what a dashboard user needs in the namespace, and a token of it."""
        rules = [
            {"apiGroups": [GROUP], "resources": ["tasks"], "verbs": ["get", "list", "create", "patch"]},
            {"apiGroups": [""], "resources": ["pods", "pods/log", "configmaps"], "verbs": ["get", "list"]},
        ]
        rbac = client.RbacAuthorizationV1Api(self.api)
        await self.core.create_namespaced_service_account(namespace, {"metadata": {"name": "reader"}})
        await rbac.create_namespaced_role(namespace, {"metadata": {"name": "reader"}, "rules": rules})
        binding = {
            "metadata": {"name": "reader"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
        }
        await rbac.create_namespaced_role_binding(namespace, binding)
        request = {"spec": {"expirationSeconds": 3600}}
        answer = await self.core.create_namespaced_service_account_token("reader", namespace, request)
        return answer.status.token

    async def task_api(self, clients: int, tasks: int, rate: float, seconds: float) -> dict[str, Any]:
        """`clients` SSE clients spread over `tasks` Tasks that print a line a second, and `rate` status
        reads a second (GET /v1/tasks/{id}, every tenth /v1/status), for `seconds`."""
        namespace = await self.namespace("api")
        await self.agent(namespace, "talker", QUICK_AGENT)
        token = await self.reader_token(namespace)
        operator = await self.start_operator(namespace)
        talk = seconds + 60
        prompt = f"i=0; while [ $i -lt {int(talk)} ]; do i=$((i+1)); echo line $i; sleep 1; done"
        names = [f"talker-{i:03d}" for i in range(tasks)]
        await self.create_tasks(namespace, {name: {"agent": "talker", "prompt": prompt} for name in names})
        running: set[str] = set()

        def on_task(kind: str, body: dict[str, Any], at: float) -> None:
            if (body.get("status") or {}).get("phase") == "Running":
                running.add(body["metadata"]["name"])

        stop = asyncio.Event()
        watcher = asyncio.create_task(self.watch_tasks(namespace, on_task, stop))
        await self.wait_until(f"{tasks} Tasks to run", lambda: len(running) >= tasks, timeout=300)
        api = TaskApi()
        await self.wait_until("taskyard-api to answer", api.up, timeout=60)
        headers = {"Authorization": f"Bearer {token}", "X-Taskyard-Namespace": namespace}
        lines = [0] * clients
        read_ms: list[float] = []
        errors: list[str] = []

        async def sse_client(index: int, session: aiohttp.ClientSession) -> None:
            url = f"{api.url}/v1/tasks/{names[index % tasks]}/logs/stream"
            try:
                async with session.get(url, headers=headers) as response:
                    async for raw in response.content:
                        if raw.startswith(b"data: ") and b'"line"' in raw:
                            lines[index] += 1
            except (TimeoutError, aiohttp.ClientError) as error:
                errors.append(f"stream: {error!r}")

        async def status_reads(session: aiohttp.ClientSession) -> None:
            number = 0
            started = time.monotonic()
            pending: set[asyncio.Task[None]] = set()
            while time.monotonic() - started < seconds:
                number += 1
                path = "/v1/status" if number % 10 == 0 else f"/v1/tasks/{names[number % tasks]}"
                read = asyncio.create_task(one_read(session, path))
                pending.add(read)
                read.add_done_callback(pending.discard)
                await asyncio.sleep(max(0.0, started + number / rate - time.monotonic()))
            await asyncio.gather(*pending)

        async def one_read(session: aiohttp.ClientSession, path: str) -> None:
            began = time.monotonic()
            try:
                async with session.get(api.url + path, headers=headers) as response:
                    await response.read()
                    if response.status != 200:
                        errors.append(f"{path}: {response.status}")
            except aiohttp.ClientError as error:
                errors.append(f"{path}: {error!r}")
            read_ms.append((time.monotonic() - began) * 1000)

        idle_window = 20.0
        before_idle = await self.api_server_requests()
        await asyncio.sleep(idle_window)
        before = await self.api_server_requests()
        idle_rate = (sum(before.values()) - sum(before_idle.values())) / idle_window
        api_cpu_before = api.resources()[1]
        connector = aiohttp.TCPConnector(limit=clients + 100)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            streams = [asyncio.create_task(sse_client(i, session)) for i in range(clients)]
            profile = CpuProfile()
            started = time.monotonic()
            peak_rss = 0.0
            reads = asyncio.create_task(status_reads(session))
            while time.monotonic() - started < seconds:
                await asyncio.sleep(1)
                peak_rss = max(peak_rss, api.resources()[0])
            await reads
            elapsed = time.monotonic() - started
            after = await self.api_server_requests()
            open_now = await self.api_server_requests("apiserver_longrunning_requests")
            cpu = profile.result()
            api_rss, api_cpu = api.resources()
            for stream in streams:
                stream.cancel()
            await asyncio.gather(*streams, return_exceptions=True)
        api.stop()
        operator.stop()
        stop.set()
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        spent = {key: after.get(key, 0.0) - before.get(key, 0.0) for key in after}
        by_call = {
            " ".join(filter(None, key)): int(count)
            for key, count in sorted(spent.items(), key=lambda item: -item[1])
            if count >= 1
        }
        result = {
            "clients": clients,
            "tasks": tasks,
            "reads_per_second": round(len(read_ms) / elapsed, 1),
            "read_p50_ms": round(percentile(read_ms, 0.5), 1),
            "read_p99_ms": round(percentile(read_ms, 0.99), 1),
            "lines_per_client_min": min(lines),
            "lines_per_client_median": sorted(lines)[len(lines) // 2],
            "errors": len(errors),
            "first_errors": errors[:5],
            "api_server_requests_per_second": round(sum(spent.values()) / elapsed, 1),
            "api_server_requests_per_second_idle": round(idle_rate, 1),
            "api_server_requests_by_call": dict(list(by_call.items())[:12]),
            "api_server_log_follows_open": int(
                sum(count for (_, kind, sub), count in open_now.items() if (kind, sub) == ("pods", "log"))
            ),
            "component_cpu_share": round((api_cpu - api_cpu_before) / elapsed, 2),
            "component_rss_mib": round(api_rss, 1),
            "component_peak_rss_mib": round(max(peak_rss, api_rss), 1),
            "seconds": round(elapsed, 1),
            "cpu": cpu,
        }
        await self.drop_namespace(namespace)
        return result

    # --- 5: thousands at once on simulated nodes --------------------------------------------------

    async def simulated_nodes(self, count: int) -> list[str]:
        names = [f"bench-simulated-{i:03d}" for i in range(count)]
        capacity = {"cpu": "1k", "memory": "1Ti", "ephemeral-storage": "1Pi", "pods": "1M"}
        for name in names:
            node = {
                "metadata": {"name": name, "labels": {SIMULATED: "simulated"}},
                "spec": {"taints": [{"key": SIMULATED, "value": "simulated", "effect": "NoSchedule"}]},
            }
            with contextlib.suppress(ApiException):
                await self.core.create_node(node)
            await self.core.patch_node_status(
                name, {"status": {"capacity": capacity, "allocatable": capacity}}
            )
        return names

    async def simulated(self, n: int, limit: int, nodes: int) -> dict[str, Any]:
        """N Tasks of mixed priorities at once under a concurrency limit, their pods run for about a
        minute by kwok on simulated nodes: the limit holds with thousands running, the order holds,
        and what the operator costs meanwhile."""
        kwok = Kwok()
        node_names = await self.simulated_nodes(nodes)
        namespace = await self.namespace(f"simulated-{n}")
        await self.agent(namespace, "simulated", SIMULATED_AGENT)
        job_intervals: dict[str, list[float]] = {}
        pod_intervals: dict[str, list[float]] = {}
        final: dict[str, float] = {}
        first_seen: dict[str, float] = {}  # when the benchmark's own watch first delivered each Task
        stop = asyncio.Event()

        def on_job(kind: str, body: dict[str, Any], at: float) -> None:
            task = body["metadata"].get("labels", {}).get("taskyard.dev/task")
            if task:
                interval = job_intervals.setdefault(task, [at, float("inf")])
                conditions = (body.get("status") or {}).get("conditions") or []
                done = any(c["type"] in ("Complete", "Failed") and c["status"] == "True" for c in conditions)
                if kind == "DELETED" or done:
                    interval[1] = min(interval[1], at)

        def on_pod(kind: str, body: dict[str, Any], at: float) -> None:
            phase = (body.get("status") or {}).get("phase")
            if phase == "Running":
                pod_intervals.setdefault(body["metadata"]["name"], [at, float("inf")])
            interval = pod_intervals.get(body["metadata"]["name"])
            if interval is not None and (kind == "DELETED" or phase in ("Succeeded", "Failed")):
                interval[1] = min(interval[1], at)

        def on_task(kind: str, body: dict[str, Any], at: float) -> None:
            first_seen.setdefault(body["metadata"]["name"], at)
            if (body.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                final.setdefault(body["metadata"]["name"], at)

        watchers = [
            asyncio.create_task(
                self.watch(self.batch.list_namespaced_job, on_job, stop, namespace=namespace)
            ),
            asyncio.create_task(self.watch(self.core.list_namespaced_pod, on_pod, stop, namespace=namespace)),
            asyncio.create_task(self.watch_tasks(namespace, on_task, stop)),
        ]
        operator = await self.start_operator(
            namespace, TASKYARD_MAX_CONCURRENT=str(limit), TASKYARD_AGING_SECONDS="0"
        )
        peak_rss = 0.0

        async def sample_memory() -> None:
            nonlocal peak_rss
            while True:
                peak_rss = max(peak_rss, operator.resources()[0])
                await asyncio.sleep(1)

        sampler = asyncio.create_task(sample_memory())
        await asyncio.sleep(1)  # watches established
        specs = {
            f"k-{i:05d}": {"agent": "simulated", "prompt": "true", "priority": PRIORITIES[(i * 7) % 4]}
            for i in range(n)
        }
        started = time.monotonic()
        acknowledged = await self.create_tasks(namespace, specs)
        await self.wait_until(f"{n} Tasks to finish", lambda: len(final) >= n, timeout=600 + n, interval=1)
        elapsed = max(final.values()) - started
        sampler.cancel()
        rss, cpu = operator.resources()
        operator.stop()
        stop.set()
        for task in watchers:
            task.cancel()
        await asyncio.gather(sampler, *watchers, return_exceptions=True)

        admitted = await self.admission_times(namespace)
        tasks = (await self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "tasks"))["items"]
        offset = time.time() - time.monotonic()
        created = {name: at + offset for name, at in acknowledged.items()}
        seen = {name: at + offset for name, at in first_seen.items()}
        inverted = find_inversions(specs, created, admitted, grace=1.0, seen=seen)
        result = {
            "n": n,
            "limit": limit,
            "nodes": nodes,
            "jobs": len(admitted),
            "not_succeeded": sum(1 for t in tasks if t.get("status", {}).get("phase") != "Succeeded"),
            "max_active_jobs": max_overlap([tuple(i) for i in job_intervals.values()]),
            "max_running_pods": max_overlap([tuple(i) for i in pod_intervals.values()]),
            "inversions": len(inverted),
            "inverted": inverted[:20],
            "tasks_per_minute": round(n / elapsed * 60, 1),
            "seconds": round(elapsed, 1),
            "operator_cpu_seconds": round(cpu, 1),
            "operator_cpu_share": round(cpu / (time.monotonic() - operator.started), 2),
            "operator_rss_mib": round(rss, 1),
            "operator_peak_rss_mib": round(max(peak_rss, rss), 1),
        }
        print(f"simulated: {json.dumps(result)}", flush=True)  # kept even if the clean-up fails
        await self.drop_namespace(namespace)  # while kwok still runs: it lets deleted pods go
        for name in node_names:
            with contextlib.suppress(ApiException):
                await self.core.delete_node(name)
        kwok.stop()
        return result

    async def admission_times(self, namespace: str) -> dict[str, float]:
        """When each Task of the namespace was admitted (its Job's annotation), read page by page."""
        admitted: dict[str, float] = {}
        token = None
        while True:
            page = await self.batch.list_namespaced_job(namespace, limit=500, _continue=token)
            for job in page.items:
                stamp = (job.metadata.annotations or {}).get("taskyard.dev/admitted-at")
                if stamp:
                    admitted[job.metadata.labels["taskyard.dev/task"]] = datetime.fromisoformat(
                        stamp
                    ).timestamp()
            token = page.metadata._continue
            if not token:
                return admitted

    # --- 6: scale -------------------------------------------------------------------------------------

    async def parked_node(self) -> str:
        """A Node object no kubelet serves: pods bound to it are never run, and stay as written."""
        name = "bench-parked-node"
        with contextlib.suppress(ApiException):
            await self.core.create_node(
                {"metadata": {"name": name, "labels": {"taskyard.dev/bench": "parked"}}}
            )
        return name

    async def populate_finished(self, namespace: str, n: int, finished_at: datetime) -> float:
        """N finished Tasks, each with the Job and the pod it had: Succeeded, exit code 0."""
        stamp = finished_at.strftime("%Y-%m-%dT%H:%M:%SZ")
        node = await self.parked_node()
        gate = asyncio.Semaphore(self.concurrency)
        merge = "application/merge-patch+json"

        async def one(name: str) -> None:
            async with gate:
                body = {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": "Task",
                    "metadata": {"name": name},
                    "spec": {"agent": "parked", "prompt": "true"},
                }
                task = await self.custom.create_namespaced_custom_object(
                    GROUP, VERSION, namespace, "tasks", body
                )
                status = {
                    "phase": "Succeeded", "reason": "Completed", "message": "the agent exited with 0",
                    "jobName": name, "podName": f"{name}-pod", "attempts": 1, "startTime": stamp,
                    "completionTime": stamp, "duration": "0s", "exitCode": 0, "observedGeneration": 1,
                    "logTail": "done",
                }  # fmt: skip
                await self.custom.patch_namespaced_custom_object_status(
                    GROUP, VERSION, namespace, "tasks", name, {"status": status}, _content_type=merge
                )
                owner = {
                    "apiVersion": f"{GROUP}/{VERSION}", "kind": "Task", "name": name,
                    "uid": task["metadata"]["uid"], "controller": True,
                }  # fmt: skip
                labels = {"taskyard.dev/task": name}
                annotations = {"taskyard.dev/agent-ref": f"Agent/{namespace}/parked"}
                job = {
                    "metadata": {
                        "name": name,
                        "labels": labels,
                        "annotations": annotations,
                        "ownerReferences": [owner],
                    },
                    "spec": {
                        # Managed by nobody: the Job controller leaves it (and its status) alone.
                        "managedBy": "bench.taskyard.dev/parked",
                        "suspend": True,
                        "template": {
                            "metadata": {"labels": labels},
                            "spec": {
                                "restartPolicy": "Never",
                                "containers": [{"name": "agent", "image": SHELL_IMAGE}],
                            },
                        },
                    },
                }
                created = await self.batch.create_namespaced_job(namespace, job)
                job_status = {
                    "startTime": stamp, "completionTime": stamp, "succeeded": 1,
                    "conditions": [
                        {"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": stamp},
                        {"type": "Complete", "status": "True", "lastTransitionTime": stamp},
                    ],
                }  # fmt: skip
                await self.batch.patch_namespaced_job_status(name, namespace, {"status": job_status})
                job_owner = {
                    "apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": created.metadata.uid,
                    "controller": True,
                }  # fmt: skip
                pod = {
                    "metadata": {
                        "name": f"{name}-pod", "labels": labels, "annotations": annotations,
                        "ownerReferences": [job_owner],
                    },
                    "spec": {
                        "nodeName": node, "restartPolicy": "Never",
                        "tolerations": [{"operator": "Exists"}],
                        "containers": [{"name": "agent", "image": SHELL_IMAGE}],
                    },
                }  # fmt: skip
                await self.core.create_namespaced_pod(namespace, pod)
                terminated = {"exitCode": 0, "reason": "Completed", "startedAt": stamp, "finishedAt": stamp}
                pod_status = {
                    "phase": "Succeeded",
                    "containerStatuses": [
                        {
                            "name": "agent", "image": SHELL_IMAGE, "imageID": "", "ready": False,
                            "restartCount": 0, "state": {"terminated": terminated},
                        }
                    ],
                }  # fmt: skip
                await self.core.patch_namespaced_pod_status(f"{name}-pod", namespace, {"status": pod_status})

        started = time.monotonic()
        await asyncio.gather(*(one(f"s-{i:05d}") for i in range(n)))
        return time.monotonic() - started

    async def scale(self, n: int) -> list[dict[str, Any]]:
        """N finished Tasks with their Jobs and pods; a fresh operator started twice: with the Jobs
        inside the retention period, then past it. Measures how soon a new Task is admitted, the
        writes for finished Tasks, memory and CPU."""
        namespace = await self.namespace(f"scale-{n}")
        await self.agent(namespace, "parked", PARKED_AGENT)
        finished_at = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)
        populate_seconds = await self.populate_finished(namespace, n, finished_at)
        runs = []
        for label, retention in (("within retention", "3600"), ("past retention", "600")):
            operator = Operator(namespace, TASKYARD_JOB_RETENTION_SECONDS=retention)
            fresh = f"fresh-{len(runs)}"
            await self.create_tasks(namespace, {fresh: {"agent": "parked", "prompt": "true"}})
            synced_at = admitted_at = None
            deadline = time.monotonic() + 120 + n / 50
            while (synced_at is None or admitted_at is None) and time.monotonic() < deadline:
                if synced_at is None and operator.metrics().get("taskyard_cache_synced") == 1:
                    synced_at = time.monotonic() - operator.started
                if admitted_at is None:
                    with contextlib.suppress(ApiException):
                        await self.batch.read_namespaced_job(fresh, namespace)
                        admitted_at = time.monotonic() - operator.started
                await asyncio.sleep(0.25)
            if retention == "600":
                await self.wait_until(
                    "the Jobs past their retention to be deleted",
                    lambda op=operator: op.metrics().get(DELETES, 0) >= n,
                    timeout=120 + n / 20,
                    interval=1,
                )
            await asyncio.sleep(3)  # anything still in flight shows in the counts below
            samples = operator.metrics()
            rss, cpu = operator.resources()
            operator.stop()
            requests = requests_by_method(samples)
            writes = sum(v for method, v in requests.items() if method in ("POST", "PATCH", "PUT", "DELETE"))
            # The fresh Task costs a few writes of its own: its log ConfigMap, its Job, its status, events.
            runs.append(
                {
                    "n": n,
                    "run": label,
                    "populate_seconds": round(populate_seconds, 1),
                    "synced_seconds": round(synced_at, 2) if synced_at is not None else None,
                    "new_task_admitted_seconds": round(admitted_at, 2) if admitted_at is not None else None,
                    "requests_by_method": requests,
                    "writes": writes,
                    "rss_mib": round(rss, 1),
                    "cpu_seconds": round(cpu, 2),
                }
            )
        await self.drop_namespace(namespace)
        with contextlib.suppress(ApiException):
            await self.core.delete_node("bench-parked-node")
        return runs


def find_inversions(
    specs: dict[str, dict[str, Any]],
    created: dict[str, float],
    admitted: dict[str, float],
    grace: float,
    seen: dict[str, float] | None = None,
) -> list[dict[str, Any]]:
    """Admissions that went ahead of a higher-priority Task that had been waiting at least ``grace`` s:
    for each, the Task admitted and the earliest such Task it went ahead of, with when the benchmark's
    own watch first saw that one (``seen``): a Task no watch had delivered yet cannot be ordered."""
    rank = {name: PRIORITIES.index(spec["priority"]) for name, spec in specs.items()}
    order = sorted(admitted, key=admitted.get)
    # Walking from the last admission back, the earliest-created later-admitted Task per priority:
    # linear, where comparing every pair would be quadratic at 10,000 Tasks.
    earliest_later: list[str | None] = [None] * len(PRIORITIES)
    found = []
    for name in reversed(order):
        at = admitted[name]
        waiting = [
            later
            for later in earliest_later[: rank[name]]
            if later is not None and created[later] + grace <= at
        ]
        if waiting:
            ahead_of = min(waiting, key=created.get)
            found.append(
                {
                    "admitted": name,
                    "priority": specs[name]["priority"],
                    "ahead_of": ahead_of,
                    "ahead_of_priority": specs[ahead_of]["priority"],
                    "waiting_seconds": round(at - created[ahead_of], 2),
                    "seen_after_admission": (
                        round(seen[ahead_of] - at, 2) if seen and ahead_of in seen else None
                    ),
                }
            )
        current = earliest_later[rank[name]]
        if current is None or created[name] < created[current]:
            earliest_later[rank[name]] = name
    return found


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one moment (an end before a start at the same instant)."""
    points = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = most = 0
    for _, step in points:
        running += step
        most = max(most, running)
    return most


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    memory_kib = int(Path("/proc/meminfo").read_text().split()[1])
    server = subprocess.run(["kubectl", "version", "-o", "json"], capture_output=True, text=True).stdout
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gib": round(memory_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "kubernetes": json.loads(server or "{}").get("serverVersion", {}).get("gitVersion", "unknown"),
    }


def compare(previous: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Lines saying how the headline figures moved since the previous run."""
    lines = []
    for n, ratio in current.get("ratios", {}).items():
        before = previous.get("ratios", {}).get(n)
        if before:
            lines.append(f"  burst N={n}: operator/floor {before} -> {ratio}")
    for now in current.get("scale", []):
        before = next(
            (s for s in previous.get("scale", []) if s["n"] == now["n"] and s.get("run") == now.get("run")),
            None,
        )
        if before and "new_task_admitted_seconds" in before:
            lines.append(
                f"  scale N={now['n']} ({now['run']}): new Task admitted after "
                f"{before['new_task_admitted_seconds']}s -> {now['new_task_admitted_seconds']}s, "
                f"RSS {before['rss_mib']} -> {now['rss_mib']} MiB"
            )
    return lines


async def main() -> int:
    await config.load_kube_config()
    only = set(os.environ.get("BENCH_ONLY", "burst,sustained,queue,api,simulated,scale").split(","))
    results: dict[str, Any] = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine()}
    results["modes"] = {
        "burst": "real API server and controllers; pods never scheduled (no scheduler or kubelet work)",
        "sustained": "as burst, Tasks applied at a steady rate",
        "queue": "real API server, controllers, scheduler and kubelet; real pods",
        "api": "real API server, controllers, scheduler and kubelet; real pods; taskyard-api on loopback",
        "simulated": "real API server, controllers and scheduler; nodes and their pods simulated by kwok",
        "scale": "real API server and controllers; finished Tasks with their Jobs and pods "
        "(the pods bound to a node no kubelet serves)",
    }
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}

    def keep() -> None:
        """Writes what is measured so far over the previous file (a partial run, with BENCH_ONLY, replaces
        only its sections), after every section, so that an interrupted run keeps what it measured."""
        RESULTS.write_text(json.dumps({**previous, **results}, indent=2) + "\n")

    async with client.ApiClient() as api:
        bench = Bench(api, int(os.environ.get("BENCH_CONCURRENCY", "16")))
        if "burst" in only:
            results["burst"], results["ratios"] = [], {}
            for n in env_list("BENCH_BURST", "100,500,1000"):
                floor = await bench.burst(n, "floor")
                operator = await bench.burst(n, "operator")
                ratio = round(operator["total_seconds"] / floor["total_seconds"], 2)
                results["burst"] += [floor, operator]
                results["ratios"][str(n)] = ratio
                print(
                    f"burst N={n}: operator {operator['total_seconds']}s"
                    f" (p50 {operator['latency_p50_ms']} ms, p95 {operator['latency_p95_ms']} ms,"
                    f" p99 {operator['latency_p99_ms']} ms, "
                    f"{operator['api_requests']} requests), floor {floor['total_seconds']}s "
                    f"(p50 {floor['latency_p50_ms']} ms) -> operator/floor {ratio}",
                    flush=True,
                )
                with_pods = round(operator["with_pods_seconds"] / floor["with_pods_seconds"], 2)
                results.setdefault("ratios_with_pods", {})[str(n)] = with_pods
                print(
                    f"  until every pod exists too: operator {operator['with_pods_seconds']}s, floor "
                    f"{floor['with_pods_seconds']}s -> {with_pods}",
                    flush=True,
                )
                print(f"  CPU, floor: {cpu_line(floor)}\n  CPU, operator: {cpu_line(operator)}", flush=True)
                keep()
        if "sustained" in only:
            rate = float(os.environ.get("BENCH_RATE", "20"))
            seconds = float(os.environ.get("BENCH_RATE_SECONDS", "120"))
            floor = await bench.sustained(rate, seconds, "floor")
            sustained = await bench.sustained(rate, seconds, "operator")
            results["sustained"] = [floor, sustained]
            print(
                f"sustained floor: applied at {floor['applied_rate']}/s, apply→Job p50 "
                f"{floor['latency_p50_ms']} ms, p99 {floor['latency_p99_ms']} ms",
                flush=True,
            )
            print(
                f"sustained {rate:g} Tasks/s for {sustained['seconds']:g}s ({sustained['n']} Tasks, "
                f"applied at "
                f"{sustained['applied_rate']}/s): apply→Job p50 {sustained['latency_p50_ms']} ms, "
                f"p99 {sustained['latency_p99_ms']} ms, max {sustained['latency_max_ms']} ms; "
                f"RSS {sustained['rss_mib']} MiB, CPU {sustained['cpu_seconds']}s",
                flush=True,
            )
            print(f"  CPU, floor: {cpu_line(floor)}\n  CPU, operator: {cpu_line(sustained)}", flush=True)
            keep()
        if "queue" in only:
            queue = await bench.queue(
                int(os.environ.get("BENCH_QUEUE", "1000")), int(os.environ.get("BENCH_QUEUE_LIMIT", "10"))
            )
            results["queue"] = queue
            print(
                f"queue N={queue['n']} limit {queue['limit']}: {queue['inversions']} inversions, "
                f"at most {queue['max_running']} running, {queue['tasks_per_minute']} Tasks/min, "
                f"{queue['jobs']} Jobs, {queue['failed']} not Succeeded",
                flush=True,
            )
            keep()
        if "api" in only:
            api = await bench.task_api(
                int(os.environ.get("BENCH_API_CLIENTS", "200")),
                int(os.environ.get("BENCH_API_TASKS", "20")),
                float(os.environ.get("BENCH_API_RATE", "50")),
                float(os.environ.get("BENCH_API_SECONDS", "60")),
            )
            results["api"] = api
            print(
                f"task API: {api['clients']} SSE clients on {api['tasks']} Tasks and "
                f"{api['reads_per_second']} status reads/s (p50 {api['read_p50_ms']} ms, p99 "
                f"{api['read_p99_ms']} ms) for {api['seconds']}s: API server "
                f"{api['api_server_requests_per_second']} requests/s (before the clients "
                f"{api['api_server_requests_per_second_idle']}/s); taskyard-api "
                f"CPU {api['component_cpu_share']} of a core, RSS {api['component_rss_mib']} MiB (peak "
                f"{api['component_peak_rss_mib']}); lines per client min {api['lines_per_client_min']}, "
                f"median {api['lines_per_client_median']}; {api['errors']} errors {api['first_errors']}",
                flush=True,
            )
            print(
                f"  API server requests in the window: {api['api_server_requests_by_call']}; log follows "
                f"open at its end: {api['api_server_log_follows_open']}",
                flush=True,
            )
            print(f"  CPU: {cpu_line(api['cpu'])}", flush=True)
            keep()
        if "simulated" in only:
            simulated = await bench.simulated(
                int(os.environ.get("BENCH_SIMULATED", "10000")),
                int(os.environ.get("BENCH_SIMULATED_LIMIT", "2000")),
                int(os.environ.get("BENCH_SIMULATED_NODES", "20")),
            )
            results["simulated"] = simulated
            print(
                f"simulated N={simulated['n']} limit {simulated['limit']} on {simulated['nodes']} "
                f"kwok nodes: "
                f"at most {simulated['max_active_jobs']} Jobs active and "
                f"{simulated['max_running_pods']} pods "
                f"running at once, {simulated['inversions']} inversions, {simulated['tasks_per_minute']} "
                f"Tasks/min, {simulated['not_succeeded']} not Succeeded; operator CPU "
                f"{simulated['operator_cpu_seconds']}s ({simulated['operator_cpu_share']} of a core), RSS "
                f"{simulated['operator_rss_mib']} MiB (peak {simulated['operator_peak_rss_mib']})",
                flush=True,
            )
            keep()
        if "scale" in only:
            results["scale"] = []
            for n in env_list("BENCH_SCALE", "10000"):
                for scale in await bench.scale(n):
                    results["scale"].append(scale)
                    print(
                        f"scale N={n} finished Tasks with Jobs and pods, {scale['run']}: cache synced after "
                        f"{scale['synced_seconds']}s, a new Task admitted after "
                        f"{scale['new_task_admitted_seconds']}s, {scale['writes']} writes "
                        f"{scale['requests_by_method']}, RSS {scale['rss_mib']} MiB, "
                        f"CPU {scale['cpu_seconds']}s",
                        flush=True,
                    )
                    keep()
    changes = compare(previous, results)
    if changes:
        print("compared with the previous run:\n" + "\n".join(changes))
    keep()
    print(f"raw results: {RESULTS.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
