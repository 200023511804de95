"""Container images made on this machine, never pulled: OCI archives that `ctr images import` takes.

An image here is one uncompressed layer of files plus a config, written as an OCI image
layout in a tar file. Names use the `localhost/` domain, so a kubelet that somehow missed
an image would try only this machine, and pods use `imagePullPolicy: IfNotPresent`.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar"
PAUSE_IMAGE = "localhost/pause:3.10"
BUSYBOX_IMAGE = "localhost/busybox:1.35"
MOCK_DRIVER_IMAGE = "localhost/csi-mock-driver:v4.2.0"
# The applets test pods use (each a symlink to /bin/busybox).
BUSYBOX_APPLETS = (
    "sh",
    "sleep",
    "cat",
    "echo",
    "ls",
    "mkdir",
    "head",
    "tail",
    "dd",
    "df",
    "sync",
    "test",
    "true",
    "false",
    "wc",
    "stat",
    "du",
    "touch",
    "rm",
    "grep",
    "mount",
    "id",
    "env",
    "ip",
)


@dataclass(frozen=True)
class ImageFile:
    source: Path
    mode: int = 0o755


@dataclass(frozen=True)
class ImageSpec:
    """One layer of files (path in the image -> file on this machine) and how to run it."""

    name: str
    files: dict[str, ImageFile]
    entrypoint: tuple[str, ...]
    user: str = ""
    links: dict[str, str] = field(default_factory=dict)  # path in the image -> symlink target
    rootfs: Path | None = None  # a whole root filesystem as the layer (instead of `files`)
    env: tuple[str, ...] = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",)
    directories: tuple[str, ...] = field(default=("tmp",))


def _blob(archive: tarfile.TarFile, data: bytes) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo(f"blobs/sha256/{digest}")
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))
    return {"digest": f"sha256:{digest}", "size": len(data)}


def _layer(spec: ImageSpec) -> bytes:
    buffer = io.BytesIO()
    # mtime 0 and sorted entries: the same inputs give the same digest.
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as layer:
        if spec.rootfs is not None:
            for entry in sorted(spec.rootfs.rglob("*")):
                layer.add(entry, arcname=str(entry.relative_to(spec.rootfs)), recursive=False)
            return buffer.getvalue()
        for directory in spec.directories:
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if directory == "tmp" else 0o755
            layer.addfile(info)
        for path, file in sorted(spec.files.items()):
            data = file.source.read_bytes()
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mode = len(data), file.mode
            layer.addfile(info, io.BytesIO(data))
        for path, target in sorted(spec.links.items()):
            info = tarfile.TarInfo(path.lstrip("/"))
            info.type, info.linkname = tarfile.SYMTYPE, target
            layer.addfile(info)
    return buffer.getvalue()


def write_archive(spec: ImageSpec, path: Path) -> Path:
    """Write `spec` as an OCI image layout tar at `path` (for `ctr images import`)."""
    layer = _layer(spec)
    diff_id = f"sha256:{hashlib.sha256(layer).hexdigest()}"
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": list(spec.entrypoint), "Env": list(spec.env), "User": spec.user},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as archive:
        layer_ref = {"mediaType": LAYER_TYPE, **_blob(archive, layer)}
        config_ref = {"mediaType": CONFIG_TYPE, **_blob(archive, json.dumps(config, sort_keys=True).encode())}
        manifest = {"schemaVersion": 2, "mediaType": MANIFEST_TYPE, "config": config_ref, "layers": [layer_ref]}
        manifest_ref = _blob(archive, json.dumps(manifest, sort_keys=True).encode())
        index = {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": MANIFEST_TYPE,
                    **manifest_ref,
                    "annotations": {
                        "io.containerd.image.name": spec.name,
                        "org.opencontainers.image.ref.name": spec.name.rsplit(":", 1)[-1],
                    },
                }
            ],
        }
        for name, document in (("oci-layout", {"imageLayoutVersion": "1.0.0"}), ("index.json", index)):
            data = json.dumps(document).encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def pause_image(pause_binary: Path) -> ImageSpec:
    """The pod sandbox, as kubernetes' own pause image: one static binary, user 65535."""
    return ImageSpec(PAUSE_IMAGE, {"/pause": ImageFile(pause_binary)}, ("/pause",), user="65535:65535")


def busybox_image(busybox_binary: Path) -> ImageSpec:
    """A shell and the usual tools for test pods: Debian's static busybox and its applets."""
    return ImageSpec(
        BUSYBOX_IMAGE,
        {"/bin/busybox": ImageFile(busybox_binary)},
        ("/bin/sh",),
        links={f"/bin/{applet}": "busybox" for applet in BUSYBOX_APPLETS},
        directories=("tmp", "bin"),
    )


def mock_driver_image(mock_binary: Path) -> ImageSpec:
    """csi-test's mock driver (a static binary): the driver pods' image."""
    return ImageSpec(MOCK_DRIVER_IMAGE, {"/mock-driver": ImageFile(mock_binary)}, ("/mock-driver",))
