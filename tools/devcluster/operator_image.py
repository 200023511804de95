"""The operator's image, built from the project's own Dockerfile without a container engine.

- The base is made here: Debian bookworm by debootstrap (from the machine's own apt
  sources) with python3 and python3-venv, written as an OCI archive. The Dockerfile takes
  it as its `BASE` build argument; without one it uses the usual public Python image.
- buildah (Debian's, daemonless) builds the Dockerfile on it: chroot isolation, so it makes
  no cgroup and starts no runtime; host networking only for the steps that reach PyPI.
- The result is an OCI archive that `ctr images import` takes (RealNode.import_image).

Both are cached under `$SIDECARLESS_CACHE/images`, keyed by what goes into them, so a
second build of unchanged sources takes a second.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from devcluster import build
from devcluster.images import ImageSpec, write_archive

log = logging.getLogger("devcluster.image")

REPO = Path(__file__).resolve().parents[2]
OPERATOR_IMAGE = "localhost/sidecarless:dev"
BASE_IMAGE = "localhost/sidecarless-base:bookworm"
BASE_SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
# What the Dockerfile copies into the image: a change to any of them makes a new image.
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"  # where Debian's ca-certificates keeps it, in the image
CONTEXT = ("Dockerfile", "pyproject.toml", "uv.lock", "README.md", "csi_client", "operator")


class ImageBuildError(build.BuildError):
    """The image did not build; the message names the Dockerfile step that failed."""


def _images_dir() -> Path:
    folder = build.cache_root() / "images"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def debian_mirror() -> str:
    """The Debian archive this machine's apt uses (read, never written down in the project)."""
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        text = path.read_text()
        if "Suites:" in text and BASE_SUITE in text:
            found = re.search(r"^URIs:\s*(\S+)", text, re.M)
            if found:
                return found.group(1)
    sources = Path("/etc/apt/sources.list")
    if sources.exists():
        found = re.search(rf"^deb\s+(\S+)\s+{BASE_SUITE}\s", sources.read_text(), re.M)
        if found:
            return found.group(1)
    raise ImageBuildError(f"no apt source for Debian {BASE_SUITE} on this machine to debootstrap the base from")


def ensure_base_image() -> Path:
    """Debian bookworm with Python, as an OCI archive, made by debootstrap once."""
    build.ensure_debian_packages({"debootstrap": "the operator image's base"})
    key = hashlib.sha256(f"{BASE_SUITE} {' '.join(BASE_PACKAGES)}".encode()).hexdigest()[:12]
    archive = _images_dir() / f"base-{BASE_SUITE}-{key}.tar"
    if archive.exists():
        return archive
    rootfs = _images_dir() / f"base-{BASE_SUITE}-{key}.rootfs"
    shutil.rmtree(rootfs, ignore_errors=True)
    started = time.monotonic()
    log.info("making the base image: debootstrap %s with %s (a few minutes)", BASE_SUITE, ", ".join(BASE_PACKAGES))
    result = subprocess.run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(BASE_PACKAGES)}",
            BASE_SUITE,
            str(rootfs),
            debian_mirror(),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=1200,
    )
    if result.returncode != 0:
        raise ImageBuildError(f"debootstrap of the base image failed:\n{(result.stdout + result.stderr)[-3000:]}")
    # What a Debian image leaves out: package lists and caches.
    for folder in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for entry in (rootfs / folder).glob("*"):
            if entry.is_file():
                entry.unlink()
    spec = ImageSpec(BASE_IMAGE, {}, ("/bin/bash",), rootfs=rootfs)
    write_archive(spec, archive.with_suffix(".tmp"))
    archive.with_suffix(".tmp").rename(archive)
    shutil.rmtree(rootfs, ignore_errors=True)
    log.info("base image made in %.0fs: %s", time.monotonic() - started, archive)
    return archive


def _context_key(context: Path) -> str:
    digest = hashlib.sha256()
    for name in CONTEXT:
        path = context / name
        for file in sorted([path] if path.is_file() else path.rglob("*")):
            if file.is_file() and "__pycache__" not in file.parts:
                digest.update(str(file.relative_to(context)).encode())
                digest.update(file.read_bytes())
    return digest.hexdigest()[:12]


def _buildah(*args: str, what: str, timeout: float = 1800) -> str:
    storage = build.cache_root() / "buildah"
    command = [
        "buildah",
        f"--root={storage / 'root'}",
        f"--runroot={storage / 'run'}",
        "--storage-driver=vfs",
        *args,
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=timeout)
    if result.returncode != 0:
        raise ImageBuildError(f"{what} failed:\n{_failed_step(result.stdout + result.stderr)}")
    return result.stdout


def _failed_step(output: str) -> str:
    """The Dockerfile step that failed and what it printed last."""
    steps = re.findall(r"STEP \d+/\d+: .*", output)
    step = steps[-1] if steps else "(before the first step)"
    return f"at {step}\n" + "\n".join(output.strip().splitlines()[-25:])


def _registry_trust() -> list[str]:
    """buildah volumes that give the build steps this machine's trust in its package registries
    (its CA bundle, and pip and uv told to use it), for the steps only: volumes are not committed."""
    bundle = Path(os.environ.get("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt"))
    if not bundle.exists():
        return []
    folder = build.cache_root() / "buildah" / "trust"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pip.conf").write_text(f"[global]\ncert = {CA_BUNDLE}\n")
    (folder / "uv.toml").write_text("native-tls = true\n")
    return [
        f"--volume={bundle}:{CA_BUNDLE}:ro",
        f"--volume={folder / 'pip.conf'}:/etc/pip.conf:ro",
        f"--volume={folder / 'uv.toml'}:/etc/uv/uv.toml:ro",
    ]


def ensure_operator_image(context: Path = REPO, dockerfile: Path | None = None) -> Path:
    """The operator image built from `dockerfile` (the project's own by default) on the
    local base, as an OCI archive."""
    build.ensure_debian_packages({"buildah": "builds the operator image from the Dockerfile"})
    dockerfile = dockerfile or context / "Dockerfile"
    key = _context_key(context) + hashlib.sha256(dockerfile.read_bytes()).hexdigest()[:6]
    archive = _images_dir() / f"sidecarless-{key}.tar"
    if archive.exists():
        return archive
    base = ensure_base_image()
    started = time.monotonic()
    log.info("building %s from %s with buildah", OPERATOR_IMAGE, dockerfile)
    with build.locked("buildah"):
        _buildah(
            "build",
            "--isolation=chroot",
            "--network=host",
            "--pull=never",
            f"--build-arg=BASE=oci-archive:{base}",
            *_registry_trust(),
            f"--file={dockerfile}",
            f"--tag={OPERATOR_IMAGE}",
            str(context),
            what=f"building {dockerfile}",
        )
        tmp = archive.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        _buildah("push", OPERATOR_IMAGE, f"oci-archive:{tmp}:{OPERATOR_IMAGE}", what="writing the image archive")
        tmp.rename(archive)
    log.info("operator image built in %.0fs: %s", time.monotonic() - started, archive)
    return archive
