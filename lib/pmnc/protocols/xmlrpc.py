"""XML-RPC interface and resource: method calls as XML over HTTP(S), with the standard library's codec.

The interface is the HTTP interface (parsing, limits, keep-alive, TLS,
deadlines) with its own handler step: a POST of `text/xml` becomes
`interface_<name>.process_request({"method": "dotted.name", "args": (...)},
{"result": None})`, and the result, or the handler's exception as a Fault
with code 500, goes back in an HTTP 200; a deadline, whether it beats the
handler or the handler raises a deadline error, is Fault 504. Transport-level
mistakes get plain HTTP errors: 405 not a POST, 415 not `text/xml`, 400 an
unparsable call.
"""

from __future__ import annotations

import base64
import re
import xmlrpc.client
from collections.abc import Callable
from pyexpat import ParserCreate
from typing import TYPE_CHECKING, Any
from xml.etree import ElementTree

from pmnc import log, resource
from pmnc.errors import ProtocolError, ResourceError, ResourceInputParameterError, exc_string
from pmnc.protocols.http import Interface as HttpInterface
from pmnc.protocols.httpclient import KEYS as HTTP_RESOURCE_KEYS
from pmnc.protocols.httpclient import Resource as HttpResource
from pmnc.protocols.httpwire import HttpRequest, error_response, render
from pmnc.schema import Key, resource_file

if TYPE_CHECKING:
    from pmnc.runtime import Runtime

# --- interface -----------------------------------------------------------------------------------------


class CallError(ProtocolError):
    """A request body that is not an acceptable XML-RPC call."""


def parse_call(data: bytes) -> tuple[str, tuple[Any, ...]]:
    """The method name and arguments of an XML-RPC call; CallError if it is none.

    This is `xmlrpc.client.loads` with one difference: a document type
    declaration is refused as soon as expat meets it. Expat expands internal
    entities (within its amplification limit, still some 100 times a 1 MiB
    body), and XML-RPC has no use for a DTD. Refusing it in the parser rather
    than by searching the bytes covers every encoding expat reads, UTF-16
    included.

    The common case takes one of two faster roads, each giving the same
    values or stepping aside: `_read_call` reads the text itself, and
    `_tree_call` walks ElementTree's C tree.
    """
    fast = _read_call(data)
    if fast is None:
        fast = _tree_call(data)
    return fast if fast is not None else _careful_call(data)


def _careful_call(data: bytes) -> tuple[str, tuple[Any, ...]]:
    """The road for any body: expat feeding the standard library's unmarshaller."""
    target = _unmarshaller()
    parser = _parser(target)
    try:
        parser.Parse(data, True)
        args, method = target.close(), target.getmethodname()
    except CallError:
        raise
    except Exception as e:  # expat's, the unmarshaller's (ValueError, IndexError, ...), or a Fault
        raise CallError(exc_string(e, stack=False)) from None
    if not isinstance(method, str) or not method:
        raise CallError("no methodName in a methodCall")
    return method, tuple(args)


# The first road reads a call written as XML-RPC's serializers write one: no
# attributes, comments or DTD, whitespace only between elements, UTF-8, text
# without raw `>` or line ends made of `\r`. Each step is one regular
# expression matched where the last ended (no Python call per character, no
# tree): a value with its type, the opening or end of a container, a member's
# name. Text may only hold characters XML allows and the five named entities
# or character references, so that the text is exactly what expat would give.
# Whatever the grammar does not expect is None: the next road.
_WS = r"[ \t\r\n]*"
_CHARS = "[^<>&\x00-\x08\x0b\x0c\x0e-\x1f\r\ufffe\uffff]"
_TEXT = rf"{_CHARS}*(?:&(?:lt|gt|amp|quot|apos|#[0-9]{{1,7}}|#x[0-9a-fA-F]{{1,6}});{_CHARS}*)*"
_CALL_HEAD = re.compile(
    rf"""(?:<\?xml[ \t\r\n]+version{_WS}={_WS}(["'])1\.0\1"""
    rf"""(?:[ \t\r\n]+encoding{_WS}={_WS}(["'])(?i:utf-8)\2)?{_WS}\?>)?"""
    rf"{_WS}<methodCall>{_WS}<methodName>({_CHARS}+)</methodName>{_WS}(?:(<params>)|</methodCall>{_WS}\Z)")
_STEP = re.compile(  # the group that matched last (lastindex) says which step it is
    rf"{_WS}(?:<(?:value>(?:{_WS}<(int|i4|i8|string|boolean|double|base64|dateTime\.iso8601)>({_TEXT})</\1>"
    rf"{_WS}</value>|({_TEXT})</value>|{_WS}<array>{_WS}(<data>)|{_WS}(<struct>))"
    rf"|member>{_WS}<name>({_TEXT})</name>|(/member>)|(param>)|(/param>)"
    rf"|/data>{_WS}</array>{_WS}(</value>)|/struct>{_WS}(</value>)|/params>{_WS}</methodCall>{_WS}(\Z)))")
_TYPED, _UNTYPED, _ARRAY, _STRUCT, _MEMBER, _MEMBER_END, _PARAM, _PARAM_END, _ARRAY_END, _STRUCT_END, _END = \
    range(2, 13)
_REFERENCE = re.compile(r"&(?:(lt|gt|amp|quot|apos)|#([0-9]+)|#x([0-9a-fA-F]+));")
_NAMED = {"lt": "<", "gt": ">", "amp": "&", "quot": '"', "apos": "'"}


class _NotPlain(Exception):
    """A call the first road does not read."""


def _read_call(data: bytes) -> tuple[str, tuple[Any, ...]] | None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    head = _CALL_HEAD.match(text)
    if head is None:
        return None
    if head[4] is None:
        return head[3], ()
    # a scanner's match() starts where the last one ended: the stdlib's own re.Scanner is built on it, and
    # it is ~1 µs a call cheaper than passing the position back to _STEP.match each step
    step = _STEP.scanner(text, head.end()).match  # type: ignore[attr-defined]  # not in typeshed
    args = []
    try:
        while (found := step()) is not None and found.lastindex == _PARAM:
            args.append(_read_value(step, step()))
            if (found := step()) is None or found.lastindex != _PARAM_END:
                return None
    except Exception:  # _NotPlain, or a value its type refuses: the next road says what is wrong
        return None
    if found is None or found.lastindex != _END:
        return None
    return head[3], tuple(args)


def _read_value(step: Callable[[], re.Match[str] | None], found: re.Match[str] | None) -> Any:
    if found is None:
        raise _NotPlain
    kind = found.lastindex
    if kind == _TYPED:
        return _SCALARS[found[1]](_unescape(found[2]))
    if kind == _UNTYPED:
        return _unescape(found[3])
    if kind == _ARRAY:
        items = []
        while (found := step()) is not None and found.lastindex != _ARRAY_END:
            items.append(_read_value(step, found))
        if found is None:
            raise _NotPlain
        return items
    if kind == _STRUCT:
        struct = {}
        while (found := step()) is not None and found.lastindex == _MEMBER:
            struct[_unescape(found[6])] = _read_value(step, step())
            if (found := step()) is None or found.lastindex != _MEMBER_END:
                raise _NotPlain
        if found is None or found.lastindex != _STRUCT_END:
            raise _NotPlain
        return struct
    raise _NotPlain


def _unescape(text: str) -> str:
    return _REFERENCE.sub(_referenced, text) if "&" in text else text


def _referenced(reference: re.Match[str]) -> str:
    named, decimal, hexadecimal = reference.groups()
    if named:
        return _NAMED[named]
    code = int(decimal) if decimal else int(hexadecimal, 16)
    if not (code in (0x9, 0xA, 0xD) or 0x20 <= code <= 0xD7FF or 0xE000 <= code <= 0xFFFD
            or 0x10000 <= code <= 0x10FFFF):
        raise _NotPlain  # a character XML does not allow: expat refuses the body
    return chr(code)


# The second road: a body is "plain" when a byte search can prove it has no DTD: UTF-8 or ASCII
# (no NUL, no other declared encoding) and no `<!` at all (no DTD, comment or
# CDATA). Then the C tree builder of xml.etree parses it - no Python call per
# element - and a short walk makes the values: some three times faster than
# the unmarshaller. Anything unusual returns None and goes the careful way.
_OTHER_ENCODING = re.compile(rb"""^\s*<\?xml[^>]*encoding\s*=\s*["'](?!utf-8["']|us-ascii["'])""", re.I)
_SCALARS: dict[str, Callable[[str], Any]] = {
    "string": str, "int": int, "i4": int, "i8": int, "double": float,
    "boolean": lambda t: {"0": False, "1": True}[t],
    "base64": lambda t: base64.decodebytes(t.encode("ascii")),
    "dateTime.iso8601": xmlrpc.client._datetime_type,  # the stdlib's own conversion
}


def _tree_call(data: bytes) -> tuple[str, tuple[Any, ...]] | None:
    if b"<!" in data or b"\x00" in data or _OTHER_ENCODING.match(data):
        return None
    try:
        root = ElementTree.fromstring(data)
        # the children by position, not root.find (ElementPath, in Python): methodName, then params if any
        if root.tag != "methodCall" or not 1 <= len(root) <= 2:
            return None
        name, params = root[0], (root[1] if len(root) == 2 else None)
        if name.tag != "methodName" or not name.text or (params is not None and params.tag != "params"):
            return None
        return name.text, tuple(_value(p[0]) for p in params if p.tag == "param") if params else ()
    except Exception:  # malformed, or a construct the walk does not know: the careful way says what is wrong
        return None


def _value(value: ElementTree.Element) -> Any:
    if value.tag != "value" or len(value) > 1:
        raise ValueError(value.tag)
    if not len(value):
        return value.text or ""
    typed = value[0]
    kind = typed.tag
    if kind in _SCALARS and not len(typed):
        return _SCALARS[kind](typed.text or "")
    if kind == "array" and len(typed) == 1 and typed[0].tag == "data":
        return [_value(v) for v in typed[0]]
    if kind == "struct":
        return {_member_name(m): _value(m[1]) for m in typed}
    raise ValueError(kind)


def _member_name(member: ElementTree.Element) -> str:
    if member.tag != "member" or len(member) != 2 or member[0].tag != "name":
        raise ValueError(member.tag)
    return member[0].text or ""


def _unmarshaller() -> xmlrpc.client.Unmarshaller:
    target = xmlrpc.client.Unmarshaller(use_builtin_types=True)
    target.xml(None, None)  # type: ignore[arg-type]  # as ExpatParser does: expat gives str, none to decode
    return target


def _parser(target: xmlrpc.client.Unmarshaller) -> Any:
    """An expat parser feeding `target` that refuses any DTD (see parse_call)."""
    parser = ParserCreate(None, None)
    parser.StartElementHandler = target.start
    parser.EndElementHandler = target.end
    parser.CharacterDataHandler = target.data
    parser.StartDoctypeDeclHandler = _refuse_dtd
    parser.EntityDeclHandler = _refuse_dtd
    return parser


def _refuse_dtd(*_: Any) -> None:
    raise CallError("document type declarations (and so entities) are not accepted")


# --- the answer ------------------------------------------------------------------------------------------


def dumps_result(result: Any, encoding: str, allow_none: bool) -> str:
    """`xmlrpc.client.dumps((result,), methodresponse=True, ...)`, character for character.

    The common values - str, int, bool, float, None, lists, tuples and dicts of
    them, exactly those types - are written by `_dump`, a loop with no method
    call per value; anything else (bytes, dates, wrappers, subclasses, ints out
    of XML-RPC's range, nesting deep enough to be recursive) is the standard
    library's to write or to refuse, for the whole value, as before.
    """
    out = [_response_head(encoding), "<params>\n<param>\n"]
    try:
        _dump(result, out.append, allow_none, 0)
    except _Unusual:
        return xmlrpc.client.dumps((result,), methodresponse=True, encoding=encoding, allow_none=allow_none)
    out.append("</param>\n</params>\n</methodResponse>\n")
    return "".join(out)


def _response_head(encoding: str) -> str:
    if encoding and encoding != "utf-8":  # as xmlrpc.client.dumps: utf-8 is XML's default, not named
        return f"<?xml version='1.0' encoding='{encoding}'?>\n<methodResponse>\n"
    return "<?xml version='1.0'?>\n<methodResponse>\n"


class _Unusual(Exception):
    """A value `_dump` leaves to the standard library."""


_MAX_DEPTH = 64  # deeper than this may be a recursive value: the standard library says so
_MININT, _MAXINT = xmlrpc.client.MININT, xmlrpc.client.MAXINT


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _dump(value: Any, write: Callable[[str], Any], allow_none: bool, depth: int) -> None:
    kind = type(value)
    if kind is str:
        write(f"<value><string>{_escape(value)}</string></value>\n")
    elif kind is int:
        if not _MININT <= value <= _MAXINT:
            raise _Unusual
        write(f"<value><int>{value}</int></value>\n")
    elif kind is dict:
        if depth > _MAX_DEPTH:
            raise _Unusual
        write("<value><struct>\n")
        for key, item in value.items():
            if type(key) is not str:
                raise _Unusual
            write(f"<member>\n<name>{_escape(key)}</name>\n")
            _dump(item, write, allow_none, depth + 1)
            write("</member>\n")
        write("</struct></value>\n")
    elif kind is list or kind is tuple:
        if depth > _MAX_DEPTH:
            raise _Unusual
        write("<value><array><data>\n")
        for item in value:
            _dump(item, write, allow_none, depth + 1)
        write("</data></array></value>\n")
    elif kind is bool:
        write("<value><boolean>1</boolean></value>\n" if value else "<value><boolean>0</boolean></value>\n")
    elif kind is float:
        write(f"<value><double>{value!r}</double></value>\n")
    elif value is None and allow_none:
        write("<value><nil/></value>")
    else:
        raise _Unusual


class Interface(HttpInterface):
    protocol = "xmlrpc"

    keys = HttpInterface.keys.extend(allow_none=Key(False, bool))

    def __init__(self, name: str, runtime: Runtime, config: dict[str, Any]) -> None:
        config["allowed_methods"] = ("POST",)  # an XML-RPC call is a POST: anything else gets 405
        super().__init__(name, runtime, config)
        self.allow_none: bool = self.config["allow_none"]
        self.content_type = f"text/xml; charset={self.response_encoding}"
        deadline = xmlrpc.client.Fault(504, "request deadline has expired")
        self._deadline_answer = self._render(self._dumps(deadline), keep_alive=False)[0]

    def deadline_response(self) -> tuple[bytes, str]:
        return self._deadline_answer, "a fault 504"

    # --- the request, on a worker thread -----------------------------------------------------

    def handle(self, http: HttpRequest, keep_alive: bool) -> tuple[bytes, bool]:
        """Decode the call, run the handler, encode its result or a fault."""
        media_type = http.headers.get("content-type", "").partition(";")[0].strip().lower()
        if media_type != "text/xml":
            return error_response(415, "XML-RPC requests must have content-type text/xml"), False
        try:
            method, args = parse_call(http.content)
        except CallError as e:
            log.info(f"interface {self.name}: invalid XMLRPC request: {e}")
            return error_response(400, f"invalid XMLRPC request: {e}"), False
        request = {"method": method, "args": args}
        response: dict[str, Any] = {"result": None}
        try:
            self.lifecycle.handle(self.handler, "process_request", (request, response))
            result = response.get("result")
            if result is None and not self.allow_none:
                result = []  # as the original: a client without allow_none could not read a nil
            body = self._dumps((result,))  # a result it cannot encode is a fault too
        except Exception as e:
            if self.out_of_time(e, f"XMLRPC call {method[:200]}"):
                return self._deadline_answer, False
            log.error(f"XMLRPC call {method[:200]} failed: {exc_string(e, stack=False)}")
            log.debug(f"XMLRPC call failed: {exc_string(e)}")
            body = self._dumps(xmlrpc.client.Fault(500, exc_string(e, stack=self.error_tracebacks)))
        return self._render(body, keep_alive and not self.ceasing)

    def _dumps(self, params: tuple[Any, ...] | xmlrpc.client.Fault) -> bytes:
        if isinstance(params, tuple):
            text = dumps_result(params[0], self.response_encoding, self.allow_none)
        else:
            text = xmlrpc.client.dumps(params, methodresponse=True, encoding=self.response_encoding,
                                       allow_none=self.allow_none)
        return text.encode(self.response_encoding, "xmlcharrefreplace")

    def _render(self, body: bytes, keep_alive: bool) -> tuple[bytes, bool]:
        headers = (("content-type", self.content_type), ("cache-control", "no-cache"), ("pragma", "no-cache"))
        return render(200, headers, body, keep_alive), keep_alive


# --- resource ------------------------------------------------------------------------------------------


# The keys of config_resource_<name>.py: the HTTP resource's and three more.
KEYS = HTTP_RESOURCE_KEYS.extend(server_uri=Key("/xmlrpc", str), request_encoding=Key("utf-8", str),
                                 allow_none=Key(False, bool))


class Resource(resource.Resource):
    """`pmnc.transaction.<name>.Some.Method(*args)`: one call to an XML-RPC server.

    An HTTP(S) connection underneath (the same keys as the HTTP resource) plus
    `server_uri`, `request_encoding` and `allow_none`. Any name not starting
    with `_` is a remote method, so the HTTP calls are kept in a member rather
    than inherited. A Fault becomes a non-terminal ResourceError carrying the
    fault code; an HTTP status other than 200 is an error too.
    """

    transactional, inline = HttpResource.transactional, HttpResource.inline

    def __init__(self, name: str, config: dict[str, Any]) -> None:
        super().__init__(name, config)
        s = self.config = KEYS.read(config, resource_file(name))
        self._server_uri: str = s["server_uri"]
        self._encoding: str = s["request_encoding"]
        self._allow_none: bool = s["allow_none"]
        self._http = HttpResource(name, {k: v for k, v in config.items() if k in HTTP_RESOURCE_KEYS})

    def connect(self) -> None:
        self._http.connect()

    def disconnect(self) -> None:
        self._http.disconnect()

    @property
    def expired(self) -> bool:
        return super().expired or self._http.discarded

    def __getattr__(self, name: str) -> _RemoteMethod:
        if name.startswith("_"):
            raise AttributeError(name)
        return _RemoteMethod(self, name)

    def _call(self, method: str, args: tuple[Any, ...]) -> Any:
        try:
            text = xmlrpc.client.dumps(args, method, encoding=self._encoding, allow_none=self._allow_none)
        except TypeError as e:
            raise ResourceInputParameterError(f"XMLRPC call {method} cannot be encoded: {e}") from None
        status, _, body = self._http.post(self._server_uri, text.encode(self._encoding, "xmlcharrefreplace"),
                                          {"content-type": "text/xml"})
        if status != 200:
            raise ResourceError(f"XMLRPC server answered HTTP {status} to {method}", code=status,
                                recoverable=False, terminal=False)
        return parse_response(body)


class _RemoteMethod:
    """`resource.Some.Method`: dotted names build up until the call."""

    def __init__(self, resource: Resource, name: str) -> None:
        self._resource, self._name = resource, name

    def __getattr__(self, name: str) -> _RemoteMethod:
        if name.startswith("_"):
            raise AttributeError(name)
        return _RemoteMethod(self._resource, f"{self._name}.{name}")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs:
            raise ResourceInputParameterError(f"XMLRPC call {self._name} cannot take keyword arguments")
        return self._resource._call(self._name, args)


def parse_response(data: bytes) -> Any:
    """The one value of a methodResponse; a Fault as a ResourceError with its code."""
    target = _unmarshaller()
    parser = _parser(target)
    try:
        parser.Parse(data, True)
        values = target.close()
    except xmlrpc.client.Fault as fault:
        raise ResourceError(str(fault.faultString), code=fault.faultCode, recoverable=False,
                            terminal=False) from None
    except Exception as e:
        raise ResourceError(f"invalid XMLRPC response: {exc_string(e, stack=False)}") from None
    if len(values) != 1:
        raise ResourceError(f"invalid XMLRPC response: {len(values)} values instead of one")
    return values[0]
