"""Parse the address of a CSI endpoint into a gRPC target.

Accepted forms (anything else is refused with a message naming the form expected):
- ``unix:///abs/path.sock`` and a bare absolute path ``/abs/path.sock``: a unix socket,
  the way the sidecars' ``--csi-address`` is usually given;
- ``dns:///host:port`` (and ``dns:host:port``): a controller service reachable over TCP,
  the form gRPC's own name resolver understands.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from pathlib import PurePosixPath

# A DNS-1123 host name, an IPv4 address, or a bracketed IPv6 address, then a port.
_HOST_PORT = re.compile(
    r"^(?P<host>\[[0-9a-fA-F:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?):(?P<port>[0-9]{1,5})$"
)


class Transport(Enum):
    UNIX = "unix"
    TCP = "tcp"


class AddressError(ValueError):
    """The address is not one this client can dial."""


@dataclass(frozen=True)
class Endpoint:
    """Where a CSI driver's gRPC server listens."""

    transport: Transport
    target: str  # what grpc.aio.*_channel() takes
    host: str = ""  # TCP only: the host, used as the TLS server name by default
    port: int = 0
    path: str = ""  # unix only: the socket path

    def __str__(self) -> str:
        return self.target


def parse_address(address: str) -> Endpoint:
    """Turn a user-written address into an :class:`Endpoint`, or raise :class:`AddressError`."""
    text = address.strip()
    if not text:
        raise AddressError("the address is empty; expected unix:///path/to/csi.sock or dns:///host:port")
    if text.startswith("unix://"):
        return _unix(text.removeprefix("unix://"), address)
    if text.startswith("/"):
        return _unix(text, address)
    if text.startswith("dns:///"):
        return _tcp(text.removeprefix("dns:///"), address)
    if text.startswith("dns:") and not text.startswith("dns://"):
        return _tcp(text.removeprefix("dns:"), address)
    scheme = text.split(":", 1)[0] if ":" in text else ""
    hint = f"unsupported scheme {scheme!r}" if scheme else "no scheme"
    raise AddressError(
        f"{hint} in address {address!r}; expected unix:///path/to/csi.sock, /path/to/csi.sock or dns:///host:port"
    )


def _unix(path: str, original: str) -> Endpoint:
    if not path.startswith("/"):
        raise AddressError(f"unix socket path in {original!r} must be absolute (unix:///path/to/csi.sock)")
    normalized = str(PurePosixPath(path))
    if normalized == "/" or path.endswith("/"):
        raise AddressError(f"unix socket address {original!r} names a directory, not a socket file")
    return Endpoint(Transport.UNIX, f"unix://{normalized}", path=normalized)


def _tcp(host_port: str, original: str) -> Endpoint:
    match = _HOST_PORT.match(host_port)
    if match is None:
        raise AddressError(f"address {original!r} must be dns:///host:port with a host name or IP and a port")
    port = int(match["port"])
    if not 0 < port < 65536:
        raise AddressError(f"port {port} in address {original!r} is out of range 1-65535")
    host = match["host"]
    return Endpoint(Transport.TCP, f"dns:///{host}:{port}", host=host.strip("[]"), port=port)
