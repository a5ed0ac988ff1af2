"""One-way delay without netem: a TCP relay that holds each uplink chunk for exactly the delay, and nothing more.

This kernel has no ``netem``, so the shaper adds latency in user space: clients connect to the relay (in a pod,
the edge roles point their cloud-store URL at it), and the relay forwards to the target (the cloud store) over the
shaped interface. Each chunk read from the client is stamped on arrival and written upstream when its stamp plus
the delay has passed: a byte crosses the relay in the delay, then meets the tbf queue like any other byte, so a
transfer of ``n`` bytes on an idle link takes ``delay + 8n / rate`` (`scout.channel.link.PacedLink`'s model).

The relay must not queue of its own. It reads as soon as data arrives, as long as it holds less than its window
(`scout.channel.shaping.relay_window_bytes`: the bandwidth-delay product at the link's highest rate plus two
chunks), so it never throttles the link; when the link is the bottleneck, the upstream socket fills, the relay
stops reading, and the excess waits in the client's socket, as it would in front of a real radio. Both sockets
run with ``TCP_NODELAY`` (Nagle would hold small writes for an ACK). The delay applies to the uplink only, as netem
on the egress would; replies come back undelayed. The relay splits the TCP connection, so the client's congestion
control sees the relay, not the delay: right for emulating a transfer's time, not for studying TCP over delay.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
from typing import Any

log = logging.getLogger("scout.shaper.relay")

DEFAULT_CHUNK_BYTES = 16 * 1024


def _nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class DelayRelay:
    """Listens on ``listen``, forwards every connection to ``target``, delaying the client -> target direction."""

    def __init__(
        self,
        listen: tuple[str, int],
        target: tuple[str, int],
        *,
        delay_s: float,
        window_bytes: int,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ) -> None:
        if delay_s < 0 or window_bytes < chunk_bytes or chunk_bytes <= 0:
            raise ValueError("need delay >= 0 and a window of at least one chunk")
        self.listen = listen
        self.target = target
        self.delay_s = delay_s
        self.window_bytes = window_bytes
        self.chunk_bytes = chunk_bytes
        self.port = 0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> int:
        """Start listening; returns the bound port."""
        self._server = await asyncio.start_server(self._accept, self.listen[0], self.listen[1])
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info(
            "relay %s:%d -> %s:%d, uplink delay %.1f ms, window %d bytes",
            self.listen[0],
            self.port,
            *self.target,
            1000 * self.delay_s,
            self.window_bytes,
        )
        return self.port

    async def close(self) -> None:
        """Stop listening and cut every relayed connection."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _accept(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            await self._relay(creader, cwriter)
        finally:
            self._tasks.discard(task)
            cwriter.close()

    async def _relay(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        try:
            ureader, uwriter = await asyncio.open_connection(*self.target)
        except OSError as e:
            log.warning("relay: cannot reach %s:%d: %s", *self.target, e)
            return
        _nodelay(cwriter)
        _nodelay(uwriter)
        up = asyncio.create_task(self._uplink(creader, uwriter))
        down = asyncio.create_task(self._pipe(ureader, cwriter))
        try:
            # The connection lasts until both directions have ended (each passes its EOF on: the target sees the
            # client's after the delay, like everything else) or until either side fails.
            await asyncio.wait({up, down}, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for task in (up, down):
                task.cancel()
            for task in (up, down):
                with contextlib.suppress(asyncio.CancelledError, OSError, ConnectionError):
                    await task
            uwriter.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Target -> client, undelayed; EOF is passed on."""
        while data := await reader.read(self.chunk_bytes):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    async def _uplink(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Client -> target through the delay line: a FIFO of (due time, chunk) holding at most the window."""
        loop = asyncio.get_running_loop()
        line: collections.deque[tuple[float, bytes]] = collections.deque()
        held = 0
        eof = False
        arrived = asyncio.Event()
        room = asyncio.Event()
        room.set()

        async def feed() -> None:
            nonlocal held, eof
            try:
                while True:
                    while held >= self.window_bytes:
                        room.clear()
                        await room.wait()
                    data = await reader.read(self.chunk_bytes)
                    if not data:
                        return
                    line.append((loop.time() + self.delay_s, data))
                    held += len(data)
                    arrived.set()
            finally:  # EOF, or the client failed: nothing more will arrive
                eof = True
                arrived.set()

        feeder = asyncio.create_task(feed())
        try:
            while line or not eof:
                if not line:
                    arrived.clear()
                    await arrived.wait()
                    continue
                due, data = line[0]
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                line.popleft()
                writer.write(data)
                await writer.drain()
                held -= len(data)
                room.set()
            error = feeder.exception() if feeder.done() and not feeder.cancelled() else None
            if error is not None:
                raise error
            if writer.can_write_eof():
                writer.write_eof()
        finally:
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError, ConnectionError):
                await feeder
