"""docs/protocols.md's smallest real example, run as a cage's own protocol_line.py in a real
cage: the page that shows how a protocol plugs in stays true."""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import CageProcess, config_source, module_source
from peers import free_port

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocols.md"

HANDLER = module_source("""
    import time

    def process_request(line):
        if line.startswith("sleep "):
            time.sleep(float(line.split()[1]))
            return "woke up"
        if line.startswith("relay "):
            return pmnc.transaction.upper.ask(line[len("relay "):])
        if line == "fail":
            raise ValueError("asked to fail")
        return line.upper()
""", ["process_request"])


def example() -> str:
    """The one python block of the page's example section."""
    section = DOC.read_text().partition("## The smallest real example")[2]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None, "docs/protocols.md has no example"
    return match.group(1)


class LineClient:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10.0)
        self.stream = self.sock.makefile("rwb")

    def ask(self, line: str) -> str:
        self.stream.write(line.encode() + b"\n")
        self.stream.flush()
        return self.stream.readline().decode().rstrip("\n")

    def close(self) -> None:
        self.stream.close()
        self.sock.close()


@pytest.fixture
def line_cage(cage_process: Callable[..., CageProcess]) -> Iterator[tuple[CageProcess, LineClient]]:
    port = free_port()
    cage = cage_process(interfaces={"line": {"protocol": "line", "listener_address": ("127.0.0.1", port),
                                             "request_timeout": 1.0}},
                        files={"protocol_line.py": example(), "interface_line.py": HANDLER,
                               "config_resource_upper.py": config_source(
                                   {"protocol": "line", "server_address": ("127.0.0.1", port)})})
    cage.wait_for_log(rf"interface line listens on line://127\.0\.0\.1:{port}/")
    client = LineClient(port)
    yield cage, client
    client.close()


def test_the_example_serves_lines_through_the_handler(line_cage: tuple[CageProcess, LineClient]) -> None:
    _, client = line_cage
    assert client.ask("hello") == "HELLO"
    assert client.ask("again") == "AGAIN"  # one connection, many requests


def test_the_example_answers_a_handler_error_and_goes_on(line_cage: tuple[CageProcess, LineClient]) -> None:
    _, client = line_cage
    assert client.ask("fail") == "ERROR asked to fail"
    assert client.ask("still here") == "STILL HERE"


def test_the_lifecycle_drops_the_late_answer_of_the_example(line_cage: tuple[CageProcess, LineClient]) -> None:
    _, client = line_cage
    assert client.ask("sleep 1.5") == "ERROR request deadline has expired"  # request_timeout is 1.0
    assert client.ask("next") == "NEXT"


def test_the_example_resource_calls_a_line_server(line_cage: tuple[CageProcess, LineClient]) -> None:
    _, client = line_cage
    assert client.ask("relay through the resource") == "THROUGH THE RESOURCE"
