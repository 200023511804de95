"""TLS to a dns:/// endpoint: a real handshake against a gRPC server that requires client certificates.

The server is a minimal Identity service (the mock driver speaks no TLS); what is under
test is the client's channel setup: trust roots, the client key pair, the server name.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from csi_client import CSIClient, MaybeInProgressError, TLSConfig, csi
from devcluster.pki import KeyPair, new_authority
from devcluster.procs import free_port


async def _plugin_info(
    request: csi.GetPluginInfoRequest, context: grpc.aio.ServicerContext
) -> csi.GetPluginInfoResponse:
    del request, context
    return csi.GetPluginInfoResponse(name="tls.csi.test", vendor_version="1")


@pytest.fixture
async def tls_server(tmp_path: Path) -> AsyncIterator[tuple[int, KeyPair, KeyPair]]:
    authority = new_authority(tmp_path, "ca", "test-ca")
    server_pair = authority.issue(tmp_path, "server", "driver.example", dns_names=("driver.example",), server=True)
    client_pair = authority.issue(tmp_path, "client", "sidecarless", client=True)
    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "csi.v1.Identity",
        {
            "GetPluginInfo": grpc.unary_unary_rpc_method_handler(
                _plugin_info,
                request_deserializer=csi.GetPluginInfoRequest.FromString,
                response_serializer=csi.GetPluginInfoResponse.SerializeToString,
            )
        },
    )
    server.add_generic_rpc_handlers((handler,))
    credentials = grpc.ssl_server_credentials(
        [(server_pair.key.read_bytes(), server_pair.cert.read_bytes())],
        root_certificates=authority.pair.cert.read_bytes(),
        require_client_auth=True,
    )
    port = free_port()
    server.add_secure_port(f"127.0.0.1:{port}", credentials)
    await server.start()
    yield port, authority.pair, client_pair
    await server.stop(None)


async def test_mutual_tls(tls_server: tuple[int, KeyPair, KeyPair]) -> None:
    port, ca, client_pair = tls_server
    tls = TLSConfig(
        root_certificates=ca.cert.read_bytes(),
        private_key=client_pair.key.read_bytes(),
        certificate_chain=client_pair.cert.read_bytes(),
        server_name="driver.example",
    )
    async with CSIClient(f"dns:///127.0.0.1:{port}", tls=tls) as client:
        assert (await client.get_plugin_info()).name == "tls.csi.test"


async def test_client_without_certificate_is_refused(tls_server: tuple[int, KeyPair, KeyPair]) -> None:
    port, ca, _ = tls_server
    tls = TLSConfig(root_certificates=ca.cert.read_bytes(), server_name="driver.example")
    async with CSIClient(f"dns:///127.0.0.1:{port}", tls=tls, connect_attempts=1, timeout=5) as client:
        with pytest.raises(MaybeInProgressError):
            await client.get_plugin_info()


async def test_wrong_server_name_is_refused(tls_server: tuple[int, KeyPair, KeyPair]) -> None:
    port, ca, client_pair = tls_server
    tls = TLSConfig(
        root_certificates=ca.cert.read_bytes(),
        private_key=client_pair.key.read_bytes(),
        certificate_chain=client_pair.cert.read_bytes(),
        server_name="impostor.example",
    )
    async with CSIClient(f"dns:///127.0.0.1:{port}", tls=tls, connect_attempts=1, timeout=5) as client:
        with pytest.raises(MaybeInProgressError):
            await client.get_plugin_info()
