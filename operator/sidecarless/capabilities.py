"""The CSI VolumeCapability of a claim's or a PV's access modes, as every sidecar maps them. Pure."""

from __future__ import annotations

from typing import Any

from csi_client import csi
from sidecarless.vocabulary import ParameterError

Body = dict[str, Any]

_MODE = csi.VolumeCapability.AccessMode.Mode


def access_mode(mode: str, capabilities: frozenset[str]) -> csi.VolumeCapability.AccessMode.Mode.ValueType:
    """A Kubernetes access mode as a CSI one (external-provisioner's and -attacher's mapping)."""
    multi_writer = "SINGLE_NODE_MULTI_WRITER" in capabilities
    modes = {
        "ReadWriteOnce": _MODE.SINGLE_NODE_MULTI_WRITER if multi_writer else _MODE.SINGLE_NODE_WRITER,
        "ReadWriteOncePod": _MODE.SINGLE_NODE_SINGLE_WRITER if multi_writer else _MODE.SINGLE_NODE_WRITER,
        "ReadOnlyMany": _MODE.MULTI_NODE_READER_ONLY,
        "ReadWriteMany": _MODE.MULTI_NODE_MULTI_WRITER,
    }
    if mode not in modes:
        raise ParameterError(f"unsupported access mode {mode!r}")
    return modes[mode]


def publish_capability(volume: Body, default_fstype: str, capabilities: frozenset[str]) -> csi.VolumeCapability:
    """The VolumeCapability of a PV, with external-attacher's access-mode rules."""
    spec = volume.get("spec") or {}
    modes = list(spec.get("accessModes") or [])
    if "ReadOnlyMany" in modes and "ReadWriteOnce" in modes:
        raise ParameterError("a volume cannot be both ReadOnlyMany and ReadWriteOnce")
    if "ReadWriteOncePod" in modes and len(modes) > 1:
        raise ParameterError("ReadWriteOncePod cannot be combined with other access modes")
    # One mode for the publish call: the widest the PV allows.
    for preferred in ("ReadWriteMany", "ReadOnlyMany", "ReadWriteOncePod", "ReadWriteOnce"):
        if preferred in modes:
            mode = access_mode(preferred, capabilities)
            break
    else:
        raise ParameterError(f"persistentvolume {volume['metadata']['name']} has no access modes")
    capability = csi.VolumeCapability(access_mode=csi.VolumeCapability.AccessMode(mode=mode))
    if spec.get("volumeMode") == "Block":
        capability.block.SetInParent()
    else:
        capability.mount.fs_type = (spec.get("csi") or {}).get("fsType") or default_fstype
        capability.mount.mount_flags.extend(spec.get("mountOptions") or [])
    return capability
