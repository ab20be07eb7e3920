"""Cluster keys and TLS contexts.

The cluster CA issues one certificate per node. A node's **role** (``main``,
``shard`` or ``front``) is the subject's OU and its **name** (``main``, ``shard-1``,
``front-1``...) the CN, so
after the handshake each side checks not only the chain but who the peer is.
ECDSA P-256 keys, TLS 1.3 only, client certificates required on the link.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .errors import ConfigError, PeerRejected

ROLES = ("main", "shard", "front")
DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
ORGANIZATION = "ticketing"

PemSource = str | os.PathLike[str] | bytes


# -- generating keys -----------------------------------------------------------


def _name(cn: str, role: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION)]
    if role:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


def _san(hosts: tuple[str, ...]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def generate_ca(
    common_name: str = "ticketing cluster CA", days: int = 3650
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def issue_node_cert(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    role: str,
    name: str,
    hosts: tuple[str, ...] = DEFAULT_HOSTS,
    days: int = 825,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A leaf for one node, usable as TLS server *and* client (the link is mutual)."""
    if role not in ROLES:
        raise ConfigError(f"role must be one of {ROLES}, not {role!r}")
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name, role))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_san(hosts), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _write(path: Path, data: bytes, private: bool = False) -> None:
    path.write_bytes(data)
    if private:
        path.chmod(0o600)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load_ca(directory: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate] | None:
    key_path, cert_path = directory / "ca.key", directory / "ca.crt"
    if not (key_path.exists() and cert_path.exists()):
        return None
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{key_path} is not an EC key")
    return key, x509.load_pem_x509_certificate(cert_path.read_bytes())


def write_cluster_keys(
    directory: str | os.PathLike[str],
    shards: list[str],
    hosts: tuple[str, ...] = DEFAULT_HOSTS,
    *,
    include_main: bool = True,
    fronts: Sequence[str] = (),
) -> Path:
    """Write (or extend) a cluster's keys: ``ca.*``, ``main.*``, ``<shard>.*``, ``<front>.*``.

    An existing CA in ``directory`` is reused, so shards and fronts can be added later.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    loaded = _load_ca(out)
    if loaded is None:
        loaded = generate_ca()
        _write(out / "ca.key", _key_pem(loaded[0]), private=True)
        _write(out / "ca.crt", loaded[1].public_bytes(serialization.Encoding.PEM))
    ca_key, ca_cert = loaded
    nodes = (
        ([("main", "main")] if include_main else [])
        + [("shard", s) for s in shards]
        + [("front", f) for f in fronts]
    )
    for role, name in nodes:
        if not name or "/" in name or name.startswith("."):
            raise ConfigError(f"bad node name {name!r}")
        key, cert = issue_node_cert(ca_key, ca_cert, role, name, hosts)
        _write(out / f"{name}.key", _key_pem(key), private=True)
        _write(out / f"{name}.crt", cert.public_bytes(serialization.Encoding.PEM))
    return out


# -- loading and contexts ---------------------------------------------------------


@dataclass
class Credentials:
    """Where a node's certificate, key and the cluster CA come from (paths or PEM)."""

    cert: PemSource
    key: PemSource
    ca: PemSource

    @classmethod
    def from_directory(cls, directory: str | os.PathLike[str], name: str) -> Credentials:
        d = Path(directory)
        creds = cls(cert=d / f"{name}.crt", key=d / f"{name}.key", ca=d / "ca.crt")
        for p in (creds.cert, creds.key, creds.ca):
            if not Path(os.fsdecode(p)).exists():
                raise ConfigError(f"missing {os.fsdecode(p)} (run `ticketing keys` to create it)")
        return creds


def _as_file(source: PemSource, stack: list[str]) -> str:
    """ssl wants file names for cert/key: PEM bytes go to a private temp file."""
    if isinstance(source, bytes):
        fd, name = tempfile.mkstemp(suffix=".pem")
        with os.fdopen(fd, "wb") as f:
            f.write(source)
        stack.append(name)
        return name
    return os.fspath(source)


def _context(purpose: ssl.Purpose, creds: Credentials) -> ssl.SSLContext:
    ctx = ssl.create_default_context(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    temp: list[str] = []
    try:
        ctx.load_cert_chain(_as_file(creds.cert, temp), _as_file(creds.key, temp))
        if isinstance(creds.ca, bytes):
            ctx.load_verify_locations(cadata=creds.ca.decode("ascii"))
        else:
            ctx.load_verify_locations(cafile=os.fspath(creds.ca))
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise ConfigError(f"cannot load certificates: {exc}") from exc
    finally:
        for name in temp:
            os.unlink(name)
    return ctx


def server_context(creds: Credentials, *, require_client_cert: bool = True) -> ssl.SSLContext:
    """TLS 1.3 server context; the link requires a client certificate from the CA."""
    ctx = _context(ssl.Purpose.CLIENT_AUTH, creds)
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_NONE
    return ctx


def client_context(creds: Credentials) -> ssl.SSLContext:
    """TLS 1.3 client context presenting our certificate and trusting only the CA."""
    return _context(ssl.Purpose.SERVER_AUTH, creds)


def browser_server_context(creds: Credentials) -> ssl.SSLContext:
    """For the HTTPS/WSS ports browsers use: no client certificate, TLS 1.2+."""
    ctx = server_context(creds, require_client_cert=False)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


# -- checking who the peer is ------------------------------------------------------


@dataclass(frozen=True)
class PeerIdentity:
    role: str
    name: str


def peer_identity(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> PeerIdentity:
    """Role and name from the verified peer certificate (OU and CN)."""
    cert = ssl_object.getpeercert() if ssl_object is not None else None
    if not cert:
        raise PeerRejected("peer presented no certificate")
    fields: dict[str, str] = {}
    for rdn in cert.get("subject", ()):
        for attr in rdn:
            fields[str(attr[0])] = str(attr[1])
    role, name = fields.get("organizationalUnitName"), fields.get("commonName")
    if role not in ROLES or not name:
        raise PeerRejected(f"peer certificate has no ticketing role/name (subject {fields})")
    return PeerIdentity(role, name)


def check_peer(
    ssl_object: ssl.SSLObject | ssl.SSLSocket | None, role: str, name: str | None = None
) -> PeerIdentity:
    ident = peer_identity(ssl_object)
    if ident.role != role:
        raise PeerRejected(f"peer {ident.name!r} has role {ident.role!r}, expected {role!r}")
    if name is not None and ident.name != name:
        raise PeerRejected(f"peer is {ident.name!r}, expected {name!r}")
    return ident
