"""The node as a TLS client: C-STORE to a TLS-enabled DCMTK storescp, the
ORU over MLLP to a TLS-wrapped RIS, and ``dicomnode send --tls``.

Certificates are made fresh by ``openssl`` for each module (tests/certs.py).
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pydicom
import pytest

from dicomnode.config import ClientTLSConfig
from dicomnode.errors import HL7ConnectionError, SendError
from dicomnode.export import SendReport, collect_files, send_files
from dicomnode.export.hl7 import deliver
from dicomnode.export.storescu import MAX_CONTEXTS
from dicomnode.jobs import JobState
from tests.certs import PKI, Pair, make_pki
from tests.conftest import open_store
from tests.export.mllp_ris import running_ris
from tests.export.test_faults import dicom_destination, hl7_destination, sections, wait_settled
from tests.export.test_storescu import by_sop_uid, many_classes
from tests.helpers import NODE_AET, PEER_ENV, free_port, require_tool, storescu, wait_for
from tests.results.oru_messages import oru

pytestmark = pytest.mark.peers


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


class TLSStoreSCP:
    """DCMTK storescp speaking DICOM over TLS on a free port."""

    def __init__(self, folder: Path, pki: PKI, own: Pair, extra: Sequence[str]) -> None:
        self.out = folder / "received"
        self.out.mkdir(parents=True)
        self.port = free_port()
        self.log_path = folder / "storescp.log"
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                require_tool("storescp"),
                "-v",
                "+tls",
                str(own.key),
                str(own.cert),
                "+cf",
                str(pki.ca),
                *extra,
                "-od",
                str(self.out),
                str(self.port),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=PEER_ENV,
        )
        log.close()
        wait_for(self._listening, 20, "storescp to listen", interval=0.1)

    def _listening(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(self.log())
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def received(self) -> list[Path]:
        return sorted(self.out.iterdir())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


@pytest.fixture
def tls_storescp(tmp_path: Path, pki: PKI) -> Iterator[Any]:
    started: list[TLSStoreSCP] = []

    def start(own: Pair | None = None, extra: Sequence[str] = ()) -> TLSStoreSCP:
        scp = TLSStoreSCP(tmp_path / f"scp{len(started)}", pki, own or pki.server, extra)
        started.append(scp)
        return scp

    yield start
    for scp in started:
        scp.stop()


def client_tls(pki: PKI, **fields: Any) -> ClientTLSConfig:
    values: dict[str, Any] = {
        "ca_file": pki.ca,
        "certificate": pki.client.cert,
        "private_key": pki.client.key,
        **fields,
    }
    return ClientTLSConfig(**{k: v for k, v in values.items() if v is not None})


def send(files: list[Path], port: int, config: ClientTLSConfig) -> SendReport:
    report = SendReport()
    outgoing = collect_files(files, report)
    return send_files(
        outgoing,
        "127.0.0.1",
        port,
        "STORESCP",
        "DICOMNODE",
        report=report,
        timeout=10,
        tls=(config.context(), config.hostname_for("127.0.0.1")),
    )


def test_send_files_over_tls_to_storescp(tls_storescp, pki, ct_series) -> None:
    scp = tls_storescp()
    series = ct_series(slices=4, size=32)
    report = send(series.paths, scp.port, client_tls(pki))
    assert report.failed == [], scp.log()
    assert sorted(report.sent) == sorted(series.paths)
    received = {pydicom.dcmread(p).SOPInstanceUID for p in scp.received()}
    assert received == set(series.sop_uids)


@pytest.mark.parametrize(
    "case",
    ["no client certificate", "peer from another CA", "peer certificate for another name"],
)
def test_send_refuses_or_is_refused_without_the_right_certificates(
    tls_storescp, pki, ct_series, case
) -> None:
    series = ct_series(slices=1, size=32)
    if case == "no client certificate":
        scp = tls_storescp()  # requires the peer's certificate (storescp's default)
        config = client_tls(pki, certificate=None, private_key=None)
    elif case == "peer from another CA":
        scp = tls_storescp()
        config = client_tls(pki, ca_file=pki.other_ca)
    else:
        scp = tls_storescp(own=pki.wrong_name)
        config = client_tls(pki)
    with pytest.raises(SendError, match="over TLS could not be established"):
        send(series.paths, scp.port, config)
    assert scp.received() == []


def test_the_hostname_check_can_be_turned_off_but_not_the_chain_check(
    tls_storescp, pki, ct_series
) -> None:
    series = ct_series(slices=1, size=32)
    scp = tls_storescp(own=pki.wrong_name)
    report = send(series.paths, scp.port, client_tls(pki, check_hostname=False))
    assert report.failed == [] and len(scp.received()) == 1
    report = send(series.paths, scp.port, client_tls(pki, server_hostname="elsewhere.example"))
    assert report.failed == [] and len(scp.received()) == 1  # same SOP instance again
    with pytest.raises(SendError):
        send(series.paths, scp.port, client_tls(pki, check_hostname=False, ca_file=pki.other_ca))


def test_every_association_of_a_send_over_128_contexts_speaks_tls(
    make_settings, start_node, pki, tmp_path
) -> None:
    tls = {"certificate": str(pki.server.cert), "private_key": str(pki.server.key)}
    settings = make_settings(ingress={"tls": tls})  # node.port speaks TLS only
    start_node(settings)
    paths = many_classes(tmp_path / "many", MAX_CONTEXTS + 2)
    report = SendReport()
    config = client_tls(pki, certificate=None, private_key=None)
    send_files(
        collect_files(paths, report),
        "127.0.0.1",
        settings.node.port,
        NODE_AET,
        "STORESCU",
        report=report,
        timeout=10,
        tls=(config.context(), "127.0.0.1"),
    )
    assert report.failed == []
    assert sorted(report.sent) == sorted(paths)
    stored = by_sop_uid((settings.storage.spool_path / "studies").rglob("*.dcm"))
    assert sorted(stored) == sorted(by_sop_uid(iter(paths)))


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicomnode", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_dicomnode_send_tls_options(tls_storescp, pki, ct_series) -> None:
    scp = tls_storescp()
    series = ct_series(slices=3, size=32)
    target = ["--to", f"127.0.0.1:{scp.port}", "--aet", "STORESCP", "-q"]
    plain = run_cli("send", *map(str, series.paths), *target, "--timeout", "5")
    assert plain.returncode != 0
    assert scp.received() == []

    result = run_cli(
        "send",
        *map(str, series.paths),
        *target,
        "--tls",
        "--ca",
        str(pki.ca),
        "--cert",
        str(pki.client.cert),
        "--key",
        str(pki.client.key),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "sent 3, failed 0" in result.stdout
    assert len(scp.received()) == 3

    without = run_cli("send", str(series.paths[0]), *target, "--ca", str(pki.ca))
    assert without.returncode == 2
    assert "--ca: only with --tls" in without.stderr
    missing = run_cli("send", str(series.paths[0]), *target, "--tls", "--cert", str(pki.ca))
    assert missing.returncode == 2
    assert "--cert, --key: give both or neither" in missing.stderr
    unreadable = run_cli("send", str(series.paths[0]), *target, "--tls", "--ca", "/nonexistent")
    assert unreadable.returncode == 2
    assert "--ca: cannot read /nonexistent: No such file" in unreadable.stderr


def ris_context(pki: PKI, own: Pair | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    pair = own or pki.server
    context.load_cert_chain(pair.cert, pair.key)
    return context


def test_mllp_over_tls_is_delivered_and_acknowledged(pki) -> None:
    message = oru()
    config = ClientTLSConfig(ca_file=pki.ca)
    with running_ris("AA", ssl_context=ris_context(pki)) as ris:
        ack = deliver(
            message, "127.0.0.1", ris.port, timeout=5, tls=(config.context(), "127.0.0.1")
        )
        assert ack.code == "AA"
        assert ris.messages() == [message]


def test_mllp_over_tls_refuses_an_untrusted_receiver(pki) -> None:
    with running_ris("AA", ssl_context=ris_context(pki)) as ris:
        config = ClientTLSConfig(ca_file=pki.other_ca)
        with pytest.raises(HL7ConnectionError, match=r"TLS failed.*CERTIFICATE_VERIFY_FAILED"):
            deliver(oru(), "127.0.0.1", ris.port, timeout=5, tls=(config.context(), "127.0.0.1"))
        assert ris.messages() == []


@pytest.mark.slow
def test_the_node_delivers_seg_sr_and_oru_over_tls(
    make_settings, start_node, ct_series, pki, tls_storescp
) -> None:
    scp = tls_storescp()
    tls = {
        "ca_file": str(pki.ca),
        "certificate": str(pki.client.cert),
        "private_key": str(pki.client.key),
    }
    with running_ris("AA", ssl_context=ris_context(pki)) as ris:
        settings = make_settings(
            **sections(
                {
                    "pacs": {**dicom_destination("STORESCP", scp.port), "tls": tls},
                    "ris": {**hl7_destination(ris.port), "tls": {"ca_file": str(pki.ca)}},
                },
                ["pacs"],
                ["ris"],
            )
        )
        start_node(settings)
        series = ct_series(slices=24, size=64)
        assert storescu(series.paths, settings.node.port).returncode == 0
        store = open_store(settings)
        run = wait_settled(store, timeout=60)
        assert run.state == JobState.DONE, run.reason
        assert len(ris.messages()) == 1
    modalities = sorted(str(pydicom.dcmread(p).Modality) for p in scp.received())
    assert modalities == ["SEG", "SR"]
