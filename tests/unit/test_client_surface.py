"""CSIClient has a typed method for every unary RPC of the services the controllers use."""

import re

import pytest
from google.protobuf.message import Message

from csi_client.client import CSIClient, Rpc, TLSConfig
from csi_client.generated import csi_pb2 as csi

SERVICES = ("Identity", "Controller", "GroupController", "Node")


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _client_rpcs() -> dict[str, Rpc[Message, Message]]:
    return {name: value for name, value in vars(CSIClient).items() if isinstance(value, Rpc)}


@pytest.mark.parametrize("service", SERVICES)
def test_every_method_has_a_typed_rpc(service: str) -> None:
    rpcs = _client_rpcs()
    for method in csi.DESCRIPTOR.services_by_name[service].methods:
        rpc = rpcs.get(_snake(method.name))
        assert rpc is not None, f"CSIClient lacks {_snake(method.name)} for {service}.{method.name}"
        assert rpc.path == f"/csi.v1.{service}/{method.name}"
        assert rpc.request.DESCRIPTOR.full_name == method.input_type.full_name
        assert rpc.response.DESCRIPTOR.full_name == method.output_type.full_name


def test_no_rpc_without_a_method() -> None:
    known = {
        (service, method.name) for service in SERVICES for method in csi.DESCRIPTOR.services_by_name[service].methods
    }
    assert {(rpc.service, rpc.method) for rpc in _client_rpcs().values()} == known


def test_tls_is_refused_for_unix_sockets() -> None:
    with pytest.raises(ValueError, match="TLS is for dns"):
        CSIClient("unix:///csi.sock", tls=TLSConfig())
