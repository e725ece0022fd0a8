"""The NATS protocol of the call link (rpc/natswire.py, rpc/bus.py's Link): parsing what a server
sends, and connecting to real nats-server processes with each kind of credentials."""

from __future__ import annotations

import base64
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_until
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat
from nats_peer import NatsFolder
from pmnc.errors import ConfigError, ProtocolError
from pmnc.rpc import natswire
from pmnc.rpc.bus import Bus, Link, NatsNoResponders, NatsTimeout
from pmnc.rpc.natswire import Credentials, Message, Parser

# --- parsing --------------------------------------------------------------------------------------


def test_messages_come_whole_however_the_bytes_are_cut() -> None:
    stream = (b'INFO {"max_payload": 1024}\r\nPING\r\nMSG a.b 3 _INBOX.x.1 5\r\nhello\r\n'
              b"HMSG c 4 12 14\r\nNATS/1.0\r\n\r\nhi\r\n+OK\r\n-ERR 'Authorization Violation'\r\n")
    for cut in range(1, len(stream)):
        parser = Parser(1024)
        ops = parser.feed(stream[:cut]) + parser.feed(stream[cut:])
        assert ops == [("INFO", {"max_payload": 1024}), "PING", Message("a.b", 3, "_INBOX.x.1", b"hello"),
                       Message("c", 4, "", b"hi"), "+OK", ("-ERR", "Authorization Violation")], cut


def test_no_responders_is_a_status_in_the_headers() -> None:
    [message] = Parser(1024).feed(b"HMSG _INBOX.x.7 1 _INBOX.y 16 16\r\nNATS/1.0 503\r\n\r\n\r\n")
    assert message.status == natswire.NO_RESPONDERS and message.data == b""


@pytest.mark.parametrize("stream", [
    b"MSG a 1 99999999\r\n",  # larger than max_payload: refused before it is buffered
    b"MSG a x 5\r\nhello\r\n",  # sid not a number
    b"WHAT\r\n",
    b"INFO [1]\r\n",
    b"x" * 5000,  # a line that never ends
])
def test_what_a_server_cannot_send_is_refused(stream: bytes) -> None:
    with pytest.raises(ProtocolError):
        Parser(1024).feed(stream)


def test_what_a_client_sends() -> None:
    assert natswire.pub("a.b", "", b"xy") == b"PUB a.b 2\r\nxy\r\n"
    assert natswire.pub("a.b", "_INBOX.1", b"") == b"PUB a.b _INBOX.1 0\r\n\r\n"
    assert natswire.sub("a.*", "workers", 7) == b"SUB a.* workers 7\r\n"
    line = natswire.connect({}, name="n.c", user="u", password="p", token=None, creds=None)
    assert line.startswith(b"CONNECT {") and b'"user":"u"' in line and b'"pass":"p"' in line
    assert b'"no_responders":true' in line and b'"headers":true' in line


# --- NKeys ---------------------------------------------------------------------------------------


def _nkey_seed(key: Ed25519PrivateKey) -> str:
    """An NKey user seed ("SU..."), encoded as the NATS tools do."""
    seed = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    seed_prefix, user_prefix = 18 << 3, 20 << 3
    raw = bytes([seed_prefix | (user_prefix >> 5), (user_prefix & 31) << 3]) + seed
    raw += natswire._crc16(raw).to_bytes(2, "little")
    return base64.b32encode(raw).rstrip(b"=").decode()


def _nkey_public(key: Ed25519PrivateKey) -> str:
    return natswire._encode_key(20 << 3, key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))


def test_a_seed_signs_the_nonce_and_names_its_public_key(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    (tmp_path / "user.nk").write_text(_nkey_seed(key) + "\n")
    signed = Credentials(str(tmp_path / "user.nk")).sign("nonce-1")
    assert signed["nkey"] == _nkey_public(key) and signed["nkey"].startswith("U")
    signature = base64.urlsafe_b64decode(signed["sig"] + "=" * (-len(signed["sig"]) % 4))
    key.public_key().verify(signature, b"nonce-1")  # raises if it is not the nonce's signature

    jwt = "eyJhbGciOi.eyJzdWIiOi.c2lnbmF0dXJl"
    (tmp_path / "user.creds").write_text(f"-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n"
                                         f"-----BEGIN USER NKEY SEED-----\n{_nkey_seed(key)}\n"
                                         f"------END USER NKEY SEED------\n")
    assert Credentials(str(tmp_path / "user.creds")).sign("n")["jwt"] == jwt


def test_a_damaged_or_missing_seed_is_a_config_error(tmp_path: Path) -> None:
    seed = _nkey_seed(Ed25519PrivateKey.generate())
    (tmp_path / "bad.nk").write_text(seed[:-3] + ("A" if seed[-3] != "A" else "B") + seed[-2:])
    with pytest.raises(ConfigError, match="checksum"):
        Credentials(str(tmp_path / "bad.nk"))
    with pytest.raises(ConfigError, match="no user NKey seed"):
        (tmp_path / "empty").write_text("nothing\n")
        Credentials(str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="nats_creds"):
        Credentials(str(tmp_path / "missing"))


# --- the link against real servers ------------------------------------------------------------------


def _settings(url: str, **auth: Any) -> dict[str, Any]:
    return {"nats_servers": (url,), "nats_user": None, "nats_password": None, "nats_token": None,
            "nats_creds": None, **auth}


def _link(url: str, **auth: Any) -> Link:
    link = Link(_settings(url, **auth), name="test.link", label="test link", tls=None)
    link.start(5.0)
    return link


def _echo(link: Link) -> None:
    link.subscribe("echo", "echoes", lambda data, reply: link.send(natswire.pub(reply, "", data[::-1]), 1.0))
    assert link.flush(5.0)  # the server has the subscription


def test_requests_answers_no_responders_and_timeouts(nats_folder: NatsFolder) -> None:
    server = nats_folder.single(jetstream=False)
    caller, callee = _link(server.url), _link(server.url)
    try:
        _echo(callee)
        assert caller.request("echo", b"abc", 5.0) == b"cba"
        results: list[bytes] = []
        threads = [threading.Thread(target=lambda i=i: results.append(caller.request("echo", b"%d" % i, 5.0)))
                   for i in range(50)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        assert sorted(results) == sorted((b"%d" % i)[::-1] for i in range(50))
        with pytest.raises(NatsNoResponders):
            caller.request("nobody.here", b"x", 5.0)
        callee.subscribe("silent", "", lambda data, reply: None)
        assert callee.flush(5.0)
        with pytest.raises(NatsTimeout, match=r"no answer within 0\.3s"):
            caller.request("silent", b"x", 0.3)
        assert caller.max_payload == 1048576  # the server's, from its INFO
    finally:
        caller.stop()
        callee.stop()


def test_the_link_reconnects_and_subscribes_again_when_its_server_comes_back(nats_folder: NatsFolder) -> None:
    server = nats_folder.single(jetstream=False)
    link = _link(server.url)  # caller and callee at once: its subscriptions go before its calls
    try:
        _echo(link)
        assert link.request("echo", b"1", 5.0) == b"1"
        server.kill()
        wait_until(lambda: not link.connected, 5.0, message="the link sees the server gone")
        answer: list[bytes] = []
        waiting = threading.Thread(target=lambda: answer.append(link.request("echo", b"12", 15.0)))
        waiting.start()  # made while NATS is down: it waits for the reconnection within its time
        server.restart()
        waiting.join(20.0)
        assert answer == [b"21"]
    finally:
        link.stop()


@pytest.mark.parametrize("kind", ["password", "token", "nkey"])
def test_each_kind_of_credentials_is_accepted_and_a_wrong_one_refused(nats_folder: NatsFolder, tmp_path: Path,
                                                                       kind: str) -> None:
    key, stranger = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    (tmp_path / "good.nk").write_text(_nkey_seed(key))
    (tmp_path / "bad.nk").write_text(_nkey_seed(stranger))
    authorization = {
        "password": 'authorization { user: cage, password: "s3cret" }',
        "token": 'authorization { token: "t0ken" }',
        "nkey": f'authorization {{ users = [ {{ nkey: "{_nkey_public(key)}" }} ] }}',
    }[kind]
    good, bad = {
        "password": ({"nats_user": "cage", "nats_password": "s3cret"}, {"nats_user": "cage", "nats_password": "x"}),
        "token": ({"nats_token": "t0ken"}, {"nats_token": "wrong"}),
        "nkey": ({"nats_creds": str(tmp_path / "good.nk")}, {"nats_creds": str(tmp_path / "bad.nk")}),
    }[kind]
    server = nats_folder.single(jetstream=False, extra=authorization + "\n")
    link = _link(server.url, **good)
    refused = Link(_settings(server.url, **bad), name="test.link", label="test link", tls=None)
    try:
        assert link.connected
        link.subscribe("ping", "", lambda data, reply: link.send(natswire.pub(reply, "", b"pong"), 1.0))
        assert link.flush(5.0)
        assert link.request("ping", b"", 5.0) == b"pong"
        refused.start(1.0)
        assert not refused.connected
    finally:
        link.stop()
        refused.stop()


def test_jetstream_signs_in_with_the_same_nkey(nats_folder: NatsFolder, tmp_path: Path) -> None:
    """nats-py, for JetStream, is given the signature of pmnc's own reading of the seed (it would
    need the nkeys package to read the file itself)."""
    key = Ed25519PrivateKey.generate()
    (tmp_path / "user.nk").write_text(_nkey_seed(key))
    server = nats_folder.single(extra=f'authorization {{ users = [ {{ nkey: "{_nkey_public(key)}" }} ] }}\n')
    bus = Bus(_settings(server.url, nats_creds=str(tmp_path / "user.nk")), name="test.bus", label="test bus",
              tls=None, calls=True, jetstream=True)
    bus.start(5.0)
    try:
        assert bus.connected
        info = bus.run(bus.jetstream().account_info(), 10.0)
        assert info.limits is not None  # JetStream answered the signed-in connection
    finally:
        bus.stop()
