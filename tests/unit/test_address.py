"""Address parsing: every accepted form and the refusals a user would see."""

import pytest

from csi_client.address import AddressError, Transport, parse_address


@pytest.mark.parametrize(
    ("address", "transport", "target"),
    [
        ("unix:///csi/csi.sock", Transport.UNIX, "unix:///csi/csi.sock"),
        ("/csi/csi.sock", Transport.UNIX, "unix:///csi/csi.sock"),
        ("  /var/lib/kubelet/plugins/x/csi.sock ", Transport.UNIX, "unix:///var/lib/kubelet/plugins/x/csi.sock"),
        ("unix:///csi//a/../csi.sock", Transport.UNIX, "unix:///csi/a/../csi.sock"),
        ("dns:///hostpath.storage.svc:10000", Transport.TCP, "dns:///hostpath.storage.svc:10000"),
        ("dns:controller:9000", Transport.TCP, "dns:///controller:9000"),
        ("dns:///127.0.0.1:1", Transport.TCP, "dns:///127.0.0.1:1"),
        ("dns:///[::1]:65535", Transport.TCP, "dns:///[::1]:65535"),
    ],
)
def test_accepted_addresses(address: str, transport: Transport, target: str) -> None:
    endpoint = parse_address(address)
    assert endpoint.transport is transport
    assert endpoint.target == target


def test_tcp_endpoint_keeps_host_and_port() -> None:
    endpoint = parse_address("dns:///[::1]:10000")
    assert (endpoint.host, endpoint.port) == ("::1", 10000)


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("tcp://1.2.3.4:10000", "unsupported scheme 'tcp'"),
        ("http://svc:80", "unsupported scheme 'http'"),
        ("csi.sock", "no scheme"),
        ("unix://relative/csi.sock", "must be absolute"),
        ("unix:///", "directory"),
        ("/csi/", "directory"),
        ("dns:///host", "host:port"),
        ("dns:///host:", "host:port"),
        ("dns:///:10000", "host:port"),
        ("dns:///host:99999", "out of range"),
        ("dns:///host:0", "out of range"),
        ("dns://8.8.8.8/host:53", "unsupported scheme"),
        ("dns:///bad_host:1", "host:port"),
    ],
)
def test_refused_addresses_say_why(address: str, message: str) -> None:
    with pytest.raises(AddressError, match=message):
        parse_address(address)
