"""The operator image, built for real from the project's Dockerfile (buildah on a base made
by debootstrap), imported into the node and run by kubelet as the chart runs it: user 65532,
read-only root filesystem, no capabilities."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from devcluster import LocalCluster
from devcluster.operator_image import OPERATOR_IMAGE, REPO, ImageBuildError, ensure_operator_image
from sidecarless.kube import POD, Kube
from tests.e2e.conftest import eventually

pytestmark = pytest.mark.timeout(1800)  # a cold build takes minutes (debootstrap, then PyPI)


@pytest.fixture(scope="module")
def operator_image(cluster: LocalCluster) -> str:
    cluster.import_image(ensure_operator_image())
    return OPERATOR_IMAGE


def confined_pod(name: str, image: str, command: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "containers": [
                {
                    "name": "main",
                    "image": image,
                    "imagePullPolicy": "IfNotPresent",
                    "command": command,
                    "securityContext": {
                        "runAsUser": 65532,
                        "runAsGroup": 65532,
                        "runAsNonRoot": True,
                        "readOnlyRootFilesystem": True,
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
        },
    }


async def finished(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        found = await kube.get(POD, name, namespace)
        return found if found.get("status", {}).get("phase") in {"Succeeded", "Failed"} else None

    done: dict[str, Any] = await eventually(check, timeout=120, what=f"pod {name} finished")
    return done


async def test_the_image_runs_the_cli_confined(
    kube: Kube, cluster: LocalCluster, namespace: str, operator_image: str
) -> None:
    probe = (
        "import os, sidecarless.handlers, csi_client.generated.csi_pb2\n"
        "print('uid', os.getuid(), 'gid', os.getgid())\n"
        "try:\n"
        "    open('/written', 'w')\n"
        "except OSError as error:\n"
        "    print('root filesystem:', error.strerror)\n"
    )
    await kube.create(POD, confined_pod("help", operator_image, ["sidecarless", "--help"]), namespace)
    await kube.create(POD, confined_pod("probe", operator_image, ["python3", "-c", probe]), namespace)
    for name in ("help", "probe"):
        done = await finished(kube, namespace, name)
        node = next(n for n in cluster.real_nodes if n.name == done["spec"]["nodeName"])
        log = node.container_log(namespace, name, done["metadata"]["uid"], "main")
        assert done["status"]["phase"] == "Succeeded", log
        if name == "help":
            assert "run" in log, log
            assert "status" in log, log
        else:
            assert "uid 65532 gid 65532" in log, log
            assert "root filesystem: Read-only file system" in log, log


def test_a_failing_step_is_named(tmp_path: Path) -> None:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("ARG BASE\nFROM ${BASE}\nRUN echo first\nRUN exit 3\n")
    with pytest.raises(ImageBuildError, match=r"at STEP \d+/\d+: RUN exit 3"):
        ensure_operator_image(REPO, dockerfile)
