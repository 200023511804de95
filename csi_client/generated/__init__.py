"""Generated from github.com/container-storage-interface/spec@v1.12.0 csi.proto by tools/gen_csi_proto.py.

Do not edit: run `make gen` (or `python tools/gen_csi_proto.py`) instead.
"""
