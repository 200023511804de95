"""The operator's Prometheus metrics, named as the sidecars name theirs where the meaning is the same.

The CSI call histogram (`csi_sidecar_operations_seconds`) lives in csi_client.metrics and
the work-queue gauges in sidecarless.workqueue; all share the default registry.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

# lib-external-provisioner's metric names and labels.
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
PROVISION_TOTAL = Counter(
    "controller_persistentvolumeclaim_provision_total", "Total number of volumes provisioned", ["class", "source"]
)
PROVISION_FAILED = Counter(
    "controller_persistentvolumeclaim_provision_failed_total",
    "Total number of volumes whose provisioning failed",
    ["class", "source"],
)
PROVISION_DURATION = Histogram(
    "controller_persistentvolumeclaim_provision_duration_seconds",
    "Latency in seconds to provision a volume",
    ["class", "source"],
    buckets=_DURATION_BUCKETS,
)
DELETE_TOTAL = Counter("controller_persistentvolume_delete_total", "Total number of volumes deleted", ["class"])
DELETE_FAILED = Counter(
    "controller_persistentvolume_delete_failed_total", "Total number of volumes whose deletion failed", ["class"]
)
DELETE_DURATION = Histogram(
    "controller_persistentvolume_delete_duration_seconds",
    "Latency in seconds to delete a volume",
    ["class"],
    buckets=_DURATION_BUCKETS,
)

# snapshot-controller's operation histogram: from the VolumeSnapshot's creation to the
# snapshot being cut (CreateSnapshot) and ready (CreateSnapshotAndReady).
SNAPSHOT_OPERATION_SECONDS = Histogram(
    "snapshot_controller_operation_total_seconds",
    "Total number of seconds spent by the controller on an operation",
    ["driver_name", "operation_name", "operation_status", "snapshot_type"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30, 60, 120, 300, 600),
)
