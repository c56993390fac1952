"""A lean Redis connection for the receiver's hot path: one socket, pipelined commands, hiredis parsing.

redis-py's asyncio client spends about 170 us of CPU per command (pool checkout, retry wrapper, per-argument
encoding in Python, a timeout per read) against about 75 us for writing a hiredis-packed command and parsing
the reply with hiredis directly. The receiver sends one command per enqueue batch, and at a few events per
batch that difference was a large share of its CPU per request. Redis answers the commands of one connection
in the order they were sent, so concurrent callers share the socket with a FIFO of futures.

Any doubt about the connection (a lost socket, a protocol error, a caller's timeout, via :meth:`reset`) drops
it and the next command reconnects, so a late reply can never be matched to the wrong command.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import Any, cast

import hiredis
from redis import exceptions as redis_exceptions

from square_mirror.queue import redis_settings

Arg = str | bytes | int


def _pack(args: tuple[Arg, ...]) -> bytes:
    # hiredis's stub types the argument as a 1-tuple; any tuple of these types is what it packs.
    packed: bytes = hiredis.pack_command(cast(Any, args))
    return packed


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._reader = hiredis.Reader()
        self._waiters: deque[asyncio.Future[Any]] = deque()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while True:
            try:
                reply = self._reader.gets()
            except hiredis.ProtocolError:
                self.abort()
                return
            if reply is False:
                return
            if not self._waiters:  # a reply nobody asked for: the stream cannot be trusted
                self.abort()
                return
            waiter = self._waiters.popleft()
            if waiter.done():  # its caller gave up (timeout); the reply is dropped with it
                continue
            if isinstance(reply, hiredis.ReplyError):
                waiter.set_exception(redis_exceptions.ResponseError(str(reply)))
            else:
                waiter.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(ConnectionError("Redis connection lost"))

    def send(self, packed: bytes) -> asyncio.Future[Any]:
        if self.closed or self.transport is None or self.transport.is_closing():
            raise ConnectionError("Redis connection closed")
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self.transport.write(packed)
        return waiter

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()  # connection_lost fails every waiter


class RedisConnection:
    """One lazily (re)connected Redis connection; ``timeout`` bounds connecting and the handshake."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        tls: bool = False,
        timeout: float = 2.0,
    ) -> None:
        self.host = host
        self.port = port
        self.db = db
        self._username = username
        self._password = password
        self._tls = tls
        self.timeout = timeout
        self._protocol: _Protocol | None = None
        self._lock = asyncio.Lock()

    @classmethod
    def from_url(cls, url: str, timeout: float = 2.0) -> RedisConnection:
        rs = redis_settings(url)
        return cls(str(rs.host), rs.port, db=rs.database, username=rs.username, password=rs.password,
                   tls=bool(rs.ssl), timeout=timeout)

    async def execute_idempotent(self, *args: Arg) -> Any:
        """Run one command and return its reply; an error reply raises redis's ``ResponseError``.

        A command sent on a connection that turns out to be dead (Redis restarted since it was opened) is sent
        once more on a fresh one, so the first command after an outage is not refused for nothing. That is
        only right for a command that may run twice, hence the name.
        """
        packed = _pack(args)
        protocol, fresh = await self._connected()
        try:
            return await protocol.send(packed)
        except ConnectionError:
            if fresh:
                raise
        protocol, _fresh = await self._connected()
        return await protocol.send(packed)

    def reset(self) -> None:
        """Drop the connection (after a caller's timeout its replies can no longer be trusted)."""
        if self._protocol is not None:
            self._protocol.abort()
            self._protocol = None

    async def close(self) -> None:
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None and not protocol.closed:
            protocol.closed = True
            protocol.transport.close()

    async def _connected(self) -> tuple[_Protocol, bool]:
        protocol = self._protocol
        if protocol is not None and not protocol.closed:
            return protocol, False
        async with self._lock:  # concurrent callers share one connection attempt
            protocol = self._protocol
            if protocol is not None and not protocol.closed:
                return protocol, False
            self._protocol = await self._connect()
            return self._protocol, True

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        context = ssl.create_default_context() if self._tls else None
        async with asyncio.timeout(self.timeout):
            _transport, protocol = await loop.create_connection(_Protocol, self.host, self.port, ssl=context)
            try:
                handshake: list[asyncio.Future[Any]] = []
                if self._password:
                    auth: tuple[Arg, ...] = (("AUTH", self._username, self._password) if self._username
                                             else ("AUTH", self._password))
                    handshake.append(protocol.send(_pack(auth)))
                if self.db:
                    handshake.append(protocol.send(_pack(("SELECT", self.db))))
                for reply in handshake:
                    await reply
            except BaseException:
                protocol.abort()
                raise
        return protocol
