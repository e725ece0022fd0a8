"""The XML-RPC resource against the standard library's SimpleXMLRPCServer, and against our own interface."""

from __future__ import annotations

import datetime
import threading
from collections.abc import Callable, Iterator
from socketserver import ThreadingMixIn
from typing import Any
from xmlrpc.server import SimpleXMLRPCRequestHandler, SimpleXMLRPCServer

import pytest
from conftest import InProcessCage, config_source, http_config, module_source
from pmnc.errors import ResourceError, ResourceInputParameterError
from pmnc.request import Request, attached


class _Handler(SimpleXMLRPCRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the resource expects
    rpc_paths = ("/RPC2",)


class _Server(ThreadingMixIn, SimpleXMLRPCServer):
    daemon_threads = True


class Calc:
    def add(self, a: int, b: int) -> int:
        return a + b


@pytest.fixture
def stdlib_server() -> Iterator[_Server]:
    server = _Server(("127.0.0.1", 0), requestHandler=_Handler, logRequests=False, allow_none=True)
    server.register_function(lambda *args: list(args), "echo")
    server.register_function(lambda: 1 / 0, "divide_by_zero")
    server.register_instance(Calc(), allow_dotted_names=False)
    server.register_function(lambda: None, "nothing")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def attached_request() -> Iterator[Request]:
    request = Request(timeout=5.0, interface="test", protocol="test")
    with attached(request):
        yield request


def resource_config(port: int, **more: Any) -> str:
    return config_source({"protocol": "xmlrpc", "server_address": ("127.0.0.1", port), "server_uri": "/RPC2",
                          "pool__size": 2, **more})


def call(cage: InProcessCage) -> Any:
    return cage.cage.runtime.root.transaction.rpc


def test_calls_the_standard_library_server(in_process_cage: Callable[..., InProcessCage], stdlib_server: _Server,
                                           attached_request: Request) -> None:
    cage = in_process_cage(files={"config_resource_rpc.py": resource_config(stdlib_server.server_address[1])})
    when = datetime.datetime(2026, 11, 27, 12, 30, 0)
    values = [1, True, "text", 2.5, b"\x00bytes", when, [1, [2]], {"k": "v"}]
    assert call(cage).echo(*values) == values
    assert call(cage).add(2, 3) == 5


def test_a_fault_is_a_resource_error_with_its_code(in_process_cage: Callable[..., InProcessCage],
                                                   stdlib_server: _Server, attached_request: Request) -> None:
    cage = in_process_cage(files={"config_resource_rpc.py": resource_config(stdlib_server.server_address[1])})
    with pytest.raises(ResourceError) as info:
        call(cage).divide_by_zero()
    assert info.value.code == 1
    assert "ZeroDivisionError" in info.value.description
    assert not info.value.terminal, "a fault leaves the connection usable"
    assert call(cage).add(1, 1) == 2


def test_unknown_method_and_bad_path(in_process_cage: Callable[..., InProcessCage], stdlib_server: _Server,
                                     attached_request: Request) -> None:
    port = stdlib_server.server_address[1]
    cage = in_process_cage(files={"config_resource_rpc.py": resource_config(port),
                                  "config_resource_wrong.py": resource_config(port, server_uri="/nowhere")})
    with pytest.raises(ResourceError) as info:
        call(cage).no_such_method()
    assert "is not supported" in info.value.description
    with pytest.raises(ResourceError) as info:
        cage.cage.runtime.root.transaction.wrong.echo(1)
    assert info.value.code == 404


def test_none_needs_allow_none(in_process_cage: Callable[..., InProcessCage], stdlib_server: _Server,
                               attached_request: Request) -> None:
    port = stdlib_server.server_address[1]
    cage = in_process_cage(files={"config_resource_rpc.py": resource_config(port),
                                  "config_resource_nil.py": resource_config(port, allow_none=True)})
    with pytest.raises(ResourceInputParameterError):
        call(cage).echo(None)
    assert cage.cage.runtime.root.transaction.nil.echo(None) == [None]


def test_keyword_arguments_are_refused(in_process_cage: Callable[..., InProcessCage], stdlib_server: _Server,
                                       attached_request: Request) -> None:
    cage = in_process_cage(files={"config_resource_rpc.py": resource_config(stdlib_server.server_address[1])})
    with pytest.raises(ResourceInputParameterError):
        call(cage).echo(value=1)


def test_in_a_transaction_with_another_participant(in_process_cage: Callable[..., InProcessCage],
                                                   stdlib_server: _Server, attached_request: Request) -> None:
    cage = in_process_cage(files={"config_resource_rpc.py": resource_config(stdlib_server.server_address[1])})
    xa = cage.cage.runtime.root.transaction.create()
    xa.rpc.add(1, 2)
    xa.rpc.echo("x")
    assert xa.execute() == (3, ["x"])


ECHO_HANDLER = module_source("""
    def process_request(request, response):
        if request["method"] == "fail":
            raise ValueError("as asked")
        response["result"] = [request["method"], list(request["args"])]
""", ["process_request"])


def test_our_resource_calls_our_interface(in_process_cage: Callable[..., InProcessCage],
                                          attached_request: Request) -> None:
    cage = in_process_cage(interfaces={"xmlrpc": http_config(protocol="xmlrpc")},
                           files={"interface_xmlrpc.py": ECHO_HANDLER})
    port = cage.address("xmlrpc")[1]
    (cage.cage_dir / "config_resource_rpc.py").write_text(resource_config(port, server_uri="/anything"))
    assert call(cage).Some.Method(1, "two") == ["Some.Method", [1, "two"]]
    with pytest.raises(ResourceError) as info:
        call(cage).fail()
    assert (info.value.code, info.value.description) == (500, 'ValueError("as asked")')
