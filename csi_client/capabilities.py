"""What a driver is and what it can do, as sets of capability names from the CSI enums."""

from __future__ import annotations

from dataclasses import dataclass, field

from csi_client.client import CSIClient
from csi_client.errors import CSIError
from csi_client.generated import csi_pb2 as csi

_SERVICE = csi.PluginCapability.Service.Type
_EXPANSION = csi.PluginCapability.VolumeExpansion.Type
_CONTROLLER_RPC = csi.ControllerServiceCapability.RPC.Type
_GROUP_RPC = csi.GroupControllerServiceCapability.RPC.Type
_NODE_RPC = csi.NodeServiceCapability.RPC.Type


@dataclass(frozen=True)
class DriverInfo:
    """GetPluginInfo and the capability sets; names as the CSI enums spell them."""

    name: str
    vendor_version: str
    manifest: dict[str, str] = field(default_factory=dict)
    # CONTROLLER_SERVICE, VOLUME_ACCESSIBILITY_CONSTRAINTS, GROUP_CONTROLLER_SERVICE, ...,
    # and VOLUME_EXPANSION_ONLINE / VOLUME_EXPANSION_OFFLINE.
    plugin: frozenset[str] = frozenset()
    controller: frozenset[str] = frozenset()  # CREATE_DELETE_VOLUME, PUBLISH_UNPUBLISH_VOLUME, ...
    group_controller: frozenset[str] = frozenset()  # CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT
    # The Node service's capabilities on the same connection (EXPAND_VOLUME, ...), if it
    # offers one: external-resizer asks the controller socket too, to tell drivers that
    # expand only on the node.
    node: frozenset[str] = frozenset()

    @property
    def has_controller_service(self) -> bool:
        return "CONTROLLER_SERVICE" in self.plugin


def plugin_capability_names(response: csi.GetPluginCapabilitiesResponse) -> frozenset[str]:
    names: set[str] = set()
    for capability in response.capabilities:
        if capability.HasField("service") and capability.service.type != _SERVICE.UNKNOWN:
            names.add(_SERVICE.Name(capability.service.type))
        elif capability.HasField("volume_expansion") and capability.volume_expansion.type != _EXPANSION.UNKNOWN:
            names.add(f"VOLUME_EXPANSION_{_EXPANSION.Name(capability.volume_expansion.type)}")
    return frozenset(names)


def controller_capability_names(response: csi.ControllerGetCapabilitiesResponse) -> frozenset[str]:
    return frozenset(
        _CONTROLLER_RPC.Name(c.rpc.type) for c in response.capabilities if c.rpc.type != _CONTROLLER_RPC.UNKNOWN
    )


def group_controller_capability_names(response: csi.GroupControllerGetCapabilitiesResponse) -> frozenset[str]:
    return frozenset(_GROUP_RPC.Name(c.rpc.type) for c in response.capabilities if c.rpc.type != _GROUP_RPC.UNKNOWN)


def node_capability_names(response: csi.NodeGetCapabilitiesResponse) -> frozenset[str]:
    return frozenset(_NODE_RPC.Name(c.rpc.type) for c in response.capabilities if c.rpc.type != _NODE_RPC.UNKNOWN)


async def discover(client: CSIClient) -> DriverInfo:
    """GetPluginInfo, GetPluginCapabilities and the controller capabilities the driver offers.

    Sets `client.driver_name` so the call metrics carry the driver's name from here on.
    """
    info = await client.get_plugin_info()
    client.driver_name = info.name
    plugin = plugin_capability_names(await client.get_plugin_capabilities())
    controller: frozenset[str] = frozenset()
    if "CONTROLLER_SERVICE" in plugin:
        controller = controller_capability_names(await client.controller_get_capabilities())
    group: frozenset[str] = frozenset()
    if "GROUP_CONTROLLER_SERVICE" in plugin:
        group = group_controller_capability_names(await client.group_controller_get_capabilities())
    try:
        node = node_capability_names(await client.node_get_capabilities())
    except CSIError:
        node = frozenset()  # a controller-only endpoint: no Node service here
    return DriverInfo(
        name=info.name,
        vendor_version=info.vendor_version,
        manifest=dict(info.manifest),
        plugin=plugin,
        controller=controller,
        group_controller=group,
        node=node,
    )


async def probe_ready(client: CSIClient, *, timeout: float | None = None) -> bool:
    """Probe the driver; an unset `ready` means ready (CSI spec)."""
    response = await client.probe(timeout=timeout)
    return not response.HasField("ready") or response.ready.value
