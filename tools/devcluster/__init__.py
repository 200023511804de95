"""The local control plane and CSI drivers every Sidecarless test runs on (see docs/devcluster.md)."""

import os

# The harness talks gRPC to drivers and then forks components; gRPC's fork handlers only
# print warnings about that. Must be set before grpc is first imported.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from devcluster.cluster import ClusterOptions, ClusterState, LocalCluster
from devcluster.drivers import DriverSpec, RunningDriver, start_driver

__all__ = ["ClusterOptions", "ClusterState", "DriverSpec", "LocalCluster", "RunningDriver", "start_driver"]
