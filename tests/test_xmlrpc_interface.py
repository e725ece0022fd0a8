"""The XML-RPC interface over real sockets, called by the standard library's ServerProxy."""

from __future__ import annotations

import datetime
import ssl
import time
import xmlrpc.client
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, InProcessCage, Pki, http_config, http_request, module_source, wait_until
from hypothesis import given, settings
from hypothesis import strategies as st
from pmnc.protocols.xmlrpc import CallError, _careful_call, _read_call, _tree_call, dumps_result, parse_call

HANDLER = module_source("""
    import os
    import time

    def process_request(request, response):
        method, args = request["method"], request["args"]
        if method == "echo":
            response["result"] = args[0]
        elif method == "inspect.the.call":
            response["result"] = {"method": method, "args": list(args),
                                  "types": [type(a).__name__ for a in args], "args_type": type(args).__name__,
                                  "protocol": pmnc.request.protocol, "interface": pmnc.request.interface,
                                  "auth_tokens": pmnc.request.parameters["auth_tokens"]}
        elif method == "nothing":
            pass  # the result stays None
        elif method == "boom":
            raise ValueError("boom")
        elif method == "rpc.deadline":  # as a call to another cage whose own deadline came first
            from pmnc.errors import RPCDeadlineError
            raise RPCDeadlineError("request deadline has expired in cage other at 127.0.0.1:1234")
        elif method == "gate":  # busy until the file exists (ignoring the deadline, as slow code does)
            end = time.monotonic() + 10.0
            while not os.path.exists(args[0]) and time.monotonic() < end:
                time.sleep(0.01)
            response["result"] = "released"
        else:
            raise LookupError(method)
""", ["process_request"])

XML = {"Content-Type": "text/xml"}


# --- helpers ----------------------------------------------------------------------------------


def start(in_process_cage: Callable[..., InProcessCage], **config: Any) -> InProcessCage:
    tree: dict[str, Any] = {key: config.pop(key) for key in ("request_timeout",) if key in config}
    return in_process_cage(interfaces={"xmlrpc": http_config(protocol="xmlrpc", **config)},
                           files={"interface_xmlrpc.py": HANDLER}, **tree)


@pytest.fixture
def proxies() -> Iterator[Callable[..., xmlrpc.client.ServerProxy]]:
    opened: list[xmlrpc.client.ServerProxy] = []

    def connect(cage: InProcessCage, path: str = "/", interface: str = "xmlrpc", scheme: str = "http",
                **kwargs: Any) -> xmlrpc.client.ServerProxy:
        host, port = cage.address(interface)
        proxy = xmlrpc.client.ServerProxy(f"{scheme}://{host}:{port}{path}", **kwargs)
        opened.append(proxy)
        return proxy

    yield connect
    for proxy in opened:
        proxy("close")()


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[Path]:
    """A file whose existence releases handlers busy in `gate`; always released at the end."""
    path = tmp_path / "gate"
    yield path
    path.touch()


def fault(call: Callable[[], Any]) -> xmlrpc.client.Fault:
    with pytest.raises(xmlrpc.client.Fault) as info:
        call()
    return info.value


def post(cage: InProcessCage, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    status, _, content = http_request(cage.address("xmlrpc")[1], "/RPC2", method="POST", body=body,
                                      headers=XML if headers is None else headers)
    return status, content


# --- calls ---------------------------------------------------------------------------------------


VALUES = [
    0, 42, -7, 2**31 - 1, True, False,
    "", "text with <markup> & ünïcödé \u2014 and a\nnewline",
    1.5, -0.25,
    b"", b"\x00\x01\xffbinary",
    datetime.datetime(2024, 2, 29, 12, 34, 56),
    [], [1, "a", [2.5, [True]]],
    {}, {"a": 1, "b": {"c": [True, {"d": b"bytes"}]}, "e": datetime.datetime(2000, 1, 1)},
]


def test_echo_of_every_type(in_process_cage: Callable[..., InProcessCage],
                            proxies: Callable[..., xmlrpc.client.ServerProxy]) -> None:
    cage = start(in_process_cage)
    proxy = proxies(cage, use_builtin_types=True)
    for value in VALUES:
        answer = proxy.echo(value)
        assert answer == value
        assert type(answer) is type(value)


def test_echo_of_the_legacy_wrapper_types(in_process_cage: Callable[..., InProcessCage],
                                         proxies: Callable[..., xmlrpc.client.ServerProxy]) -> None:
    cage = start(in_process_cage)
    proxy = proxies(cage)  # without use_builtin_types the client sends and gets Binary and DateTime
    binary = proxy.echo(xmlrpc.client.Binary(b"\x00\x01"))
    assert isinstance(binary, xmlrpc.client.Binary) and binary.data == b"\x00\x01"
    stamp = proxy.echo(xmlrpc.client.DateTime(datetime.datetime(2024, 1, 2, 3, 4, 5)))
    assert isinstance(stamp, xmlrpc.client.DateTime) and stamp.value == "20240102T03:04:05"


def test_the_call_the_handler_sees(in_process_cage: Callable[..., InProcessCage],
                                   proxies: Callable[..., xmlrpc.client.ServerProxy]) -> None:
    cage = start(in_process_cage)
    # any URL path is served; arguments arrive as builtin types in a tuple
    seen = proxies(cage, path="/any/path?x=1").inspect.the.call(
        1, xmlrpc.client.Binary(b"b"), xmlrpc.client.DateTime(datetime.datetime(2024, 1, 2)), "s")
    assert seen["method"] == "inspect.the.call"
    assert seen["args_type"] == "tuple"
    assert seen["types"] == ["int", "bytes", "datetime", "str"]
    assert (seen["protocol"], seen["interface"]) == ("xmlrpc", "xmlrpc")
    assert seen["auth_tokens"] == {"peer_ip": "127.0.0.1", "encrypted": False}


def test_none_result_without_allow_none_is_an_empty_array(in_process_cage: Callable[..., InProcessCage],
                                                          proxies: Callable[..., xmlrpc.client.ServerProxy]) -> None:
    cage = start(in_process_cage)
    proxy = proxies(cage, allow_none=True)
    assert proxy.nothing() == []
    assert proxy.echo(None) == []
    # a None inside a result cannot be sent at all: the client gets a fault, not a broken answer
    refused = fault(lambda: proxy.echo([1, None]))
    assert refused.faultCode == 500
    assert "allow_none" in refused.faultString


def test_none_with_allow_none(in_process_cage: Callable[..., InProcessCage],
                              proxies: Callable[..., xmlrpc.client.ServerProxy]) -> None:
    cage = start(in_process_cage, allow_none=True)
    proxy = proxies(cage, allow_none=True)
    assert proxy.nothing() is None
    assert proxy.echo([1, None, {"k": None}]) == [1, None, {"k": None}]


def test_handler_exception_is_fault_500(in_process_cage: Callable[..., InProcessCage],
                                        proxies: Callable[..., xmlrpc.client.ServerProxy]) -> None:
    cage = start(in_process_cage)
    proxy = proxies(cage)
    boom = fault(proxy.boom)
    assert boom.faultCode == 500
    assert boom.faultString == 'ValueError("boom")'
    assert proxy.echo("still here") == "still here"  # on the same connection: a fault is a normal answer
    assert 'XMLRPC call boom failed: ValueError("boom")' in cage.log_text()


def test_template_handler(in_process_cage: Callable[..., InProcessCage],
                          proxies: Callable[..., xmlrpc.client.ServerProxy]) -> None:
    shared = ROOT / "cages" / ".shared"
    template: dict[str, Any] = {}
    exec(compile((shared / "config_interface_xmlrpc_1.py").read_text(), "config", "exec"), template)
    config = dict(template["config"], listener_address=("127.0.0.1", 0))
    assert template["config"]["listener_address"] == ("127.0.0.1", 8000)
    cage = in_process_cage(interfaces={"xmlrpc_1": config},
                           files={"interface_xmlrpc_1.py": (shared / "interface_xmlrpc_1.py").read_text()})
    proxy = proxies(cage, interface="xmlrpc_1")
    assert proxy.echo({"a": [1, 2]}) == {"a": [1, 2]}
    assert proxy.echo(1, "two") == [1, "two"]
    assert "echo" in proxy.system.listMethods()
    unknown = fault(proxy.no.such.method)
    assert unknown.faultCode == 500
    assert unknown.faultString == 'LookupError("unknown method no.such.method")'


def test_keep_alive_across_calls(in_process_cage: Callable[..., InProcessCage],
                                 proxies: Callable[..., xmlrpc.client.ServerProxy]) -> None:
    cage = start(in_process_cage)
    interface = cage.cage.interfaces.live["xmlrpc"][0]
    proxy = proxies(cage)
    connections: set[Any] = set()
    for i in range(5):
        assert proxy.echo(i) == i
        fault(proxy.boom)  # a fault keeps the connection too
        connections |= interface.connections
    assert len(connections) == 1  # all ten calls came over one connection
    assert not next(iter(connections)).closing


def test_deadline_is_fault_504_at_the_deadline(in_process_cage: Callable[..., InProcessCage],
                                               proxies: Callable[..., xmlrpc.client.ServerProxy],
                                               gate: Path) -> None:
    cage = start(in_process_cage, request_timeout=1.0)
    proxy = proxies(cage)
    began = time.monotonic()
    late = fault(lambda: proxy.gate(str(gate)))
    elapsed = time.monotonic() - began
    assert late.faultCode == 504
    assert late.faultString == "request deadline has expired"
    assert 0.8 <= elapsed <= 1.8, elapsed
    wait_until(lambda: "the client gets a fault 504" in cage.log_text(), 5.0, message="the deadline log line")
    gate.touch()
    assert proxy.echo("after") == "after"  # the proxy reconnects by itself


def test_deadline_error_from_the_handler_is_fault_504(in_process_cage: Callable[..., InProcessCage],
                                                      proxies: Callable[..., xmlrpc.client.ServerProxy]) -> None:
    """Another cage's deadline is this request's: Fault 504 with the usual string, not 500 with
    the error's text (which may name internal addresses); the connection closes, as at the deadline."""
    cage = start(in_process_cage)
    interface = cage.cage.interfaces.live["xmlrpc"][0]
    proxy = proxies(cage)
    late = fault(proxy.rpc.deadline)
    assert (late.faultCode, late.faultString) == (504, "request deadline has expired")
    wait_until(lambda: not interface.connections, 5.0, message="the connection closed")
    assert "XMLRPC call rpc.deadline has run out of time, the client gets a fault 504" in cage.log_text()
    assert proxy.echo("after") == "after"


# --- transport-level refusals ------------------------------------------------------------------


def test_get_is_405(in_process_cage: Callable[..., InProcessCage]) -> None:
    cage = start(in_process_cage)
    status, headers, _ = http_request(cage.address("xmlrpc")[1], "/")
    assert status == 405
    assert headers["connection"] == "close"


@pytest.mark.parametrize("content_type", ["application/json", "text/plain", ""])
def test_content_type_other_than_text_xml_is_415(in_process_cage: Callable[..., InProcessCage],
                                                 content_type: str) -> None:
    cage = start(in_process_cage)
    body = xmlrpc.client.dumps((1,), "echo").encode()
    headers = {"Content-Type": content_type} if content_type else {}
    assert post(cage, body, headers)[0] == 415
    # media type parameters are fine
    assert post(cage, body, {"Content-Type": "text/xml; charset=utf-8"})[0] == 200


@pytest.mark.parametrize("body", [
    b"garbage",
    b"",
    b"<methodCall><methodName>echo</methodName><params><param><value><i4>x</i4></value></param>",
    b"<methodCall><methodName>echo</methodName><params><param><value><i4>x</i4></value></param></params>"
    b"</methodCall>",
    xmlrpc.client.dumps((1,), methodresponse=True).encode(),  # an answer, not a call
])
def test_unparsable_call_is_400(in_process_cage: Callable[..., InProcessCage], body: bytes) -> None:
    cage = start(in_process_cage)
    status, text = post(cage, body)
    assert status == 400
    assert text.startswith(b"invalid XMLRPC request: ")
    assert b"\n" not in text


def billion_laughs(levels: int = 9) -> str:
    entities = ['<!ENTITY e0 "lol">'] + [f'<!ENTITY e{i} "{f"&e{i - 1};" * 10}">' for i in range(1, levels + 1)]
    return (f'<?xml version="1.0"?><!DOCTYPE methodCall [{"".join(entities)}]>'
            f"<methodCall><methodName>echo</methodName><params><param><value><string>&e{levels};</string>"
            "</value></param></params></methodCall>")


@pytest.mark.parametrize("body", [
    billion_laughs().encode(),
    billion_laughs(levels=1).encode(),  # even a harmless internal entity: no DTD at all
    billion_laughs().replace('"1.0"?>', '"1.0" encoding="utf-16"?>').encode("utf-16"),
])
def test_entity_declarations_are_refused(in_process_cage: Callable[..., InProcessCage], body: bytes) -> None:
    cage = start(in_process_cage)
    status, text = post(cage, body)
    assert status == 400
    assert text.startswith(b"invalid XMLRPC request: ")
    assert b"document type declarations" in text
    assert "XMLRPC call" not in cage.log_text()  # the handler never ran


# --- HTTPS --------------------------------------------------------------------------------------------


def test_https(in_process_cage: Callable[..., InProcessCage], proxies: Callable[..., xmlrpc.client.ServerProxy],
               pki: Pki) -> None:
    cage = start(in_process_cage, ssl_key_cert_file=str(pki.server_file), ssl_ca_cert_file=str(pki.ca_file))
    assert "interface xmlrpc listens on https://" in cage.log_text()
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    context.load_cert_chain(str(pki.client_file))
    proxy = proxies(cage, scheme="https", context=context, use_builtin_types=True)
    assert proxy.echo(b"secret") == b"secret"
    tokens = proxy.inspect.the.call()["auth_tokens"]
    assert tokens["encrypted"] is True
    assert tokens["peer_cn"] == "test-client"


# --- the fast decoder gives what the standard library gives ------------------------------------------

_scalars = (st.integers(-2**31, 2**31 - 1) | st.booleans() | st.floats(allow_nan=False, allow_infinity=False)
            | st.text(st.characters(blacklist_categories=("Cs", "Cc")) | st.sampled_from("\t\n"))
            | st.binary(max_size=40)
            | st.datetimes(min_value=datetime.datetime(1000, 1, 1)).map(lambda d: d.replace(microsecond=0)))
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                       | st.dictionaries(st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=8),
                                         inner, max_size=4), max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(st.lists(_values, max_size=3), st.from_regex(r"[A-Za-z_][A-Za-z0-9_.]{0,20}", fullmatch=True))
def test_fast_decoding_equals_the_standard_librarys(args: list[Any], method: str) -> None:
    data = xmlrpc.client.dumps(tuple(args), method).encode("utf-8")
    expected_args, expected_method = xmlrpc.client.loads(data, use_builtin_types=True)
    assert _read_call(data) == (expected_method, expected_args)
    assert _tree_call(data) == (expected_method, expected_args)
    assert parse_call(data) == (expected_method, expected_args)


def test_unusual_bodies_take_the_careful_way() -> None:
    with_nil = xmlrpc.client.dumps((None,), "m", allow_none=True).encode()
    assert _read_call(with_nil) is None and _tree_call(with_nil) is None and parse_call(with_nil) == ("m", (None,))
    latin = xmlrpc.client.dumps(("Ã©",), "m", encoding="iso-8859-1").encode("iso-8859-1")  # whose bytes are UTF-8 too
    assert _read_call(latin) is None and _tree_call(latin) is None and parse_call(latin) == ("m", ("Ã©",))
    commented = b"<?xml version='1.0'?><!-- hi --><methodCall><methodName>m</methodName></methodCall>"
    assert _read_call(commented) is None and _tree_call(commented) is None and parse_call(commented) == ("m", ())
    crlf = xmlrpc.client.dumps(("a\nb",), "m").replace("\n", "\r\n").encode()  # XML makes each line end \n
    assert _read_call(crlf) is None and parse_call(crlf) == ("m", ("a\nb",))


def test_the_first_road_reads_references_and_spacing_as_expat_does() -> None:
    data = (b'<?xml version="1.0" encoding="UTF-8"?>\n<methodCall> <methodName>m</methodName>\r\n<params>'
            b"<param> <value>\t<string>&lt;&#65;&#x1F600;&amp;&gt;&quot;&apos;</string>\n</value></param>"
            b"<param><value>  </value></param>"
            b"<param><value><struct> <member><name>k&amp;</name> <value><i4>7</i4></value> </member></struct>"
            b"</value></param></params></methodCall>\n")
    expected = ("m", ("<A\U0001F600&>\"'", "  ", {"k&": 7}))
    assert _read_call(data) == expected and _careful_call(data) == expected


@pytest.mark.parametrize("text", ["&#0;", "&#xD800;", "&#xFFFE;", "&#x110000;", "&bogus;", "a & b", "\x01", "]]>"])
def test_what_xml_refuses_in_a_text_is_refused(text: str) -> None:
    data = f"<methodCall><methodName>m</methodName><params><param><value><string>{text}</string></value>" \
           "</param></params></methodCall>"
    assert _read_call(data.encode()) is None
    with pytest.raises(CallError):
        parse_call(data.encode())


# Pieces that, put anywhere in a body, make it something the first road must read exactly as
# expat and the unmarshaller do, or leave: spacing, references valid and not, characters XML
# refuses, markup it does not expect.
_PIECES = (" ", "\t", "\n", "\r", "\r\n", "&amp;", "&lt;", "&#65;", "&#x41;", "&#0;", "&#xD800;", "&#xFFFE;",
           "&#x10FFFF;", "&#x110000;", "&bogus;", "&", ">", "]]>", "\x01", "\x7f", "\ufeff", "\ufffe", "é",
           "<value>", "</value>", "<int>", "</int>", "<string>", "<param>", "</param>", "<member>", "</member>",
           "<name>", "</name>", "<array>", "<data>", "</data>", "<struct>", "</struct>", "<value/>", "<nil/>",
           "<!-- c -->", "<?pi x?>", "<![CDATA[x]]>", "<value a='1'>", "1", "x", "0", "2", "T", "</params>",
           "</methodCall>", "<?xml version='1.0'?>", "<?xml version='1.0' encoding='latin-1'?>")
_HARMLESS = (" ", "\n", "\t", "&amp;", "&#65;", "&#x1F600;", "é")  # often, so that many edited bodies are read


@settings(max_examples=600, deadline=None)
@given(st.lists(_values, max_size=2), st.booleans(),
       st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from(_PIECES) | st.sampled_from(_HARMLESS) | st.none(),
                                 st.booleans()), max_size=3))
def test_the_first_road_reads_only_what_expat_reads_alike(args: list[Any], compact: bool,
                                                          edits: list[tuple[int, str | None, bool]]) -> None:
    text = xmlrpc.client.dumps(tuple(args), "m")
    if compact:
        text = text.replace("\n", "")
    for at, piece, between_tags in edits:  # most often where one tag ends or the next begins
        if piece is None:  # no piece: a tag taken out
            starts = [i for i, c in enumerate(text) if c == "<"]
            at = starts[at % len(starts)]
            text = text[:at] + text[text.index(">", at) + 1:]
            continue
        places = [i for i, c in enumerate(text) if c == "<"] + [i + 1 for i, c in enumerate(text) if c == ">"]
        at = places[at % len(places)] if between_tags else at % (len(text) + 1)
        text = text[:at] + piece + text[at:]
    data = text.encode("utf-8")
    read = _read_call(data)
    if read is not None:
        assert read == _careful_call(data)


# --- the fast encoder writes what the standard library writes -----------------------------------------

_answers = st.recursive(_scalars | st.none() | st.integers() | st.floats()
                        | st.text(st.sampled_from("<>&\"' é\x00\ud800")), lambda inner:
                        st.lists(inner, max_size=4) | st.lists(inner, max_size=3).map(tuple)
                        | st.dictionaries(st.text(st.sampled_from("a<&>") , max_size=3) | st.integers(0, 2), inner,
                                          max_size=4), max_leaves=12)


def _stdlib(result: Any, encoding: str, allow_none: bool) -> str | type[BaseException]:
    try:
        return xmlrpc.client.dumps((result,), methodresponse=True, encoding=encoding, allow_none=allow_none)
    except Exception as e:
        return type(e)


def _ours(result: Any, encoding: str, allow_none: bool) -> str | type[BaseException]:
    try:
        return dumps_result(result, encoding, allow_none)
    except Exception as e:
        return type(e)


@settings(max_examples=400, deadline=None)
@given(_answers, st.sampled_from(["utf-8", "iso-8859-1", "UTF-8"]), st.booleans())
def test_fast_encoding_equals_the_standard_librarys(result: Any, encoding: str, allow_none: bool) -> None:
    """Character for character, and the same error where the standard library refuses
    (None without allow_none, an int beyond 32 bits, a key that is not a str)."""
    assert _ours(result, encoding, allow_none) == _stdlib(result, encoding, allow_none)


def test_unusual_answers_are_the_standard_librarys() -> None:
    recursive: list[Any] = [1]
    recursive.append(recursive)
    assert _ours(recursive, "utf-8", False) is TypeError  # "cannot marshal recursive sequences"
    wrapped = {"when": xmlrpc.client.DateTime("20261207T10:00:00"), "blob": xmlrpc.client.Binary(b"\x00\x01")}
    assert dumps_result(wrapped, "utf-8", False) == _stdlib(wrapped, "utf-8", False)

    class Point:
        def __init__(self) -> None:
            self.x, self.y = 1, 2

    assert dumps_result(Point(), "utf-8", False) == _stdlib(Point(), "utf-8", False)  # a struct of its __dict__
    assert _ours(True.__class__.__mro__, "utf-8", False) is TypeError  # types cannot be marshalled
