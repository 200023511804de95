"""The local control plane and CSI drivers every Sidecarless test runs on (see docs/devcluster.md)."""

from devcluster.cluster import ClusterOptions, ClusterState, LocalCluster
from devcluster.drivers import DriverSpec, RunningDriver, start_driver

__all__ = ["ClusterOptions", "ClusterState", "DriverSpec", "LocalCluster", "RunningDriver", "start_driver"]
