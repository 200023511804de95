"""Relay TCP from 127.0.0.1:PORT inside a network namespace to 127.0.0.1:PORT of this machine.

    python tools/devcluster/netns_relay.py --netns /run/netns/NAME --port 6443 \
        [--also-listen 10.216.128.1:443]

A real node lives in a network namespace of its own with no route off it, so kubelet and the
pods that use the node's network reach the API server at the node's own loopback, where this
relay listens. Its listening socket is made inside the namespace and its outgoing connections
from this machine's, so nothing listens anywhere but on a loopback, and nothing in the
node can reach any other address of the machine. `--also-listen` adds listeners at addresses
the namespace holds (the `kubernetes` Service's ClusterIP on its loopback), to the same port.
Stdlib only: it runs beside the cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import os
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


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def serve(listeners: list[socket.socket], port: int) -> None:
    async def relay(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(_pipe(client_reader, upstream_writer), _pipe(upstream_reader, client_writer))

    servers = [await asyncio.start_server(relay, sock=listener) for listener in listeners]
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
