"""Async CSI gRPC client: no Kubernetes, no Kopf.

async with CSIClient("unix:///csi/csi.sock", timeout=10) as client:
    info = await discover(client)
    response = await client.create_volume(csi.CreateVolumeRequest(name="pvc-1", ...))
"""

from csi_client.address import AddressError, Endpoint, Transport, parse_address
from csi_client.capabilities import DriverInfo, discover, probe_ready
from csi_client.client import CSIClient, TLSConfig
from csi_client.errors import (
    CSIError,
    ErrorClass,
    FinalError,
    InfeasibleError,
    MaybeInProgressError,
    Operation,
    classify,
)
from csi_client.generated import csi_pb2 as csi

__all__ = [
    "AddressError",
    "CSIClient",
    "CSIError",
    "DriverInfo",
    "Endpoint",
    "ErrorClass",
    "FinalError",
    "InfeasibleError",
    "MaybeInProgressError",
    "Operation",
    "TLSConfig",
    "Transport",
    "classify",
    "csi",
    "discover",
    "parse_address",
    "probe_ready",
]
