"""Admission order and limits of the Task queue."""

import random
from collections import Counter

import pytest

from taskyard.queue import (
    Limits,
    QueueEntry,
    admission_order,
    effective_rank,
    queue_positions,
    select_admissions,
)

pytestmark = pytest.mark.unit

NOW = 1_000_000.0
HOUR = 3600.0


def entry(name, priority="medium", created=NOW - 10, namespace="ns", agent="Agent/ns/coder"):
    return QueueEntry(namespace=namespace, name=name, agent=agent, priority=priority, created=created)


def names(entries):
    return [item.name for item in entries]


def test_rank_follows_priority_without_aging():
    ranks = [
        effective_rank(entry("x", priority), NOW, 0) for priority in ("critical", "high", "medium", "low")
    ]
    assert ranks == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("waited", "rank"),
    [(0, 3), (HOUR - 1, 3), (HOUR, 2), (2 * HOUR, 1), (3 * HOUR, 0), (30 * HOUR, 0)],
)
def test_rank_improves_one_level_per_aging_period_and_stops_at_critical(waited, rank):
    assert effective_rank(entry("x", "low", created=NOW - waited), NOW, HOUR) == rank


def test_aging_can_be_turned_off_and_ignores_future_creation_times():
    old = entry("x", "low", created=NOW - 100 * HOUR)
    assert effective_rank(old, NOW, 0) == 3
    assert effective_rank(old, NOW, -5) == 3
    assert effective_rank(entry("x", "low", created=NOW + HOUR), NOW, HOUR) == 3


def test_unknown_priority_is_reported():
    with pytest.raises(ValueError, match="priority: 'urgent' is not a priority; use one of critical, high"):
        effective_rank(entry("x", "urgent"), NOW, HOUR)


def test_order_is_by_priority_then_oldest_first():
    waiting = [
        entry("low-old", "low", created=NOW - 50),
        entry("medium-new", "medium", created=NOW - 1),
        entry("critical", "critical", created=NOW - 2),
        entry("medium-old", "medium", created=NOW - 40),
        entry("high", "high", created=NOW - 3),
    ]
    assert names(admission_order(waiting, NOW, 0)) == [
        "critical",
        "high",
        "medium-old",
        "medium-new",
        "low-old",
    ]


def test_ties_are_broken_by_namespace_and_name_whatever_the_input_order():
    waiting = [entry("b", namespace="z"), entry("b", namespace="a"), entry("a", namespace="z")]
    expected = [("a", "b"), ("z", "a"), ("z", "b")]
    for shuffled in (waiting, waiting[::-1]):
        assert [(e.namespace, e.name) for e in admission_order(shuffled, NOW, 0)] == expected


def test_aging_lets_an_old_low_task_pass_newer_high_ones():
    old_low = entry("old-low", "low", created=NOW - 2 * HOUR - 1)  # low -> high after two periods
    newer_high = [entry(f"high-{i}", "high", created=NOW - 60 + i) for i in range(3)]
    assert names(admission_order([*newer_high, old_low], NOW, HOUR)) == [
        "old-low",
        "high-0",
        "high-1",
        "high-2",
    ]
    # Without aging the same Task waits behind all of them.
    assert names(admission_order([*newer_high, old_low], NOW, 0))[-1] == "old-low"


def test_queue_positions_are_one_based_in_admission_order():
    waiting = [entry("c", "low"), entry("a", "critical"), entry("b", "high", namespace="other")]
    assert queue_positions(waiting, NOW, 0) == {("ns", "a"): 1, ("other", "b"): 2, ("ns", "c"): 3}
    assert queue_positions([], NOW, 0) == {}


def test_without_limits_everything_is_admitted_in_order():
    waiting = [entry("b", "low"), entry("a", "high")]
    assert names(select_admissions(waiting, [], Limits(None, None, {}), NOW, 0)) == ["a", "b"]


def test_total_limit_counts_running_tasks_and_stops_admission():
    waiting = [entry(f"t{i}", created=NOW - 100 + i) for i in range(5)]
    running = [("ns", "Agent/ns/coder"), ("other", "ClusterAgent/x")]
    assert names(select_admissions(waiting, running, Limits(total=4), NOW, 0)) == ["t0", "t1"]
    assert select_admissions(waiting, running, Limits(total=2), NOW, 0) == []
    assert select_admissions(waiting, running * 3, Limits(total=2), NOW, 0) == []


def test_namespace_limit():
    waiting = [
        entry("a1", created=NOW - 9, namespace="a"),
        entry("a2", created=NOW - 8, namespace="a"),
        entry("b1", created=NOW - 7, namespace="b"),
        entry("a3", created=NOW - 6, namespace="a"),
        entry("b2", created=NOW - 5, namespace="b"),
    ]
    running = [("b", "Agent/b/coder")]
    admitted = select_admissions(waiting, running, Limits(per_namespace=2), NOW, 0)
    assert names(admitted) == ["a1", "a2", "b1"]


def test_a_blocked_agent_does_not_block_other_agents_behind_it():
    busy, free = "ClusterAgent/busy", "ClusterAgent/free"
    waiting = [
        entry("busy-critical", "critical", agent=busy),
        entry("busy-high", "high", agent=busy),
        entry("free-low", "low", agent=free),
    ]
    limits = Limits(per_agent={busy: 1})
    assert names(select_admissions(waiting, [("ns", busy)], limits, NOW, 0)) == ["free-low"]
    assert names(select_admissions(waiting, [], limits, NOW, 0)) == ["busy-critical", "free-low"]


def test_agent_limits_are_per_agent_key():
    same_name = [
        entry("x", agent="Agent/a/coder", namespace="a"),
        entry("y", agent="Agent/b/coder", namespace="b"),
    ]
    limits = Limits(per_agent={"Agent/a/coder": 1, "Agent/b/coder": 1})
    assert names(select_admissions(same_name, [], limits, NOW, 0)) == ["x", "y"]


def test_a_full_total_stops_even_entries_that_other_limits_would_allow():
    waiting = [entry("a", namespace="a"), entry("b", namespace="b"), entry("c", namespace="c")]
    assert names(select_admissions(waiting, [], Limits(total=2, per_namespace=5), NOW, 0)) == ["a", "b"]


def test_a_zero_limit_admits_nothing_there():
    waiting = [entry("a", agent="ClusterAgent/off"), entry("b", agent="ClusterAgent/on")]
    assert names(select_admissions(waiting, [], Limits(per_agent={"ClusterAgent/off": 0}), NOW, 0)) == ["b"]
    assert select_admissions(waiting, [], Limits(total=0), NOW, 0) == []


def _random_case(rng: random.Random):
    namespaces = [f"ns{i}" for i in range(rng.randint(1, 6))]
    agents = [f"ClusterAgent/a{i}" for i in range(rng.randint(1, 6))]
    waiting = [
        QueueEntry(
            namespace=rng.choice(namespaces),
            name=f"task-{i}",
            agent=rng.choice(agents),
            priority=rng.choice(["critical", "high", "medium", "low"]),
            created=NOW - rng.uniform(0, 6 * HOUR),
        )
        for i in range(rng.randint(0, 400))
    ]
    limits = Limits(
        total=rng.choice([None, rng.randint(0, 120)]),
        per_namespace=rng.choice([None, rng.randint(0, 30)]),
        per_agent={agent: rng.randint(0, 25) for agent in agents if rng.random() < 0.7},
    )
    running = [(rng.choice(namespaces), rng.choice(agents)) for _ in range(rng.randint(0, 30))]
    aging = rng.choice([0, HOUR, 0.5 * HOUR])
    return waiting, running, limits, aging


def _within(count: int, limit: int | None, already: int) -> bool:
    # Limits may already be exceeded by running Tasks (a limit lowered later); then nothing may be added.
    return limit is None or count <= max(limit, already)


@pytest.mark.parametrize("seed", range(60))
def test_random_queues_respect_limits_order_and_leave_no_usable_capacity(seed):
    rng = random.Random(seed)
    waiting, running, limits, aging = _random_case(rng)
    admitted = select_admissions(waiting, running, limits, NOW, aging)
    order = admission_order(waiting, NOW, aging)
    position = {(e.namespace, e.name): i for i, e in enumerate(order)}
    admitted_keys = {(e.namespace, e.name) for e in admitted}
    skipped = [e for e in order if (e.namespace, e.name) not in admitted_keys]

    # Admitted entries come in admission order, each at most once.
    assert [position[(e.namespace, e.name)] for e in admitted] == sorted(
        position[(e.namespace, e.name)] for e in admitted
    )
    assert len(admitted_keys) == len(admitted)

    # No limit is pushed past its value (or past what running Tasks already use).
    running_ns = Counter(namespace for namespace, _ in running)
    running_agents = Counter(agent for _, agent in running)
    ns_after = running_ns + Counter(e.namespace for e in admitted)
    agents_after = running_agents + Counter(e.agent for e in admitted)
    assert _within(len(running) + len(admitted), limits.total, len(running))
    for namespace, count in ns_after.items():
        if any(e.namespace == namespace for e in admitted):
            assert limits.per_namespace is None or count <= limits.per_namespace
    for agent, count in agents_after.items():
        if any(e.agent == agent for e in admitted):
            assert agent not in limits.per_agent or count <= limits.per_agent[agent]

    # No inversion: a skipped entry never loses to a later entry that faces the same constraints.
    for late in admitted:
        for early in skipped:
            if (early.namespace, early.agent) == (late.namespace, late.agent):
                assert position[(late.namespace, late.name)] < position[(early.namespace, early.name)]

    # Nothing is left waiting that could have started: every skipped entry hits a full limit.
    total_full = limits.total is not None and len(running) + len(admitted) >= limits.total
    for early in skipped:
        ns_full = limits.per_namespace is not None and ns_after[early.namespace] >= limits.per_namespace
        agent_limit = limits.per_agent.get(early.agent)
        agent_full = agent_limit is not None and agents_after[early.agent] >= agent_limit
        assert total_full or ns_full or agent_full, early


def test_random_queues_exercise_every_kind_of_skip():
    """Guards the randomized test against only ever generating trivial cases."""
    reasons = Counter()
    for seed in range(60):
        waiting, running, limits, aging = _random_case(random.Random(seed))
        admitted = select_admissions(waiting, running, limits, NOW, aging)
        reasons["admitted"] += bool(admitted)
        reasons["skipped"] += len(admitted) < len(waiting)
        reasons["total"] += limits.total is not None and len(running) + len(admitted) == limits.total
        reasons["aging"] += aging > 0
    assert all(reasons[key] >= 5 for key in ("admitted", "skipped", "total", "aging")), reasons


# --- the incremental waiting queue ---------------------------------------------------------------


def test_waiting_queue_reads_in_the_same_order_as_a_full_sort():
    import random

    from taskyard.queue import WaitingQueue

    rng = random.Random(7)
    queue = WaitingQueue()
    entries = {}
    for n in range(400):
        entry = QueueEntry(
            namespace=f"ns{rng.randrange(3)}",
            name=f"t{n}",
            agent="",
            priority=rng.choice(["critical", "high", "medium", "low"]),
            created=float(rng.randrange(0, 5000)),
        )
        entries[f"uid{n}"] = entry
        queue.add(f"uid{n}", entry.namespace, entry.name, entry.priority, entry.created)
    for uid in rng.sample(sorted(entries), 100):  # some leave the queue
        queue.remove(uid)
        del entries[uid]
    queue.add("uid-moved", "ns0", "moved", "low", 1.0)
    queue.remove("uid-moved")
    for now, aging in ((5000.0, 600.0), (9000.0, 600.0), (5000.0, 0.0), (100000.0, 60.0)):
        expected = admission_order(entries.values(), now, aging)
        assert [entry for _, entry in queue.ordered(now, aging)] == expected
    assert len(queue) == 300


def test_waiting_queue_refuses_an_unknown_priority():
    from taskyard.queue import WaitingQueue

    with pytest.raises(ValueError, match="priority"):
        WaitingQueue().add("u", "ns", "t", "urgent", 0.0)


def test_select_in_order_reads_only_as_far_as_there_is_room():
    from taskyard.queue import select_in_order

    read = []

    def ordered():
        for n in range(10_000):
            read.append(n)
            yield QueueEntry(namespace="ns", name=f"t{n}", agent="a", priority="medium", created=float(n))

    chosen = select_in_order(ordered(), [("ns", "a")] * 3, Limits(total=5))
    assert [entry.name for entry in chosen] == ["t0", "t1"]
    assert len(read) == 3
