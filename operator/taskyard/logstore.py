"""How collected agent logs are kept: one gzip member per attempt in a ConfigMap owned by the Task.

Pods are short-lived (a retry replaces them, a timeout or cancel deletes them, a node can vanish), so the
operator copies each attempt's output into ``<job name>-logs`` as soon as the attempt ends or its pod
starts shutting down. A ConfigMap rather than the workspace volume: it needs no volume at all (most Tasks
use an emptyDir that dies with the pod), it is readable through the API with the Task's RBAC, and it is
deleted with the Task by the garbage collector. The price is Kubernetes' 1 MiB object limit, hence
compression, a per-attempt cap that drops the head (the end of a log says why it ended), and dropping the
oldest attempts when the total would not fit.
"""

from __future__ import annotations

import gzip

from taskyard.render import job_name_for

ATTEMPT_LOG_CAP_BYTES = 256 * 1024  # of text, per attempt, before compression
CONFIG_MAP_BUDGET_BYTES = 900 * 1024  # of compressed logs in one ConfigMap (the object limit is 1 MiB)


def log_config_map_name(task_name: str) -> str:
    """The ConfigMap that keeps a Task's logs."""
    return f"{job_name_for(task_name)}-logs"


def log_key(attempt: int) -> str:
    """The binaryData key of one attempt's compressed log."""
    return f"attempt-{attempt}.log.gz"


def pod_key(attempt: int) -> str:
    """The data key naming the pod an attempt ran in."""
    return f"attempt-{attempt}.pod"


def pack_log(text: str, cap: int = ATTEMPT_LOG_CAP_BYTES) -> bytes:
    """Compresses a log, first cutting it to its last ``cap`` bytes with a marker saying how much went."""
    raw = text.encode()
    if len(raw) > cap:
        dropped = len(raw) - cap
        kept = raw[dropped:]
        newline = kept.find(b"\n")
        if 0 <= newline < len(kept) - 1:  # start on a whole line
            dropped += newline + 1
            kept = kept[newline + 1 :]
        raw = f"[taskyard: {dropped} bytes dropped from the start]\n".encode() + kept
    return gzip.compress(raw, mtime=0)


def unpack_log(packed: bytes) -> str:
    """The text of a packed log."""
    return gzip.decompress(packed).decode(errors="replace")


def attempts_to_keep(sizes: dict[int, int], budget: int = CONFIG_MAP_BUDGET_BYTES) -> set[int]:
    """The attempts whose logs fit in the budget, newest first; the newest is always kept."""
    kept: set[int] = set()
    total = 0
    for attempt in sorted(sizes, reverse=True):
        if kept and total + sizes[attempt] > budget:
            break
        kept.add(attempt)
        total += sizes[attempt]
    return kept
