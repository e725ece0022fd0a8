"""Transactions and resource pools, through a cage's own `protocol_fake.py` resource.

The fake resource records its lifecycle in EVENTS, so the tests see what a
real connection would have been told: connect, begin, commit, rollback,
disconnect.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from conftest import InProcessCage, config_source, module_source, wait_until
from pmnc.errors import (
    ResourceError,
    ResourceInputParameterError,
    TransactionCommitError,
    TransactionExecutionError,
)
from pmnc.request import Request, attached

FAKE = module_source("""
    import threading
    import time

    from pmnc.errors import ResourceError
    from pmnc.resource import Resource as Base

    EVENTS = []
    GATE = threading.Event()

    class Resource(Base):
        def connect(self):
            if self.config.get("refuse_connect"):
                raise ConnectionRefusedError("nobody there")
            EVENTS.append(("connect", self.name))

        def disconnect(self):
            EVENTS.append(("disconnect", self.name))

        def begin_transaction(self, xid, **kwargs):
            EVENTS.append(("begin", self.name, kwargs["resource_args"], kwargs["resource_kwargs"]))

        def commit(self):
            if self.config.get("fail_commit"):
                raise RuntimeError("commit failed")
            EVENTS.append(("commit", self.name))

        def rollback(self):
            EVENTS.append(("rollback", self.name))

        def echo(self, value, suffix=""):
            return f"{value}{suffix}"

        def fail(self, terminal):
            raise ResourceError("failed on purpose", code=7, recoverable=True, terminal=terminal)

        def crash(self):
            raise ValueError("crashed")

        def sleep(self, seconds):
            time.sleep(seconds)
            return seconds

        def remain(self):
            return pmnc_request().remain

        def wait_gate(self):
            GATE.wait(5.0)
            return "released"

    def pmnc_request():
        from pmnc.request import current
        return current()
""", [])


def start(in_process_cage: Callable[..., InProcessCage], **resource: Any) -> InProcessCage:
    config = {"protocol": "fake", "pool__size": 2, **resource}
    return in_process_cage(files={"protocol_fake.py": FAKE, "config_resource_fake.py": config_source(config)})


def fake(cage: InProcessCage) -> Any:
    return cage.cage.loader.current("protocol_fake").module


def events(cage: InProcessCage, kind: str) -> list[tuple[Any, ...]]:
    return [e for e in fake(cage).EVENTS if e[0] == kind]


def test_shortcut_calls_one_participant_and_commits(in_process_cage: Callable[..., InProcessCage],
                                                    attach: Callable[[float], Request]) -> None:
    cage = start(in_process_cage)
    attach(5.0)
    pmnc = cage.cage.runtime.root
    assert pmnc.transaction.fake.echo("hello", suffix="!") == "hello!"
    assert pmnc.transaction.fake.echo("again") == "again"
    assert len(events(cage, "connect")) == 1, "the connection is pooled and reused"
    assert len(events(cage, "commit")) == 2


def test_results_come_in_registration_order(in_process_cage: Callable[..., InProcessCage],
                                            attach: Callable[[float], Request]) -> None:
    cage = start(in_process_cage)
    attach(5.0)
    xa = cage.cage.runtime.root.transaction.create()
    xa.fake.sleep(0.2)
    xa.fake.echo("fast")
    assert xa.execute() == (0.2, "fast")
    assert len(events(cage, "commit")) == 2


def test_empty_transaction_returns_an_empty_tuple(in_process_cage: Callable[..., InProcessCage],
                                                  attach: Callable[[float], Request]) -> None:
    cage = start(in_process_cage)
    attach(5.0)
    assert cage.cage.runtime.root.transaction.create().execute() == ()


def test_resource_args_reach_begin_transaction(in_process_cage: Callable[..., InProcessCage],
                                               attach: Callable[[float], Request]) -> None:
    cage = start(in_process_cage)
    attach(5.0)
    xa = cage.cage.runtime.root.transaction.create()
    xa.fake("serializable", read_only=True).echo(1)
    xa.execute()
    assert events(cage, "begin")[-1][2:] == (("serializable",), {"read_only": True})


def test_a_failing_participant_rolls_all_back(in_process_cage: Callable[..., InProcessCage],
                                              attach: Callable[[float], Request]) -> None:
    cage = start(in_process_cage)
    attach(5.0)
    xa = cage.cage.runtime.root.transaction.create()
    xa.fake.echo("fine")
    xa.fake.fail(False)
    with pytest.raises(ResourceError) as info:
        xa.execute()
    assert (info.value.code, info.value.participant_index, info.value.recoverable) == (7, 1, True)
    wait_until(lambda: len(events(cage, "rollback")) == 2, message="both participants rolled back")
    assert events(cage, "commit") == []
    assert events(cage, "disconnect") == [], "a non-terminal error keeps the connection"


def test_terminal_error_discards_the_connection(in_process_cage: Callable[..., InProcessCage],
                                                attach: Callable[[float], Request]) -> None:
    cage = start(in_process_cage)
    attach(5.0)
    pmnc = cage.cage.runtime.root
    with pytest.raises(ResourceError):
        pmnc.transaction.fake.fail(True)
    wait_until(lambda: len(events(cage, "disconnect")) == 1, message="the connection discarded")
    assert pmnc.transaction.fake.echo("new") == "new"
    assert len(events(cage, "connect")) == 2


def test_other_exceptions_become_unrecoverable_terminal_resource_errors(
        in_process_cage: Callable[..., InProcessCage], attach: Callable[[float], Request]) -> None:
    cage = start(in_process_cage)
    attach(5.0)
    with pytest.raises(ResourceError) as info:
        cage.cage.runtime.root.transaction.fake.crash()
    assert str(info.value) == 'ValueError("crashed")'
    assert (info.value.recoverable, info.value.terminal, info.value.participant_index) == (False, True, 0)
    wait_until(lambda: len(events(cage, "disconnect")) == 1, message="the connection discarded")


def test_connect_failure_is_a_recoverable_resource_error(in_process_cage: Callable[..., InProcessCage],
                                                         attach: Callable[[float], Request]) -> None:
    cage = start(in_process_cage, refuse_connect=True)
    attach(5.0)
    with pytest.raises(ResourceError) as info:
        cage.cage.runtime.root.transaction.fake.echo(1)
    assert info.value.recoverable
    assert "cannot connect" in str(info.value) and "nobody there" in str(info.value)


def test_deadline_while_a_participant_works(in_process_cage: Callable[..., InProcessCage],
                                            attach: Callable[[float], Request]) -> None:
    cage = start(in_process_cage)
    request = attach(0.5)
    xa = cage.cage.runtime.root.transaction.create()
    xa.fake.echo(1)
    xa.fake.sleep(1.5)
    with pytest.raises(TransactionExecutionError) as info:
        xa.execute()
    assert info.value.participant_index == 1
    assert request.elapsed < 1.2, "the caller gets the error at its deadline, not when the work ends"
    wait_until(lambda: len(events(cage, "rollback")) == 2, message="both participants rolled back")


def test_more_participants_than_threads_fail_at_once(in_process_cage: Callable[..., InProcessCage],
                                                     attach: Callable[[float], Request]) -> None:
    cage = start(in_process_cage)
    request = attach(5.0)
    xa = cage.cage.runtime.root.transaction.create()
    for i in range(3):
        xa.fake.echo(i)
    with pytest.raises(TransactionExecutionError) as info:
        xa.execute()
    assert info.value.participant_index == 2
    assert request.elapsed < 1.0


def test_accept_may_take_the_first_result(in_process_cage: Callable[..., InProcessCage],
                                          attach: Callable[[float], Request]) -> None:
    cage = start(in_process_cage)
    attach(5.0)
    seen: list[list[Any]] = []

    def first(xa: Any, results: list[Any]) -> Any:
        seen.append(list(results))
        done = [r for r in results if r is not xa.NoValue]
        return done[0] if done else None

    xa = cage.cage.runtime.root.transaction.create(accept=first, sync_commit=False)
    xa.fake.wait_gate()
    xa.fake.echo("quick")
    assert xa.execute() == "quick"
    assert seen[-1][0] is xa.NoValue
    fake(cage).GATE.set()


def test_commit_failure_is_reported_with_sync_commit(in_process_cage: Callable[..., InProcessCage],
                                                     attach: Callable[[float], Request]) -> None:
    cage = start(in_process_cage, fail_commit=True)
    attach(5.0)
    with pytest.raises(TransactionCommitError) as info:
        cage.cage.runtime.root.transaction.fake.echo(1)
    assert "commit failed" in str(info.value)


def test_lifecycle_and_unknown_methods_are_refused(in_process_cage: Callable[..., InProcessCage],
                                                   attach: Callable[[float], Request]) -> None:
    cage = start(in_process_cage)
    attach(5.0)
    pmnc = cage.cage.runtime.root
    for call in (pmnc.transaction.fake.disconnect, pmnc.transaction.fake.nothing_like_it):
        with pytest.raises(ResourceInputParameterError):
            call()


def test_max_time_caps_a_call_and_min_time_declines(in_process_cage: Callable[..., InProcessCage],
                                                    attach: Callable[[float], Request]) -> None:
    cage = start(in_process_cage, pool__max_time=1.0, pool__min_time=0.5)
    attach(5.0)
    pmnc = cage.cage.runtime.root
    assert pmnc.transaction.fake.remain() <= 1.0
    attach(0.3)
    with pytest.raises(ResourceError) as info:
        pmnc.transaction.fake.echo(1)
    assert info.value.recoverable and "pool__min_time" in str(info.value)


def test_idle_connections_are_swept_and_standby_kept(in_process_cage: Callable[..., InProcessCage],
                                                     attach: Callable[[float], Request]) -> None:
    cage = start(in_process_cage, pool__idle_timeout=0.2, pool__standby=1)
    attach(5.0)
    assert cage.cage.runtime.root.transaction.fake.echo(1) == "1"
    pool = cage.cage.runtime.resources.get("fake")
    wait_until(lambda: _swept(pool, cage), 5.0, message="the idle connection closed and a standby one connected")


def _swept(pool: Any, cage: InProcessCage) -> bool:
    pool.sweep()  # what the cage's maintenance does every sweep_period
    return len(events(cage, "disconnect")) >= 1 and pool.free == 1


def test_concurrent_transactions_share_the_pool(in_process_cage: Callable[..., InProcessCage]) -> None:
    cage = start(in_process_cage)
    pmnc = cage.cage.runtime.root
    results: list[str] = []
    errors: list[BaseException] = []

    def call(i: int) -> None:
        with attached(Request(timeout=10.0, interface="test", protocol="test")):
            try:
                results.append(pmnc.transaction.fake.echo(i))
            except BaseException as e:
                errors.append(e)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10.0)
    assert errors == []
    assert sorted(results, key=int) == [str(i) for i in range(20)]
    assert len(events(cage, "connect")) <= 4, "at most size + 2 connections"
