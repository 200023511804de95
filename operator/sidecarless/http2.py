"""One HTTP/2 connection, as client-go holds to the API server: every request and watch a
stream on it.

A reader task owns the socket's read side and hands each event to its stream, so a stream
waiting for data never holds up another. (httpcore's HTTP/2 passes one read lock among
the waiting requests instead; with three idle watches open, a new request's answer was
never read. tests/cluster/test_http2.py has that case.) The h2 library keeps the protocol
state, flow control included; this module moves bytes and events, and knows nothing of
Kubernetes: kube.py is its only user.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

READ_BYTES = 262144  # a watch's burst in few reads
# What the server may send before we read it, as Go's HTTP/2 client allows: 4 MiB per
# stream (a watch's burst of large objects) and far more for the whole connection, so a
# slow stream cannot stall the others.
STREAM_WINDOW = 4 * 1024 * 1024
CONNECTION_WINDOW = 1024 * 1024 * 1024


class NotOffered(ConnectionError):  # noqa: N818 - reads as what happened
    """The server did not choose HTTP/2 in TLS negotiation (ALPN)."""


class ConnectionLost(ConnectionError):  # noqa: N818
    """The connection closed, broke or is going away; streams still open on it fail."""


class StreamReset(ConnectionError):  # noqa: N818
    """The server ended a stream with RST_STREAM before its answer was complete."""


Chunk = tuple[bytes, int]  # data and its flow-controlled length (padding included)


@dataclass
class _Stream:
    headers: asyncio.Future[list[tuple[bytes, bytes]]]
    body: asyncio.Queue[Chunk | BaseException | None] = field(default_factory=asyncio.Queue)
    ended: bool = False  # the server sent END_STREAM


class Response:
    """An answer's status, then its body as it arrives. Close it (`async with`) when done:
    a body not read to the end is cancelled, as a watch given up must be."""

    def __init__(self, connection: Connection, stream_id: int, stream: _Stream, status: int) -> None:
        self.status = status
        self._connection, self._stream_id, self._stream = connection, stream_id, stream

    async def chunks(self, read_timeout: float | None = None) -> AsyncIterator[bytes]:
        """The body in the pieces it came in; `read_timeout` bounds each wait for the next."""
        while True:
            async with asyncio.timeout(read_timeout):
                item = await self._stream.body.get()
            if item is None:
                return
            if data := self._taken(item):
                yield data

    async def read(self, timeout: float | None = None) -> bytes:
        """The whole body, within `timeout` s (a loop of its own: no generator per chunk)."""
        parts = []
        async with asyncio.timeout(timeout):
            while (item := await self._stream.body.get()) is not None:
                parts.append(self._taken(item))
        return b"".join(parts)

    def _taken(self, item: Chunk | BaseException) -> bytes:
        """A piece of the body, acknowledged (flow control), or the stream's failure raised."""
        if isinstance(item, BaseException):
            raise item
        data, flow_controlled = item
        self._connection._consumed(self._stream_id, flow_controlled)
        return data

    def close(self) -> None:
        self._connection._forget(self._stream_id)

    async def __aenter__(self) -> Response:
        return self

    async def __aexit__(self, *_: object) -> None:
        self.close()


class Connection:
    """A client's HTTP/2 connection. `request` opens a stream; `usable` says whether new ones
    may still be opened: not once the connection failed or the server said GOAWAY, which
    ends it here (its streams fail), as h2 reads nothing after one."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, authority: str) -> None:
        self._reader, self._writer, self._authority = reader, writer, authority
        self._h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(
                client_side=True,
                header_encoding=None,
                # Our headers are well formed and the API server's are trusted: checking and
                # normalising every header in Python is most of h2's cost per request.
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
                validate_inbound_headers=False,
                normalize_inbound_headers=False,
            )
        )
        self._streams: dict[int, _Stream] = {}
        self._failure: BaseException | None = None  # set once, for good: the connection is done
        self._changed = asyncio.Event()  # a window opened, a stream closed, settings changed
        self._h2.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 1024 * 1024,
            },
        )
        self._h2.initiate_connection()
        self._h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self._flush()
        self._reading = asyncio.create_task(self._read(), name=f"http2-reader-{authority}")

    @classmethod
    async def open(
        cls, host: str, port: int, ssl_context: ssl.SSLContext, *, server_hostname: str, timeout: float
    ) -> Connection:
        """Connect with TLS and ALPN "h2"; :class:`NotOffered` when the server picks HTTP/1.1."""
        ssl_context.set_alpn_protocols(["h2", "http/1.1"])
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port, ssl=ssl_context, server_hostname=server_hostname)
        ssl_object = writer.get_extra_info("ssl_object")
        if ssl_object is None or ssl_object.selected_alpn_protocol() != "h2":
            writer.close()
            raise NotOffered(f"{host}:{port} does not offer HTTP/2")
        return cls(reader, writer, f"{host}:{port}")

    @property
    def usable(self) -> bool:
        return self._failure is None

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    async def request(
        self, method: str, path: str, headers: list[tuple[str, str]], body: bytes | None, *, timeout: float | None
    ) -> Response:
        """Send a request; return once the answer's headers are in (within `timeout` s)."""
        async with asyncio.timeout(timeout):
            await self._room_for_a_stream()
            stream_id = self._h2.get_next_available_stream_id()
            stream = _Stream(asyncio.get_running_loop().create_future())
            self._streams[stream_id] = stream
            try:
                self._h2.send_headers(
                    stream_id,
                    [(":method", method), (":scheme", "https"), (":authority", self._authority), (":path", path)]
                    + [(name.lower(), value) for name, value in headers],
                    end_stream=not body,
                )
                self._flush()
                if body:
                    await self._send_body(stream_id, body)
                head = await stream.headers
            except BaseException:
                self._forget(stream_id)
                raise
        status = next(int(value) for name, value in head if name == b":status")
        return Response(self, stream_id, stream, status)

    async def close(self) -> None:
        if self._failure is None:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self._h2.close_connection()
                self._flush()
        self._reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reading
        self._writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await self._writer.wait_closed()

    # --- the reader ------------------------------------------------------------------

    async def _read(self) -> None:
        try:
            while True:
                data = await self._reader.read(READ_BYTES)
                if not data:
                    raise ConnectionLost(f"{self._authority} closed the connection")
                for event in self._h2.receive_data(data):
                    self._dispatch(event)
                self._flush()  # settings and ping acknowledgements, window updates
        except asyncio.CancelledError:
            self._fail(ConnectionLost(f"the connection to {self._authority} was closed"))
            raise
        except (OSError, ssl.SSLError, h2.exceptions.ProtocolError) as error:
            self._fail(ConnectionLost(f"the connection to {self._authority} failed: {error or type(error).__name__}"))

    def _dispatch(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            stream = self._streams.get(event.stream_id)
            if stream is not None and not stream.headers.done():
                stream.headers.set_result(list(event.headers))
        elif isinstance(event, h2.events.DataReceived):
            stream = self._streams.get(event.stream_id)
            if stream is None:  # given up: the connection's window must still open again
                self._consumed(event.stream_id, event.flow_controlled_length)
            else:
                stream.body.put_nowait((event.data, event.flow_controlled_length))
        elif isinstance(event, h2.events.StreamEnded):
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                stream.ended = True
                stream.body.put_nowait(None)
        elif isinstance(event, h2.events.StreamReset):
            self._end_stream(event.stream_id, StreamReset(f"the server reset the stream ({event.error_code!r})"))
        elif isinstance(event, h2.events.ConnectionTerminated):
            # h2 takes no frame after GOAWAY, so the streams the server would still finish
            # cannot be read either: all fail (Unreachable: retried), and a new connection serves.
            self._fail(ConnectionLost(f"{self._authority} is closing the connection (GOAWAY {event.error_code!r})"))
        if isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged, h2.events.StreamEnded)):
            self._changed.set()

    def _end_stream(self, stream_id: int, error: BaseException) -> None:
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        stream.ended = True
        if not stream.headers.done():
            stream.headers.set_exception(error)
        else:
            stream.body.put_nowait(error)

    def _fail(self, error: BaseException) -> None:
        self._failure = error
        for stream_id in list(self._streams):
            self._end_stream(stream_id, error)
        self._changed.set()
        self._writer.close()

    # --- what streams ask of the connection ---------------------------------------------

    async def _room_for_a_stream(self) -> None:
        while True:
            if self._failure is not None:
                raise self._failure
            if self._h2.open_outbound_streams < self._h2.remote_settings.max_concurrent_streams:
                return
            self._changed.clear()
            await self._changed.wait()

    async def _send_body(self, stream_id: int, body: bytes) -> None:
        view = memoryview(body)
        while view:
            if self._failure is not None:
                raise self._failure
            room = min(self._h2.local_flow_control_window(stream_id), self._h2.max_outbound_frame_size)
            if room <= 0:
                self._changed.clear()
                await self._changed.wait()
                continue
            chunk, view = view[:room], view[room:]
            self._h2.send_data(stream_id, bytes(chunk), end_stream=not view)
            self._flush()

    def _consumed(self, stream_id: int, flow_controlled: int) -> None:
        """Read by its reader: the server may send as much again (h2 decides when to say so)."""
        if self._failure is not None or not flow_controlled:
            return
        # A stream already closed, or a connection going away (GOAWAY): nothing to open again.
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self._h2.acknowledge_received_data(flow_controlled, stream_id)
        self._flush()

    def _forget(self, stream_id: int) -> None:
        """The stream's reader is done with it: cancel it if the server is not."""
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            return
        if not stream.ended and self._failure is None:
            with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                self._h2.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
            self._flush()
        while not stream.body.empty():  # what came in and was never read still counts
            item = stream.body.get_nowait()
            if isinstance(item, tuple):
                self._consumed(stream_id, item[1])
        self._changed.set()

    def _flush(self) -> None:
        data = self._h2.data_to_send()
        if data and self._failure is None:
            self._writer.write(data)
