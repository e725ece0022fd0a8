"""The smpp interface and resource against a real SMSC: node-smpp (tests/smpp_peer.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from conftest import config_source, module_source, wait_until
from smpp_peer import Smsc

RECORDING_HANDLER = module_source("""
    import json, os, time, uuid
    def process_request(request, response):
        folder = os.path.join(os.path.dirname(__file__), "seen")
        os.makedirs(folder, exist_ok=True)
        pdu = request["pdu"]
        record = {k: v for k, v in request.items() if k not in ("pdu", "parts", "tlvs", "udh", "receipt")}
        record["command"] = pdu.command
        record["parts"] = len(request.get("parts", []))
        record["receipt"] = {k: str(v) for k, v in (request.get("receipt") or {}).items()} or None
        name = f"{time.monotonic_ns()}-{uuid.uuid4().hex}"
        with open(os.path.join(folder, name + ".tmp"), "w") as f:
            json.dump(record, f)
        os.replace(os.path.join(folder, name + ".tmp"), os.path.join(folder, name + ".json"))
        response["pdu"] = pdu.create_response(message_id=b"")
""", ["process_request"])


def seen(cage_dir: Path) -> list[dict[str, Any]]:
    folder = cage_dir / "seen"
    if not folder.is_dir():
        return []
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def test_round_trip(smsc: Smsc, in_process_cage: Any) -> None:
    cage = in_process_cage(interfaces={"smpp_1": smsc.config()},
                           files={"interface_smpp_1.py": RECORDING_HANDLER,
                                  "config_resource_smpp_1.py": config_source({"protocol": "smpp", "frag_method": "udh",
                                                                              "source_addr": "pmnc"})})
    wait_until(lambda: smsc.bound(), message="bound")
    smsc.set(echo=True)
    pmnc = cage.cage.runtime.pmnc("test")
    from pmnc.request import fake_request
    fake_request(10.0)
    long_text = "Привет, мир! " * 30
    gsm_text = "{curly} [square] €uro " * 20
    for text in ("hello", long_text, gsm_text):
        xa = pmnc.transaction.create()
        xa.smpp_1.submit_sm(destination_addr="31600000001", short_message=text, registered_delivery=1)
        print(xa.execute())
    records = wait_until(lambda: len(seen(cage.cage_dir)) >= 6 and seen(cage.cage_dir), message="handled")
    texts = [r["text"] for r in records]
    print(json.dumps(records, indent=1)[:3000])
    assert "hello" in texts and long_text in texts and gsm_text in texts
