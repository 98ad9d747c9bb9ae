"""TLS settings: every problem is named by its field, before the node starts."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
import yaml

from dicomnode.cli import main
from dicomnode.config import parse_config
from dicomnode.errors import ConfigError
from tests.certs import PKI, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


def server_tls(pki: PKI, **fields: Any) -> dict[str, Any]:
    return {"certificate": str(pki.server.cert), "private_key": str(pki.server.key), **fields}


def problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return info.value.problems


def one_problem(data: dict[str, Any]) -> str:
    found = problems(data)
    assert len(found) == 1, found
    return found[0]


def test_a_full_tls_setup_loads_and_builds_its_contexts(pki: PKI) -> None:
    settings = parse_config(
        {
            "node": {"port": 11112},
            "ingress": {
                "tls": server_tls(
                    pki, port=2762, require_client_cert=True, ca_file=str(pki.ca), min_version="1.3"
                )
            },
            "destinations": {
                "pacs": {
                    "type": "dicom",
                    "ae_title": "PACS",
                    "host": "pacs.example",
                    "port": 2762,
                    "tls": {
                        "ca_file": str(pki.ca),
                        "certificate": str(pki.client.cert),
                        "private_key": str(pki.client.key),
                    },
                },
                "ris": {"type": "hl7", "host": "ris.example", "port": 2575, "tls": {}},
            },
        }
    )
    tls = settings.ingress.tls
    assert tls is not None and tls.port == 2762
    server = tls.context()
    assert server.verify_mode == ssl.CERT_REQUIRED
    assert server.minimum_version == ssl.TLSVersion.TLSv1_3
    pacs = settings.destinations["pacs"]
    assert pacs.type == "dicom" and pacs.tls is not None
    client = pacs.tls.context()
    assert client.check_hostname and client.verify_mode == ssl.CERT_REQUIRED
    assert client.minimum_version == ssl.TLSVersion.TLSv1_2
    assert pacs.tls.hostname_for(pacs.host) == "pacs.example"
    # TLS 1.2 suites: forward secrecy and AEAD only
    names = {c["name"] for c in client.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert names and all(n.startswith("ECDHE-") for n in names), names
    assert all("GCM" in n or "CHACHA20" in n for n in names), names


@pytest.mark.parametrize(
    ("tls", "field", "words"),
    [
        ({"certificate": "/nonexistent/node.pem"}, "ingress.tls.certificate", "cannot read"),
        ({"private_key": "/nonexistent/node.key"}, "ingress.tls.private_key", "cannot read"),
        ({"min_version": "1.1"}, "ingress.tls.min_version", "'1.2' or '1.3'"),
        ({"require_client_cert": True}, "ingress.tls", "ca_file: required"),
        ({"cipher": "NULL"}, "ingress.tls.cipher", "Extra inputs"),
        ({"port": 0}, "ingress.tls.port", "greater than or equal to 1"),
    ],
)
def test_ingress_tls_errors_name_the_field(pki: PKI, tls, field: str, words: str) -> None:
    found = one_problem({"ingress": {"tls": server_tls(pki, **tls)}})
    assert found.startswith(field + ":"), found
    assert words in found, found


def test_a_key_that_is_not_the_certificates_is_refused(pki: PKI) -> None:
    found = one_problem({"ingress": {"tls": server_tls(pki, private_key=str(pki.client.key))}})
    assert found.startswith("ingress.tls:"), found
    assert "certificate, private_key: cannot load the certificate with its key" in found


def test_a_ca_file_that_is_not_pem_is_refused(pki: PKI, tmp_path: Path) -> None:
    junk = tmp_path / "ca.pem"
    junk.write_text("not a certificate\n", encoding="ascii")
    found = one_problem(
        {"ingress": {"tls": server_tls(pki, require_client_cert=True, ca_file=str(junk))}}
    )
    assert found.startswith("ingress.tls:") and "ca_file: not a PEM CA certificate" in found


def test_a_ca_file_without_client_certificates_is_refused(pki: PKI) -> None:
    found = one_problem({"ingress": {"tls": server_tls(pki, ca_file=str(pki.ca))}})
    assert "ca_file: only used with require_client_cert" in found


def test_the_tls_port_must_not_be_the_node_port(pki: PKI) -> None:
    found = one_problem({"node": {"port": 11112}, "ingress": {"tls": server_tls(pki, port=11112)}})
    assert "ingress.tls.port: 11112 is node.port" in found


def test_an_empty_tls_key_is_plain_tcp_and_braces_turn_tls_on() -> None:
    """As the README says: ``tls:`` with only comments under it is null in YAML."""
    text = """
destinations:
  pacs:
    type: dicom
    ae_title: PACS
    host: pacs.example
    port: 104
    tls:
      # ca_file: /etc/dicomnode/tls/hospital-ca.pem
  ris: {type: hl7, host: ris.example, port: 2575, tls: {}}
ingress:
  tls:
"""
    settings = parse_config(yaml.safe_load(text))
    assert settings.ingress.tls is None
    pacs, ris = settings.destinations["pacs"], settings.destinations["ris"]
    assert pacs.type == "dicom" and pacs.tls is None
    assert ris.type == "hl7" and ris.tls is not None
    assert ris.tls.ca_file is None and ris.tls.check_hostname
    assert ris.tls.hostname_for(ris.host) == "ris.example"


@pytest.mark.parametrize(
    ("tls", "words"),
    [
        ({"certificate": "CLIENT"}, "give both or neither"),
        ({"ca_file": "/nonexistent/ca.pem"}, "cannot read /nonexistent/ca.pem"),
        ({"certificate": "CLIENT", "private_key": "SERVERKEY"}, "cannot load the certificate"),
        ({"server_hostname": ""}, "at least 1 character"),
    ],
)
def test_destination_tls_errors_name_the_destination(pki: PKI, tls, words: str) -> None:
    paths = {"CLIENT": str(pki.client.cert), "SERVERKEY": str(pki.server.key)}
    tls = {key: paths.get(value, value) for key, value in tls.items()}
    found = one_problem(
        {
            "destinations": {
                "pacs": {"type": "dicom", "ae_title": "PACS", "host": "h", "port": 104, "tls": tls}
            }
        }
    )
    assert found.startswith("destinations.pacs.dicom.tls"), found
    assert words in found, found


def test_config_check_reports_an_unreadable_key(pki: PKI, tmp_path: Path, capsys) -> None:
    key = tmp_path / "node.key"
    key.write_bytes(pki.server.key.read_bytes())
    key.chmod(0)
    config = tmp_path / "node.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "ingress": {"allow_any": True, "tls": server_tls(pki, private_key=str(key))},
            }
        ),
        encoding="utf-8",
    )
    try:
        readable = key.open("rb")
    except PermissionError:
        pass
    else:  # running as root: every file is readable; remove it instead
        readable.close()
        key.unlink()
    assert main(["config", "check", str(config)]) == 1
    err = capsys.readouterr().err
    assert f"ingress.tls.private_key: Value error, cannot read {key}" in err, err
