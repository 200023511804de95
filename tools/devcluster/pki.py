"""Certificates for the local control plane, laid out as kubeadm would.

ECDSA P-256 keys: fast to make, accepted by every component. Nothing here is meant
to protect anything beyond a loopback test cluster.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from devcluster.addresses import KUBERNETES_SERVICE_IP

VALIDITY = datetime.timedelta(days=30)


@dataclass(frozen=True)
class KeyPair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Authority:
    pair: KeyPair
    _cert: x509.Certificate
    _key: ec.EllipticCurvePrivateKey

    def issue(
        self,
        directory: Path,
        name: str,
        common_name: str,
        *,
        organizations: tuple[str, ...] = (),
        dns_names: tuple[str, ...] = (),
        ip_addresses: tuple[str, ...] = (),
        server: bool = False,
        client: bool = False,
    ) -> KeyPair:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
        subject.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
        usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + (
            [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
        )
        builder = _base(x509.Name(subject), self._cert.subject, key).add_extension(
            x509.ExtendedKeyUsage(usages), critical=False
        )
        alt_names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        alt_names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
        if alt_names:
            builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True).add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=False,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        cert = builder.sign(self._key, hashes.SHA256())
        return _write(directory, name, cert, key)


def _base(subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
    )


def _write(directory: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> KeyPair:
    pair = KeyPair(directory / f"{name}.crt", directory / f"{name}.key")
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pair.key.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    pair.key.chmod(0o600)
    return pair


def load_authority(directory: Path, name: str) -> Authority:
    """An authority :func:`new_authority` wrote earlier, able to issue more certificates."""
    pair = KeyPair(directory / f"{name}.crt", directory / f"{name}.key")
    cert = x509.load_pem_x509_certificate(pair.cert.read_bytes())
    key = serialization.load_pem_private_key(pair.key.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TypeError(f"{pair.key} is not an EC key")
    return Authority(pair, cert, key)


def new_authority(directory: Path, name: str, common_name: str) -> Authority:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        _base(subject, subject, key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=False,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return Authority(_write(directory, name, cert, key), cert, key)


@dataclass(frozen=True)
class ClusterPKI:
    ca: KeyPair
    apiserver: KeyPair
    admin: KeyPair
    controller_manager: KeyPair
    front_proxy_ca: KeyPair
    front_proxy_client: KeyPair
    service_account_key: Path
    service_account_pub: Path


def load_cluster_pki(directory: Path) -> ClusterPKI:
    """The PKI an earlier :func:`make_cluster_pki` wrote into `directory`."""

    def pair(name: str) -> KeyPair:
        return KeyPair(directory / f"{name}.crt", directory / f"{name}.key")

    return ClusterPKI(
        ca=pair("ca"),
        apiserver=pair("apiserver"),
        admin=pair("admin"),
        controller_manager=pair("controller-manager"),
        front_proxy_ca=pair("front-proxy-ca"),
        front_proxy_client=pair("front-proxy-client"),
        service_account_key=directory / "sa.key",
        service_account_pub=directory / "sa.pub",
    )


def make_cluster_pki(directory: Path) -> ClusterPKI:
    directory.mkdir(parents=True, exist_ok=True)
    ca = new_authority(directory, "ca", "sidecarless-devcluster-ca")
    front_proxy = new_authority(directory, "front-proxy-ca", "sidecarless-devcluster-front-proxy-ca")
    service_account = ec.generate_private_key(ec.SECP256R1())
    sa_key, sa_pub = directory / "sa.key", directory / "sa.pub"
    sa_key.write_bytes(
        service_account.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    sa_key.chmod(0o600)
    sa_pub.write_bytes(
        service_account.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return ClusterPKI(
        ca=ca.pair,
        apiserver=ca.issue(
            directory,
            "apiserver",
            "kube-apiserver",
            dns_names=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"),
            ip_addresses=("127.0.0.1", KUBERNETES_SERVICE_IP),
            server=True,
        ),
        admin=ca.issue(directory, "admin", "sidecarless-admin", organizations=("system:masters",), client=True),
        controller_manager=ca.issue(directory, "controller-manager", "system:kube-controller-manager", client=True),
        front_proxy_ca=front_proxy.pair,
        front_proxy_client=front_proxy.issue(directory, "front-proxy-client", "front-proxy-client", client=True),
        service_account_key=sa_key,
        service_account_pub=sa_pub,
    )
