"""`sidecarless node`: one agent per node that registers every CSI driver on it with kubelet
(node-driver-registrar's job) and serves each driver's health (livenessprobe's job), for all
drivers at once.

It talks to no Kubernetes API, so it imports neither Kopf nor kubernetes-asyncio: only
grpcio, protobuf, the CSI client, aiohttp and prometheus_client.
"""
