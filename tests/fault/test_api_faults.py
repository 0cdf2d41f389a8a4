"""The operator's connection to the API server misbehaves: connections that go silent for 90 s,
connections reset during a burst, the API server process killed and restarted. Every Task still
finishes, none gets a second Job, and the operator recovers on its own (same process, no restart)."""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.conftest import REPO_ROOT
from tests.fault.helpers import all_final, jobs_per_task
from tests.fault.proxy import FaultProxy
from tests.integration.conftest import Kube

pytestmark = pytest.mark.fault


def create_tasks(kube: Kube, agent: str, prefix: str, count: int, script: str = "echo done") -> list[str]:
    names = [f"{prefix}-{n}" for n in range(count)]
    for name in names:
        kube.create("Task", name, {"agent": agent, "prompt": script})
    return names


def silence_the_watch_of(kube: Kube, operator, proxy: FaultProxy, group_version: str, plural: str) -> None:
    """Once the operator has its caches, its watch of ``plural`` goes silent; all else keeps working."""
    kube.wait_for("the operator's caches", lambda: "cache synced" in operator.log_tail(), timeout=60)
    proxy.silence_requests(rf"^GET /{group_version}/namespaces/[^/ ]+/{plural}\?[^ ]*watch=true")
    proxy.reset_all()  # the watch open now reconnects, and goes silent from its first request


def assert_all_succeeded_once(kube: Kube, tasks: dict[str, dict], names: list[str]) -> None:
    phases = {name: tasks[name]["status"]["phase"] for name in names}
    failures = {
        name: (tasks[name]["status"].get("reason"), tasks[name]["status"].get("message"))
        for name in names
        if phases[name] != "Succeeded"
    }
    assert set(phases.values()) == {"Succeeded"}, failures
    jobs = jobs_per_task(kube)
    assert all(jobs[name] == 1 for name in names), jobs


def test_connections_silent_for_90s_then_recovery(
    kube: Kube, shell_agent: str, start_operator, fault_proxy: tuple[FaultProxy, object]
) -> None:
    proxy, kubeconfig = fault_proxy
    operator = start_operator(KUBECONFIG=str(kubeconfig))
    before = create_tasks(kube, shell_agent, "before", 10, "sleep 5; echo done")
    kube.wait_for("some Tasks to run", lambda: len(kube.jobs()) >= 3, timeout=60)

    proxy.stall()  # bytes stop both ways; sockets stay open
    during = create_tasks(kube, shell_agent, "during", 10)
    time.sleep(90)
    assert operator.process.poll() is None
    connections_before = proxy.accepted
    proxy.heal()  # new connections work; the silent ones stay silent for good

    names = before + during
    tasks = all_final(kube, names, timeout=180)
    assert_all_succeeded_once(kube, tasks, names)
    assert proxy.accepted > connections_before  # it gave up on the silent connections and opened new ones
    assert operator.process.poll() is None, "the operator had to be restarted"


def test_connections_reset_during_a_burst(
    kube: Kube, shell_agent: str, start_operator, fault_proxy: tuple[FaultProxy, object]
) -> None:
    proxy, kubeconfig = fault_proxy
    operator = start_operator(KUBECONFIG=str(kubeconfig))
    names = []
    resets = 0
    for round_ in range(6):
        names += create_tasks(kube, shell_agent, f"burst{round_}", 10)
        time.sleep(1.5)
        resets += proxy.reset_all()
    assert resets >= 6  # the operator had connections open each time, and lost them

    tasks = all_final(kube, names, timeout=240)
    assert_all_succeeded_once(kube, tasks, names)
    assert operator.process.poll() is None


def test_a_jobs_watch_silent_for_longer_than_the_wait_for_new_jobs_fails_no_task(
    kube: Kube, shell_agent: str, start_operator, plain_http_fault_proxy: tuple[FaultProxy, object]
) -> None:
    """The operator creates Jobs it then does not hear of for 150 s, longer than it waits for a new
    Job to show up (120 s), while every other request works: the Tasks neither fail nor give up their
    slots (a Job that exists is never taken for deleted), and they finish once the watch is back."""
    proxy, kubeconfig = plain_http_fault_proxy
    # Admission passes (which look at Jobs that are slow to show up) every 10 s, not only on events.
    operator = start_operator(
        KUBECONFIG=str(kubeconfig), TASKYARD_RESYNC_SECONDS="10", TASKYARD_MAX_CONCURRENT="2"
    )
    silence_the_watch_of(kube, operator, proxy, "apis/batch/v1", "jobs")
    names = create_tasks(kube, shell_agent, "unseen", 4)
    kube.wait_for("two Jobs", lambda: len(kube.jobs()) == 2, timeout=60)

    time.sleep(150)
    phases = {name: (kube.task(name).get("status") or {}).get("phase") for name in names}
    assert "Failed" not in phases.values(), phases
    assert len(kube.jobs()) == 2, "a slot was given up while its Job was still there"
    assert "the watch has not shown it yet" in operator.log_path.read_text()

    proxy.heal()
    proxy.reset_all()  # the silent watch connection ends at once, rather than at its read timeout
    tasks = all_final(kube, names, timeout=120)
    assert_all_succeeded_once(kube, tasks, names)
    assert operator.process.poll() is None


def test_a_pods_watch_silent_for_a_tasks_whole_run_stops_no_agent_and_loses_no_output(
    kube: Kube, shell_agent: str, start_operator, plain_http_fault_proxy: tuple[FaultProxy, object]
) -> None:
    """The operator never hears of the Task's pod: before it fails the Task for an agent that never
    started (and deletes the Job), it asks the API server, which shows the agent running; when the Job
    ends, the exit code and the log come from the pod the API server lists."""
    proxy, kubeconfig = plain_http_fault_proxy
    # Well above how long a pod takes to start on a busy node, where 15 s was seen: an agent that has
    # not started by then is rightly stopped.
    deadline = 60
    operator = start_operator(KUBECONFIG=str(kubeconfig), TASKYARD_STARTUP_DEADLINE_SECONDS=str(deadline))
    silence_the_watch_of(kube, operator, proxy, "api/v1", "pods")
    [name] = create_tasks(kube, shell_agent, "unseen-pod", 1, "sleep 90; echo done")
    kube.wait_for(
        "its agent to run", lambda: [p for p in kube.pods(name) if p.status.phase == "Running"], timeout=60
    )
    [job] = kube.jobs(name)
    # The start-up deadline counts from the Job's creation: wait until it has passed.
    time.sleep(max(job.metadata.creation_timestamp.timestamp() + deadline + 8 - time.time(), 0))
    status = kube.task(name).get("status") or {}
    assert (status.get("phase"), status.get("reason")) == ("Running", "Running"), status
    assert [job.metadata.deletion_timestamp for job in kube.jobs(name)] == [None]

    tasks = all_final(kube, [name], timeout=120)  # the pods watch is silent still
    assert_all_succeeded_once(kube, tasks, [name])
    assert tasks[name]["status"]["logTail"].rstrip().endswith("done")


@pytest.mark.exclusive  # every other test's calls would fail while the API server is down
def test_api_server_killed_and_restarted_mid_run(kube: Kube, shell_agent: str, operator) -> None:
    first = create_tasks(kube, shell_agent, "first", 10, "sleep 3; echo done")
    kube.wait_for("some Tasks to run", lambda: len(kube.jobs()) >= 3, timeout=60)

    # Returns once the restarted API server answers /readyz again.
    subprocess.run(
        [str(REPO_ROOT / "hack" / "cluster-up.sh"), "--restart-apiserver"], check=True, timeout=180
    )
    answering_again = time.monotonic()
    later = create_tasks(kube, shell_agent, "later", 5)

    # What the operator answers for: starting new work within seconds (its watches retry at most 5 s
    # apart), not at the next resync. How soon the pods then run is the kubelet's, on a busy node.
    kube.wait_for("the new Tasks' Jobs", lambda: all(kube.jobs(name) for name in later), timeout=120)
    took = time.monotonic() - answering_again
    assert took <= 15, f"new Tasks got their Jobs {took:.0f}s after the API server answered again"
    tasks = all_final(kube, first + later, timeout=180)
    assert_all_succeeded_once(kube, tasks, first + later)
    assert operator.process.poll() is None
