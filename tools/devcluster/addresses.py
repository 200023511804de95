"""The local cluster's addresses, all in 10.216.0.0/15: nothing in a node's network leads elsewhere."""

from __future__ import annotations

import ipaddress

POD_NETWORK = ipaddress.IPv4Network("10.217.0.0/16")  # a /24 per node
FABRIC_NETWORK = ipaddress.IPv4Network("10.216.0.0/24")  # the wire between the nodes
# Every address a node or a pod can reach lies in here: all of it is the cluster's own.
OWNED_NETWORK = ipaddress.IPv4Network("10.216.0.0/15")
# ClusterIPs come from the cluster's own range too, so a pod that dials a Service sends nothing
# off the machine. Only the `kubernetes` Service answers: each node holds its address on its
# loopback, where the API relay listens (what kube-proxy would do for that one Service), so
# pods on the pod network use in-cluster config unchanged. Any other ClusterIP is unreachable.
SERVICE_NETWORK = ipaddress.IPv4Network("10.216.128.0/24")
KUBERNETES_SERVICE_IP = str(SERVICE_NETWORK.network_address + 1)
KUBERNETES_SERVICE_PORT = 443
