"""Clone sources: every check external-provisioner makes, in order."""

from typing import Any

import pytest

from sidecarless.provisioner.sources import clone_source, data_source, is_clone, pending_uses_of
from sidecarless.vocabulary import ParameterError

DRIVER = "d"
CAPS = frozenset({"CLONE_VOLUME"})


def a_claim(name: str = "copy", size: str = "2Gi", source: str | None = "origin", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "metadata": {"name": name, "namespace": "ns"},
        "spec": {"resources": {"requests": {"storage": size}}, **spec},
        "status": {"phase": "Bound"},
    }
    if source:
        body["spec"]["dataSource"] = {"kind": "PersistentVolumeClaim", "name": source}
    return body


def a_volume(driver: str = DRIVER, capacity: str = "1Gi") -> dict[str, Any]:
    return {"spec": {"capacity": {"storage": capacity}, "csi": {"driver": driver, "volumeHandle": "vol-1"}}}


def test_a_good_clone() -> None:
    source = clone_source(a_claim(), a_claim("origin", "1Gi", None), a_volume(), DRIVER, CAPS)
    assert source.volume.volume_id == "vol-1"


@pytest.mark.parametrize(
    ("source_claim", "source_volume", "capabilities", "message"),
    [
        (a_claim("origin", "1Gi", None), a_volume(), frozenset(), "does not support cloning"),
        (None, None, CAPS, "not found"),
        ({**a_claim("origin", "1Gi", None), "status": {"phase": "Pending"}}, None, CAPS, "not Bound"),
        (a_claim("origin", "1Gi", None), a_volume(driver="other"), CAPS, "same driver"),
        (a_claim("origin", "1Gi", None, volumeMode="Block"), a_volume(), CAPS, "same volume mode"),
        (a_claim("origin", "1Gi", None), a_volume(capacity="3Gi"), CAPS, "at least the size"),
    ],
)
def test_clone_refusals(
    source_claim: dict[str, Any] | None,
    source_volume: dict[str, Any] | None,
    capabilities: frozenset[str],
    message: str,
) -> None:
    with pytest.raises(ParameterError, match=message):
        clone_source(a_claim(), source_claim, source_volume, DRIVER, capabilities)


def test_deleting_source_is_refused() -> None:
    source = a_claim("origin", "1Gi", None)
    source["metadata"]["deletionTimestamp"] = "now"
    with pytest.raises(ParameterError, match="being deleted"):
        clone_source(a_claim(), source, a_volume(), DRIVER, CAPS)


def test_data_source_ref_wins_and_populators_are_not_clones() -> None:
    claim = a_claim()
    claim["spec"]["dataSourceRef"] = {"kind": "Thing", "name": "x", "apiGroup": "populators.example"}
    source = data_source(claim)
    assert source is not None
    assert source.kind == "Thing"
    assert not is_clone(source)
    assert data_source(a_claim(source=None)) is None


def test_pending_clones() -> None:
    bound = a_claim("done", volumeName="pv-1")
    other_source = a_claim("elsewhere", source="unrelated")
    pending = a_claim("waiting")
    assert pending_uses_of("ns/origin", [bound, other_source, pending]) == [pending]
    assert pending_uses_of("other-ns/origin", [pending]) == []
