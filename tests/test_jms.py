"""The jms interface and resource against a real ActiveMQ (tests/amq_peer.py)."""

from __future__ import annotations

import json
import queue
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import stomp
from amq_peer import KEYSTORE_PASSWORD, AmqBroker
from conftest import InProcessCage, config_source, module_source, wait_until, write_file
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from peers import Relay
from pmnc import keys
from pmnc.errors import ConfigError, ResourceError, ResourceInputParameterError
from pmnc.protocols import jms


def unique(prefix: str = "pmnc.test") -> str:
    return f"{prefix}.{uuid.uuid4().hex[:8]}"


class Reader(stomp.ConnectionListener):  # type: ignore[misc]
    """A bare stomp.py consumer of one queue, acknowledging what it reads."""

    def __init__(self, broker: AmqBroker, name: str) -> None:
        self.frames: queue.Queue[Any] = queue.Queue()
        self.conn = broker.connection(auto_decode=False)
        self.conn.set_listener("reader", self)
        self.conn.subscribe(f"/queue/{name}", id="r", ack="client-individual")

    def on_message(self, frame: Any) -> None:
        self.conn.ack(frame.headers["ack"])
        self.frames.put(frame)

    def get(self, timeout: float = 10.0) -> Any:
        return self.frames.get(timeout=timeout)

    def empty_for(self, seconds: float) -> bool:
        try:
            self.frames.get(timeout=seconds)
        except queue.Empty:
            return True
        return False

    def close(self) -> None:
        self.conn.disconnect()


RECORDING_HANDLER = module_source("""
    import json, os
    def process_request(request, response):
        folder = os.path.join(os.path.dirname(__file__), "seen")
        os.makedirs(folder, exist_ok=True)
        record = {k: (v.hex() if isinstance(v, bytes) else v) for k, v in request.items()}
        name = request["message_id"].replace(":", "_") + "-" + str(len(os.listdir(folder)))
        with open(os.path.join(folder, name + ".json"), "w") as f:
            json.dump(record, f)
""", ["process_request"])


def seen(cage_dir: Path) -> list[dict[str, Any]]:
    folder = cage_dir / "seen"
    if not folder.is_dir():
        return []
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def test_a_message_becomes_a_request_with_the_original_fields(amq: AmqBroker, in_process_cage: Any) -> None:
    name = unique()
    cage = in_process_cage(interfaces={"jms_1": amq.config(queue=name)},
                           files={"interface_jms_1.py": RECORDING_HANDLER})
    text = "Привет, мир ! ü €" * 3
    sender = amq.connection()
    sender.send(f"/queue/{name}", text, headers={"correlation-id": "c-1", "type": "Order", "app_prop": "x:y",
                                                 "persistent": "true", "reply-to": "/queue/answers"})
    records = wait_until(lambda: seen(cage.cage_dir), message="the message handled")
    sender.disconnect()
    (record,) = records
    assert record["message_text"] == text
    headers = record["headers"]
    assert record["message_id"] == headers["JMSMessageID"] and record["message_id"].startswith("ID:")
    assert headers["JMSCorrelationID"] == "c-1" and headers["JMSType"] == "Order"
    assert headers["JMSRedelivered"] == "false" and headers["JMSDeliveryMode"] == "2"
    assert headers["JMSReplyTo"] == "answers" and headers["app_prop"] == "x:y"
    assert "destination" not in headers and "ack" not in headers


def test_the_resource_sends_when_the_transaction_commits(amq: AmqBroker, in_process_cage: Any) -> None:
    name = unique()
    cage = in_process_cage(files={"config_resource_jms_1.py": config_source(amq.config(queue=name))})
    reader = Reader(amq, name)
    try:
        pmnc = cage.cage.runtime.pmnc("test")
        from pmnc.request import fake_request
        fake_request(10.0)
        xa = pmnc.transaction.create()
        xa.jms_1.send("héllo " * 200000, JMSCorrelationID="corr-9", custom="v1")
        (message_id,) = xa.execute()
        frame = reader.get()
        assert frame.body.decode() == "héllo " * 200000
        assert frame.headers["correlation-id"] == "corr-9" and frame.headers["custom"] == "v1"
        assert frame.headers["pmnc_message_id"] == message_id
        assert "content-length" not in frame.headers  # a TextMessage
        xa = pmnc.transaction.create()
        xa.jms_1.send("never")
        xa.pmnc.no_such_module_method()
        with pytest.raises(ResourceInputParameterError):
            xa.execute()
        assert reader.empty_for(1.0)
    finally:
        reader.close()


# --- helpers for the behaviour tests ------------------------------------------------------------

# A handler driven by the message text, recording every run in runs.jsonl in the cage folder:
#   "fail:N" fails its first N runs (plain "fail": every run), "sleep:S" takes S seconds,
#   "block:F" waits for file F to appear in the cage folder; anything else succeeds at once.
# `busy` is how many handler runs were in progress when this one began.
SCRIPTED_HANDLER = module_source("""
    import json, os, time, uuid
    def process_request(request, response):
        here = os.path.dirname(__file__)
        active = os.path.join(here, "active")
        os.makedirs(active, exist_ok=True)
        me = os.path.join(active, uuid.uuid4().hex)
        open(me, "w").close()
        try:
            text = request["message_text"] or ""
            body = request.get("message_bytes")
            record = {"id": request["message_id"], "text": text, "headers": request["headers"],
                      "bytes": body.hex() if body is not None else None, "busy": len(os.listdir(active)),
                      "interface": pmnc.request.interface}
            with open(os.path.join(here, "runs.jsonl"), "a") as f:
                f.write(json.dumps(record) + "\\n")
            with open(os.path.join(here, "runs.jsonl")) as f:
                run = sum(1 for line in f if json.loads(line)["id"] == request["message_id"])
            command, _, argument = text.partition(":")
            if command == "sleep":
                time.sleep(float(argument))
            elif command == "block":
                while not os.path.exists(os.path.join(here, argument)) and pmnc.request.remain > 0.5:
                    time.sleep(0.01)
            elif command == "fail" and (not argument or run <= int(argument)):
                raise RuntimeError(f"failing on purpose, run {run}")
        finally:
            os.remove(me)
""", ["process_request"])


def runs(cage_dir: Path) -> list[dict[str, Any]]:
    """The handler runs so far, in order (a line being written is left for the next look)."""
    path = cage_dir / "runs.jsonl"
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            break
    return records


def texts(cage_dir: Path) -> list[str]:
    return [r["text"] for r in runs(cage_dir)]


class Receipts(stomp.ConnectionListener):  # type: ignore[misc]
    """The receipts a bare stomp.py client gets back."""

    def __init__(self) -> None:
        self.received: queue.Queue[str] = queue.Queue()

    def on_receipt(self, frame: Any) -> None:
        self.received.put(frame.headers["receipt-id"])


def send(broker: AmqBroker, name: str, *bodies: str | bytes, **headers: str) -> None:
    """Persistent messages to queue `name` (or "/topic/..."), sent with a bare stomp.py client,
    each confirmed by the broker (a receipt): a broker killed afterwards still has them."""
    conn = broker.connection()
    receipts = Receipts()
    conn.set_listener("receipts", receipts)
    try:
        target = name if name.startswith("/") else f"/queue/{name}"
        for n, body in enumerate(bodies):
            extra = {"content-length": str(len(body))} if isinstance(body, bytes) else {}
            conn.send(target, body, headers={"persistent": "true", "receipt": f"r{n}", **extra, **headers})
        assert sorted(receipts.received.get(timeout=10.0) for _ in bodies) == sorted(f"r{n}" for n in
                                                                                    range(len(bodies)))
    finally:
        conn.disconnect()


def cage_with(in_process_cage: Any, config: dict[str, Any], **kwargs: Any) -> Any:
    """An in-process cage whose interface jms_1 (`config`) runs SCRIPTED_HANDLER."""
    files = {"interface_jms_1.py": SCRIPTED_HANDLER, **kwargs.pop("files", {})}
    return in_process_cage(interfaces={"jms_1": config}, files=files, **kwargs)


def restart(cage: Any) -> Any:
    """Stop an in-process cage and start a new one on the same install tree (and state)."""
    cage.stop()
    return InProcessCage(cage.root, cage.cage_name).start()


class Proxy(Relay):
    """A TCP forwarder in front of the broker's STOMP port: counts the connections made
    through it, and `cut()` drops them all at once (a lost connection, the broker still up)."""

    def __init__(self, broker: AmqBroker) -> None:
        super().__init__(("127.0.0.1", broker.stomp_port))
        self.broker = broker

    def config(self, **keys: Any) -> dict[str, Any]:
        """A config for the broker, reached through the proxy."""
        return self.broker.config(keys, server_address=("127.0.0.1", self.port))


@pytest.fixture
def proxy(amq: AmqBroker) -> Iterator[Proxy]:
    """A proxy in front of the session broker."""
    forwarder = Proxy(amq)
    yield forwarder
    forwarder.close()


# --- redelivery and the dead-letter queue --------------------------------------------------------


def test_a_failing_handler_gets_the_message_again_until_it_succeeds(amq: AmqBroker, in_process_cage: Any) -> None:
    """Fails twice, then succeeds: three runs, the later two marked redelivered, handled once."""
    name = unique()
    cage = cage_with(in_process_cage, amq.config(queue=name, redelivery_delay=0.0))
    send(amq, name, "fail:2", "after")
    wait_until(lambda: texts(cage.cage_dir) == ["fail:2"] * 3 + ["after"], message="three runs, then the next")
    assert [r["headers"]["JMSRedelivered"] for r in runs(cage.cage_dir)] == ["false", "true", "true", "false"]
    assert len({r["id"] for r in runs(cage.cage_dir)[:3]}) == 1  # the same message each time
    assert cage.log_text().count("failing on purpose") == 2  # each failure logged, the success not


def test_a_message_that_always_fails_goes_to_the_dead_letter_queue(amq: AmqBroker, in_process_cage: Any) -> None:
    """max_redeliveries=2: three runs, then the message (its body and properties) is on the
    dead-letter queue with the last error; the messages behind it are handled after it."""
    name, dlq = unique(), unique("pmnc.dlq")
    cage = cage_with(in_process_cage, amq.config(queue=name, max_redeliveries=2, redelivery_delay=0.0,
                                                 dead_letter_queue=dlq))
    dead = Reader(amq, dlq)
    try:
        send(amq, name, "fail", custom="p1")
        send(amq, name, "next-1", "next-2")
        frame = dead.get()
        wait_until(lambda: texts(cage.cage_dir)[-2:] == ["next-1", "next-2"], message="the messages behind it")
        assert texts(cage.cage_dir) == ["fail"] * 3 + ["next-1", "next-2"]
        assert frame.body == b"fail" and frame.headers["custom"] == "p1"
        assert frame.headers["original-destination"] == f"/queue/{name}"
        assert "failing on purpose, run 3" in frame.headers["dlqDeliveryFailureCause"]
        assert frame.headers["persistent"] == "true"
        assert cage.log_text().count("moved to the dead-letter queue") == 1
        assert dead.empty_for(0.5)
    finally:
        dead.close()


def test_messages_run_concurrently_and_a_failed_one_is_not_acknowledged(amq: AmqBroker,
                                                                        in_process_cage: Any) -> None:
    """concurrency=4: more than one handler runs at once; every message is handled once, the
    failing one comes again (it was not acknowledged) until it succeeds."""
    name = unique()
    cage = cage_with(in_process_cage, amq.config(queue=name, concurrency=4, redelivery_delay=0.0))
    bodies = [f"sleep:0.{n}" for n in range(2, 8)]
    send(amq, name, *bodies[:3], "fail:1", *bodies[3:])
    wait_until(lambda: len(runs(cage.cage_dir)) == 8, message="eight runs")
    done = runs(cage.cage_dir)
    assert max(r["busy"] for r in done) > 1
    assert sorted(r["text"] for r in done) == sorted([*bodies, "fail:1", "fail:1"])
    (retried,) = [r for r in done if r["text"] == "fail:1" and r["headers"]["JMSRedelivered"] == "true"]
    assert all(r["headers"]["JMSRedelivered"] == "false" for r in done if r is not retried)
    reader = Reader(amq, name)  # nothing left on the queue
    try:
        cage.stop()
        assert reader.empty_for(0.5)
    finally:
        reader.close()


# --- bytes messages ------------------------------------------------------------------------------


def test_a_bytes_message_is_dead_lettered_unless_bytes_messages_is_set(amq: AmqBroker, in_process_cage: Any,
                                                                       attach: Any) -> None:
    name, dlq = unique(), unique("pmnc.dlq")
    cage = cage_with(in_process_cage, amq.config(queue=name, dead_letter_queue=dlq),
                     files={"config_resource_jms_1.py": config_source(amq.config(queue=name))})
    dead = Reader(amq, dlq)
    try:
        send(amq, name, b"\x00\x01binary\xff")
        frame = dead.get()
        assert frame.body == b"\x00\x01binary\xff"
        assert "bytes_messages" in frame.headers["dlqDeliveryFailureCause"]
        assert runs(cage.cage_dir) == []
    finally:
        dead.close()
    # bytes_messages=True: the resource's bytes reach the handler as message_bytes
    write_file(cage.cage_dir / "config_interface_jms_1.py",
               config_source(amq.config(queue=name, dead_letter_queue=dlq, bytes_messages=True)))
    wait_until(lambda: "restarting interface jms_1" in cage.log_text(), message="the interface restarted")
    attach(10.0)
    pmnc = cage.cage.runtime.pmnc("test")
    body = bytes(range(256)) * 10
    pmnc.transaction.jms_1.send(body, kind="raw")
    (record,) = wait_until(lambda: runs(cage.cage_dir), message="the bytes message handled")
    assert bytes.fromhex(record["bytes"]) == body and record["text"] == ""
    assert record["headers"]["kind"] == "raw"


def test_the_resource_sends_bytes_as_a_bytes_message(amq: AmqBroker, in_process_cage: Any, attach: Any) -> None:
    name = unique()
    cage = in_process_cage(files={"config_resource_jms_1.py": config_source(amq.config(queue=name))})
    reader = Reader(amq, name)
    try:
        attach(10.0)
        cage.cage.runtime.pmnc("test").transaction.jms_1.send(b"\x00\xff" * 1000)
        frame = reader.get()
        assert frame.body == b"\x00\xff" * 1000 and frame.headers["content-length"] == "2000"
    finally:
        reader.close()


# --- the resource's input ------------------------------------------------------------------------


@pytest.mark.parametrize(("message", "headers", "error"), [
    ("text", {"bad-name": "x"}, "'bad-name' cannot be a property name"),
    ("text", {"destination": "x"}, "'destination' cannot be a property name"),
    ("nul\0inside", {}, "cannot hold NUL characters"),
    ("x" * 1001, {}, "1001 bytes, more than the limit of 1000"),
    (b"y" * 1001, {}, "1001 bytes, more than the limit of 1000"),
    (42, {}, "a message is text (str) or bytes, not int"),
    ({"a": 1}, {}, "not dict"),
    ("text", {"JMSNoSuchField": "x"}, "JMSNoSuchField is not a JMS header field"),
    ("text", {"JMSDeliveryMode": "3"}, "JMSDeliveryMode must be 1"),
    ("text", {"prop": [1]}, "header prop must be a str"),
    ("text", {"JMSDestination": "has space"}, "not usable"),
    ("text", {"JMSReplyTo": "a*b"}, "not usable"),
])
def test_the_resource_refuses_bad_input_and_sends_nothing(amq: AmqBroker, in_process_cage: Any, attach: Any,
                                                         message: Any, headers: dict[str, Any], error: str) -> None:
    name = unique()
    cage = in_process_cage(files={"config_resource_jms_1.py": config_source(amq.config(queue=name,
                                                                                       max_message_size=1000))})
    reader = Reader(amq, name)
    try:
        attach(10.0)
        with pytest.raises(ResourceInputParameterError) as info:
            cage.cage.runtime.pmnc("test").transaction.jms_1.send(message, **headers)
        assert error in str(info.value)
        assert reader.empty_for(0.3)
    finally:
        reader.close()


def test_jms_destination_and_reply_to_round_trip(amq: AmqBroker, in_process_cage: Any, attach: Any) -> None:
    """JMSDestination sends elsewhere than the configured queue; JMSReplyTo, JMSCorrelationID,
    JMSType, JMSPriority and properties reach the handler."""
    name, other = unique(), unique()
    cage = cage_with(in_process_cage, amq.config(queue=other),
                     files={"config_resource_jms_1.py": config_source(amq.config(queue=name))})
    attach(10.0)
    xa = cage.cage.runtime.pmnc("test").transaction.create()
    xa.jms_1.send("to the other", JMSDestination=other, JMSReplyTo="answers.q", JMSCorrelationID="c-7",
                  JMSType="Order", JMSPriority=7, amount=12.5)
    (message_id,) = xa.execute()
    (record,) = wait_until(lambda: runs(cage.cage_dir), message="handled from the other queue")
    h = record["headers"]
    assert record["text"] == "to the other" and h["pmnc_message_id"] == message_id
    assert h["JMSReplyTo"] == "answers.q" and h["JMSCorrelationID"] == "c-7" and h["JMSType"] == "Order"
    assert h["JMSPriority"] == "7" and h["amount"] == "12.5" and h["JMSDeliveryMode"] == "2"
    reader = Reader(amq, name)
    try:
        assert reader.empty_for(0.3)  # nothing went to the configured queue
    finally:
        reader.close()


def test_a_message_in_process_when_the_cage_stops_is_acknowledged(amq: AmqBroker, in_process_cage: Any) -> None:
    """A graceful stop lets the handlers finish (longer than the interface's own one-second
    checks) and acknowledges their messages before the connection closes: nothing handled is
    left on the queue to come again."""
    name = unique()
    cage = cage_with(in_process_cage, amq.config(queue=name, concurrency=2))
    send(amq, name, "sleep:1.5", "sleep:1.5")
    wait_until(lambda: len(runs(cage.cage_dir)) == 2, message="both running")
    cage.stop()
    reader = Reader(amq, name)
    try:
        assert reader.empty_for(0.5)
    finally:
        reader.close()


# --- duplicates: handled, but the acknowledgement lost -------------------------------------------


def test_a_copy_of_a_handled_message_is_acknowledged_without_running_again(proxy: Proxy,
                                                                            in_process_cage: Any) -> None:
    """The handler has done its work when the connection drops (the test cuts it at a TCP proxy
    while the handler waits for a file), so its acknowledgement never reaches the broker; the
    broker delivers the message again on the new connection, and the copy is acknowledged without
    running the handler. The messages behind it are handled, nothing is stuck."""
    name = unique()
    config = proxy.config(queue=name)
    cage = cage_with(in_process_cage, config, log_level="INFO")
    send(proxy.broker, name, "block:go", "after")
    wait_until(lambda: texts(cage.cage_dir) == ["block:go"], message="the handler running")
    proxy.cut()
    wait_until(lambda: "the broker can be reached again" in cage.log_text(), message="reconnected")
    (cage.cage_dir / "go").touch()
    wait_until(lambda: texts(cage.cage_dir) == ["block:go", "after"], message="the message behind it")
    log_text = cage.log_text()
    assert log_text.count("was handled before, acknowledged without running the handler again") == 1
    assert log_text.count("an acknowledgement was not sent") == 1
    assert log_text.count("the connection to the broker at") == 1


def test_the_handled_ids_survive_a_cage_restart(amq_broker: AmqBroker, in_process_cage: Any) -> None:
    """The broker is killed (SIGKILL) while the handler works; once the cage has seen the
    connection go, the handler succeeds, its acknowledgement cannot be sent, and the cage is
    stopped while the broker is down. A new cage on the same install tree (the same state) gets
    the message again from the restarted broker (KahaDB kept it) and acknowledges it without
    running the handler. (Had the handler finished before the cage saw the connection go, the
    acknowledgement would have gone into the dead socket without an error, and nothing said so.)"""
    name = unique()
    cage = cage_with(in_process_cage, amq_broker.config(queue=name), log_level="INFO")
    send(amq_broker, name, "block:go", "after")
    wait_until(lambda: texts(cage.cage_dir) == ["block:go"], message="the handler running")
    amq_broker.kill()
    wait_until(lambda: "was lost" in cage.log_text(), message="the cage seeing the connection go")
    (cage.cage_dir / "go").touch()
    wait_until(lambda: "an acknowledgement was not sent" in cage.log_text(), message="the ack lost")
    cage.stop()
    amq_broker.start()
    cage = restart(cage)
    try:
        wait_until(lambda: texts(cage.cage_dir) == ["block:go", "after"], message="the message behind it")
        assert cage.log_text().count("was handled before, acknowledged without running the handler again") == 1
    finally:
        cage.stop()


# --- the broker refuses or is away ---------------------------------------------------------------


def test_a_wrong_password_is_logged_once_and_fixing_the_config_lets_messages_flow(
        proxy: Proxy, in_process_cage: Any, attach: Any) -> None:
    """The interface tries again with back-off (the proxy counts its logins) and says once that the
    broker refused the login; the fixed config file restarts it and messages flow. The resource
    with the wrong password fails with the refusal."""
    name = unique()
    config = proxy.config(queue=name)
    cage = cage_with(in_process_cage, dict(config, password="wrong"),
                     files={"config_resource_jms_1.py": config_source(dict(config, password="wrong"))})
    wait_until(lambda: proxy.accepted >= 3, message="three logins")
    refusals = [line for line in cage.log_text().splitlines() if "refused the connection" in line]
    assert len(refusals) == 1, refusals
    assert "interface jms_1: broker at stomp://127.0.0.1" in refusals[0] and "password" in refusals[0]
    attach(10.0)
    with pytest.raises(ResourceError, match=r"refused the connection.*password"):
        cage.cage.runtime.pmnc("test").transaction.jms_1.send("never")
    write_file(cage.cage_dir / "config_interface_jms_1.py", config_source(config))
    wait_until(lambda: "restarting interface jms_1" in cage.log_text(), message="the interface restarted")
    send(proxy.broker, name, "hello")
    wait_until(lambda: texts(cage.cage_dir) == ["hello"], message="the message handled")
    assert sum("refused the connection" in line for line in cage.log_text().splitlines()) == 1


def test_a_broker_down_at_cage_start_is_logged_once_and_messages_flow_when_it_is_up(
        amq_broker: AmqBroker, in_process_cage: Any) -> None:
    name = unique()
    amq_broker.stop()
    cage = cage_with(in_process_cage, amq_broker.config(queue=name))
    wait_until(lambda: "cannot connect to stomp://127.0.0.1" in cage.log_text(), message="the outage logged")
    time.sleep(2.0)  # the broker stays down a while: the interface tries at 0, 0.5 and 1.5 s
    amq_broker.start()
    wait_until(lambda: "the broker can be reached again" in cage.log_text(), message="the broker back")
    send(amq_broker, name, "hello")
    wait_until(lambda: texts(cage.cage_dir) == ["hello"], message="the message handled")
    log_text = cage.log_text()
    assert log_text.count("cannot connect to stomp://127.0.0.1") == 1
    assert log_text.count("the broker can be reached again") == 1


# --- destination names ---------------------------------------------------------------------------


def test_queue_names_with_odd_characters_round_trip(amq: AmqBroker, in_process_cage: Any, attach: Any) -> None:
    suffix = uuid.uuid4().hex[:8]
    odd_1, odd_2 = f"orders-ü.in${suffix}", f"a:b.{suffix}"
    cage = in_process_cage(
        interfaces={"jms_1": amq.config(queue=odd_1), "jms_2": amq.config(queue=f"/queue/{odd_2}")},
        files={"interface_jms_1.py": SCRIPTED_HANDLER, "interface_jms_2.py": SCRIPTED_HANDLER,
               "config_resource_jms_1.py": config_source(amq.config(queue=odd_1))})
    attach(10.0)
    xa = cage.cage.runtime.pmnc("test").transaction.create()
    xa.jms_1.send("one")
    xa.jms_1.send("two", JMSDestination=odd_2, JMSReplyTo=odd_1)
    xa.execute()
    wait_until(lambda: len(runs(cage.cage_dir)) == 2, message="both handled")
    by_text = {r["text"]: r for r in runs(cage.cage_dir)}
    assert by_text["one"]["interface"] == "jms_1" and by_text["two"]["interface"] == "jms_2"
    assert by_text["two"]["headers"]["JMSReplyTo"] == odd_1


@pytest.mark.parametrize("bad", ["", "has space", "a*b", "x\ny", "a>b", "a,b", "x" * 201, 42])
def test_unusable_destination_names_are_refused_naming_the_file(amq: AmqBroker, in_process_cage: Any,
                                                                bad: Any) -> None:
    cage = in_process_cage()
    interfaces = cage.cage.interfaces
    for overrides in [{"queue": bad}, {"topic": bad, "durable_subscription": "s"},
                      {"queue": "ok", "dead_letter_queue": bad if bad != 42 else "a b"}]:
        with pytest.raises(ConfigError, match=re.escape("config_interface_jms_9.py")):
            interfaces.create("jms_9", amq.config(overrides))
    for key in ("queue", "topic"):
        with pytest.raises(ConfigError, match=re.escape("config_resource_jms_9.py")):
            jms.Resource("jms_9/1", amq.config({key: bad}))


# --- a durable topic subscription ----------------------------------------------------------------


def test_a_durable_subscription_keeps_messages_published_while_the_cage_is_stopped(
        amq: AmqBroker, in_process_cage: Any) -> None:
    """The subscription is made by the cage's first start (a topic keeps nothing for a
    subscription not made yet: the test publishes probes until one is handled); what is
    published while the cage is stopped is handled when it starts again."""
    topic = unique("pmnc.topic")
    cage = cage_with(in_process_cage, amq.config(topic=topic, durable_subscription=f"sub-{topic}"))

    def subscribed() -> bool:
        if "probe" in texts(cage.cage_dir):
            return True
        send(amq, f"/topic/{topic}", "probe")
        return False

    wait_until(subscribed, interval=0.2, message="the subscription made")
    cage.stop()
    send(amq, f"/topic/{topic}", "published meanwhile")
    cage = restart(cage)
    try:
        wait_until(lambda: texts(cage.cage_dir)[-1:] == ["published meanwhile"], message="handled after the restart")
        assert set(texts(cage.cage_dir)) == {"probe", "published meanwhile"}
        assert texts(cage.cage_dir).count("published meanwhile") == 1
    finally:
        cage.stop()


# --- TLS -----------------------------------------------------------------------------------------


def broker_stores(folder: Path, server_pem: Path) -> tuple[Path, Path]:
    """The PKCS12 key store (the broker's key and certificate) and trust store (the CA, to check
    the clients' certificates against) ActiveMQ reads, from pmnc.keys' PEM files."""
    password = serialization.BestAvailableEncryption(KEYSTORE_PASSWORD.encode())
    pem = server_pem.read_bytes()
    key = serialization.load_pem_private_key(pem, None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    ca = x509.load_pem_x509_certificate((folder / "ca.pem").read_bytes())
    keystore, truststore = folder / "broker.p12", folder / "trust.p12"
    keystore.write_bytes(pkcs12.serialize_key_and_certificates(
        b"broker", key, x509.load_pem_x509_certificate(pem), [ca], password))
    truststore.write_bytes(pkcs12.serialize_java_truststore([pkcs12.PKCS12Certificate(ca, b"ca")], password))
    return keystore, truststore


def test_the_interface_and_the_resource_over_tls_with_client_certificates(
        tmp_path: Path, in_process_cage: Any, attach: Any) -> None:
    """A broker whose stomp+ssl connector wants client certificates (need_client_auth), all made
    with pmnc.keys: the interface and the resource reach it with ssl_ca_cert_file and
    ssl_key_cert_file; a wrong CA, or no client certificate, fails clearly."""
    pki, other = tmp_path / "pki", tmp_path / "other"
    keys.make_ca(pki)
    client = keys.make_client(pki, "cage")
    keys.make_ca(other, "another CA")
    keystore, truststore = broker_stores(pki, keys.make_server(pki, "broker"))
    broker = AmqBroker(keystore=keystore, need_client_auth=True, truststore=truststore)
    try:
        name = unique()
        tls = {"server_address": ("127.0.0.1", broker.ssl_port), "ssl_ca_cert_file": str(pki / "ca.pem"),
               "ssl_key_cert_file": str(client)}
        cage = cage_with(in_process_cage, broker.config(tls, queue=name), files={
            "config_resource_jms_1.py": config_source(broker.config(tls, queue=name)),
            "config_resource_jms_2.py": config_source(broker.config(tls, ssl_ca_cert_file=str(other / "ca.pem"))),
            "config_resource_jms_3.py": config_source(broker.config(tls, ssl_key_cert_file=None))})
        attach(10.0)
        pmnc = cage.cage.runtime.pmnc("test")
        pmnc.transaction.jms_1.send("over TLS ü")
        wait_until(lambda: texts(cage.cage_dir) == ["over TLS ü"], message="handled over TLS")
        assert f"stomp+ssl://127.0.0.1:{broker.ssl_port}" not in cage.log_text()  # no outage
        with pytest.raises(ResourceError, match=f"cannot connect to stomp\\+ssl://127.0.0.1:{broker.ssl_port}: "
                                                f".*certificate verify failed"):
            pmnc.transaction.jms_2.send("never", JMSDestination=name)
        with pytest.raises(ResourceError, match=f"broker at stomp\\+ssl://127.0.0.1:{broker.ssl_port} closed the "
                                                f"connection while logging in.*ssl_key_cert_file"):
            pmnc.transaction.jms_3.send("never", JMSDestination=name)
        assert texts(cage.cage_dir) == ["over TLS ü"]
    finally:
        broker.close()
