"""Relay TCP from 127.0.0.1:PORT inside a network namespace to 127.0.0.1:PORT of this machine.

    python tools/devcluster/netns_relay.py --netns /run/netns/NAME --port 6443

A real node lives in a network namespace of its own with no route off it, so kubelet and the
pods that use the node's network reach the API server at the node's own loopback, where this
relay listens. Its listening socket is made inside the namespace and its outgoing connections
from this machine's, so nothing listens anywhere but on a loopback, and nothing in the
node can reach any other address of the machine. Stdlib only: it runs beside the cluster.
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


def listen_in(netns: str, port: int) -> socket.socket:
    """A socket listening on 127.0.0.1:port of `netns`; this thread returns to its own namespace."""
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(netns, os.O_RDONLY)
    try:
        _setns(target)
        try:
            listener = socket.create_server(("127.0.0.1", port), backlog=128)
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


async def serve(listener: socket.socket, port: int) -> None:
    async def relay(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(_pipe(client_reader, upstream_writer), _pipe(upstream_reader, client_writer))

    server = await asyncio.start_server(relay, sock=listener)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--netns", required=True, help="the namespace's file, e.g. /run/netns/NAME")
    parser.add_argument("--port", type=int, required=True, help="the port on both loopbacks")
    args = parser.parse_args()
    listener = listen_in(args.netns, args.port)
    print(f"relaying 127.0.0.1:{args.port} of {args.netns} to this machine's", flush=True)
    asyncio.run(serve(listener, args.port))


if __name__ == "__main__":
    main()
