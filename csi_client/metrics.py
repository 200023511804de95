"""Prometheus metrics for CSI calls, named as csi-lib-utils names them so dashboards carry over."""

from __future__ import annotations

from prometheus_client import Histogram

# The sidecars' buckets (csi-lib-utils metrics.go), in seconds.
OPERATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 25.0, 50.0, 120.0, 300.0, 600.0)

CSI_OPERATIONS_SECONDS = Histogram(
    "csi_sidecar_operations_seconds",
    "Container Storage Interface operation duration with gRPC error code status total",
    ["driver_name", "method_name", "grpc_status_code"],
    buckets=OPERATION_BUCKETS,
)
