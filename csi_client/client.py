"""An async client for a CSI driver's Identity, Controller, GroupController and Node services.

One :class:`CSIClient` holds one gRPC channel to one endpoint; make it once and reuse it.
Every call has a deadline. Failures come out as the typed exceptions of
:mod:`csi_client.errors`. A connection that cannot be made is retried a few times
quickly (bounded, for blips such as a driver restarting its socket); anything longer
belongs to the caller's own backoff.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, overload

import grpc
from google.protobuf.message import Message
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from csi_client.address import Endpoint, Transport, parse_address
from csi_client.errors import CSIError, Operation, error_for
from csi_client.generated import csi_pb2 as csi
from csi_client.interceptors import LoggingInterceptor, MetricsInterceptor

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)
Req_contra = TypeVar("Req_contra", bound=Message, contravariant=True)
Resp_co = TypeVar("Resp_co", bound=Message, covariant=True)

DEFAULT_TIMEOUT_SECONDS = 10.0
# Enough to ride out a driver restarting its socket, short enough to stay out of the
# controllers' own backoff.
CONNECT_ATTEMPTS = 3
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # ListVolumes / ListSnapshots pages can be large


@dataclass(frozen=True)
class TLSConfig:
    """TLS for a TCP endpoint, as PEM bytes (the operator reads them from a Secret)."""

    root_certificates: bytes | None = None
    private_key: bytes | None = None  # with certificate_chain: mutual TLS
    certificate_chain: bytes | None = None
    server_name: str | None = None  # overrides the name checked in the server's certificate


class BoundRpc(Protocol[Req_contra, Resp_co]):
    def __call__(self, request: Req_contra | None = None, /, *, timeout: float | None = None) -> Awaitable[Resp_co]: ...


class Rpc(Generic[Req, Resp]):
    """One unary CSI method, used as a class attribute of :class:`CSIClient`."""

    def __init__(self, service: str, method: str, request: type[Req], response: type[Resp], operation: Operation):
        self.service = service
        self.method = method
        self.path = f"/csi.v1.{service}/{method}"
        self.request = request
        self.response = response
        self.operation = operation

    @overload
    def __get__(self, client: None, owner: type[Any]) -> Rpc[Req, Resp]: ...
    @overload
    def __get__(self, client: CSIClient, owner: type[Any]) -> BoundRpc[Req, Resp]: ...
    def __get__(self, client: CSIClient | None, owner: type[Any]) -> Rpc[Req, Resp] | BoundRpc[Req, Resp]:
        if client is None:
            return self

        def bound(request: Req | None = None, /, *, timeout: float | None = None) -> Awaitable[Resp]:
            return client.call(self, request if request is not None else self.request(), timeout=timeout)

        return bound


def _connection_failed(error: BaseException) -> bool:
    return isinstance(error, grpc.aio.AioRpcError) and error.code() is grpc.StatusCode.UNAVAILABLE


MAX_RECONNECT_BACKOFF_MS = 5_000


class CSIClient:
    """A reusable, typed connection to one CSI endpoint."""

    def __init__(
        self,
        address: str | Endpoint,
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        tls: TLSConfig | None = None,
        driver_name: str = "",
        connect_attempts: int = CONNECT_ATTEMPTS,
        own_connection: bool = False,
    ) -> None:
        self.endpoint = address if isinstance(address, Endpoint) else parse_address(address)
        if tls is not None and self.endpoint.transport is Transport.UNIX:
            raise ValueError(f"TLS is for dns:/// endpoints, not the unix socket {self.endpoint.path}")
        self.timeout = timeout
        self.tls = tls
        # Known after GetPluginInfo; labels the call metrics (the sidecars do the same).
        self.driver_name = driver_name
        self._connect_attempts = connect_attempts
        # gRPC shares one connection among every channel of a process to the same target; a
        # health check must dial its own, or a driver that has stopped accepting new
        # connections would still look alive through an old one (livenessprobe dials per probe).
        self._own_connection = own_connection
        self._channel: grpc.aio.Channel | None = None
        self._callables: dict[str, Any] = {}

    # Identity
    get_plugin_info = Rpc(
        "Identity", "GetPluginInfo", csi.GetPluginInfoRequest, csi.GetPluginInfoResponse, Operation.OTHER
    )
    get_plugin_capabilities = Rpc(
        "Identity",
        "GetPluginCapabilities",
        csi.GetPluginCapabilitiesRequest,
        csi.GetPluginCapabilitiesResponse,
        Operation.OTHER,
    )
    probe = Rpc("Identity", "Probe", csi.ProbeRequest, csi.ProbeResponse, Operation.OTHER)

    # Controller
    create_volume = Rpc(
        "Controller", "CreateVolume", csi.CreateVolumeRequest, csi.CreateVolumeResponse, Operation.PROVISION
    )
    delete_volume = Rpc(
        "Controller", "DeleteVolume", csi.DeleteVolumeRequest, csi.DeleteVolumeResponse, Operation.DELETE
    )
    controller_publish_volume = Rpc(
        "Controller",
        "ControllerPublishVolume",
        csi.ControllerPublishVolumeRequest,
        csi.ControllerPublishVolumeResponse,
        Operation.ATTACH,
    )
    controller_unpublish_volume = Rpc(
        "Controller",
        "ControllerUnpublishVolume",
        csi.ControllerUnpublishVolumeRequest,
        csi.ControllerUnpublishVolumeResponse,
        Operation.ATTACH,
    )
    validate_volume_capabilities = Rpc(
        "Controller",
        "ValidateVolumeCapabilities",
        csi.ValidateVolumeCapabilitiesRequest,
        csi.ValidateVolumeCapabilitiesResponse,
        Operation.OTHER,
    )
    list_volumes = Rpc("Controller", "ListVolumes", csi.ListVolumesRequest, csi.ListVolumesResponse, Operation.OTHER)
    get_capacity = Rpc("Controller", "GetCapacity", csi.GetCapacityRequest, csi.GetCapacityResponse, Operation.OTHER)
    controller_get_capabilities = Rpc(
        "Controller",
        "ControllerGetCapabilities",
        csi.ControllerGetCapabilitiesRequest,
        csi.ControllerGetCapabilitiesResponse,
        Operation.OTHER,
    )
    create_snapshot = Rpc(
        "Controller", "CreateSnapshot", csi.CreateSnapshotRequest, csi.CreateSnapshotResponse, Operation.SNAPSHOT
    )
    delete_snapshot = Rpc(
        "Controller", "DeleteSnapshot", csi.DeleteSnapshotRequest, csi.DeleteSnapshotResponse, Operation.SNAPSHOT
    )
    list_snapshots = Rpc(
        "Controller", "ListSnapshots", csi.ListSnapshotsRequest, csi.ListSnapshotsResponse, Operation.OTHER
    )
    get_snapshot = Rpc("Controller", "GetSnapshot", csi.GetSnapshotRequest, csi.GetSnapshotResponse, Operation.OTHER)
    controller_expand_volume = Rpc(
        "Controller",
        "ControllerExpandVolume",
        csi.ControllerExpandVolumeRequest,
        csi.ControllerExpandVolumeResponse,
        Operation.RESIZE,
    )
    controller_get_volume = Rpc(
        "Controller",
        "ControllerGetVolume",
        csi.ControllerGetVolumeRequest,
        csi.ControllerGetVolumeResponse,
        Operation.OTHER,
    )
    controller_modify_volume = Rpc(
        "Controller",
        "ControllerModifyVolume",
        csi.ControllerModifyVolumeRequest,
        csi.ControllerModifyVolumeResponse,
        Operation.MODIFY,
    )

    # GroupController
    group_controller_get_capabilities = Rpc(
        "GroupController",
        "GroupControllerGetCapabilities",
        csi.GroupControllerGetCapabilitiesRequest,
        csi.GroupControllerGetCapabilitiesResponse,
        Operation.OTHER,
    )
    create_volume_group_snapshot = Rpc(
        "GroupController",
        "CreateVolumeGroupSnapshot",
        csi.CreateVolumeGroupSnapshotRequest,
        csi.CreateVolumeGroupSnapshotResponse,
        Operation.SNAPSHOT,
    )
    delete_volume_group_snapshot = Rpc(
        "GroupController",
        "DeleteVolumeGroupSnapshot",
        csi.DeleteVolumeGroupSnapshotRequest,
        csi.DeleteVolumeGroupSnapshotResponse,
        Operation.SNAPSHOT,
    )
    get_volume_group_snapshot = Rpc(
        "GroupController",
        "GetVolumeGroupSnapshot",
        csi.GetVolumeGroupSnapshotRequest,
        csi.GetVolumeGroupSnapshotResponse,
        Operation.OTHER,
    )

    # Node (kubelet's service; the controllers use only NodeGetCapabilities, as the resizer does)
    node_stage_volume = Rpc(
        "Node", "NodeStageVolume", csi.NodeStageVolumeRequest, csi.NodeStageVolumeResponse, Operation.OTHER
    )
    node_unstage_volume = Rpc(
        "Node", "NodeUnstageVolume", csi.NodeUnstageVolumeRequest, csi.NodeUnstageVolumeResponse, Operation.OTHER
    )
    node_publish_volume = Rpc(
        "Node", "NodePublishVolume", csi.NodePublishVolumeRequest, csi.NodePublishVolumeResponse, Operation.OTHER
    )
    node_unpublish_volume = Rpc(
        "Node", "NodeUnpublishVolume", csi.NodeUnpublishVolumeRequest, csi.NodeUnpublishVolumeResponse, Operation.OTHER
    )
    node_get_volume_stats = Rpc(
        "Node", "NodeGetVolumeStats", csi.NodeGetVolumeStatsRequest, csi.NodeGetVolumeStatsResponse, Operation.OTHER
    )
    node_expand_volume = Rpc(
        "Node", "NodeExpandVolume", csi.NodeExpandVolumeRequest, csi.NodeExpandVolumeResponse, Operation.OTHER
    )
    node_get_capabilities = Rpc(
        "Node", "NodeGetCapabilities", csi.NodeGetCapabilitiesRequest, csi.NodeGetCapabilitiesResponse, Operation.OTHER
    )
    node_get_info = Rpc("Node", "NodeGetInfo", csi.NodeGetInfoRequest, csi.NodeGetInfoResponse, Operation.OTHER)

    async def call(self, rpc: Rpc[Req, Resp], request: Req, *, timeout: float | None = None) -> Resp:
        """Invoke `rpc` with a deadline; raise a :class:`~csi_client.errors.CSIError` on failure."""
        if not isinstance(request, rpc.request):
            raise TypeError(f"{rpc.method} takes {rpc.request.__name__}, not {type(request).__name__}")
        multicallable = self._callable(rpc)
        deadline = self.timeout if timeout is None else timeout
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._connect_attempts),
            wait=wait_exponential(multiplier=0.1, max=1.0),
            retry=retry_if_exception(_connection_failed),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    response: Resp = await multicallable(request, timeout=deadline)
                    return response
        except grpc.aio.AioRpcError as error:
            raise error_for(rpc.method, rpc.operation, error.code(), error.details() or "") from error
        except (CSIError, asyncio.CancelledError):
            raise
        except Exception as error:  # the transport failed without a gRPC status
            raise error_for(rpc.method, rpc.operation, None, repr(error)) from error
        raise AssertionError("unreachable: tenacity either returns or re-raises")  # pragma: no cover

    def _callable(self, rpc: Rpc[Any, Any]) -> Any:
        multicallable = self._callables.get(rpc.path)
        if multicallable is None:
            multicallable = self._channel_or_open().unary_unary(
                rpc.path,
                request_serializer=rpc.request.SerializeToString,
                response_deserializer=rpc.response.FromString,
            )
            self._callables[rpc.path] = multicallable
        return multicallable

    def _channel_or_open(self) -> grpc.aio.Channel:
        # Opened on first use, inside the running event loop (grpc.aio binds channels to it).
        if self._channel is None:
            interceptors = [
                MetricsInterceptor(lambda: self.driver_name),
                LoggingInterceptor(str(self.endpoint)),
            ]
            options: list[tuple[str, str | int]] = [
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                # gRPC backs reconnection off up to 120 s: a driver back after a minute down
                # would wait up to two more minutes unseen. Probes come every few seconds anyway.
                ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
            ]
            if self._own_connection:
                options.append(("grpc.use_local_subchannel_pool", 1))
            if self.endpoint.transport is Transport.UNIX:
                # gRPC would use the socket path as :authority; drivers expect a host name.
                options.append(("grpc.default_authority", "localhost"))
            if self.tls is None:
                self._channel = grpc.aio.insecure_channel(
                    self.endpoint.target, options=options, interceptors=interceptors
                )
            else:
                if self.tls.server_name:
                    options.append(("grpc.ssl_target_name_override", self.tls.server_name))
                credentials = grpc.ssl_channel_credentials(
                    root_certificates=self.tls.root_certificates,
                    private_key=self.tls.private_key,
                    certificate_chain=self.tls.certificate_chain,
                )
                self._channel = grpc.aio.secure_channel(
                    self.endpoint.target, credentials, options=options, interceptors=interceptors
                )
        return self._channel

    async def close(self) -> None:
        if self._channel is not None:
            channel, self._channel = self._channel, None
            self._callables.clear()
            await channel.close()

    async def __aenter__(self) -> CSIClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
