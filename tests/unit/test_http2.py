"""sidecarless/http2.py against a scripted HTTP/2 server on loopback (the h2 library's server
side, without TLS): streams that never get an answer beside one that does, the server's
stream limit, GOAWAY, RST_STREAM, a body larger than the client's window, a lost connection.
tests/cluster/test_http2.py runs the same client against the real kube-apiserver."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import pytest

from sidecarless import http2

# What the server does with a request: its path -> an action of the script.
Script = Callable[["Server", int, str], Coroutine[None, None, None]]


@dataclass
class Server:
    """One connection's worth of a scripted HTTP/2 server."""

    script: Script
    max_streams: int = 100
    h2: h2.connection.H2Connection = field(
        default_factory=lambda: h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    )
    writer: asyncio.StreamWriter | None = None
    windows: asyncio.Event = field(default_factory=asyncio.Event)
    seen: list[str] = field(default_factory=list)
    bodies: dict[int, bytes] = field(default_factory=dict)  # what each request sent, once it ended
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.h2.local_settings = h2.settings.Settings(
            client=False, initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.max_streams}
        )
        self.h2.initiate_connection()
        self.flush()
        tasks: list[asyncio.Task[None]] = []
        received: dict[int, bytes] = {}
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                for event in self.h2.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        path = dict(event.headers)[b":path"].decode()
                        self.seen.append(path)
                        tasks.append(asyncio.create_task(self.script(self, event.stream_id, path)))
                    elif isinstance(event, h2.events.DataReceived):
                        received[event.stream_id] = received.get(event.stream_id, b"") + event.data
                        self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    elif isinstance(event, h2.events.StreamEnded):
                        self.bodies[event.stream_id] = received.pop(event.stream_id, b"")
                        self.ended.set()
                    elif isinstance(event, h2.events.WindowUpdated):
                        self.windows.set()
                self.flush()
        for task in tasks:
            task.cancel()

    def flush(self) -> None:
        assert self.writer is not None
        if data := self.h2.data_to_send():
            self.writer.write(data)

    async def answer(self, stream_id: int, body: bytes, status: int = 200) -> None:
        self.h2.send_headers(stream_id, [(":status", str(status))])
        view = memoryview(body)
        while view:  # as much as the client's windows let through, then wait for more
            room = min(self.h2.local_flow_control_window(stream_id), self.h2.max_outbound_frame_size)
            if room <= 0:
                self.windows.clear()
                await self.windows.wait()
                continue
            self.h2.send_data(stream_id, bytes(view[:room]))
            view = view[room:]
            self.flush()
        self.h2.end_stream(stream_id)
        self.flush()


async def idle(server: Server, stream_id: int, path: str) -> None:
    """Never answer (a watch with nothing to say), except /answered."""
    if path == "/answered":
        await server.answer(stream_id, b"answer")


@contextlib.asynccontextmanager
async def connected(script: Script, *, max_streams: int = 100) -> AsyncIterator[tuple[http2.Connection, Server]]:
    server = Server(script, max_streams)
    listener = await asyncio.start_server(server.serve, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    connection = http2.Connection(reader, writer, f"127.0.0.1:{port}")
    try:
        yield connection, server
    finally:
        await connection.close()
        if server.writer is not None:
            server.writer.close()
        listener.close()
        await listener.wait_closed()


async def request(connection: http2.Connection, path: str, body: bytes | None = None) -> http2.Response:
    return await connection.request("GET" if body is None else "POST", path, [], body, timeout=5)


async def test_a_request_is_answered_while_other_streams_wait_for_ever() -> None:
    async with connected(idle) as (connection, _):
        waiting = [asyncio.create_task(request(connection, f"/watch-{i}")) for i in range(5)]
        await asyncio.sleep(0.1)
        async with await request(connection, "/answered") as response:
            assert (response.status, await response.read(5)) == (200, b"answer")
        assert not any(task.done() for task in waiting)
        for task in waiting:
            task.cancel()


async def test_a_stream_past_the_servers_limit_waits_for_one_to_close() -> None:
    async with connected(idle, max_streams=2) as (connection, server):
        await request(connection, "/answered")  # the server's SETTINGS are in
        held = [asyncio.create_task(request(connection, f"/watch-{i}")) for i in range(2)]
        await asyncio.sleep(0.1)
        third = asyncio.create_task(request(connection, "/answered"))
        await asyncio.sleep(0.2)
        assert not third.done(), "a third stream waits while two are open"
        assert server.seen.count("/answered") == 1
        held[0].cancel()  # a request given up closes its stream (RST_STREAM)
        with contextlib.suppress(asyncio.CancelledError):
            await held[0]
        response = await asyncio.wait_for(third, 5)
        assert await response.read(5) == b"answer"
        held[1].cancel()


async def test_goaway_fails_every_stream_and_retires_the_connection() -> None:
    """h2 takes no frame after GOAWAY: the open streams fail (callers retry on a new one)."""

    async def goaway_on_the_second(server: Server, stream_id: int, path: str) -> None:
        if path == "/second":
            server.h2.close_connection(last_stream_id=stream_id)
            server.flush()

    async with connected(goaway_on_the_second) as (connection, _):
        first = asyncio.create_task(request(connection, "/first"))
        await asyncio.sleep(0.05)
        with pytest.raises(http2.ConnectionLost, match="GOAWAY"):
            await request(connection, "/second")
        with pytest.raises(http2.ConnectionLost, match="GOAWAY"):
            await asyncio.wait_for(first, 5)
        assert not connection.usable, "no new streams on a connection going away"
        with pytest.raises(http2.ConnectionLost):
            await request(connection, "/third")


async def test_a_stream_the_server_resets_raises_stream_reset() -> None:
    async def reset(server: Server, stream_id: int, path: str) -> None:
        server.h2.reset_stream(stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
        server.flush()

    async with connected(reset) as (connection, _):
        with pytest.raises(http2.StreamReset):
            await request(connection, "/reset")
        assert connection.usable, "one stream's reset leaves the connection serving"


async def test_a_body_larger_than_the_clients_window_arrives_whole_as_it_is_read() -> None:
    size = http2.STREAM_WINDOW * 2 + 12345
    body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)

    async def large(server: Server, stream_id: int, path: str) -> None:
        await server.answer(stream_id, body)

    async with connected(large) as (connection, _), await request(connection, "/large") as response:
        received = b""
        async for chunk in response.chunks(5):
            received += chunk
            await asyncio.sleep(0)  # a reader that takes its time
        assert received == body


async def test_a_request_body_larger_than_the_servers_window_is_sent_whole() -> None:
    body = b"y" * 200_000  # the server's windows are HTTP/2's default, 64 KiB

    async def after_the_body(server: Server, stream_id: int, path: str) -> None:
        while stream_id not in server.bodies:
            server.ended.clear()
            await server.ended.wait()
        await server.answer(stream_id, str(len(server.bodies[stream_id])).encode())

    async with (
        connected(after_the_body) as (connection, _),
        await asyncio.wait_for(request(connection, "/upload", body), 10) as response,
    ):
        assert await response.read(5) == str(len(body)).encode()


async def test_a_connection_the_server_drops_fails_its_streams() -> None:
    async def drop(server: Server, stream_id: int, path: str) -> None:
        if path == "/drop":
            assert server.writer is not None
            server.writer.transport.abort()

    async with connected(drop) as (connection, _):
        waiting = asyncio.create_task(request(connection, "/watch"))
        await asyncio.sleep(0.1)
        with pytest.raises(http2.ConnectionLost):
            await request(connection, "/drop")
        with pytest.raises(http2.ConnectionLost):
            await asyncio.wait_for(waiting, 5)
        assert not connection.usable
