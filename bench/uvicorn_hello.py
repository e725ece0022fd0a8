"""The benchmarks' peer: a bare ASGI hello-world served by uvicorn, one process, on loopback.

    python bench/uvicorn_hello.py [--port N]

It answers every request with `Hello, world !` as text/plain, like pmnc's
sample cage. uvicorn picks its event loop and HTTP parser as it does by
default (uvloop and httptools when they are installed); the access log is
off, as pmnc logs no line per request either. Once started it prints

    uvicorn_hello: uvicorn 0.54.0 on http://127.0.0.1:PORT/, loop=asyncio (...), http=httptools (...)

and serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

HELLO = b"Hello, world !"
HEADERS = [(b"content-type", b"text/plain"), (b"content-length", str(len(HELLO)).encode())]

_banner = ("", "")  # (what, http): printed once the server runs, by the lifespan startup


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """The ASGI application: `Hello, world !` for any HTTP request."""
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        await send({"type": "http.response.body", "body": HELLO})
    elif scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                loop = asyncio.get_running_loop()
                kind = type(loop)
                name = "uvloop" if kind.__module__.startswith("uvloop") else "asyncio"
                print(f"{_banner[0]}, loop={name} ({kind.__module__}.{kind.__qualname__}), http={_banner[1]}",
                      flush=True)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


def http_implementation(config: uvicorn.Config) -> str:
    """`httptools (uvicorn...HttpToolsProtocol)`: what `http="auto"` resolved to."""
    protocol = config.http_protocol_class
    module = protocol.__module__
    name = "httptools" if "httptools" in module else "h11" if "h11" in module else module
    return f"{name} ({module}.{protocol.__qualname__})"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="A bare uvicorn hello-world, the benchmarks' peer.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    args = parser.parse_args(argv)

    # Bind here so that port 0 works and the port is known before uvicorn logs anything.
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted sockets only when their
    # proto says TCP, and a socket made with proto 0 would leave Nagle on (about 40 ms a
    # response, as uvicorn writes the head and the body separately).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    host, port = sock.getsockname()[:2]

    config = uvicorn.Config(app, workers=1, log_level="warning", access_log=False, lifespan="on")
    config.load()
    global _banner
    _banner = (f"uvicorn_hello: uvicorn {uvicorn.__version__} on http://{host}:{port}/",
               http_implementation(config))
    uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
