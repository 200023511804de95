"""Fixtures shared by every test layer.

- `cluster`: one local control plane for the whole session (tools/devcluster). When
  KUBECONFIG points at the kubeconfig of a cluster started by `make cluster`, that
  cluster is reused and left running.
- `api`: a kubernetes-asyncio ApiClient for the cluster's admin.
- `namespace`: a fresh namespace per test, deleted afterwards.
- `unique_name`: names for cluster-scoped objects that no other test uses.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from pathlib import Path

import pytest
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.api_client import ApiClient
from kubernetes_asyncio.config import load_kube_config

from devcluster import LocalCluster
from devcluster.cluster import ClusterOptions
from sidecarless.kube import Kube, Transport
from tests import sidecar_build


def short_tmpdir(prefix: str) -> Path:
    # Unix socket paths are limited to ~108 bytes; pytest's own tmp paths can be longer.
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def session_cluster(
    kubeconfig_variable: str, prefix: str, options: ClusterOptions | None = None
) -> Iterator[LocalCluster]:
    """The cluster whose kubeconfig `kubeconfig_variable` names, if it runs (left running),
    or one started for the session in a fresh folder and stopped after it."""
    kubeconfig = os.environ.get(kubeconfig_variable, "")
    if kubeconfig:
        existing = LocalCluster.attach(Path(kubeconfig).parent)
        if existing is not None:
            yield existing
            existing.stop()  # stops only the drivers the tests added
            return
    workdir = short_tmpdir(prefix)
    running = LocalCluster.start(workdir, options)
    try:
        yield running
    finally:
        running.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    yield from session_cluster("KUBECONFIG", "slc-")


@pytest.fixture
async def api(cluster: LocalCluster) -> AsyncIterator[ApiClient]:
    configuration = k8s.Configuration()
    await load_kube_config(config_file=str(cluster.kubeconfig), client_configuration=configuration)
    async with ApiClient(configuration) as client:
        yield client


@pytest.fixture
async def kube(api: ApiClient) -> AsyncIterator[Kube]:
    """The operator's own client (one HTTP/2 connection), never rate limited."""
    kube = Kube(await Transport.of(api.configuration), qps=0, burst=1)
    yield kube
    await kube.close()


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    test = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:30].strip("-")

    def make(prefix: str) -> str:
        return f"{prefix}-{test}-{uuid.uuid4().hex[:6]}"

    return make


@pytest.fixture
async def namespace(api: ApiClient, unique_name: Callable[[str], str]) -> AsyncIterator[str]:
    core = k8s.CoreV1Api(api)
    name = unique_name("t")
    await core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))
    yield name
    # kube-controller-manager's namespace controller removes what is left inside.
    await core.delete_namespace(name)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep each phase's report on the test, so fixtures can tell a failed test at teardown."""
    report: pytest.TestReport = yield
    setattr(item, f"report_{report.when}", report)
    return report


def failed(request: pytest.FixtureRequest) -> bool:
    report = getattr(request.node, "report_call", None)
    return bool(report is not None and report.failed)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The crash-anywhere suite counts every write the operator makes, so it runs before the
    other end-to-end tests, whose leftovers (namespaces and snapshots still being deleted when
    the next test starts) would be written to in its numbered steps.

    The tests that run the real sidecars go last, and the sidecars, if not cached, are built
    in the background meanwhile (`make test` builds everything else first): on 2 cores their
    14 minutes of compiling fill the time the other tests spend waiting on the cluster."""
    crash = [item for item in items if "test_crash_anywhere" in item.nodeid]
    rest = [item for item in items if "test_crash_anywhere" not in item.nodeid]
    first_e2e = next((n for n, item in enumerate(rest) if item.nodeid.startswith("tests/e2e/")), len(rest))
    ordered = [*rest[:first_e2e], *crash, *rest[first_e2e:]]
    with_sidecars = [item for item in ordered if item.get_closest_marker("sidecars")]
    items[:] = [*(item for item in ordered if not item.get_closest_marker("sidecars")), *with_sidecars]
    if with_sidecars:
        sidecar_build.start()


def pytest_unconfigure(config: pytest.Config) -> None:
    sidecar_build.stop()
