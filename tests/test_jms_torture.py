"""The jms interface and resource when things break: a real ActiveMQ and a real PostgreSQL.

Torture: 2000 persistent messages are taken by a real cage (4 at a time) whose handler
inserts each message's id into PostgreSQL, keyed by the id, counting its runs:

    INSERT ... ON CONFLICT (id) DO UPDATE SET runs = t.runs + 1

Mid-stream the broker (or the cage) is killed with SIGKILL and started again. In the end
every message is in the table exactly once, no message is left on the queue, and
sum(runs - 1) says how many handler runs were repeats (printed, and in every assertion's
message).

Transactions: the resource's send and a PostgreSQL insert in one pmnc transaction. Either
side failing before the decision leaves neither; the JMS side failing at its COMMIT (the
broker killed at the decision) leaves neither only in a `two_phase=True` transaction, where
PostgreSQL is prepared and the JMS resource is the last resource. "Nothing on the queue" is
read with an ActiveMQ queue browser, which sees unacknowledged messages too, so no test
waits for something not to come.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import stomp
from amq_peer import AmqBroker
from conftest import CageProcess, InProcessCage, config_source, module_source, wait_until
from pg_peer import PgServer
from pmnc.errors import ResourceError, SQLResourceError, TransactionCommitError
from pmnc.request import Request
from pmnc.transaction import NoValue, Transaction

MESSAGES = 2000
CONCURRENCY = 4
CRASH_AT = 500  # messages in the table when the broker or the cage is killed

# Keyed by the broker's message id (stable across redeliveries and broker restarts);
# `seq` is the sender's sequence number, to tell which message is which.
HANDLER = module_source("""
    def process_request(request, response):
        pmnc.transaction.db.execute(
            "INSERT INTO TABLE (id, seq, runs) VALUES ({id}, {seq}, 1) "
            "ON CONFLICT (id) DO UPDATE SET runs = TABLE.runs + 1",
            id=request["message_id"], seq=int(request["headers"]["seq"]))
""", ["process_request"])


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def table(pg: PgServer) -> Iterator[str]:
    name = unique("jms_torture")
    pg.query(f"CREATE TABLE {name} (id text PRIMARY KEY, seq int NOT NULL, runs int NOT NULL)")
    yield name
    pg.query(f"DROP TABLE {name}")


class _Frames(stomp.ConnectionListener):  # type: ignore[misc]
    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.frames: list[Any] = []
        self.receipts: set[str] = set()
        self.browsed = False

    def on_message(self, frame: Any) -> None:
        with self.cond:
            if frame.headers.get("browser") == "end":
                self.browsed = True
            else:
                self.frames.append(frame)
            self.cond.notify_all()

    def on_receipt(self, frame: Any) -> None:
        with self.cond:
            self.receipts.add(frame.headers.get("receipt-id", ""))
            self.cond.notify_all()


def preload(broker: AmqBroker, queue: str, count: int) -> None:
    """`count` persistent messages, property `seq` 0..count-1, on the queue when this returns
    (the last SEND asks for a receipt; the broker handles a connection's frames in order)."""
    conn = broker.connection()
    listener = _Frames()
    conn.set_listener("preload", listener)
    try:
        for n in range(count):
            headers = {"persistent": "true", "seq": str(n)}
            if n == count - 1:
                headers["receipt"] = "preloaded"
            conn.send(f"/queue/{queue}", f"message {n}", headers=headers)
        with listener.cond:
            assert listener.cond.wait_for(lambda: "preloaded" in listener.receipts, 30.0), "no receipt for the sends"
    finally:
        conn.disconnect()


def browse(broker: AmqBroker, queue: str) -> list[Any]:
    """The messages on the queue now, acknowledged or not yet (an ActiveMQ queue browser:
    it ends with a message that has the header browser:end)."""
    conn = broker.connection()
    listener = _Frames()
    conn.set_listener("browse", listener)
    try:
        conn.subscribe(f"/queue/{queue}", id="browse", ack="auto", headers={"browser": "true"})
        with listener.cond:
            assert listener.cond.wait_for(lambda: listener.browsed, 30.0), "the browse did not end"
            return list(listener.frames)
    finally:
        conn.disconnect()


def in_table(pg: PgServer, table: str) -> int:
    [(count,)] = pg.query(f"SELECT count(*) FROM {table}")
    return int(count)


def outcome(pg: PgServer, table: str) -> tuple[list[int], int, int]:
    """(the seq of every row, sorted; handler runs; repeated runs)."""
    seqs = [r[0] for r in pg.query(f"SELECT seq FROM {table} ORDER BY seq")]
    [(runs,)] = pg.query(f"SELECT coalesce(sum(runs), 0) FROM {table}")
    return seqs, int(runs), int(runs) - len(seqs)


def start_consumer(cage_process: Callable[..., CageProcess], broker: AmqBroker, pg: PgServer, queue: str,
                   table: str) -> CageProcess:
    return cage_process(
        interfaces={"jms_1": broker.config(queue=queue, concurrency=CONCURRENCY, redelivery_delay=0.2)},
        files={"interface_jms_1.py": HANDLER.replace("TABLE", table),
               "config_resource_db.py": config_source(pg.config())},
        log_level="INFO")


def settle(broker: AmqBroker, pg: PgServer, queue: str, table: str) -> None:
    """Until every message is in the table and the queue is empty (all acknowledged:
    no copy is left that could run the handler once more)."""
    wait_until(lambda: in_table(pg, table) >= MESSAGES and not browse(broker, queue), 60.0, interval=0.2,
               message=f"{MESSAGES} messages in the table and none left on the queue")


def check_exactly_once(pg: PgServer, table: str, what: str, log_text: str, began: float, max_repeats: int) -> None:
    """Every message in the table once, at most `max_repeats` handler runs repeated."""
    seqs, runs, repeats = outcome(pg, table)
    copies = log_text.count("was handled before, acknowledged without running the handler again")
    report = (f"{what}: {len(seqs)} messages in the table, {runs} handler runs, {repeats} repeated; "
              f"{copies} redelivered copies acknowledged without running; {time.monotonic() - began:.1f}s")
    print(f"\n{report}")
    assert seqs == list(range(MESSAGES)), f"not every message exactly once ({report})"
    assert repeats <= max_repeats, f"more than {max_repeats} repeated handler runs ({report})"


def test_a_broker_killed_mid_stream_loses_and_repeats_nothing(
        amq_broker: AmqBroker, pg: PgServer, table: str, cage_process: Callable[..., CageProcess]) -> None:
    began = time.monotonic()
    queue = unique("torture.broker")
    preload(amq_broker, queue, MESSAGES)
    cage = start_consumer(cage_process, amq_broker, pg, queue, table)
    wait_until(lambda: in_table(pg, table) >= CRASH_AT, 30.0, interval=0.05, message=f"{CRASH_AT} messages handled")
    amq_broker.kill()
    killed_at = in_table(pg, table)
    amq_broker.start()
    settle(amq_broker, pg, queue, table)
    log_text = cage.log_text()
    # the cage's state knew every message it had handled: their copies were not run again
    check_exactly_once(pg, table, f"broker killed at {killed_at}", log_text, began, max_repeats=0)
    # the outage: logged when it began and once when it ended
    assert "interface jms_1: the connection to the broker at" in log_text
    assert log_text.count("interface jms_1: the broker can be reached again") == 1


def test_a_cage_killed_mid_stream_loses_nothing_and_its_successor_repeats_little(
        amq_broker: AmqBroker, pg: PgServer, table: str, cage_process: Callable[..., CageProcess]) -> None:
    """The cage (supervisor and cage process) is killed with SIGKILL: the broker sees the
    connection drop and gives the unacknowledged messages to the next consumer, a new cage
    on the same tree. What its predecessor had handled is in the cage's state (received.py):
    those copies are acknowledged without running. Only a handler that had committed its
    insert but not yet recorded that in the state when the kill came can run again: at most
    one per message in process (CONCURRENCY)."""
    began = time.monotonic()
    queue = unique("torture.cage")
    preload(amq_broker, queue, MESSAGES)
    first = start_consumer(cage_process, amq_broker, pg, queue, table)
    wait_until(lambda: in_table(pg, table) >= CRASH_AT, 30.0, interval=0.05, message=f"{CRASH_AT} messages handled")
    child = first.child_pids()[-1]
    os.kill(child, signal.SIGKILL)  # the cage process first: its supervisor restarts it only after a back-off
    first.kill()
    killed_at = in_table(pg, table)
    second = CageProcess(first.root)
    try:
        second.start()
        settle(amq_broker, pg, queue, table)
        check_exactly_once(pg, table, f"cage killed at {killed_at}", second.log_text(), began,
                           max_repeats=CONCURRENCY)
    finally:
        second.kill()


# --- the resource and PostgreSQL in one transaction ---------------------------------------------------


@pytest.fixture
def rows_table(pg: PgServer) -> Iterator[str]:
    name = unique("jms_xa")
    pg.query(f"CREATE TABLE {name} (id int PRIMARY KEY)")
    yield name
    pg.query(f"DROP TABLE {name}")


def ids(pg: PgServer, table: str) -> list[int]:
    return [r[0] for r in pg.query(f"SELECT id FROM {table} ORDER BY id")]


def prepared(pg: PgServer) -> list[str]:
    return [r[0] for r in pg.query("SELECT gid FROM pg_prepared_xacts", "postgres")]


def xa_cage(in_process_cage: Callable[..., InProcessCage], broker: AmqBroker, pg: PgServer, queue: str) -> Any:
    """An in-process cage with resources jms_1 (the queue) and db; its `pmnc.transaction`."""
    cage = in_process_cage(files={
        "config_resource_jms_1.py": config_source(broker.config(queue=queue, connect_timeout=2.0)),
        "config_resource_db.py": config_source(dict(pg.config(), pool__size=4)),
    })
    return cage.cage.runtime.pmnc("test").transaction


def killing_the_broker_at_the_decision(broker: AmqBroker) -> Callable[[Transaction, list[Any]], Any]:
    """An accept() that commits when every call has succeeded, as the default does, but
    kills the broker first: the send has reached the broker inside its STOMP transaction,
    the COMMIT cannot. The one reliable way to make the JMS side fail at commit."""
    def accept(xa: Transaction, results: list[Any]) -> Any:
        for result in results:
            if isinstance(result, BaseException):
                raise result
        if NoValue in results:
            return None
        broker.kill()
        return tuple(results)
    return accept


def test_a_send_and_an_insert_commit_together(amq: AmqBroker, pg: PgServer, rows_table: str,
                                              in_process_cage: Callable[..., InProcessCage],
                                              attach: Callable[[float], Request]) -> None:
    queue = unique("xa.both")
    transaction = xa_cage(in_process_cage, amq, pg, queue)
    attach(10.0)
    xa = transaction.create()
    xa.jms_1.send("order 1", order="1")
    xa.db.execute(f"INSERT INTO {rows_table} (id) VALUES ({{id}})", id=1)
    message_id, _ = xa.execute()
    (frame,) = browse(amq, queue)
    assert frame.body == "order 1" and frame.headers["order"] == "1"
    assert frame.headers["pmnc_message_id"] == message_id
    assert ids(pg, rows_table) == [1]


def test_a_failing_insert_sends_nothing(amq: AmqBroker, pg: PgServer, rows_table: str,
                                        in_process_cage: Callable[..., InProcessCage],
                                        attach: Callable[[float], Request]) -> None:
    """The PostgreSQL side fails (a unique violation): the transaction rolls back, the
    resource ABORTs its STOMP transaction, and the message never reaches the queue - not
    even with the next committed send on the same connection."""
    queue = unique("xa.pgfails")
    transaction = xa_cage(in_process_cage, amq, pg, queue)
    attach(10.0)
    pg.query(f"INSERT INTO {rows_table} (id) VALUES (1)")
    xa = transaction.create()
    xa.jms_1.send("never")
    xa.db.execute(f"INSERT INTO {rows_table} (id) VALUES ({{id}})", id=1)
    with pytest.raises(SQLResourceError):
        xa.execute()
    assert browse(amq, queue) == []
    message_id = transaction.jms_1.send("later")  # the shortcut: a transaction of its own
    (frame,) = browse(amq, queue)
    assert frame.body == "later" and frame.headers["pmnc_message_id"] == message_id
    assert ids(pg, rows_table) == [1]


def test_a_failing_jms_commit_is_reported_and_best_effort_keeps_the_insert(
        amq_broker: AmqBroker, pg: PgServer, rows_table: str, in_process_cage: Callable[..., InProcessCage],
        attach: Callable[[float], Request]) -> None:
    """The JMS side fails at commit (the broker is killed after the send, before the COMMIT):
    the caller gets a TransactionCommitError naming jms_1 and the message never arrives
    (a STOMP transaction not committed dies with the broker). Best-effort commit commits
    each participant on its own, so PostgreSQL's insert stays: both-or-neither across
    this failure needs two_phase=True (next tests)."""
    queue = unique("xa.jmsfails")
    transaction = xa_cage(in_process_cage, amq_broker, pg, queue)
    attach(10.0)
    xa = transaction.create(accept=killing_the_broker_at_the_decision(amq_broker))
    xa.jms_1.send("lost with the broker")
    xa.db.execute(f"INSERT INTO {rows_table} (id) VALUES ({{id}})", id=1)
    with pytest.raises(TransactionCommitError, match="jms_1") as info:
        xa.execute()
    assert info.value.participant_index == 0
    amq_broker.start()
    assert browse(amq_broker, queue) == []
    assert ids(pg, rows_table) == [1]


def test_two_phase_commits_the_insert_and_then_the_send(
        amq: AmqBroker, pg: PgServer, rows_table: str, in_process_cage: Callable[..., InProcessCage],
        attach: Callable[[float], Request]) -> None:
    queue = unique("xa.2pc")
    transaction = xa_cage(in_process_cage, amq, pg, queue)
    attach(10.0)
    xa = transaction.create(two_phase=True)
    xa.db.execute(f"INSERT INTO {rows_table} (id) VALUES ({{id}})", id=1)
    xa.jms_1.send("order 1")
    _, message_id = xa.execute()
    (frame,) = browse(amq, queue)
    assert frame.headers["pmnc_message_id"] == message_id
    assert ids(pg, rows_table) == [1] and prepared(pg) == []


def test_two_phase_with_the_broker_down_rolls_the_insert_back(
        amq_broker: AmqBroker, pg: PgServer, rows_table: str, in_process_cage: Callable[..., InProcessCage],
        attach: Callable[[float], Request]) -> None:
    """The broker is down from the start: the send cannot connect, and the branch rolls back."""
    queue = unique("xa.2pcdown")
    transaction = xa_cage(in_process_cage, amq_broker, pg, queue)
    attach(10.0)
    amq_broker.kill()
    xa = transaction.create(two_phase=True)
    xa.db.execute(f"INSERT INTO {rows_table} (id) VALUES ({{id}})", id=1)
    xa.jms_1.send("never")
    with pytest.raises(ResourceError, match=r"cannot connect to stomp://127\.0\.0\.1"):
        xa.execute()
    wait_until(lambda: prepared(pg) == [], 5.0, message="no branch left prepared")
    assert ids(pg, rows_table) == []


def test_two_phase_rolls_the_prepared_insert_back_when_the_send_cannot_commit(
        amq_broker: AmqBroker, pg: PgServer, rows_table: str, in_process_cage: Callable[..., InProcessCage],
        attach: Callable[[float], Request]) -> None:
    """The broker dies after the send, before the COMMIT: PostgreSQL's branch is prepared,
    the JMS resource - the last resource, it cannot prepare - fails to commit, and the
    prepared branch rolls back: neither the row nor the message."""
    queue = unique("xa.2pckill")
    transaction = xa_cage(in_process_cage, amq_broker, pg, queue)
    attach(10.0)
    xa = transaction.create(two_phase=True, accept=killing_the_broker_at_the_decision(amq_broker))
    xa.db.execute(f"INSERT INTO {rows_table} (id) VALUES ({{id}})", id=1)
    xa.jms_1.send("lost with the broker")
    with pytest.raises(TransactionCommitError, match="last resource") as info:
        xa.execute()
    assert info.value.participant_index == 1
    wait_until(lambda: prepared(pg) == [], 5.0, message="no branch left prepared")
    assert ids(pg, rows_table) == []
    amq_broker.start()
    assert browse(amq_broker, queue) == []


