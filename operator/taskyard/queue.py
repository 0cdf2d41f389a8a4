"""Which waiting Tasks may start now, and in which order they wait.

Tasks wait by priority, oldest first within a priority. A Task that has waited long moves up one priority
level per aging period, so a steady stream of urgent work cannot starve the rest. Capacity is limited in
total, per namespace and per agent; a Task held back only by its own namespace or agent does not hold
back Tasks of other namespaces and agents behind it.
"""

import bisect
import heapq
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from taskyard.api import PRIORITIES


@dataclass(frozen=True)
class QueueEntry:
    """A waiting Task, as far as the queue is concerned.

    `agent` is the resolved agent key, e.g. "Agent/ns/coder" or "ClusterAgent/coder", so that Agents of the
    same name in different namespaces count separately. `created` is in epoch seconds.
    """

    namespace: str
    name: str
    agent: str
    priority: str
    created: float


@dataclass(frozen=True)
class Limits:
    """How many Tasks may run at once: in total, per namespace and per agent key. None means unlimited."""

    total: int | None = None
    per_namespace: int | None = None
    per_agent: Mapping[str, int] = field(default_factory=dict)


def _base_rank(priority: str) -> int:
    try:
        return PRIORITIES.index(priority)
    except ValueError:
        raise ValueError(
            f"priority: {priority!r} is not a priority; use one of {', '.join(PRIORITIES)}"
        ) from None


def effective_rank(entry: QueueEntry, now: float, aging_seconds: float) -> int:
    """The entry's rank now: 0 for critical to 3 for low, one better per full `aging_seconds` waited.

    Never better than 0. `aging_seconds` <= 0 turns aging off.
    """
    rank = _base_rank(entry.priority)
    if aging_seconds <= 0:
        return rank
    waited = max(0.0, now - entry.created)
    return max(0, rank - int(waited // aging_seconds))


def admission_order(waiting: Iterable[QueueEntry], now: float, aging_seconds: float) -> list[QueueEntry]:
    """The waiting entries in the order they should start: by effective rank, then oldest first.

    Namespace and name break the remaining ties, so the order never depends on how the input was listed.
    """
    return sorted(
        waiting,
        key=lambda entry: (
            effective_rank(entry, now, aging_seconds),
            entry.created,
            entry.namespace,
            entry.name,
        ),
    )


def queue_positions(
    waiting: Iterable[QueueEntry], now: float, aging_seconds: float
) -> dict[tuple[str, str], int]:
    """Each waiting entry's 1-based place in the admission order, keyed by (namespace, name)."""
    ordered = admission_order(waiting, now, aging_seconds)
    return {(entry.namespace, entry.name): position for position, entry in enumerate(ordered, start=1)}


def select_admissions(
    waiting: Iterable[QueueEntry],
    running: Iterable[tuple[str, str]],
    limits: Limits,
    now: float,
    aging_seconds: float,
) -> list[QueueEntry]:
    """The waiting entries that may start now, in admission order.

    `running` holds (namespace, agent key) of every running Task. Entries are taken in admission order while
    their namespace, agent and the total have room, counting the running Tasks and the entries taken before.
    An entry whose namespace or agent is full is passed over, and later entries of other namespaces and
    agents can still start; once the total is full, nothing else does.
    """
    return select_in_order(admission_order(waiting, now, aging_seconds), running, limits)


def select_in_order(
    ordered: Iterable[QueueEntry], running: Iterable[tuple[str, str]], limits: Limits
) -> list[QueueEntry]:
    """:func:`select_admissions` over entries already in admission order, read only as far as needed
    (so a long queue in front of a full cluster costs nothing)."""
    by_namespace: Counter[str] = Counter()
    by_agent: Counter[str] = Counter()
    total = 0
    for namespace, agent in running:
        by_namespace[namespace] += 1
        by_agent[agent] += 1
        total += 1

    admitted = []
    for entry in ordered:
        if limits.total is not None and total >= limits.total:
            break
        if limits.per_namespace is not None and by_namespace[entry.namespace] >= limits.per_namespace:
            continue
        agent_limit = limits.per_agent.get(entry.agent)
        if agent_limit is not None and by_agent[entry.agent] >= agent_limit:
            continue
        admitted.append(entry)
        by_namespace[entry.namespace] += 1
        by_agent[entry.agent] += 1
        total += 1
    return admitted


# (created, namespace, name, uid): a waiting Task's place within its priority.
_Place = tuple[float, str, str, str]


class WaitingQueue:
    """The waiting Tasks, kept in order as they come and go, so admission never sorts the whole queue.

    One sorted list per priority, oldest first. Within one priority an older Task never has a worse
    effective rank than a younger one (aging only ever helps the longer wait), so the admission order is
    a merge of the lists' heads: reading the first k entries costs O(k log 4), whatever the queue's length.
    """

    def __init__(self) -> None:
        self._lists: dict[str, list[_Place]] = {priority: [] for priority in PRIORITIES}
        self._places: dict[str, tuple[str, _Place]] = {}  # uid -> (priority, place)

    def __len__(self) -> int:
        return len(self._places)

    def __contains__(self, uid: str) -> bool:
        return uid in self._places

    def add(self, uid: str, namespace: str, name: str, priority: str, created: float) -> None:
        _base_rank(priority)  # unknown priorities are refused here, not when the queue is read
        place = (created, namespace, name, uid)
        if self._places.get(uid) == (priority, place):
            return
        self.remove(uid)
        bisect.insort(self._lists[priority], place)
        self._places[uid] = (priority, place)

    def remove(self, uid: str) -> None:
        known = self._places.pop(uid, None)
        if known is None:
            return
        priority, place = known
        entries = self._lists[priority]
        index = bisect.bisect_left(entries, place)
        if index < len(entries) and entries[index] == place:
            del entries[index]

    def ordered(self, now: float, aging_seconds: float) -> Iterator[tuple[str, QueueEntry]]:
        """(uid, entry) in admission order (``entry.agent`` is left empty for the caller to resolve)."""

        def entries(priority: str) -> Iterator[tuple[tuple[int, float, str, str], str, QueueEntry]]:
            for created, namespace, name, uid in self._lists[priority]:
                entry = QueueEntry(
                    namespace=namespace, name=name, agent="", priority=priority, created=created
                )
                yield (effective_rank(entry, now, aging_seconds), created, namespace, name), uid, entry

        for _, uid, entry in heapq.merge(*(entries(priority) for priority in PRIORITIES)):
            yield uid, entry
