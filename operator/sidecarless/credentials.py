"""The secrets a CSI call carries, read one way for every controller (the sidecars' getCredentials).

No reference: no secrets. A referenced Secret that cannot be read is a ParameterError with a
message naming it; each controller reports ParameterErrors where its sidecar reports bad
input (a VolumeAttachment's attachError, a claim's or a content's event) and retries with
backoff. The one caller that goes on without a missing Secret is DeleteVolume, as
external-provisioner does ("the secret may have already been deleted").
"""

from __future__ import annotations

from typing import Any, Protocol

from sidecarless.vocabulary import ParameterError, SecretRef

Body = dict[str, Any]

# The sidecars' own words (getCredentials in external-attacher, -resizer and csi-snapshotter).
MISSING = "error getting secret {name} in namespace {namespace}: not found"


class SecretReader(Protocol):
    async def secret_strings(self, name: str, namespace: str) -> dict[str, str] | None: ...


def volume_secret(volume: Body, field: str) -> SecretRef | None:
    """The Secret a PV's `spec.csi.<field>` names (controllerPublishSecretRef, ...)."""
    ref = ((volume.get("spec") or {}).get("csi") or {}).get(field) or {}
    return SecretRef(ref["name"], ref.get("namespace") or "") if ref.get("name") else None


async def credentials(kube: SecretReader, ref: SecretRef | None, missing: str = MISSING) -> dict[str, str]:
    """The `secrets` map of a CSI request. `missing`: the message when the Secret cannot be
    read, with `{name}` and `{namespace}` filled in."""
    if ref is None:
        return {}
    data = await kube.secret_strings(ref.name, ref.namespace)
    if data is None:
        raise ParameterError(missing.format(name=ref.name, namespace=ref.namespace))
    return data
