"""What csi-driver-host-path adds over csi-test's mock driver, served in front of the mock.

This workplace's Go module proxy refuses csi-driver-host-path (docs/devcluster.md), and
the mock speaks CSI v1.3.0, which has no ControllerModifyVolume and no size limit on
expansion. This process listens where the driver should, forwards every call to the mock
unchanged (as raw bytes), and adds hostpath's behaviour for the rest, with hostpath's
flag names and error texts:

- ControllerGetCapabilities: the mock's, plus MODIFY_VOLUME when
  `--accepted-mutable-parameter-names` is given;
- ControllerModifyVolume: every mutable parameter key must be accepted (else
  INVALID_ARGUMENT, "nothing applied"), and the volume must exist (the mock's
  ControllerGetVolume answers NOT_FOUND otherwise);
- CreateVolume: mutable parameters are checked the same way, then the call is forwarded;
- ControllerExpandVolume: above `--max-volume-size`, OUT_OF_RANGE;
- with `--create-target-paths` (on a node plugin's socket), NodePublishVolume makes the
  target folder kubelet names and NodeUnpublishVolume removes it, as hostpath does: kubelet
  makes only its parent, the mock makes none, and the runtime mounts the target into the pod;
- with `--hold-create-volume-answers SECONDS`, CreateVolume is forwarded at once and its
  answer held back that long (logged as `holding CreateVolume answer`): a driver whose pod
  dies after the backend made the volume and before the caller heard of it;
- with `--probe-unready-after SECONDS`, Probe answers `ready: false` once this process has run
  that long (a driver gone sick, for the liveness checks; a restarted container is well again);
- with `--abnormal-volumes FILE`, ListVolumes and ControllerGetVolume report the volumes that
  FILE lists (one `<volume id> <message>` a line, read at every call) as abnormal, with that
  message: a volume gone bad, for the health monitor (the mock reports every volume healthy);
- with `--topology-key KEY`, one topology segment a node, as hostpath has one a node:
  NodeGetInfo reports `{KEY: --topology-value}` (the node's name, in a DaemonSet), and
  CreateVolume's volume is accessible from the first segment the request prefers (the mock
  says its own fixed one); with `--capacity-by-segment VALUE=BYTES,...` too, GetCapacity
  answers a segment's bytes by its KEY value (the mock answers the same for any segment);
- with `--enable-volume-group-snapshots`, the GroupController service (and the plugin
  capability GROUP_CONTROLLER_SERVICE): CreateVolumeGroupSnapshot cuts one mock snapshot
  per volume (named `<group name>-<volume id>`), Get and Delete act on the group; groups
  are kept in this process's memory, as hostpath keeps them in its state file.

Every call this process answers or checks is logged as one `gRPCCall: {json}` line, the
format of the mock's own log, so tests can see what the driver was asked.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from csi_client import csi
from csi_client.address import Transport, parse_address

log = logging.getLogger("driver-shim")

CONTROLLER = "/csi.v1.Controller/"
GROUP = "/csi.v1.GroupController/"
IDENTITY = "/csi.v1.Identity/"
NODE = "/csi.v1.Node/"
Behavior = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]


@dataclass(frozen=True)
class Topology:
    """`--topology-key` and the rest: a segment a node, and its capacity."""

    key: str
    value: str = ""  # this node's, for NodeGetInfo (a node plugin's shim)
    capacity: dict[str, int] | None = None  # segment value -> available bytes (a controller's shim)


@dataclass
class Group:
    name: str
    volume_ids: list[str]
    snapshots: list[csi.Snapshot]


class Shim:
    def __init__(
        self,
        backend: grpc.aio.Channel,
        accepted: frozenset[str] | None,
        max_volume_size: int,
        groups: bool,
        *,
        target_paths: bool = False,
        hold_create_answers: float = 0.0,
        probe_unready_after: float = 0.0,
        abnormal_volumes: Path | None = None,
        topology: Topology | None = None,
    ) -> None:
        self.backend = backend
        self.abnormal_volumes = abnormal_volumes
        self.topology = topology
        self.unready_at = time.monotonic() + probe_unready_after if probe_unready_after else None
        self.hold_create_answers = hold_create_answers
        self.accepted = accepted  # None: no MODIFY_VOLUME at all
        self.max_volume_size = max_volume_size
        self.groups: dict[str, Group] | None = {} if groups else None  # by group snapshot ID
        self.own: dict[str, Behavior] = {
            CONTROLLER + "ControllerGetCapabilities": self.capabilities,
            CONTROLLER + "ControllerModifyVolume": self.modify,
            CONTROLLER + "CreateVolume": self.create,
            CONTROLLER + "ControllerExpandVolume": self.expand,
        }
        if self.unready_at is not None:
            self.own[IDENTITY + "Probe"] = self.probe
        if abnormal_volumes is not None:
            self.own |= {
                CONTROLLER + "ListVolumes": self.list_volumes,
                CONTROLLER + "ControllerGetVolume": self.get_volume,
            }
        if target_paths:
            self.own |= {NODE + "NodePublishVolume": self.publish, NODE + "NodeUnpublishVolume": self.unpublish}
        if topology is not None:
            self.own[NODE + "NodeGetInfo"] = self.node_info
            if topology.capacity is not None:
                self.own[CONTROLLER + "GetCapacity"] = self.capacity
        if groups:
            self.own |= {
                IDENTITY + "GetPluginCapabilities": self.plugin_capabilities,
                GROUP + "GroupControllerGetCapabilities": self.group_capabilities,
                GROUP + "CreateVolumeGroupSnapshot": self.create_group,
                GROUP + "GetVolumeGroupSnapshot": self.get_group,
                GROUP + "DeleteVolumeGroupSnapshot": self.delete_group,
            }

    def handler(self, method: str) -> grpc.RpcMethodHandler:
        behavior = self.own.get(method)
        if behavior is None:

            async def forward(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
                return await self.forward(method, request, context)

            behavior = forward
        return grpc.unary_unary_rpc_method_handler(behavior)

    async def forward(self, method: str, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            response: bytes = await self.backend.unary_unary(method)(request, timeout=context.time_remaining())
        except grpc.aio.AioRpcError as error:
            await context.abort(error.code(), error.details() or "")
        return response

    async def capabilities(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        raw = await self.forward(CONTROLLER + "ControllerGetCapabilities", request, context)
        response = csi.ControllerGetCapabilitiesResponse.FromString(raw)
        if self.accepted is not None:
            capability = response.capabilities.add()
            capability.rpc.type = csi.ControllerServiceCapability.RPC.MODIFY_VOLUME
        return response.SerializeToString()

    async def _abnormal(self) -> dict[str, str]:
        assert self.abnormal_volumes is not None
        with contextlib.suppress(FileNotFoundError):
            text = await asyncio.to_thread(self.abnormal_volumes.read_text)  # not on the serving loop
            return {i: message for i, _, message in (line.partition(" ") for line in text.splitlines() if line.strip())}
        return {}

    async def list_volumes(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        response = csi.ListVolumesResponse.FromString(await self.forward(CONTROLLER + "ListVolumes", raw, context))
        abnormal = await self._abnormal()
        for entry in response.entries:
            if entry.volume.volume_id in abnormal:
                entry.status.volume_condition.abnormal = True
                entry.status.volume_condition.message = abnormal[entry.volume.volume_id]
        _log(csi.ListVolumesRequest.FromString(raw), response)
        return response.SerializeToString()

    async def get_volume(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        reply = await self.forward(CONTROLLER + "ControllerGetVolume", raw, context)
        response = csi.ControllerGetVolumeResponse.FromString(reply)
        message = (await self._abnormal()).get(response.volume.volume_id)
        if message is not None:
            response.status.volume_condition.abnormal = True
            response.status.volume_condition.message = message
        return response.SerializeToString()

    async def modify(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        request = csi.ControllerModifyVolumeRequest.FromString(raw)
        if self.accepted is None:
            await _fail(context, request, grpc.StatusCode.UNIMPLEMENTED, "ControllerModifyVolume is not supported")
        if not request.volume_id:
            await _fail(context, request, grpc.StatusCode.INVALID_ARGUMENT, "Volume ID missing in request")
        await self._check_mutable(request, context)
        probe = csi.ControllerGetVolumeRequest(volume_id=request.volume_id)
        try:
            await self.backend.unary_unary(CONTROLLER + "ControllerGetVolume")(
                probe.SerializeToString(), timeout=context.time_remaining()
            )
        except grpc.aio.AioRpcError as error:
            await _fail(context, request, error.code(), error.details() or "")
        response = csi.ControllerModifyVolumeResponse()
        _log(request, response)
        return response.SerializeToString()

    async def publish(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        request = csi.NodePublishVolumeRequest.FromString(raw)
        response = await self.forward(NODE + "NodePublishVolume", raw, context)
        if request.target_path:
            await asyncio.to_thread(os.makedirs, request.target_path, 0o750, True)
            _log(request, csi.NodePublishVolumeResponse())
        return response

    async def unpublish(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        request = csi.NodeUnpublishVolumeRequest.FromString(raw)
        response = await self.forward(NODE + "NodeUnpublishVolume", raw, context)
        with contextlib.suppress(FileNotFoundError, OSError):
            await asyncio.to_thread(os.rmdir, request.target_path)  # only while empty
        _log(request, csi.NodeUnpublishVolumeResponse())
        return response

    async def create(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        request = csi.CreateVolumeRequest.FromString(raw)
        if request.mutable_parameters:
            await self._check_mutable(request, context)
            _log(request, None)
        answer = await self.forward(CONTROLLER + "CreateVolume", raw, context)
        wanted = [*request.accessibility_requirements.preferred, *request.accessibility_requirements.requisite]
        if self.topology is not None and wanted:
            response = csi.CreateVolumeResponse.FromString(answer)
            del response.volume.accessible_topology[:]
            response.volume.accessible_topology.add().segments.update(wanted[0].segments)
            answer = response.SerializeToString()
        if self.hold_create_answers:
            volume_id = csi.CreateVolumeResponse.FromString(answer).volume.volume_id
            log.info("holding CreateVolume answer for %s (volume %s)", request.name, volume_id)
            await asyncio.sleep(self.hold_create_answers)
        return answer

    async def expand(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        request = csi.ControllerExpandVolumeRequest.FromString(raw)
        wanted = request.capacity_range.required_bytes
        if self.max_volume_size and wanted > self.max_volume_size:
            await _fail(
                context,
                request,
                grpc.StatusCode.OUT_OF_RANGE,
                f"Requested capacity {wanted} exceeds maximum allowed {self.max_volume_size}",
            )
        return await self.forward(CONTROLLER + "ControllerExpandVolume", raw, context)

    async def node_info(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        assert self.topology is not None
        response = csi.NodeGetInfoResponse.FromString(await self.forward(NODE + "NodeGetInfo", raw, context))
        response.accessible_topology.segments.clear()
        response.accessible_topology.segments[self.topology.key] = self.topology.value
        _log(csi.NodeGetInfoRequest.FromString(raw), response)
        return response.SerializeToString()

    async def capacity(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        assert self.topology is not None
        assert self.topology.capacity is not None
        request = csi.GetCapacityRequest.FromString(raw)
        value = request.accessible_topology.segments.get(self.topology.key)
        if value not in self.topology.capacity:
            return await self.forward(CONTROLLER + "GetCapacity", raw, context)
        response = csi.GetCapacityResponse(available_capacity=self.topology.capacity[value])
        _log(request, response)
        return response.SerializeToString()

    async def probe(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        response = csi.ProbeResponse.FromString(await self.forward(IDENTITY + "Probe", raw, context))
        if self.unready_at is not None and time.monotonic() >= self.unready_at:
            response.ready.value = False
            _log(csi.ProbeRequest.FromString(raw), response)
        return response.SerializeToString()

    async def plugin_capabilities(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        raw = await self.forward(IDENTITY + "GetPluginCapabilities", request, context)
        response = csi.GetPluginCapabilitiesResponse.FromString(raw)
        response.capabilities.add().service.type = csi.PluginCapability.Service.GROUP_CONTROLLER_SERVICE
        return response.SerializeToString()

    async def group_capabilities(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        response = csi.GroupControllerGetCapabilitiesResponse()
        kind = csi.GroupControllerServiceCapability.RPC.CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT
        response.capabilities.add().rpc.type = kind
        return response.SerializeToString()

    async def create_group(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        assert self.groups is not None
        request = csi.CreateVolumeGroupSnapshotRequest.FromString(raw)
        if not request.name or not request.source_volume_ids:
            await _fail(context, request, grpc.StatusCode.INVALID_ARGUMENT, "name and source volume IDs are required")
        existing = next(((i, g) for i, g in self.groups.items() if g.name == request.name), None)
        if existing is not None and sorted(existing[1].volume_ids) != sorted(request.source_volume_ids):
            await _fail(
                context, request, grpc.StatusCode.ALREADY_EXISTS, f"group {request.name} exists with other volumes"
            )
        group_id = existing[0] if existing is not None else f"group-{len(self.groups) + 1}-{request.name[-8:]}"
        snapshots = []
        for volume_id in request.source_volume_ids:
            member = csi.CreateSnapshotRequest(name=f"{request.name}-{volume_id}", source_volume_id=volume_id)
            try:
                answer = await self.backend.unary_unary(CONTROLLER + "CreateSnapshot")(
                    member.SerializeToString(), timeout=context.time_remaining()
                )
            except grpc.aio.AioRpcError as error:
                await _fail(context, request, error.code(), error.details() or "")
            snapshot = csi.CreateSnapshotResponse.FromString(answer).snapshot
            snapshot.group_snapshot_id = group_id
            snapshots.append(snapshot)
        self.groups[group_id] = Group(request.name, list(request.source_volume_ids), snapshots)
        response = csi.CreateVolumeGroupSnapshotResponse(group_snapshot=self._group(group_id))
        _log(request, response)
        return response.SerializeToString()

    async def get_group(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        assert self.groups is not None
        request = csi.GetVolumeGroupSnapshotRequest.FromString(raw)
        if request.group_snapshot_id not in self.groups:
            await _fail(context, request, grpc.StatusCode.NOT_FOUND, f"group {request.group_snapshot_id} not found")
        response = csi.GetVolumeGroupSnapshotResponse(group_snapshot=self._group(request.group_snapshot_id))
        _log(request, response)
        return response.SerializeToString()

    async def delete_group(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        assert self.groups is not None
        request = csi.DeleteVolumeGroupSnapshotRequest.FromString(raw)
        group = self.groups.get(request.group_snapshot_id)
        for snapshot in group.snapshots if group is not None else []:
            delete = csi.DeleteSnapshotRequest(snapshot_id=snapshot.snapshot_id)
            try:
                await self.backend.unary_unary(CONTROLLER + "DeleteSnapshot")(
                    delete.SerializeToString(), timeout=context.time_remaining()
                )
            except grpc.aio.AioRpcError as error:
                await _fail(context, request, error.code(), error.details() or "")
        self.groups.pop(request.group_snapshot_id, None)
        response = csi.DeleteVolumeGroupSnapshotResponse()
        _log(request, response)
        return response.SerializeToString()

    def _group(self, group_id: str) -> csi.VolumeGroupSnapshot:
        assert self.groups is not None
        group = self.groups[group_id]
        answer = csi.VolumeGroupSnapshot(group_snapshot_id=group_id, snapshots=group.snapshots, ready_to_use=True)
        answer.creation_time.CopyFrom(group.snapshots[0].creation_time)
        return answer

    async def _check_mutable(self, request: Any, context: grpc.aio.ServicerContext) -> None:
        for key in request.mutable_parameters:
            if self.accepted is None or key not in self.accepted:
                await _fail(context, request, grpc.StatusCode.INVALID_ARGUMENT, f"invalid parameter key: {key}")


async def _fail(context: grpc.aio.ServicerContext, request: Message, code: grpc.StatusCode, message: str) -> None:
    _log(request, None, f"rpc error: code = {code.name} desc = {message}")
    await context.abort(code, message)


def _log(request: Message, response: Message | None, error: str = "") -> None:
    method = type(request).__name__.removesuffix("Request")
    service = GROUP if "VolumeGroupSnapshot" in method else IDENTITY if method == "Probe" else CONTROLLER
    record = {
        "Method": service + method,
        "Request": MessageToDict(request, preserving_proto_field_name=True),
        "Response": MessageToDict(response, preserving_proto_field_name=True) if response is not None else None,
        "Error": error,
    }
    print("gRPCCall: " + json.dumps(record), flush=True)


class _Handlers(grpc.GenericRpcHandler):  # type: ignore[misc]  # grpc ships no type hints
    def __init__(self, shim: Shim) -> None:
        self.shim = shim

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        return self.shim.handler(handler_call_details.method)


def _bind_target(address: str) -> str:
    endpoint = parse_address(address)
    return f"unix:{endpoint.path}" if endpoint.transport is Transport.UNIX else f"{endpoint.host}:{endpoint.port}"


async def serve(
    listen: str,
    backend: str,
    accepted: frozenset[str] | None,
    max_volume_size: int,
    groups: bool,
    *,
    target_paths: bool = False,
    hold_create_answers: float = 0.0,
    probe_unready_after: float = 0.0,
    abnormal_volumes: Path | None = None,
    topology: Topology | None = None,
) -> None:
    channel = grpc.aio.insecure_channel(parse_address(backend).target)
    server = grpc.aio.server()
    shim = Shim(
        channel,
        accepted,
        max_volume_size,
        groups,
        target_paths=target_paths,
        hold_create_answers=hold_create_answers,
        probe_unready_after=probe_unready_after,
        abnormal_volumes=abnormal_volumes,
        topology=topology,
    )
    server.add_generic_rpc_handlers([_Handlers(shim)])
    server.add_insecure_port(_bind_target(listen))
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log.info("serving %s in front of %s", listen, backend)
    await stop.wait()
    await server.stop(grace=1)
    await channel.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="unix:///path or dns:///127.0.0.1:PORT")
    parser.add_argument("--backend", required=True, help="the mock driver's address")
    parser.add_argument("--accepted-mutable-parameter-names", default=None, help="comma-separated; enables modify")
    parser.add_argument("--max-volume-size", type=int, default=0, help="bytes; 0: no limit")
    parser.add_argument("--enable-volume-group-snapshots", action="store_true", help="serve the GroupController")
    parser.add_argument("--create-target-paths", action="store_true", help="NodePublishVolume makes the target")
    parser.add_argument("--hold-create-volume-answers", type=float, default=0.0, help="seconds; 0: answer at once")
    parser.add_argument("--probe-unready-after", type=float, default=0.0, help="seconds; 0: Probe as the mock")
    parser.add_argument("--abnormal-volumes", type=Path, default=None, help="a file of '<volume id> <message>' lines")
    parser.add_argument("--topology-key", default="", help="a segment a node: the key of its label")
    parser.add_argument("--topology-value", default="", help="this node's value of it (NodeGetInfo)")
    parser.add_argument("--capacity-by-segment", default="", help="VALUE=BYTES,...: GetCapacity's answers")
    args = parser.parse_args(argv)
    topology = None
    if args.topology_key:
        capacity = None
        if args.capacity_by_segment:
            pairs = (item.partition("=") for item in args.capacity_by_segment.split(",") if item)
            capacity = {value: int(size) for value, _, size in pairs}
        topology = Topology(args.topology_key, args.topology_value, capacity)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout)
    accepted = None
    if args.accepted_mutable_parameter_names is not None:
        accepted = frozenset(filter(None, args.accepted_mutable_parameter_names.split(",")))
    asyncio.run(
        serve(
            args.listen,
            args.backend,
            accepted,
            args.max_volume_size,
            args.enable_volume_group_snapshots,
            target_paths=args.create_target_paths,
            hold_create_answers=args.hold_create_volume_answers,
            probe_unready_after=args.probe_unready_after,
            abnormal_volumes=args.abnormal_volumes,
            topology=topology,
        )
    )


if __name__ == "__main__":
    main()
