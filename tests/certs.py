"""Test certificates, made with the openssl command into a temporary folder.

:func:`make_pki` writes a CA, a certificate for ``localhost`` / 127.0.0.1
signed by it (for the node or a peer), a client certificate signed by it, and
a second CA with a client certificate of its own (one the first CA does not
vouch for). Nothing here is committed: every run makes fresh keys.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import require_tool


@dataclass(frozen=True)
class Pair:
    """A certificate and its private key (PEM files)."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class PKI:
    ca: Path
    server: Pair
    client: Pair
    wrong_name: Pair
    other_ca: Path
    stranger: Pair


def _openssl(*args: str | Path) -> None:
    subprocess.run(
        [require_tool("openssl"), *map(str, args)], check=True, capture_output=True, timeout=60
    )


def _ca(folder: Path, name: str) -> Pair:
    pair = Pair(folder / f"{name}.pem", folder / f"{name}.key")
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-keyout", pair.key, "-out", pair.cert, "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return pair


def _leaf(folder: Path, name: str, ca: Pair, alt_names: str) -> Pair:
    pair = Pair(folder / f"{name}.pem", folder / f"{name}.key")
    request = folder / f"{name}.csr"
    extensions = folder / f"{name}.ext"
    extensions.write_text(
        f"subjectAltName={alt_names}\n"
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth,clientAuth\n",
        encoding="ascii",
    )
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", pair.key, "-out", request,
        "-subj", f"/CN={name}",
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", request, "-CA", ca.cert, "-CAkey", ca.key,
        "-CAcreateserial", "-days", "2", "-out", pair.cert, "-extfile", extensions,
    )  # fmt: skip
    return pair


def make_pki(folder: Path) -> PKI:
    """Write a small PKI into ``folder`` (created)."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = _ca(folder, "test-ca")
    other = _ca(folder, "other-ca")
    return PKI(
        ca=ca.cert,
        server=_leaf(folder, "server", ca, "DNS:localhost,IP:127.0.0.1"),
        client=_leaf(folder, "scanner", ca, "DNS:scanner.example"),
        wrong_name=_leaf(folder, "elsewhere", ca, "DNS:elsewhere.example"),
        other_ca=other.cert,
        stranger=_leaf(folder, "stranger", other, "DNS:stranger.example"),
    )
