"""Relay TCP from 127.0.0.1:PORT inside a network namespace to 127.0.0.1:PORT of this machine.

    python tools/devcluster/netns_relay.py --netns /run/netns/NAME --port 6443 \
        [--also-listen 10.216.128.1:443]

A real node lives in a network namespace of its own with no route off it, so kubelet and the
pods that use the node's network reach the API server at the node's own loopback, where this
relay listens. Its listening socket is made inside the namespace and its outgoing connections
from this machine's, so nothing listens anywhere but on a loopback, and nothing in the
node can reach any other address of the machine. `--also-listen` adds listeners at addresses
the namespace holds (the `kubernetes` Service's ClusterIP on its loopback), to the same port.

SIGUSR1 cuts the relay as a network partition would: nothing more is forwarded either way
(what arrives is read and dropped, so the other side sees no answer and no error), and new
connections are accepted and hear nothing. SIGUSR2 heals it: the connections the cut
spoiled are closed (the bytes dropped cannot be replayed), new ones are relayed again.
Stdlib only: it runs beside the cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import os
import signal
import socket

CLONE_NEWNET = 0x40000000
libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if libc.setns(fd, CLONE_NEWNET) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"setns: {os.strerror(error)}")


def listen_in(netns: str, port: int, host: str = "127.0.0.1") -> socket.socket:
    """A socket listening on host:port of `netns`; this thread returns to its own namespace."""
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(netns, os.O_RDONLY)
    try:
        _setns(target)
        try:
            listener = socket.create_server((host, port), backlog=128)
        finally:
            _setns(own)
    finally:
        os.close(own)
        os.close(target)
    listener.setblocking(False)
    return listener


def connect_in(netns: str, port: int, host: str = "127.0.0.1", timeout: float = 5.0) -> socket.socket:
    """A socket connected to host:port of `netns` (a server there, e.g. a process's /metrics)."""
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(netns, os.O_RDONLY)
    try:
        _setns(target)
        try:
            return socket.create_connection((host, port), timeout=timeout)
        finally:
            _setns(own)
    finally:
        os.close(own)
        os.close(target)


class Relay:
    def __init__(self, port: int) -> None:
        self.port = port
        self.cut = False
        self.spoiled: set[asyncio.StreamWriter] = set()  # connections open during a cut
        self.open: set[asyncio.StreamWriter] = set()

    def partition(self) -> None:
        self.cut = True
        self.spoiled |= self.open
        print("cut: forwarding nothing", flush=True)

    def heal(self) -> None:
        self.cut = False
        for writer in self.spoiled:
            writer.close()
        self.spoiled.clear()
        print("healed: relaying again", flush=True)

    async def pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                if not self.cut:
                    writer.write(data)
                    await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.open.add(client_writer)
        try:
            if self.cut:
                self.spoiled.add(client_writer)
                await self.pipe(client_reader, client_writer)  # reads and drops until healed
                return
            try:
                upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                client_writer.close()
                return
            self.open.add(upstream_writer)
            try:
                await asyncio.gather(
                    self.pipe(client_reader, upstream_writer), self.pipe(upstream_reader, client_writer)
                )
            finally:
                self.open.discard(upstream_writer)
                self.spoiled.discard(upstream_writer)
        finally:
            self.open.discard(client_writer)
            self.spoiled.discard(client_writer)


async def serve(listeners: list[socket.socket], port: int) -> None:
    relay = Relay(port)
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(signal.SIGUSR1, relay.partition)
        loop.add_signal_handler(signal.SIGUSR2, relay.heal)
    servers = [await asyncio.start_server(relay.relay, sock=listener) for listener in listeners]
    await asyncio.gather(*(server.serve_forever() for server in servers))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--netns", required=True, help="the namespace's file, e.g. /run/netns/NAME")
    parser.add_argument("--port", type=int, required=True, help="the port on both loopbacks")
    parser.add_argument("--also-listen", action="append", default=[], metavar="HOST:PORT")
    args = parser.parse_args()
    listeners = [listen_in(args.netns, args.port)]
    for address in args.also_listen:
        host, port = address.rsplit(":", 1)
        listeners.append(listen_in(args.netns, int(port), host))
    names = ", ".join([f"127.0.0.1:{args.port}", *args.also_listen])
    print(f"relaying {names} of {args.netns} to this machine's 127.0.0.1:{args.port}", flush=True)
    asyncio.run(serve(listeners, args.port))


if __name__ == "__main__":
    main()
