"""The supervisor's decisions without processes: restart delays, giving up, node numbers, how
a child is described and told who it is. With processes:
tests/integration/test_supervisor_processes.py."""

from __future__ import annotations

import random
import signal

import pytest

from fake_clock import FakeClock
from sluice.model import NODE_MAX
from sluice.process.supervisor import (
    ChildSpec,
    RestartPolicy,
    child_nodes,
    describe_exit,
    serve_command,
)


def test_quick_deaths_double_the_delay_then_give_up() -> None:
    clock = FakeClock(1000.0)
    policy = RestartPolicy(clock=clock)
    delays = []
    for _ in range(5):
        policy.started(0)
        clock.now += 0.8  # dies while starting: a bad database URL
        delays.append(policy.died(0))
        clock.now += delays[-1] or 0
    assert delays == [0.5, 1.0, 2.0, 4.0, None]
    assert policy.quick_deaths(0) == 5


def test_a_death_after_a_stable_life_starts_the_count_over() -> None:
    clock = FakeClock(1000.0)
    policy = RestartPolicy(clock=clock, stable_seconds=10)
    for _ in range(3):
        policy.started(0)
        clock.now += 1
        policy.died(0)
    assert policy.quick_deaths(0) == 3
    policy.started(0)
    clock.now += 10  # it ran properly this time
    assert policy.died(0) == 0.5
    assert policy.quick_deaths(0) == 0
    policy.started(0)
    clock.now += 1
    assert policy.died(0) == 0.5  # the first quick death of a new series


def test_slots_are_counted_apart_and_the_delay_is_capped() -> None:
    clock = FakeClock(1000.0)
    policy = RestartPolicy(
        clock=clock, base_seconds=1, max_seconds=3, stable_seconds=60, max_quick_deaths=10
    )
    delays = []
    for _ in range(4):
        policy.started(0)
        clock.now += 1
        delays.append(policy.died(0))
    assert delays == [1.0, 2.0, 3.0, 3.0]
    policy.started(1)
    clock.now += 1
    assert policy.died(1) == 1.0
    assert (policy.quick_deaths(0), policy.quick_deaths(1)) == (4, 1)


def test_nodes_follow_server_node_or_are_distinct_random_ones() -> None:
    assert child_nodes(100, 3) == [100, 101, 102]
    assert child_nodes(NODE_MAX - 1, 2) == [NODE_MAX - 1, NODE_MAX]
    for seed in range(20):
        nodes = child_nodes(None, 64, random.Random(seed))
        assert len(set(nodes)) == 64
        assert all(0 <= n <= NODE_MAX for n in nodes)
    assert sorted(child_nodes(None, NODE_MAX + 1, random.Random(1))) == list(range(NODE_MAX + 1))
    with pytest.raises(ValueError, match="largest node 1023"):
        child_nodes(NODE_MAX, 2)


def test_exits_are_described_by_status_or_signal_name() -> None:
    assert describe_exit(0) == "exited with status 0"
    assert describe_exit(1) == "exited with status 1"
    assert describe_exit(-signal.SIGKILL) == "was killed by SIGKILL"
    assert describe_exit(-signal.SIGSEGV) == "was killed by SIGSEGV"
    assert describe_exit(-200) == "was killed by signal 200"


def test_a_child_is_told_who_it_is_on_its_command_line() -> None:
    spec = ChildSpec(slot=1, node=101, parent=4242, http_fd=5, smtp_fd=6)
    command = serve_command("/etc/sluice.toml", verbose=True)(spec)
    assert command[1:6] == ["-m", "sluice.cli", "-v", "serve", "--config"]
    assert command[-2] == "--child"
    assert ChildSpec.decode(command[-1]) == spec
    assert ChildSpec.decode('{"slot":0,"node":3,"parent":1,"http_fd":4}').smtp_fd is None
    with pytest.raises(ValueError, match="not a child specification"):
        ChildSpec.decode('{"slot":0}')
    with pytest.raises(ValueError, match="not a child specification"):
        ChildSpec.decode("slot=0")
