"""uvicorn's HTTP protocol with ``TCP_NODELAY`` set on every connection: ``--http serving:HTTPProtocol``.

With ``--workers N`` (N > 1) uvicorn binds the listening socket itself with
``proto=0``, so asyncio, which sets ``TCP_NODELAY`` only on sockets that say
``IPPROTO_TCP``, leaves Nagle's algorithm on: each response on a kept-alive
connection then waits for the client's delayed ACK (uvicorn issue #3149).
Measured here with uvicorn 0.54, 2 workers: 48 ms per sequential keep-alive
request instead of 2 ms. Harmless where uvicorn already sets it.
"""
from __future__ import annotations

import asyncio
import socket

from uvicorn.protocols.http.auto import AutoHTTPProtocol
from uvicorn.protocols.http.h11_impl import H11Protocol as _H11


def _no_delay(transport: asyncio.Transport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class HTTPProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
    """uvicorn's own HTTP protocol (httptools when installed, else h11), Nagle's algorithm off."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        _no_delay(transport)
        super().connection_made(transport)


class H11Protocol(_H11):
    """h11 (plain ``uvicorn``'s parser) even where httptools is installed, Nagle's algorithm off:
    ``--http serving:H11Protocol``, to compare the two parsers on one machine."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        _no_delay(transport)
        super().connection_made(transport)
