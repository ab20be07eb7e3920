"""The ``ticketing`` command line and the quickstart example, as separate processes."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import NameOID

from ticketing.ledger import open_ledger

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parent.parent


def ticketing(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed ``ticketing`` entry point (as a user would)."""
    exe = Path(sys.executable).parent / "ticketing"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "ticketing"]
    return subprocess.run(
        [*cmd, *args], capture_output=True, text=True, timeout=45, cwd=cwd or REPO
    )


def subject(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> list[str]:
    return [str(a.value) for a in cert.subject.get_attributes_for_oid(oid)]


def test_keys_writes_a_ca_and_one_certificate_per_node(tmp_path: Path) -> None:
    out = tmp_path / "keys"
    result = ticketing("keys", "--dir", str(out), "--shards", "2")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "ca.crt",
        "ca.key",
        "main.crt",
        "main.key",
        "shard-1.crt",
        "shard-1.key",
        "shard-2.crt",
        "shard-2.key",
    ]
    for key in out.glob("*.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
        assert isinstance(load_pem_private_key(key.read_bytes(), None), ec.EllipticCurvePrivateKey)

    ca = x509.load_pem_x509_certificate((out / "ca.crt").read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for name, role in (("main", "main"), ("shard-1", "shard"), ("shard-2", "shard")):
        cert = x509.load_pem_x509_certificate((out / f"{name}.crt").read_bytes())
        assert subject(cert, NameOID.COMMON_NAME) == [name]
        assert subject(cert, NameOID.ORGANIZATIONAL_UNIT_NAME) == [role]
        assert cert.issuer == ca.subject
        cert.verify_directly_issued_by(ca)  # raises if not signed by this CA
        key = load_pem_private_key((out / f"{name}.key").read_bytes(), None)
        assert key.public_key() == cert.public_key()  # type: ignore[union-attr]

    # Run again: the CA is reused (certificates already issued stay valid).
    ca_before = (out / "ca.crt").read_bytes()
    assert ticketing("keys", "--dir", str(out), "--shard", "shard-9").returncode == 0
    assert (out / "ca.crt").read_bytes() == ca_before
    nine = x509.load_pem_x509_certificate((out / "shard-9.crt").read_bytes())
    nine.verify_directly_issued_by(ca)


async def make_ledger(path: Path) -> None:
    ledger = await open_ledger(path, synchronous="NORMAL")
    try:
        first = await ledger.create_event("A", "", 2500, 10)
        await ledger.create_event("B", "", 100, 3)
        await ledger.register_shard("shard-1", "127.0.0.1", 1, 2, 1.0)
        await ledger.assign(first.id, {"shard-1": (1, [(0, 4)])})
    finally:
        await ledger.close()


def test_audit_prints_the_accounting(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    asyncio.run(make_ledger(path))

    result = ticketing("audit", "--ledger", str(path))
    assert result.returncode == 0, result.stderr
    assert re.search(r"^total\s+13$", result.stdout, re.M)
    assert re.search(r"^unassigned\s+9$", result.stdout, re.M)
    assert re.search(r"^pool\s+4\s+\(shard-1\)$", result.stdout, re.M)
    assert result.stdout.strip().endswith("exact")

    result = ticketing("audit", "--ledger", str(path), "--json", "--event", "2")
    assert result.returncode == 0
    assert json.loads(result.stdout) == {
        "total": 3,
        "unassigned": 3,
        "pools": {},
        "held": 0,
        "sold": 0,
        "problems": [],
        "in_pools": 0,
        "exact": True,
    }

    # A lost ticket row makes the audit inexact: exit code 1.
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM tickets WHERE event_id = 1 AND serial = 9")
    result = ticketing("audit", "--ledger", str(path))
    assert result.returncode == 1
    assert "NOT EXACT" in result.stdout


def test_audit_of_a_missing_ledger_exits_2(tmp_path: Path) -> None:
    result = ticketing("audit", "--ledger", str(tmp_path / "nope.sqlite3"))
    assert result.returncode == 2
    assert "no ledger" in result.stderr
    assert not (tmp_path / "nope.sqlite3").exists()  # auditing never creates a ledger


def test_quickstart_example_runs(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "examples" / "quickstart.py")],
        capture_output=True,
        text=True,
        timeout=45,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "split as {'shard-1': 5, 'shard-2': 5}" in result.stdout
    assert "exact=True" in result.stdout
    assert "total=10 unassigned=0" in result.stdout
