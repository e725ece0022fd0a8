"""The NATS test harness works (tests/nats_peer.py), and the example configs in docs/nats/ run."""

from __future__ import annotations

import asyncio
import re
import ssl
from pathlib import Path
from typing import TYPE_CHECKING

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from peers import free_port
from pmnc import keys

if TYPE_CHECKING:
    from nats_peer import NatsFolder, NatsServer


DOCS = Path(__file__).resolve().parent.parent / "docs" / "nats"


async def _request_until_answered(nc: Client, subject: str, timeout: float = 10.0) -> bytes:
    """Interest spreads between nodes a moment after a subscription: ask until someone answers."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            answer: bytes = (await nc.request(subject, b"ping", timeout=1.0)).data
            return answer
        except (NoRespondersError, NatsTimeoutError):
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.02)


def test_a_client_connects_and_gets_an_answer(nats_server: NatsServer) -> None:
    async def scenario() -> bytes:
        nc = await nats.connect(nats_server.url)
        try:
            async def answer(msg: Msg) -> None:
                await msg.respond(msg.data.upper())
            await nc.subscribe("t.echo", cb=answer)
            return (await nc.request("t.echo", b"hi", timeout=2.0)).data
        finally:
            await nc.close()

    assert asyncio.run(scenario()) == b"HI"
    assert re.fullmatch(r"nats://127\.0\.0\.1:\d+", nats_server.url)


def test_a_queue_group_spreads_requests_across_cluster_nodes(nats_cluster: list[NatsServer]) -> None:
    n1, n2, n3 = nats_cluster

    async def scenario() -> list[bytes]:
        workers = [await nats.connect(n1.url), await nats.connect(n2.url)]
        caller = await nats.connect(n3.url)
        try:
            for i, nc in enumerate(workers):
                async def answer(msg: Msg, me: bytes = b"w%d" % i) -> None:
                    await msg.respond(me)
                await nc.subscribe("t.work", queue="workers", cb=answer)
            await _request_until_answered(caller, "t.work")
            seen = [await _request_until_answered(caller, "t.work") for _ in range(60)]
            # one worker gone: the other takes every request, no configuration changed
            await workers[0].close()
            after = [await _request_until_answered(caller, "t.work") for _ in range(10)]
            return [*sorted(set(seen)), b"|", *sorted(set(after))]
        finally:
            for nc in [*workers, caller]:
                await nc.close()

    assert asyncio.run(scenario()) == [b"w0", b"w1", b"|", b"w1"]


def test_a_replicated_stream_survives_the_kill_of_one_node(nats_cluster: list[NatsServer]) -> None:
    n1, n2, n3 = nats_cluster

    async def scenario() -> tuple[int, int]:
        nc = await nats.connect(servers=[n2.url, n3.url])
        try:
            js = nc.jetstream(timeout=5.0)
            await js.add_stream(name="T", subjects=["t.kept.>"], num_replicas=3)
            for i in range(10):
                await js.publish(f"t.kept.{i}", b"%d" % i)
            n1.kill()
            # the stream's leader may have been on n1: a new one is elected within seconds
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20.0
            for i in range(10, 20):
                while True:
                    try:
                        await js.publish(f"t.kept.{i}", b"%d" % i, timeout=2.0)
                        break
                    except (nats.js.errors.Error, NatsTimeoutError, NoRespondersError):
                        if loop.time() > deadline:
                            raise
                        await asyncio.sleep(0.1)
            info = await js.stream_info("T")
            return info.state.messages, info.config.num_replicas or 0
        finally:
            await nc.close()

    assert asyncio.run(scenario()) == (20, 3)
    n1.restart()  # same ports and store: it rejoins
    assert n1.ready()


# --- docs/nats/ -----------------------------------------------------------------------------------


def _docs_config(number: int, ports: list[dict[str, int]], store: Path, tls_keys: Path | None) -> str:
    """docs/nats/nats-<number>.conf moved onto loopback: the three hosts become 127.0.0.1 with
    free ports, the store a temporary folder; with `tls_keys` (a CA folder) its tls block is
    uncommented and given a server certificate of that CA."""
    text = (DOCS / f"nats-{number}.conf").read_text()
    mine = ports[number - 1]
    text = re.sub(r"listen: 0\.0\.0\.0:4222", f"listen: 127.0.0.1:{mine['client']}", text)
    text = re.sub(r"listen: 0\.0\.0\.0:6222", f"listen: 127.0.0.1:{mine['cluster']}", text)
    text = text.replace("127.0.0.1:8222", f"127.0.0.1:{mine['http']}")
    for other in (1, 2, 3):
        text = text.replace(f"nats-route://nats-{other}.example.net:6222",
                            f"nats-route://127.0.0.1:{ports[other - 1]['cluster']}")
    text = text.replace('"/var/lib/nats/jetstream"', f'"{store}"')
    text = text.replace('log_file: "/var/log/nats/nats-server.log"', "")  # to stdout: the harness keeps it
    if tls_keys is not None:
        block = re.search(r"^# tls \{\n(?:#.*\n)*?# \}\n", text, re.M)
        assert block, "no commented tls block"
        text = text.replace(block.group(0), re.sub(r"^# ?", "", block.group(0), flags=re.M))
        server = keys.make_server(tls_keys, f"nats-{number}", ("127.0.0.1",))
        text = text.replace(f'"/etc/nats/nats-{number}.pem"', f'"{server}"')
        text = text.replace('"/etc/nats/ca.pem"', f'"{tls_keys / keys.CA_CERT}"')
    settings = "\n".join(line.split("#")[0] for line in text.splitlines())
    assert "example.net" not in settings and "/var/" not in settings and "/etc/" not in settings, \
        "a host name or path was not rewritten"
    assert ("verify: true" in settings) == (tls_keys is not None)
    return text


def _docs_cluster(nats_folder: NatsFolder, tls_keys: Path | None = None) -> list[NatsServer]:
    ports = [{"client": free_port(), "cluster": free_port(), "http": free_port()} for _ in range(3)]
    return nats_folder.cluster_of([
        (f"nats-{n}", _docs_config(n, ports, nats_folder.path / f"nats-{n}" / "jetstream", tls_keys),
         ports[n - 1]["client"], ports[n - 1]["http"]) for n in (1, 2, 3)])


async def _kept_in_a_replicated_stream(url: str, tls: ssl.SSLContext | None = None) -> int:
    """Publish one message to a stream of replicas 3 (as the flock's retried calls are): how many it holds."""
    nc = await nats.connect(url, tls=tls)
    try:
        js = nc.jetstream(timeout=5.0)
        await js.add_stream(name="PMNC_docs", subjects=["pmnc.docs.retry.>"], num_replicas=3)
        await js.publish("pmnc.docs.retry.x.q", b"kept three times")
        return (await js.stream_info("PMNC_docs")).state.messages
    finally:
        await nc.close()


def test_the_documented_three_node_cluster_runs(nats_folder: NatsFolder) -> None:
    nodes = _docs_cluster(nats_folder)

    assert [node.monitor("/varz")[1]["server_name"] for node in nodes] == ["nats-1", "nats-2", "nats-3"]
    varz = nodes[0].monitor("/varz")[1]
    assert varz["max_payload"] == 8 * 1024 * 1024
    assert varz["cluster"]["name"] == "pmnc"
    assert asyncio.run(_kept_in_a_replicated_stream(nodes[2].url)) == 1


def test_the_documented_tls_block_admits_only_certificates_of_the_cluster_ca(nats_folder: NatsFolder) -> None:
    tls_keys = nats_folder.path / "ssl_keys"
    keys.make_ca(tls_keys)
    cage = keys.make_cage(tls_keys, "worker", "docs")  # what `--keys cage` gives a cage
    nodes = _docs_cluster(nats_folder, tls_keys)
    url = f"tls://127.0.0.1:{nodes[1].port}"

    context = ssl.create_default_context(cafile=str(tls_keys / keys.CA_CERT))
    context.load_cert_chain(cage)
    assert asyncio.run(_kept_in_a_replicated_stream(url, context)) == 1

    async def without_certificate() -> None:
        anonymous = ssl.create_default_context(cafile=str(tls_keys / keys.CA_CERT))
        await nats.connect(url, tls=anonymous, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2)

    with pytest.raises((OSError, nats.errors.Error)):
        asyncio.run(without_certificate())
    with pytest.raises((OSError, nats.errors.Error)):  # nor one that does not speak TLS
        asyncio.run(nats.connect(nodes[1].url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2))


@pytest.mark.parametrize("number", [1, 2, 3])
def test_the_documented_configs_name_their_own_host_and_route_to_all(number: int) -> None:
    text = (DOCS / f"nats-{number}.conf").read_text()
    assert f"server_name: nats-{number}" in text
    # every node lists all three routes (its own is ignored), so the three files differ only in the name
    assert sorted(re.findall(r"nats-route://(nats-\d)\.example\.net:6222", text)) == ["nats-1", "nats-2", "nats-3"]
    assert "verify: true" in text and "ca.pem" in text


def test_the_documented_config_cluster_is_valid() -> None:
    from pmnc.rpc.cluster import KEYS
    scope: dict[str, object] = {}
    exec((DOCS / "config_cluster.py").read_text(), scope)
    settings = KEYS.read(scope["config"], "config_cluster.py")
    assert (settings["transport"], settings["retry_store"], settings["jetstream_replicas"]) == ("nats", "jetstream", 3)
    assert settings["nats_servers"] == tuple(f"nats://nats-{n}.example.net:4222" for n in (1, 2, 3))
    # the frames fit the servers' max_payload (8 MB) with room for the seal
    assert 8 * 1024 * 1024 - settings["max_frame_size"] >= 10 * 1024
