"""A DriverEndpoint's spec, parsed and checked, and what each controller may do with it. Pure."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from csi_client import AddressError, DriverInfo, parse_address

Body = dict[str, Any]

# The switches of spec.controllers; the modifier (VolumeAttributesClass) goes with the
# resizer, as both are external-resizer's, and group snapshots with the snapshotter, as
# both are csi-snapshotter's.
SWITCHES = ("provisioner", "attacher", "resizer", "snapshotter", "capacity")
CONTROLLERS = ("provisioner", "attacher", "resizer", "modifier", "snapshotter", "capacity")
_SWITCH_OF = {"modifier": "resizer", "group-snapshotter": "snapshotter"}
# The capability each controller needs from the driver to do real work.
REQUIRED_CAPABILITY = {
    "provisioner": "CREATE_DELETE_VOLUME",
    "attacher": "PUBLISH_UNPUBLISH_VOLUME",
    "resizer": "EXPAND_VOLUME",
    "modifier": "MODIFY_VOLUME",
    "snapshotter": "CREATE_DELETE_SNAPSHOT",
    "group-snapshotter": "CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT",  # of the GroupController service
    "capacity": "GET_CAPACITY",
}
ACTIVE, DISABLED, UNSUPPORTED = "Active", "Disabled", "Unsupported"
NOT_REQUIRED = "NotRequired"  # the attacher, when the CSIDriver says attachRequired: false
# The resizer, for a driver that expands only on the node: kubelet does the work, the
# resizer just records the new size (external-resizer's "trivial resizer").
NODE_ONLY = "NodeOnly"

_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True)
class ProvisionerSettings:
    """The DriverEndpoint's `spec.provisioner`, external-provisioner's flags of the same names."""

    volume_name_prefix: str = "pvc"
    volume_name_uuid_length: int = -1
    default_fstype: str = ""
    extra_create_metadata: bool = False
    strict_topology: bool = False
    immediate_topology: bool = True
    controller_publish_readonly: bool = False


class SpecError(ValueError):
    """A DriverEndpoint spec the operator cannot use; shown as Ready=False, reason InvalidSpec."""


def parse_duration(text: str, what: str) -> float:
    """Seconds in a Go-style duration ("1m30s", "500ms")."""
    if not text or _DURATION_PART.sub("", text) != "":
        raise SpecError(f"{what} {text!r} is not a duration such as 30s, 5m or 1h30m")
    return sum(float(number) * _UNITS[unit] for number, unit in _DURATION_PART.findall(text))


@dataclass(frozen=True)
class TLSSecretRef:
    name: str
    namespace: str
    server_name: str = ""


@dataclass(frozen=True)
class EndpointSpec:
    name: str
    driver_name: str
    address: str
    tls: TLSSecretRef | None = None
    controllers: dict[str, bool] = field(default_factory=lambda: dict.fromkeys(SWITCHES, True))
    provisioner: ProvisionerSettings = field(default_factory=ProvisionerSettings)
    extra_modify_metadata: bool = False  # external-resizer's --extra-modify-metadata
    operation_timeout: float = 60.0
    probe_timeout: float = 5.0
    probe_interval: float = 10.0
    retry_initial: float = 1.0
    retry_max: float = 300.0
    max_in_flight: int = 50

    @property
    def connection_key(self) -> tuple[str, TLSSecretRef | None]:
        """What, when changed, needs a new connection."""
        return (self.address, self.tls)


def parse_spec(name: str, spec: Body) -> EndpointSpec:
    """A DriverEndpoint's spec as an :class:`EndpointSpec`; raise SpecError with a reason a person can act on."""
    driver_name = str(spec.get("driverName") or "")
    if not driver_name:
        raise SpecError("spec.driverName is empty")
    address = str(spec.get("address") or "")
    try:
        endpoint = parse_address(address)
    except AddressError as error:
        raise SpecError(f"spec.address: {error}") from error
    tls = None
    if spec.get("tls"):
        if endpoint.transport.value != "tcp":
            raise SpecError("spec.tls is for dns:/// addresses; a unix socket needs no TLS")
        tls = TLSSecretRef(spec["tls"]["secretName"], spec["tls"]["secretNamespace"], spec["tls"].get("serverName", ""))
    controllers = {c: bool((spec.get("controllers") or {}).get(c, True)) for c in SWITCHES}
    p = spec.get("provisioner") or {}
    provisioner = ProvisionerSettings(
        volume_name_prefix=p.get("volumeNamePrefix", "pvc"),
        volume_name_uuid_length=int(p.get("volumeNameUUIDLength", -1)),
        default_fstype=p.get("defaultFSType", ""),
        extra_create_metadata=bool(p.get("extraCreateMetadata", False)),
        strict_topology=bool(p.get("strictTopology", False)),
        immediate_topology=bool(p.get("immediateTopology", True)),
        controller_publish_readonly=bool(p.get("controllerPublishReadOnly", False)),
    )
    timeouts, retry = spec.get("timeouts") or {}, spec.get("retry") or {}
    parsed = EndpointSpec(
        name=name,
        driver_name=driver_name,
        address=address,
        tls=tls,
        controllers=controllers,
        provisioner=provisioner,
        extra_modify_metadata=bool((spec.get("resizer") or {}).get("extraModifyMetadata", False)),
        operation_timeout=parse_duration(timeouts.get("operation", "60s"), "spec.timeouts.operation"),
        probe_timeout=parse_duration(timeouts.get("probe", "5s"), "spec.timeouts.probe"),
        probe_interval=parse_duration(timeouts.get("probeInterval", "10s"), "spec.timeouts.probeInterval"),
        retry_initial=parse_duration(retry.get("initialDelay", "1s"), "spec.retry.initialDelay"),
        retry_max=parse_duration(retry.get("maxDelay", "5m"), "spec.retry.maxDelay"),
        max_in_flight=int(spec.get("maxInFlight", 50)),
    )
    if parsed.retry_initial > parsed.retry_max:
        raise SpecError("spec.retry.initialDelay is longer than spec.retry.maxDelay")
    if parsed.operation_timeout <= 0 or parsed.probe_timeout <= 0:
        raise SpecError("timeouts must be longer than zero")
    return parsed


def switched_on(spec: EndpointSpec, controller: str) -> bool:
    """spec.controllers' switch for `controller` (the modifier and group snapshots follow
    the resizer's and the snapshotter's)."""
    return spec.controllers.get(_SWITCH_OF.get(controller, controller), True)


def controller_state(spec: EndpointSpec, info: DriverInfo | None, controller: str) -> str:
    """Active, Disabled (switched off), Unsupported (the driver lacks the capability) or,
    for the resizer of a driver that expands only on the node, NodeOnly. Before discovery
    (`info` None) a switched-on controller counts as Active."""
    if not switched_on(spec, controller):
        return DISABLED
    if info is None:
        return ACTIVE
    offered = info.group_controller if controller == "group-snapshotter" else info.controller
    if REQUIRED_CAPABILITY[controller] not in offered:
        if controller == "resizer" and _expands_on_node(info):
            return NODE_ONLY
        return UNSUPPORTED
    return ACTIVE


def _expands_on_node(info: DriverInfo) -> bool:
    """The Node service expands volumes (or, with no Node service on this connection, the
    plugin says it supports expansion at all)."""
    if info.node:
        return "EXPAND_VOLUME" in info.node
    return bool({"VOLUME_EXPANSION_ONLINE", "VOLUME_EXPANSION_OFFLINE"} & info.plugin)
