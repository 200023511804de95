"""A DriverEndpoint's status: its conditions, controllers, capabilities, counts and last
error, from the live endpoint. Pure: the daemon in handlers.py writes what this returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from sidecarless.endpoints.spec import CONTROLLERS, NOT_REQUIRED
from sidecarless.vocabulary import now_rfc3339

if TYPE_CHECKING:  # it reads what a live endpoint knows, and never calls it
    from sidecarless.endpoints.live import Endpoint

Body = dict[str, Any]


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool
    reason: str
    message: str


def conditions_for(
    endpoint: Endpoint | None, spec_error: str | None, terminating: str | None = None
) -> list[Condition]:
    """Connected, Ready and Degraded, each with a reason and a message a person can act on;
    and Terminating (reason InUse), while a deletion waits for what still needs the endpoint."""
    held = [Condition("Terminating", True, "InUse", terminating)] if terminating else []
    if spec_error is not None or endpoint is None:
        reason, message = ("InvalidSpec", spec_error) if spec_error else ("Configuring", "not configured yet")
        return [
            Condition("Connected", False, reason, message),
            Condition("Ready", False, reason, message),
            Condition("Degraded", False, reason, message),
            *held,
        ]
    connected = (
        Condition("Connected", True, "Connected", f"connected to {endpoint.spec.address}")
        if endpoint.connected
        else Condition("Connected", False, *(endpoint.problem or ("Unreachable", "")))
    )
    if endpoint.problem is None:
        ready = Condition("Ready", True, "Probed", f"driver {endpoint.spec.driver_name} is ready")
    else:
        ready = Condition("Ready", False, *endpoint.problem)
    if endpoint.last_error is not None and endpoint.serving:
        error = endpoint.last_error
        degraded = Condition(
            "Degraded", True, "OperationsFailing", f"last failure: {error.operation} {error.object}: {error.message}"
        )
    else:
        degraded = Condition("Degraded", False, "AsExpected", "no failed operations")
    return [connected, ready, degraded, *held]


class HasStatus(Protocol):
    def status(self) -> Body: ...


def build_status(
    endpoint: Endpoint | None,
    *,
    spec_error: str | None,
    generation: int,
    counts: dict[str, int],
    previous: Body,
    attach_required: bool = True,
    unreferenced: HasStatus | None = None,
    terminating: str | None = None,
    capacity: tuple[str, int] | None = None,
    served_by: str = "",
) -> Body:
    """The DriverEndpoint's status; lastTransitionTime moves only when a condition's status does."""
    before = {c.get("type"): c for c in previous.get("conditions") or []}
    conditions = []
    for condition in conditions_for(endpoint, spec_error, terminating):
        status = "True" if condition.status else "False"
        old = before.get(condition.type) or {}
        conditions.append(
            {
                "type": condition.type,
                "status": status,
                "reason": condition.reason,
                "message": condition.message,
                "lastTransitionTime": old.get("lastTransitionTime") if old.get("status") == status else now_rfc3339(),
            }
        )
    status_body: Body = {"observedGeneration": generation, "conditions": conditions, "counts": counts}
    if served_by:
        status_body["servedBy"] = served_by
    if endpoint is None:
        return status_body
    status_body["controllers"] = {c: endpoint.controller_state(c) for c in CONTROLLERS}
    if not attach_required:
        status_body["controllers"]["attacher"] = NOT_REQUIRED
    if capacity is not None:  # the tracker knows what the CSIDriver asks for
        status_body["controllers"]["capacity"] = capacity[0]
    status_body["counts"] = {
        **counts,
        **endpoint.operations,
        **({"capacityObjects": capacity[1]} if capacity is not None else {}),
        "operationsInFlight": endpoint.in_flight,
        "failures": endpoint.failures,
    }
    if endpoint.info is not None:
        status_body["driver"] = {"name": endpoint.info.name, "vendorVersion": endpoint.info.vendor_version}
        status_body["capabilities"] = {
            "plugin": sorted(endpoint.info.plugin),
            "controller": sorted(endpoint.info.controller),
            "groupController": sorted(endpoint.info.group_controller),
            "node": sorted(endpoint.info.node),
        }
    if endpoint.probe_time is not None:
        status_body["probe"] = {
            "lastTime": endpoint.probe_time,
            "ready": endpoint.probe_ready,
            "latencyMillis": endpoint.probe_latency_ms,
        }
    if unreferenced is not None:
        status_body["unreferenced"] = unreferenced.status()
    if endpoint.last_error is not None:
        error = endpoint.last_error
        status_body["lastError"] = {
            "operation": error.operation,
            "object": error.object,
            "message": error.message,
            "time": error.time,
        }
    return status_body
