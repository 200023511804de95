"""Generated from k8s.io/kubelet@v0.36.3 pkg/apis/pluginregistration/v1/api.proto by tools/gen_csi_proto.py.

Do not edit: run `make gen` (or `python tools/gen_csi_proto.py`) instead.
"""
