"""The node agent's metrics, one series per driver (`driver_name`, the label the sidecars use).

livenessprobe exports only the CSI call histogram; these say what a storage administrator asks
of a node: is each driver registered with kubelet, and how its health checks go.
"""

from __future__ import annotations

import contextlib

from prometheus_client import Counter, Gauge, Histogram

PROBE_SECONDS = Histogram(
    "sidecarless_node_probe_duration_seconds",
    "Duration of a driver's health check (a fresh connection and Probe)",
    ["driver_name"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
PROBE_FAILURES = Counter(
    "sidecarless_node_probe_failures_total",
    "Health checks that failed, by reason (unavailable, timeout, rpc_error, not_ready)",
    ["driver_name", "reason"],
)
REGISTERED = Gauge(
    "sidecarless_node_driver_registered",
    "1 when kubelet accepted the driver's registration, 0 while it has not or refused it",
    ["driver_name"],
)

PROBE_FAILURE_REASONS = ("unavailable", "timeout", "rpc_error", "not_ready")


def forget_driver(driver_name: str) -> None:
    """Drop a driver's series once its socket is gone: a node's drivers come and go."""
    with contextlib.suppress(KeyError):
        PROBE_SECONDS.remove(driver_name)
    for reason in PROBE_FAILURE_REASONS:
        with contextlib.suppress(KeyError):
            PROBE_FAILURES.remove(driver_name, reason)
    with contextlib.suppress(KeyError):
        REGISTERED.remove(driver_name)
