"""End-to-end fixtures: the CRDs installed, one operator process for the session, and helpers."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from devcluster import LocalCluster
from devcluster.operator import REPO, OperatorProcess
from sidecarless.kube import DRIVER_ENDPOINT, STORAGE_CLASS, VOLUME_ATTACHMENT, VOLUME_SNAPSHOT_CLASS, Kube
from tests.conftest import failed, short_tmpdir

MOCK = "mock.csi.sidecarless.dev"
MOCK_NOATTACH = "mock-noattach.csi.sidecarless.dev"


@pytest.fixture(scope="session")
def crds(cluster: LocalCluster) -> None:
    rest = cluster.rest
    for path in sorted((REPO / "crds").glob("*.yaml")):
        rest.create(yaml.safe_load(path.read_text()))
    cluster.wait_crds_served([yaml.safe_load(p.read_text()) for p in (REPO / "crds").glob("*.yaml")])


@pytest.fixture(scope="session")
def operator(cluster: LocalCluster, crds: None) -> Iterator[OperatorProcess]:
    log_dir = short_tmpdir("slc-op-")
    process = OperatorProcess(cluster.kubeconfig, log_dir)
    process.start()
    yield process
    process.stop()
    if os.environ.get("SIDECARLESS_KEEP_TEST_LOGS"):
        print(f"operator logs kept in {log_dir}")
    else:
        shutil.rmtree(log_dir, ignore_errors=True)


@pytest.fixture
def exclusive(
    operator: OperatorProcess, cluster: LocalCluster, request: pytest.FixtureRequest
) -> Iterator[Callable[..., OperatorProcess]]:
    """Pause the session's operator; hand out operators this test starts (and kills) itself.
    When the test fails, the end of their logs is printed (CI keeps no files)."""
    operator.stop()
    log_dir = short_tmpdir("slc-kill-")
    started: list[OperatorProcess] = []

    def start(*, sandboxed: bool = False, netns: Path | None = None, **env: str) -> OperatorProcess:
        process = OperatorProcess(cluster.kubeconfig, log_dir, env=env, netns=netns)
        process.starts = len(started)  # distinct log files per start
        started.append(process)
        process.start(sandboxed=sandboxed)
        return process

    try:
        yield start
    finally:
        for process in started:
            process.stop()
        if failed(request):
            for path in sorted(log_dir.glob("operator-*.log")):
                lines = path.read_text(errors="replace").splitlines()
                print(f"\n--- last lines of {path.name} ---\n" + "\n".join(lines[-80:]))
        operator.start()
        shutil.rmtree(log_dir, ignore_errors=True)


def killed(process: OperatorProcess) -> Callable[[], bool]:
    def check() -> bool:
        assert process.process is not None
        return process.process.popen is not None and process.process.popen.poll() is not None

    return check


async def eventually(
    check: Callable[[], Awaitable[Any]], *, timeout: float = 30.0, what: str = "condition", interval: float = 0.2
) -> Any:
    """Poll `check` until it returns something truthy; fail with `what` after `timeout`."""
    deadline = asyncio.get_running_loop().time() + timeout
    last: Any = None
    while True:
        last = await check()
        if last:
            return last
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s (last: {last!r})")
        await asyncio.sleep(interval)


def condition(endpoint: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in (endpoint.get("status") or {}).get("conditions") or [] if c["type"] == kind), {})


@pytest.fixture
async def make_endpoint(
    kube: Kube, cluster: LocalCluster, unique_name: Callable[[str], str], operator: OperatorProcess
) -> AsyncIterator[Callable[..., Awaitable[str]]]:
    """Create DriverEndpoints for the local cluster's drivers; each is deleted after the test."""
    made: list[str] = []

    async def make(driver: str = MOCK, *, address: str | None = None, **spec: Any) -> str:
        name = unique_name("ep")
        body = {
            "apiVersion": "sidecarless.io/v1alpha1",
            "kind": "DriverEndpoint",
            "metadata": {"name": name},
            "spec": {"driverName": driver, "address": address or cluster.driver_addresses[driver], **spec},
        }
        await kube.create(DRIVER_ENDPOINT, body)
        made.append(name)
        return name

    yield make
    for name in made:
        await kube.delete(DRIVER_ENDPOINT, name)


@pytest.fixture
async def make_class(kube: Kube, unique_name: Callable[[str], str]) -> AsyncIterator[Callable[..., Awaitable[str]]]:
    """Create StorageClasses (see `storage_class`); each is deleted after the test."""
    made: list[str] = []

    async def make(endpoint: str | None, provisioner: str = MOCK, **fields: Any) -> str:
        name = unique_name("sc")
        await kube.create(STORAGE_CLASS, storage_class(name, endpoint, provisioner, **fields))
        made.append(name)
        return name

    yield make
    for name in made:
        await kube.delete(STORAGE_CLASS, name)


@pytest.fixture
def routed_class(
    kube: Kube, make_endpoint: Callable[..., Awaitable[str]], make_class: Callable[..., Awaitable[str]]
) -> Callable[..., Awaitable[tuple[str, str]]]:
    """A Ready DriverEndpoint for `driver` and a StorageClass routed to it: (endpoint, class)."""

    async def make(driver: str = MOCK, **class_fields: Any) -> tuple[str, str]:
        endpoint = await make_endpoint(driver)
        await wait_ready(kube, endpoint)
        return endpoint, await make_class(endpoint, provisioner=driver, **class_fields)

    return make


def volume_attachment(name: str, driver: str, volume_name: str, node: str = "node-1") -> dict[str, Any]:
    """A VolumeAttachment as kube-controller-manager's attach/detach controller makes one."""
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "VolumeAttachment",
        "metadata": {"name": name},
        "spec": {"attacher": driver, "nodeName": node, "source": {"persistentVolumeName": volume_name}},
    }


async def attach_error(kube: Kube, name: str, *, what: str = "attachError") -> dict[str, Any]:
    """Wait for VolumeAttachment `name` to report an attachError; return it."""

    async def failed() -> dict[str, Any] | None:
        current = await kube.get(VOLUME_ATTACHMENT, name)
        return (current.get("status") or {}).get("attachError")

    error: dict[str, Any] = await eventually(failed, what=what, timeout=30)
    return error


async def wait_ready(
    kube: Kube, name: str, *, status: str = "True", reason: str | None = None, timeout: float = 30.0
) -> dict[str, Any]:
    """Wait for the DriverEndpoint's Ready condition to have `status` (and `reason`, if given)."""

    async def ready() -> dict[str, Any] | None:
        endpoint = await kube.get(DRIVER_ENDPOINT, name)
        current = condition(endpoint, "Ready")
        matches = current.get("status") == status and reason in (None, current.get("reason"))
        return endpoint if matches else None

    what = f"DriverEndpoint {name} Ready={status}" + (f" ({reason})" if reason else "")
    result: dict[str, Any] = await eventually(ready, timeout=timeout, what=what)
    return result


def storage_class(name: str, endpoint: str | None, provisioner: str = MOCK, **fields: Any) -> dict[str, Any]:
    annotations = {"sidecarless.io/endpoint": endpoint} if endpoint else {}
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": name, "annotations": annotations},
        "provisioner": provisioner,
        **fields,
    }


def volume_snapshot_class(
    name: str,
    driver: str = MOCK,
    *,
    endpoint: str = "",
    policy: str = "Delete",
    parameters: dict[str, str] | None = None,
    default: bool = False,
) -> dict[str, Any]:
    """A VolumeSnapshotClass, routed to `endpoint` when one is given."""
    annotations = {"sidecarless.io/endpoint": endpoint} if endpoint else {}
    if default:
        annotations["snapshot.storage.kubernetes.io/is-default-class"] = "true"
    return {
        "apiVersion": VOLUME_SNAPSHOT_CLASS.api_version,
        "kind": "VolumeSnapshotClass",
        "metadata": {"name": name, "annotations": annotations},
        "driver": driver,
        "deletionPolicy": policy,
        "parameters": parameters or {},
    }


def claim(name: str, class_name: str, size: str = "1Gi", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": class_name,
            "resources": {"requests": {"storage": size}},
            **spec,
        },
    }
