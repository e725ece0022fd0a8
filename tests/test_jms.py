"""The jms interface and resource against a real ActiveMQ (tests/amq_peer.py)."""

from __future__ import annotations

import json
import queue
import uuid
from pathlib import Path
from typing import Any

import pytest
import stomp
from amq_peer import AmqBroker
from conftest import config_source, module_source, wait_until


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
        with pytest.raises(Exception):
            xa.execute()
        assert reader.empty_for(1.0)
    finally:
        reader.close()
