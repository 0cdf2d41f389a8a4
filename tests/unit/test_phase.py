"""Phase derivation: Job and Pod views, the derived Task status, status patches and log tails."""

import json
from datetime import datetime

import pytest

from taskyard.phase import (
    MANAGED_FIELDS,
    JobView,
    Observation,
    PodView,
    deciding_pod,
    derive_status,
    image_pull_patience_over,
    newest_pod,
    startup_overdue,
    status_changes,
    tail_lines,
)

pytestmark = pytest.mark.unit

NAMESPACE = "team-a"
TASK_NAME = "fix-flaky-test"
TASK_UID = "0d6c4f8e-4b1e-4c55-9a57-2f7c1e0b9a11"
JOB_UID = "7a3e2b90-1f4d-4f8a-b6c2-5d9e0c4a8b22"
POD_NAME = f"{TASK_NAME}-x7k2p"
AGENT_IMAGE = "ghcr.io/example/coder-agent:1.4.2"
CLAIM = f"{TASK_NAME}-workspace"

CREATED = "2025-03-04T09:59:58Z"
STARTED = "2025-03-04T10:00:00Z"
FINISHED = "2025-03-04T10:02:05Z"
NOW = "2025-03-04T10:02:07Z"
LATER = "2025-03-04T10:05:00Z"

QUEUED_MESSAGE = "waiting for a free slot under the concurrency limits (at most 4 in the cluster)"
MISSING_AGENT = (
    "agent 'coder' not found: no Agent 'coder' in namespace 'team-a' and no ClusterAgent 'coder'; "
    "the Task starts once one exists"
)
RUNNING_MESSAGE = f"the agent is running in pod {POD_NAME}"


# --- Kubernetes objects -------------------------------------------------------------------------


def task_body(status=None, *, cancel=False, generation=1):
    spec = {"agent": "coder", "prompt": "Fix the flaky test in tests/test_io.py", "priority": "medium"}
    if cancel:
        spec["cancel"] = True
    body = {
        "apiVersion": "taskyard.dev/v1alpha1",
        "kind": "Task",
        "metadata": {
            "name": TASK_NAME,
            "namespace": NAMESPACE,
            "uid": TASK_UID,
            "generation": generation,
            "creationTimestamp": CREATED,
        },
        "spec": spec,
    }
    if status is not None:
        body["status"] = status
    return body


def job_condition(kind, reason, message, at=FINISHED, status="True"):
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastProbeTime": at,
        "lastTransitionTime": at,
    }


def task_owner(uid=TASK_UID, controller=True):
    return {
        "apiVersion": "taskyard.dev/v1alpha1",
        "kind": "Task",
        "name": TASK_NAME,
        "uid": uid,
        "controller": controller,
        "blockOwnerDeletion": True,
    }


def job_body(status, *, owners=None, deleting=False):
    metadata = {
        "name": TASK_NAME,
        "namespace": NAMESPACE,
        "uid": JOB_UID,
        "generation": 1,
        "creationTimestamp": STARTED,
        "labels": {"taskyard.dev/task": TASK_NAME, "app.kubernetes.io/name": "taskyard"},
        "ownerReferences": [task_owner()] if owners is None else owners,
    }
    if deleting:
        metadata["deletionTimestamp"] = LATER
        metadata["finalizers"] = ["orphan"]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": {
            "backoffLimit": 2,
            "activeDeadlineSeconds": 3600,
            "completions": 1,
            "parallelism": 1,
            "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "agent"}]}},
        },
        "status": status,
    }


def running_job_status(active=1, failed=0):
    status = {"active": active, "ready": active, "startTime": STARTED, "terminating": 0}
    if failed:
        status["failed"] = failed
    status["uncountedTerminatedPods"] = {}
    return status


def complete_job_status():
    message = "Reached expected number of succeeded pods"
    return {
        "startTime": STARTED,
        "completionTime": FINISHED,
        "succeeded": 1,
        "ready": 0,
        "terminating": 0,
        "uncountedTerminatedPods": {},
        "conditions": [
            job_condition("SuccessCriteriaMet", "CompletionsReached", message),
            job_condition("Complete", "CompletionsReached", message),
        ],
    }


JOB_FAILURES = {
    "DeadlineExceeded": "Job was active longer than specified deadline",
    "BackoffLimitExceeded": "Job has reached the specified backoff limit",
    "PodFailurePolicy": (
        f"Container agent for pod {NAMESPACE}/{POD_NAME} failed with exit code 3 "
        "matching FailJob rule at index 0"
    ),
}


def failed_job_status(reason, failed=1, message=None):
    """A Job that failed: the API sets no completionTime then, only the Failed condition's time."""
    message = JOB_FAILURES.get(reason, "the Job failed") if message is None else message
    return {
        "startTime": STARTED,
        "failed": failed,
        "ready": 0,
        "terminating": 0,
        "uncountedTerminatedPods": {},
        "conditions": [
            job_condition("FailureTarget", reason, message),
            job_condition("Failed", reason, message),
        ],
    }


def job_owner(uid=JOB_UID):
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "name": TASK_NAME,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def pod_body(state, *, name=POD_NAME, created=STARTED, phase="Running", owners=None, sidecar=None):
    containers = [
        {"name": "agent", "image": AGENT_IMAGE, "imagePullPolicy": "IfNotPresent"},
    ]
    agent_status = {
        "name": "agent",
        "image": AGENT_IMAGE,
        "imageID": "",
        "ready": "running" in state,
        "restartCount": 0,
        "started": "running" in state,
        "state": state,
    }
    statuses = [agent_status]
    if sidecar is not None:
        containers.insert(0, {"name": "git-sync", "image": "registry.k8s.io/git-sync/git-sync:v4.2.3"})
        statuses.insert(
            0,
            {
                "name": "git-sync",
                "image": "registry.k8s.io/git-sync/git-sync:v4.2.3",
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "state": sidecar,
            },
        )
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "uid": f"uid-of-{name}",
            "creationTimestamp": created,
            "labels": {
                "batch.kubernetes.io/job-name": TASK_NAME,
                "batch.kubernetes.io/controller-uid": JOB_UID,
                "job-name": TASK_NAME,
            },
            "ownerReferences": [job_owner()] if owners is None else owners,
        },
        "spec": {"restartPolicy": "Never", "containers": containers},
        "status": {"phase": phase, "containerStatuses": statuses, "startTime": created},
    }


RUNNING_STATE = {"running": {"startedAt": STARTED}}
CREATING_STATE = {"waiting": {"reason": "ContainerCreating"}}
PULL_BACKOFF_MESSAGE = f'Back-off pulling image "{AGENT_IMAGE}"'


def terminated_state(exit_code, reason, message=None):
    state = {
        "exitCode": exit_code,
        "reason": reason,
        "startedAt": STARTED,
        "finishedAt": FINISHED,
        "containerID": "containerd://4b1f0c2d9e",
    }
    if message is not None:
        state["message"] = message
    return {"terminated": state}


def job_view(status, **kwargs):
    return JobView.from_body(job_body(status, **kwargs))


def pod_view(state, **kwargs):
    return PodView.from_body(pod_body(state, **kwargs))


def succeeded_condition(status, reason, message, at, generation=1):
    return {
        "type": "Succeeded",
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": at,
        "observedGeneration": generation,
    }


def queued_status():
    """The status the operator wrote when the Task was queued at its creation."""
    return {
        "observedGeneration": 1,
        "queuedAt": CREATED,
        "phase": "Queued",
        "reason": "WaitingForCapacity",
        "message": QUEUED_MESSAGE,
        "conditions": [succeeded_condition("Unknown", "WaitingForCapacity", QUEUED_MESSAGE, CREATED)],
    }


def running_status():
    """The status the operator wrote once the agent ran (its condition has been Unknown since queueing)."""
    return {
        "observedGeneration": 1,
        "jobName": TASK_NAME,
        "attempts": 1,
        "startTime": STARTED,
        "podName": POD_NAME,
        "queuedAt": CREATED,
        "phase": "Running",
        "reason": "Running",
        "message": RUNNING_MESSAGE,
        "conditions": [succeeded_condition("Unknown", "Running", RUNNING_MESSAGE, CREATED)],
    }


def managed(status):
    return {field: value for field, value in status.items() if field in MANAGED_FIELDS}


# --- JobView ------------------------------------------------------------------------------------


def test_job_view_of_a_complete_job():
    job = job_view(complete_job_status())
    assert job == JobView(
        name=TASK_NAME,
        uid=JOB_UID,
        owner_uid=TASK_UID,
        active=0,
        succeeded=1,
        failed=0,
        complete=True,
        failed_reason=None,
        failed_message=None,
        start_time=STARTED,
        completion_time=FINISHED,
        deleting=False,
        created=STARTED,
    )
    assert job.finished


@pytest.mark.parametrize("reason", ["DeadlineExceeded", "BackoffLimitExceeded", "PodFailurePolicy"])
def test_job_view_of_a_failed_job_keeps_reason_and_message(reason):
    job = job_view(failed_job_status(reason, failed=2))
    assert job.failed_reason == reason
    assert job.failed_message == JOB_FAILURES[reason]
    assert job.failed == 2
    assert not job.complete
    assert job.finished


def test_failed_job_without_completion_time_finishes_when_its_failed_condition_became_true():
    status = failed_job_status("BackoffLimitExceeded", failed=3)
    status["conditions"][-1]["lastTransitionTime"] = "2025-03-04T10:07:30Z"
    assert job_view(status).completion_time == "2025-03-04T10:07:30Z"


def test_completion_time_of_the_job_wins_over_the_failed_condition():
    status = failed_job_status("DeadlineExceeded")
    status["completionTime"] = "2025-03-04T10:03:00Z"
    assert job_view(status).completion_time == "2025-03-04T10:03:00Z"


def test_failed_condition_without_reason_reads_as_failed():
    status = failed_job_status("BackoffLimitExceeded")
    del status["conditions"][-1]["reason"]
    job = job_view(status)
    assert job.failed_reason == "Failed"
    assert job.finished


def test_running_job_is_not_finished_and_counts_its_pods():
    job = job_view(running_job_status(active=1, failed=1))
    assert (job.active, job.succeeded, job.failed) == (1, 0, 1)
    assert (job.complete, job.failed_reason, job.completion_time) == (False, None, None)
    assert job.start_time == STARTED
    assert not job.finished


def test_conditions_that_are_not_true_do_not_finish_a_job():
    status = running_job_status()
    status["conditions"] = [
        job_condition("Suspended", "JobResumed", "Job resumed", status="False"),
        job_condition("Failed", "BackoffLimitExceeded", "not yet", status="False"),
        job_condition("Complete", "CompletionsReached", "not yet", status="False"),
    ]
    job = job_view(status)
    assert (job.complete, job.failed_reason, job.failed_message, job.completion_time) == (
        False,
        None,
        None,
        None,
    )
    assert not job.finished


def test_failure_target_alone_does_not_finish_a_job_whose_pods_are_still_terminating():
    status = running_job_status(active=0)
    status["terminating"] = 1
    deadline = JOB_FAILURES["DeadlineExceeded"]
    status["conditions"] = [job_condition("FailureTarget", "DeadlineExceeded", deadline)]
    assert not job_view(status).finished


def test_job_just_created_has_no_status_yet():
    body = job_body({})
    del body["status"]
    job = JobView.from_body(body)
    assert job == JobView(name=TASK_NAME, uid=JOB_UID, owner_uid=TASK_UID, created=STARTED)
    assert not job.finished


def test_deletion_timestamp_marks_the_job_as_deleting():
    assert job_view(running_job_status(), deleting=True).deleting
    assert not job_view(running_job_status()).deleting


def test_owner_uid_comes_from_the_controller_owner_reference():
    owners = [
        task_owner(uid="uid-of-some-other-owner", controller=False),
        task_owner(uid=TASK_UID, controller=True),
    ]
    assert job_view(running_job_status(), owners=owners).owner_uid == TASK_UID


def test_job_without_a_controller_has_no_owner_uid():
    assert job_view(running_job_status(), owners=[task_owner(controller=False)]).owner_uid == ""
    assert job_view(running_job_status(), owners=[]).owner_uid == ""


# --- PodView ------------------------------------------------------------------------------------


def test_pod_view_of_an_agent_waiting_for_its_image():
    state = {"waiting": {"reason": "ImagePullBackOff", "message": PULL_BACKOFF_MESSAGE}}
    pod = pod_view(state, phase="Pending")
    assert pod == PodView(
        name=POD_NAME,
        created=STARTED,
        job_uid=JOB_UID,
        phase="Pending",
        image=AGENT_IMAGE,
        waiting_reason="ImagePullBackOff",
        waiting_message=PULL_BACKOFF_MESSAGE,
        running=False,
        exit_code=None,
        terminated_reason=None,
        termination_message=None,
    )
    assert not pod.terminated


def test_pod_view_of_a_running_agent():
    pod = pod_view(RUNNING_STATE)
    assert pod.running
    assert pod.phase == "Running"
    assert (pod.waiting_reason, pod.waiting_message, pod.exit_code) == (None, None, None)
    assert not pod.terminated


def test_pod_view_of_an_agent_that_exited_zero_with_a_result():
    pod = pod_view(terminated_state(0, "Completed", '{"summary": "fixed the race"}\n'), phase="Succeeded")
    assert pod.exit_code == 0
    assert pod.terminated  # exit code 0 still means terminated
    assert pod.terminated_reason == "Completed"
    assert pod.termination_message == '{"summary": "fixed the race"}\n'
    assert not pod.running
    assert pod.phase == "Succeeded"


@pytest.mark.parametrize("message", [None, ""])
def test_pod_view_of_an_agent_that_failed_without_a_message(message):
    pod = pod_view(terminated_state(3, "Error", message), phase="Failed")
    assert (pod.exit_code, pod.terminated_reason, pod.termination_message) == (3, "Error", None)
    assert pod.terminated


def test_pod_view_reads_the_agent_container_not_a_sidecar():
    pod = pod_view(RUNNING_STATE, sidecar=terminated_state(1, "Error", "sidecar broke"))
    assert pod.image == AGENT_IMAGE
    assert pod.running
    assert pod.exit_code is None
    assert pod.termination_message is None


def test_pod_view_can_read_another_container():
    body = pod_body(RUNNING_STATE, sidecar=terminated_state(1, "Error", "sidecar broke"))
    pod = PodView.from_body(body, container="git-sync")
    assert pod.image == "registry.k8s.io/git-sync/git-sync:v4.2.3"
    assert (pod.running, pod.exit_code, pod.termination_message) == (False, 1, "sidecar broke")


def test_pod_view_of_a_pod_not_scheduled_yet():
    body = pod_body(RUNNING_STATE)
    body["status"] = {"phase": "Pending"}
    pod = PodView.from_body(body)
    assert pod == PodView(name=POD_NAME, created=STARTED, job_uid=JOB_UID, phase="Pending", image=AGENT_IMAGE)
    assert not pod.running
    assert not pod.terminated


def test_pod_job_uid_comes_from_the_controller_owner_reference():
    owners = [{**job_owner(uid="uid-of-not-the-controller"), "controller": False}, job_owner()]
    assert pod_view(RUNNING_STATE, owners=owners).job_uid == JOB_UID
    assert pod_view(RUNNING_STATE, owners=[]).job_uid == ""


def test_newest_pod_is_the_latest_created():
    first = pod_view(terminated_state(1, "Error"), name=f"{TASK_NAME}-aaaaa", created="2025-03-04T10:00:00Z")
    retry = pod_view(RUNNING_STATE, name=f"{TASK_NAME}-0zzzz", created="2025-03-04T10:00:41Z")
    assert newest_pod([first, retry]) is retry
    assert newest_pod([retry, first]) is retry


def test_newest_pod_breaks_creation_ties_by_name():
    one = pod_view(RUNNING_STATE, name=f"{TASK_NAME}-abcde", created=STARTED)
    two = pod_view(RUNNING_STATE, name=f"{TASK_NAME}-vwxyz", created=STARTED)
    assert newest_pod([one, two]) is two
    assert newest_pod([two, one]) is two


def test_newest_pod_of_no_pods_is_none():
    assert newest_pod([]) is None


# --- derive_status: the phases --------------------------------------------------------------------


def test_task_without_a_job_is_queued():
    status = derive_status(task_body(), Observation(queued_message=QUEUED_MESSAGE), NOW)
    assert status == {
        "observedGeneration": 1,
        "queuedAt": NOW,
        "phase": "Queued",
        "reason": "WaitingForCapacity",
        "message": QUEUED_MESSAGE,
        "conditions": [succeeded_condition("Unknown", "WaitingForCapacity", QUEUED_MESSAGE, NOW)],
    }


def test_queued_task_keeps_the_time_it_was_first_queued():
    status = derive_status(task_body(queued_status()), Observation(queued_message=QUEUED_MESSAGE), NOW)
    assert status["queuedAt"] == CREATED
    assert status == queued_status()


def test_task_whose_agent_is_missing_is_pending():
    seen = Observation(agent_found=False, agent_description=MISSING_AGENT)
    status = derive_status(task_body(), seen, NOW)
    assert status == {
        "observedGeneration": 1,
        "phase": "Pending",
        "reason": "AgentNotFound",
        "message": MISSING_AGENT,
        "conditions": [succeeded_condition("Unknown", "AgentNotFound", MISSING_AGENT, NOW)],
    }


def test_pending_task_is_queued_once_its_agent_exists():
    pending = derive_status(task_body(), Observation(agent_found=False, agent_description=MISSING_AGENT), NOW)
    status = derive_status(task_body(pending), Observation(queued_message=QUEUED_MESSAGE), LATER)
    assert (status["phase"], status["reason"], status["queuedAt"]) == ("Queued", "WaitingForCapacity", LATER)
    # Both phases leave the Succeeded condition Unknown: its transition time stays.
    assert status["conditions"][0]["lastTransitionTime"] == NOW


def test_missing_agent_does_not_matter_once_the_job_exists():
    seen = Observation(
        job=job_view(running_job_status()),
        pod=pod_view(RUNNING_STATE),
        agent_found=False,
        agent_description=MISSING_AGENT,
    )
    status = derive_status(task_body(queued_status()), seen, NOW)
    assert (status["phase"], status["reason"]) == ("Running", "Running")


def test_requested_job_not_yet_seen_makes_the_task_start():
    seen = Observation(job_requested=TASK_NAME, workspace_claim=CLAIM)
    status = derive_status(task_body(queued_status()), seen, NOW)
    message = "the Job is created; waiting for its pod to start"
    assert status == {
        "observedGeneration": 1,
        "workspace": CLAIM,
        "jobName": TASK_NAME,
        "queuedAt": CREATED,
        "phase": "Running",
        "reason": "Starting",
        "message": message,
        "conditions": [succeeded_condition("Unknown", "Starting", message, CREATED)],
    }


def test_job_whose_pod_is_being_created_is_starting():
    seen = Observation(job=job_view(running_job_status()), pod=pod_view(CREATING_STATE, phase="Pending"))
    status = derive_status(task_body(queued_status()), seen, NOW)
    assert (status["phase"], status["reason"]) == ("Running", "Starting")
    assert (status["jobName"], status["podName"], status["attempts"]) == (TASK_NAME, POD_NAME, 1)


def test_job_whose_pod_waits_for_another_reason_shows_that_reason():
    message = f'Back-off pulling image "{AGENT_IMAGE}": ErrImagePull: i/o timeout'
    state = {"waiting": {"reason": "ErrImagePull", "message": message}}
    seen = Observation(job=job_view(running_job_status()), pod=pod_view(state, phase="Pending"))
    status = derive_status(task_body(queued_status()), seen, NOW)
    assert (status["phase"], status["reason"], status["message"]) == ("Running", "ErrImagePull", message)


def test_job_with_a_running_pod_is_running():
    seen = Observation(job=job_view(running_job_status()), pod=pod_view(RUNNING_STATE), workspace_claim=CLAIM)
    status = derive_status(task_body(queued_status()), seen, NOW)
    assert status == {
        **running_status(),
        "workspace": CLAIM,
    }


def test_retry_counts_failed_and_active_pods_as_attempts():
    seen = Observation(job=job_view(running_job_status(active=1, failed=1)), pod=pod_view(RUNNING_STATE))
    assert derive_status(task_body(queued_status()), seen, NOW)["attempts"] == 2


def test_complete_job_makes_the_task_succeed():
    seen = Observation(
        job=job_view(complete_job_status()),
        pod=pod_view(terminated_state(0, "Completed", "all tests pass"), phase="Succeeded"),
        workspace_claim=CLAIM,
    )
    status = derive_status(task_body(running_status()), seen, NOW)
    message = "the agent finished with exit code 0"
    assert status == {
        "observedGeneration": 1,
        "workspace": CLAIM,
        "jobName": TASK_NAME,
        "attempts": 1,
        "startTime": STARTED,
        "podName": POD_NAME,
        "exitCode": 0,
        "queuedAt": CREATED,
        "completionTime": FINISHED,
        "duration": "2m5s",
        "phase": "Succeeded",
        "reason": "Completed",
        "message": message,
        "conditions": [succeeded_condition("True", "Completed", message, NOW)],
    }


def test_job_deadline_exceeded_fails_the_task():
    seen = Observation(
        job=job_view(failed_job_status("DeadlineExceeded")),
        pod=pod_view(terminated_state(137, "Error"), phase="Failed"),
    )
    status = derive_status(task_body(running_status()), seen, NOW)
    message = "the Task ran longer than its timeout and was stopped"
    assert (status["phase"], status["reason"], status["message"]) == ("Failed", "DeadlineExceeded", message)
    assert status["conditions"] == [succeeded_condition("False", "DeadlineExceeded", message, NOW)]
    assert (status["completionTime"], status["duration"]) == (FINISHED, "2m5s")
    assert (status["attempts"], status["exitCode"]) == (1, 137)


@pytest.mark.parametrize(("failed", "tries"), [(3, "3 attempts"), (1, "1 attempt")])
def test_job_out_of_retries_fails_the_task_naming_exit_code_and_attempts(failed, tries):
    seen = Observation(
        job=job_view(failed_job_status("BackoffLimitExceeded", failed=failed)),
        pod=pod_view(terminated_state(1, "Error"), name=f"{TASK_NAME}-r3try", phase="Failed"),
    )
    status = derive_status(task_body(running_status()), seen, NOW)
    message = f"the agent failed (last exit code 1) after {tries}"
    assert (status["phase"], status["reason"], status["message"]) == (
        "Failed",
        "BackoffLimitExceeded",
        message,
    )
    assert status["attempts"] == failed
    assert status["podName"] == f"{TASK_NAME}-r3try"
    assert status["conditions"] == [succeeded_condition("False", "BackoffLimitExceeded", message, NOW)]


def test_pod_failure_policy_fails_the_task_with_a_non_retryable_exit_code():
    seen = Observation(
        job=job_view(failed_job_status("PodFailurePolicy")),
        pod=pod_view(terminated_state(3, "Error"), phase="Failed"),
    )
    status = derive_status(task_body(running_status()), seen, NOW)
    message = "the agent exited with code 3, which its Agent marks as not worth retrying"
    assert (status["phase"], status["reason"], status["message"]) == (
        "Failed",
        "NonRetryableExitCode",
        message,
    )
    assert status["exitCode"] == 3
    assert status["conditions"][0]["status"] == "False"


@pytest.mark.parametrize(
    ("exit_code", "record", "reason", "message"),
    [
        (
            121,
            {"taskyard": 1, "limit": "maxTurns: 11 turns, more than the limit of 10"},
            "LimitExceeded",
            "the agent was stopped: maxTurns: 11 turns, more than the limit of 10",
        ),
        (
            120,
            {"taskyard": 1, "error": "setup: git clone failed: repository not found"},
            "AgentSetupFailed",
            "the agent could not start: setup: git clone failed: repository not found",
        ),
    ],
    ids=["limit", "setup"],
)
def test_an_attempt_the_entrypoint_ended_fails_with_its_reason(exit_code, record, reason, message):
    seen = Observation(
        job=job_view(failed_job_status("PodFailurePolicy")),
        pod=pod_view(terminated_state(exit_code, "Error", json.dumps(record)), phase="Failed"),
    )
    status = derive_status(task_body(running_status()), seen, NOW)
    assert (status["phase"], status["reason"], status["message"]) == ("Failed", reason, message)


def test_exit_code_121_without_the_entrypoints_record_is_just_an_exit_code():
    seen = Observation(
        job=job_view(failed_job_status("PodFailurePolicy")),
        pod=pod_view(terminated_state(121, "Error", "limit: made up by some other program"), phase="Failed"),
    )
    assert derive_status(task_body(running_status()), seen, NOW)["reason"] == "NonRetryableExitCode"


def test_other_job_failure_reasons_pass_through_with_the_jobs_message():
    status = failed_job_status("MaxFailedIndexesExceeded", message="Job has exceeded maxFailedIndexes")
    seen = Observation(job=job_view(status), pod=pod_view(terminated_state(2, "Error"), phase="Failed"))
    derived = derive_status(task_body(running_status()), seen, NOW)
    assert (derived["phase"], derived["reason"], derived["message"]) == (
        "Failed",
        "MaxFailedIndexesExceeded",
        "Job has exceeded maxFailedIndexes",
    )


IMAGE_FAILURES = {
    "ImagePullBackOff": PULL_BACKOFF_MESSAGE,
    "ErrImageNeverPull": f'Container image "{AGENT_IMAGE}" is not present with pull policy of Never',
    "InvalidImageName": f'Failed to apply default image tag "{AGENT_IMAGE}": invalid reference format',
}


@pytest.mark.parametrize("reason", sorted(IMAGE_FAILURES))
def test_image_that_cannot_be_pulled_fails_the_task(reason):
    state = {"waiting": {"reason": reason, "message": IMAGE_FAILURES[reason]}}
    seen = Observation(job=job_view(running_job_status()), pod=pod_view(state, phase="Pending"))
    status = derive_status(task_body(running_status()), seen, NOW)
    message = f"the agent image '{AGENT_IMAGE}' cannot be pulled: {IMAGE_FAILURES[reason]}"
    assert (status["phase"], status["reason"], status["message"]) == ("Failed", "ImagePullFailed", message)
    # The Job never finished: the failure is dated when it was seen.
    assert (status["completionTime"], status["duration"]) == (NOW, "2m7s")
    assert status["conditions"] == [succeeded_condition("False", "ImagePullFailed", message, NOW)]


def test_image_pull_failure_without_a_kubelet_message():
    state = {"waiting": {"reason": "ImagePullBackOff"}}
    seen = Observation(job=job_view(running_job_status()), pod=pod_view(state, phase="Pending"))
    status = derive_status(task_body(running_status()), seen, NOW)
    assert status["message"] == f"the agent image '{AGENT_IMAGE}' cannot be pulled"


def test_cancelling_a_running_task_takes_two_steps():
    # While the Job is being deleted and the agent has its grace period: Cancelling, not yet final.
    seen = Observation(job=job_view(running_job_status()), pod=pod_view(RUNNING_STATE))
    status = derive_status(task_body(running_status(), cancel=True), seen, NOW)
    message = "cancelled by spec.cancel; the agent is being stopped"
    assert (status["phase"], status["reason"], status["message"]) == ("Cancelling", "Cancelling", message)
    assert "completionTime" not in status
    [condition] = status["conditions"]
    assert (condition["status"], condition["reason"], condition["message"]) == (
        "Unknown",
        "Cancelling",
        message,
    )
    # Once the Job and its pods are gone: Cancelled.
    status = derive_status(task_body(status, cancel=True), Observation(), NOW)
    message = "cancelled by spec.cancel; the Job and its pods were deleted"
    assert (status["phase"], status["reason"], status["message"]) == ("Cancelled", "Cancelled", message)
    assert (status["completionTime"], status["duration"]) == (NOW, "2m7s")
    assert status["conditions"] == [succeeded_condition("False", "Cancelled", message, NOW)]


def test_a_cancelled_agent_that_has_exited_waits_for_its_job_to_go():
    pod = pod_view(terminated_state(143, "Error"), phase="Failed")
    seen = Observation(job=job_view(running_job_status(active=0, failed=1)), pod=pod)
    assert derive_status(task_body(running_status(), cancel=True), seen, NOW)["phase"] == "Cancelling"
    assert (
        derive_status(task_body(running_status(), cancel=True), Observation(pod=pod), NOW)["phase"]
        == "Cancelled"
    )


def test_cancelling_a_queued_task():
    status = derive_status(task_body(queued_status(), cancel=True), Observation(), NOW)
    message = "cancelled by spec.cancel; the Job and its pods were deleted"
    assert status == {
        "observedGeneration": 1,
        "queuedAt": CREATED,
        "completionTime": NOW,
        "phase": "Cancelled",
        "reason": "Cancelled",
        "message": message,
        "conditions": [succeeded_condition("False", "Cancelled", message, NOW)],
    }


def test_a_job_that_completed_before_the_cancel_stays_succeeded():
    seen = Observation(
        job=job_view(complete_job_status()), pod=pod_view(terminated_state(0, "Completed"), phase="Succeeded")
    )
    status = derive_status(task_body(running_status(), cancel=True), seen, NOW)
    assert (status["phase"], status["reason"]) == ("Succeeded", "Completed")


def test_cancel_wins_over_a_failing_image():
    state = {"waiting": {"reason": "ImagePullBackOff", "message": PULL_BACKOFF_MESSAGE}}
    seen = Observation(job=job_view(running_job_status()), pod=pod_view(state, phase="Pending"))
    assert derive_status(task_body(running_status(), cancel=True), seen, NOW)["phase"] == "Cancelling"


# --- derive_status: never backwards, stable times, determinism -----------------------------------


def terminal_statuses():
    succeeded = derive_status(
        task_body(running_status()),
        Observation(
            job=job_view(complete_job_status()),
            pod=pod_view(terminated_state(0, "Completed"), phase="Succeeded"),
        ),
        NOW,
    )
    failed = derive_status(
        task_body(running_status()),
        Observation(
            job=job_view(failed_job_status("BackoffLimitExceeded", failed=3)),
            pod=pod_view(terminated_state(1, "Error"), phase="Failed"),
        ),
        NOW,
    )
    cancelled = derive_status(task_body(queued_status(), cancel=True), Observation(), NOW)
    return {"Succeeded": succeeded, "Failed": failed, "Cancelled": cancelled}


@pytest.mark.parametrize("phase", ["Succeeded", "Failed", "Cancelled"])
@pytest.mark.parametrize(
    "seen",
    [
        Observation(),
        Observation(job_requested=TASK_NAME),
        Observation(agent_found=False, agent_description=MISSING_AGENT),
        Observation(job=job_view(running_job_status()), pod=pod_view(RUNNING_STATE)),
        Observation(
            job=job_view(failed_job_status("DeadlineExceeded")),
            pod=pod_view(terminated_state(137, "Error"), phase="Failed"),
        ),
    ],
    ids=["no-job", "requested", "agent-missing", "running", "deadline"],
)
def test_terminal_status_never_changes(phase, seen):
    current = {
        **terminal_statuses()[phase],
        "logTail": "collecting test results\n3 passed",
        "result": "done",
    }
    assert current["phase"] == phase
    for cancel in (False, True):
        status = derive_status(task_body(current, cancel=cancel, generation=7), seen, LATER)
        assert status == managed(current)
        assert status_changes(current, status) == {}


def test_running_task_seen_without_job_does_not_go_back_to_queued():
    current = {**running_status(), "workspace": CLAIM}
    status = derive_status(task_body(current), Observation(queued_message=QUEUED_MESSAGE), LATER)
    assert status == current
    assert status_changes(current, status) == {}


def test_running_task_seen_without_job_or_agent_does_not_go_back_to_pending():
    seen = Observation(agent_found=False, agent_description=MISSING_AGENT)
    status = derive_status(task_body(running_status()), seen, LATER)
    assert status == running_status()


def test_condition_keeps_its_transition_time_while_its_status_stays_unknown():
    status = derive_status(task_body(queued_status()), Observation(job_requested=TASK_NAME), NOW)
    condition = status["conditions"][0]
    assert (condition["status"], condition["reason"]) == ("Unknown", "Starting")
    assert condition["lastTransitionTime"] == CREATED


def test_condition_transition_time_is_now_when_its_status_changes():
    seen = Observation(
        job=job_view(failed_job_status("DeadlineExceeded")),
        pod=pod_view(terminated_state(137, "Error"), phase="Failed"),
    )
    status = derive_status(task_body(running_status()), seen, LATER)
    assert status["conditions"][0]["status"] == "False"
    assert status["conditions"][0]["lastTransitionTime"] == LATER


def test_condition_transition_time_is_now_when_there_was_no_condition():
    current = {key: value for key, value in queued_status().items() if key != "conditions"}
    status = derive_status(task_body(current), Observation(job_requested=TASK_NAME), LATER)
    assert status["conditions"][0]["lastTransitionTime"] == LATER


def test_running_task_derives_the_same_status_whatever_the_time():
    seen = Observation(job=job_view(running_job_status()), pod=pod_view(RUNNING_STATE), workspace_claim=CLAIM)
    task = task_body({**running_status(), "workspace": CLAIM})
    first = derive_status(task, seen, NOW)
    second = derive_status(task, seen, LATER)
    assert first == second
    assert status_changes(task["status"], first) == {}


@pytest.mark.parametrize(
    "seen",
    [
        Observation(queued_message=QUEUED_MESSAGE),
        Observation(agent_found=False, agent_description=MISSING_AGENT),
        Observation(job_requested=TASK_NAME),
        Observation(job=job_view(running_job_status()), pod=pod_view(CREATING_STATE, phase="Pending")),
        Observation(job=job_view(running_job_status()), pod=pod_view(RUNNING_STATE), workspace_claim=CLAIM),
    ],
    ids=["queued", "pending", "requested", "starting", "running"],
)
def test_re_deriving_a_written_status_later_writes_nothing(seen):
    written = derive_status(task_body(), seen, NOW)
    again = derive_status(task_body(written), seen, LATER)
    assert again == written
    assert status_changes(written, again) == {}


def test_observed_generation_comes_from_the_task_metadata():
    seen = Observation(job=job_view(running_job_status()), pod=pod_view(RUNNING_STATE))
    status = derive_status(task_body(running_status(), generation=4), seen, NOW)
    assert status["observedGeneration"] == 4
    assert status["conditions"][0]["observedGeneration"] == 4


def test_observed_generation_defaults_to_one():
    task = task_body()
    del task["metadata"]["generation"]
    status = derive_status(task, Observation(), NOW)
    assert status["observedGeneration"] == 1
    assert status["conditions"][0]["observedGeneration"] == 1


def test_workspace_claim_is_named_only_when_observed():
    with_claim = derive_status(task_body(), Observation(job_requested=TASK_NAME, workspace_claim=CLAIM), NOW)
    without = derive_status(task_body(), Observation(job_requested=TASK_NAME), NOW)
    assert with_claim["workspace"] == CLAIM
    assert "workspace" not in without


# --- status_changes -----------------------------------------------------------------------------


def test_status_changes_holds_only_the_changed_fields():
    desired = derive_status(task_body(queued_status()), Observation(job_requested=TASK_NAME), NOW)
    patch = status_changes(queued_status(), desired)
    message = "the Job is created; waiting for its pod to start"
    assert patch == {
        "jobName": TASK_NAME,
        "phase": "Running",
        "reason": "Starting",
        "message": message,
        "conditions": [succeeded_condition("Unknown", "Starting", message, CREATED)],
    }


def test_status_changes_of_an_unchanged_status_is_empty():
    assert status_changes(running_status(), running_status()) == {}


def test_status_changes_removes_managed_fields_the_desired_status_lacks():
    current = {**running_status(), "exitCode": 1, "completionTime": FINISHED, "duration": "2m5s"}
    patch = status_changes(current, running_status())
    assert patch == {"exitCode": None, "completionTime": None, "duration": None}


def test_status_changes_leaves_unmanaged_fields_alone():
    current = {**running_status(), "logTail": "running tests\n12 passed", "result": '{"ok": true}'}
    desired = {**running_status(), "attempts": 2}
    assert status_changes(current, desired) == {"attempts": 2}


def test_status_changes_from_no_status():
    desired = derive_status(task_body(), Observation(queued_message=QUEUED_MESSAGE), NOW)
    assert status_changes({}, desired) == desired


# --- tail_lines ---------------------------------------------------------------------------------


def numbered_lines(count, width=0):
    return [f"line {number:03d} ".ljust(width, "x") for number in range(1, count + 1)]


def test_tail_keeps_the_last_fifty_lines():
    lines = numbered_lines(120)
    assert tail_lines("\n".join(lines) + "\n") == "\n".join(lines[-50:])


def test_tail_of_a_short_log_is_the_whole_log():
    lines = numbered_lines(7)
    assert tail_lines("\n".join(lines) + "\n") == "\n".join(lines)


def test_tail_line_count_can_be_chosen():
    lines = numbered_lines(10)
    assert tail_lines("\n".join(lines), lines=3) == "\n".join(lines[-3:])


def test_trailing_newlines_are_not_counted_as_lines():
    lines = numbered_lines(60)
    assert tail_lines("\n".join(lines) + "\n\n\n").split("\n") == lines[-50:]
    assert tail_lines("done\n") == "done"
    assert tail_lines("done") == "done"


def test_blank_lines_inside_the_log_are_kept():
    assert tail_lines("start\n\n\nend\n") == "start\n\n\nend"


def test_empty_log():
    assert tail_lines("") == ""
    assert tail_lines("\n\n") == ""


def test_byte_cap_cuts_whole_lines_from_the_front():
    lines = numbered_lines(50, width=99)  # 100 bytes per line with its newline
    text = "\n".join(lines)
    tail = tail_lines(text, max_bytes=1050)
    assert tail == "\n".join(lines[-10:])  # 10 lines are 999 bytes; 11 would be 1099
    assert len(tail.encode()) <= 1050


def test_default_byte_cap_is_8_kib():
    lines = numbered_lines(50, width=299)  # 300 bytes per line with its newline
    tail = tail_lines("\n".join(lines) + "\n")
    assert tail == "\n".join(lines[-27:])  # 8099 bytes; 28 lines would be 8399
    assert len(tail.encode()) <= 8192


def test_byte_cap_that_fits_whole_lines_exactly_keeps_them_all():
    lines = numbered_lines(50, width=99)
    text = "\n".join(lines)
    exact = len("\n".join(lines[-10:]).encode())
    assert exact == 999
    assert tail_lines(text, max_bytes=exact) == "\n".join(lines[-10:])


def test_single_line_longer_than_the_cap_keeps_its_end():
    text = "progress: " + "." * 20_000 + " done\n"
    tail = tail_lines(text, max_bytes=100)
    assert tail == ("." * 20_000 + " done")[-100:]


@pytest.mark.parametrize("cap", range(10, 40))
def test_byte_cap_never_splits_a_multi_byte_character(cap):
    lines = ["naïve résumé ✓", "日本語のログ", "emoji 🚀🚀 ok", "déjà vu — fin"]
    text = "\n".join(lines) + "\n"
    tail = tail_lines(text, max_bytes=cap)
    encoded = tail.encode()
    assert len(encoded) <= cap
    assert "\ufffd" not in tail
    assert encoded.decode() == tail
    assert text.rstrip("\n").endswith(tail)
    # Once a line boundary is within reach, only whole lines are kept.
    if cap > len(lines[-1].encode()):
        assert tail.split("\n")[0] in lines


def test_single_line_of_multi_byte_characters_is_cut_at_a_character():
    assert tail_lines("é" * 10, max_bytes=5) == "éé"
    assert tail_lines("🚀" * 4, max_bytes=7) == "🚀"


def test_attempt_that_ended_before_the_job_decided_stays_running_with_its_exit_code():
    job = JobView(name="t", uid="job-uid", owner_uid="task-uid", active=1)
    pod = PodView(
        name="t-abc", created="2026-01-01T00:00:01Z", job_uid="job-uid", phase="Failed", exit_code=1
    )

    status = derive_status(
        {"metadata": {"name": "t", "generation": 1}, "spec": {}, "status": {"phase": "Running"}},
        Observation(job=job, pod=pod),
        "2026-01-01T00:00:09Z",
    )

    assert (status["phase"], status["reason"]) == ("Running", "AttemptEnded")
    assert "exited with code 1" in status["message"]
    assert status["exitCode"] == 1


# --- start-up: image pull patience and the start-up deadline ---------------------------------------


def _at(timestamp: str, plus: float = 0.0) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp() + plus


def test_a_transient_pull_failure_is_retried_until_the_patience_runs_out():
    state = {"waiting": {"reason": "ImagePullBackOff", "message": PULL_BACKOFF_MESSAGE}}
    pod = pod_view(state, phase="Pending")
    assert not image_pull_patience_over(pod, _at(pod.created, 299), 300)
    assert image_pull_patience_over(pod, _at(pod.created, 300), 300)
    seen = Observation(job=job_view(running_job_status()), pod=pod, image_pull_patience_over=False)
    status = derive_status(task_body(running_status()), seen, NOW)
    assert (status["phase"], status["reason"]) == ("Running", "ImagePullBackOff")
    seen = Observation(job=job_view(running_job_status()), pod=pod, image_pull_patience_over=True)
    assert derive_status(task_body(running_status()), seen, NOW)["reason"] == "ImagePullFailed"


@pytest.mark.parametrize("reason", ["ErrImageNeverPull", "InvalidImageName"])
def test_a_pull_failure_no_retry_can_fix_fails_at_once(reason):
    pod = pod_view({"waiting": {"reason": reason}}, phase="Pending")
    assert image_pull_patience_over(pod, _at(pod.created), 300)


def test_no_pod_within_the_deadline_names_the_service_account():
    job = job_view(running_job_status(active=0))
    assert startup_overdue(job, None, _at(job.created, 599), 600, "robot") is None
    reason, message = startup_overdue(job, None, _at(job.created, 600), 600, "robot")
    assert reason == "NoPodCreated"
    assert "created no pod within 10m0s" in message and "'robot'" in message


def test_a_missing_secret_key_fails_after_the_deadline_naming_it():
    detail = "couldn't find key token in Secret ns/api-keys"
    pod = pod_view({"waiting": {"reason": "CreateContainerConfigError", "message": detail}}, phase="Pending")
    job = job_view(running_job_status())
    assert startup_overdue(job, pod, _at(pod.created, 10), 600) is None
    reason, message = startup_overdue(job, pod, _at(pod.created, 601), 600)
    assert reason == "ContainerConfigError" and detail in message
    seen = Observation(job=job, pod=pod, startup_overdue=(reason, message))
    status = derive_status(task_body(running_status()), seen, NOW)
    assert (status["phase"], status["reason"], status["message"]) == ("Failed", reason, message)


def test_an_unschedulable_pod_says_why():
    body = pod_body({"waiting": {"reason": "ContainerCreating"}}, phase="Pending")
    body["status"]["conditions"] = [
        {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": "0/1 nodes are available: pod has unbound immediate PersistentVolumeClaims.",
        }
    ]
    pod = PodView.from_body(body)
    job = job_view(running_job_status())
    reason, message = startup_overdue(job, pod, _at(pod.created, 700), 600)
    assert reason == "Unschedulable" and "unbound immediate PersistentVolumeClaims" in message
    assert "workspace claim" not in message  # no claim of the Task's to blame
    _, message = startup_overdue(job, pod, _at(pod.created, 700), 600, claim="t-workspace")
    assert "the workspace claim t-workspace is not bound" in message


def test_a_running_or_finished_agent_is_never_overdue():
    job = job_view(running_job_status())
    for state in (RUNNING_STATE, terminated_state(1, "Error")):
        pod = pod_view(state)
        assert startup_overdue(job, pod, _at(pod.created, 10_000), 600) is None
    assert startup_overdue(job_view(complete_job_status()), None, _at(STARTED, 10_000), 600) is None


# --- evictions -----------------------------------------------------------------------------------

EMPTY_DIR_EVICTION = 'Usage of EmptyDir volume "workspace" exceeds the limit "1Mi". '
NODE_PRESSURE_EVICTION = "The node was low on resource: ephemeral-storage. "


def evicted_pod(message, *, name=POD_NAME, created=STARTED):
    body = pod_body(terminated_state(137, "Error"), name=name, created=created, phase="Failed")
    body["status"].update(reason="Evicted", message=message)
    return PodView.from_body(body)


@pytest.mark.parametrize(
    "message",
    [
        EMPTY_DIR_EVICTION,
        'Container agent exceeded its local ephemeral storage limit "4Gi". ',
        "Pod ephemeral local storage usage exceeds the total limit of containers 4Gi. ",
    ],
)
def test_an_eviction_for_the_pods_own_storage_limit_fails_the_task_naming_it(message):
    pod = evicted_pod(message)
    assert pod.over_storage_limit
    seen = Observation(job=job_view(running_job_status(active=0, failed=1)), pod=pod)
    status = derive_status(task_body(running_status()), seen, NOW)
    assert (status["phase"], status["reason"]) == ("Failed", "StorageLimitExceeded")
    assert message.strip() in status["message"] and POD_NAME in status["message"]
    assert status["conditions"][0]["status"] == "False"


def test_an_own_limit_eviction_names_the_cause_even_after_the_job_failed():
    seen = Observation(
        job=job_view(failed_job_status("BackoffLimitExceeded")), pod=evicted_pod(EMPTY_DIR_EVICTION)
    )
    status = derive_status(task_body(running_status()), seen, NOW)
    assert status["reason"] == "StorageLimitExceeded"
    assert status["completionTime"] == FINISHED


def test_a_node_pressure_eviction_is_a_disruption_the_job_retries():
    pod = evicted_pod(NODE_PRESSURE_EVICTION)
    assert pod.evicted_message == NODE_PRESSURE_EVICTION and not pod.over_storage_limit
    seen = Observation(job=job_view(running_job_status(active=0)), pod=pod)
    status = derive_status(task_body(running_status()), seen, NOW)
    assert status["phase"] == "Running"


def test_a_cancel_wins_over_an_eviction_seen_while_stopping():
    job = job_view(running_job_status(active=0), deleting=True)
    seen = Observation(job=job, pod=evicted_pod(EMPTY_DIR_EVICTION))
    status = derive_status(task_body(running_status(), cancel=True), seen, NOW)
    assert status["phase"] == "Cancelling"


def test_the_evicted_attempt_decides_even_when_the_job_started_another():
    evicted = evicted_pod(EMPTY_DIR_EVICTION, name=f"{TASK_NAME}-aaaaa", created=STARTED)
    retry = pod_view(CREATING_STATE, name=f"{TASK_NAME}-bbbbb", created=FINISHED, phase="Pending")
    assert newest_pod([evicted, retry]) == retry
    assert deciding_pod([evicted, retry]) == evicted
    plain = pod_view(terminated_state(1, "Error"), name=f"{TASK_NAME}-ccccc")
    assert deciding_pod([plain, retry]) == retry
    assert deciding_pod([]) is None
    # A later attempt that succeeded is what the Task reports (its exit code, its result and log).
    assert deciding_pod([evicted, retry], job_complete=True) == retry


def test_an_agent_the_runtime_could_not_start_fails_with_the_runtimes_message():
    runtime = (
        'failed to create containerd task: ... exec: "taskyard-agent": executable file not found in $PATH'
    )
    seen = Observation(
        job=job_view(failed_job_status("BackoffLimitExceeded", failed=1)),
        pod=pod_view(terminated_state(128, "StartError", runtime), phase="Failed"),
    )
    status = derive_status(task_body(running_status()), seen, NOW)
    assert (status["phase"], status["reason"]) == ("Failed", "ContainerCannotRun")
    assert status["message"] == f"the agent container could not be started: {runtime}"
    assert status["exitCode"] == 128


def test_an_agent_waiting_for_its_credential_proxy_shows_the_proxys_trouble():
    detail = 'secret "taskyard-anthropic" not found'
    body = pod_body({"waiting": {"reason": "PodInitializing"}}, phase="Pending")
    body["status"]["initContainerStatuses"] = [
        {
            "name": "credential-proxy",
            "state": {"waiting": {"reason": "CreateContainerConfigError", "message": detail}},
        }
    ]
    pod = PodView.from_body(body)
    assert pod.waiting_reason == "CreateContainerConfigError"
    assert pod.waiting_message == f"container credential-proxy: {detail}"
    # A sidecar that is only starting is not trouble: the agent's own state shows.
    body["status"]["initContainerStatuses"][0]["state"] = {"waiting": {"reason": "ContainerCreating"}}
    assert PodView.from_body(body).waiting_reason == "PodInitializing"
