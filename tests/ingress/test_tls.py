"""DICOM over TLS into the node, against DCMTK's TLS tools and raw TLS sockets.

The node's certificate, the senders' and a second CA are made fresh by
``openssl`` for each module (tests/certs.py).
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from tests.certs import PKI, make_pki
from tests.helpers import (
    NODE_AET,
    PEER_ENV,
    SCANNER_AET,
    echo,
    free_port,
    node_config,
    require_tool,
    store_statuses,
    storescu,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.peers

#: An A-ASSOCIATE-RQ header announcing a 4 GiB body.
HUGE_RQ_HEADER = b"\x01\x00\xff\xff\xff\xff"
#: A-ABORT from the service provider: invalid PDU parameter value (PS3.8 9.3.8).
ABORT_INVALID_PARAMETER = b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x06"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_section(pki: PKI, **extra: Any) -> dict[str, Any]:
    return {
        "tls": {
            "certificate": str(pki.server.cert),
            "private_key": str(pki.server.key),
            **extra,
        }
    }


def dcmtk_tls(pki: PKI, *, cert: bool = True) -> list[str]:
    """DCMTK client options: our client certificate (or anonymous TLS), trusting the CA."""
    own = ["+tls", str(pki.client.key), str(pki.client.cert)] if cert else ["+tla"]
    return [*own, "+cf", str(pki.ca)]


def tls_echo(port: int, options: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            require_tool("echoscu"),
            "-v",
            *options,
            "-aet",
            SCANNER_AET,
            "-aec",
            NODE_AET,
            "127.0.0.1",
            str(port),
        ],
        capture_output=True,
        text=True,
        env=PEER_ENV,
        timeout=60,
        check=False,
    )


def spool_files(settings: Any) -> list[Path]:
    return sorted((settings.storage.spool_path / "studies").rglob("*.dcm"))


def client_context(pki: PKI, *, cert: bool = True) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca))
    if cert:
        context.load_cert_chain(pki.client.cert, pki.client.key)
    return context


def test_storescu_over_tls_stores_into_the_node_beside_the_plain_port(
    make_settings, start_node, ct_series, pki
) -> None:
    tls_port = free_port()
    settings = make_settings(
        ingress=tls_section(pki, port=tls_port, require_client_cert=True, ca_file=str(pki.ca))
    )
    node = start_node(settings)
    assert node.ingress.tls_port == tls_port
    series = ct_series(slices=8, size=32)

    result = storescu(series.paths, tls_port, extra=dcmtk_tls(pki))
    assert result.returncode == 0, result.stderr
    assert store_statuses(result.stderr) == ["Success"] * 8
    assert sorted(p.stem for p in spool_files(settings)) == sorted(series.sop_uids)
    assert tls_echo(tls_port, dcmtk_tls(pki)).returncode == 0
    # the node's port still speaks plain TCP
    assert echo(settings.node.port)


def test_a_sender_without_an_accepted_certificate_is_refused(
    make_settings, start_node, ct_series, pki, caplog
) -> None:
    settings = make_settings(
        ingress=tls_section(pki, require_client_cert=True, ca_file=str(pki.ca))
    )
    start_node(settings)
    port = settings.node.port
    series = ct_series(slices=2, size=32)

    anonymous = storescu(series.paths, port, extra=dcmtk_tls(pki, cert=False), timeout=60)
    assert anonymous.returncode != 0
    assert store_statuses(anonymous.stderr) == []
    stranger = storescu(
        series.paths,
        port,
        extra=["+tls", str(pki.stranger.key), str(pki.stranger.cert), "+cf", str(pki.ca)],
        timeout=60,
    )
    assert stranger.returncode != 0
    assert store_statuses(stranger.stderr) == []
    assert spool_files(settings) == []
    refusals = [r.getMessage() for r in caplog.records if "TLS handshake" in r.getMessage()]
    assert len(refusals) == 2, refusals
    assert all("CERTIFICATE" in line for line in refusals), refusals
    # and the one with the CA's certificate gets in
    assert tls_echo(port, dcmtk_tls(pki)).returncode == 0


def test_without_client_certificates_anonymous_tls_gets_in(
    make_settings, start_node, ct_series, pki
) -> None:
    settings = make_settings(ingress=tls_section(pki))
    start_node(settings)
    series = ct_series(slices=2, size=32)
    result = storescu(series.paths, settings.node.port, extra=dcmtk_tls(pki, cert=False))
    assert result.returncode == 0, result.stderr
    assert store_statuses(result.stderr) == ["Success"] * 2


def test_plain_tcp_to_the_tls_port_is_refused(make_settings, start_node, ct_series, pki) -> None:
    settings = make_settings(ingress=tls_section(pki))
    start_node(settings)
    port = settings.node.port
    series = ct_series(slices=2, size=32)

    assert not echo(port)
    plain = storescu(series.paths, port, timeout=60)
    assert plain.returncode != 0
    assert store_statuses(plain.stderr) == []
    assert spool_files(settings) == []
    # the listener is still there for TLS senders
    assert tls_echo(port, dcmtk_tls(pki)).returncode == 0


def offers_only(version: ssl.TLSVersion) -> ssl.SSLContext:
    """A client context that offers exactly ``version`` (old versions need
    OpenSSL's security level 0 to be offered at all)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    context.minimum_version = version
    context.maximum_version = version
    return context


def accepts_only(pki: PKI, version: ssl.TLSVersion) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    context.minimum_version = version
    context.maximum_version = version
    context.load_cert_chain(pki.server.cert, pki.server.key)
    return context


def handshake(context: ssl.SSLContext, port: int) -> str:
    """The TLS version negotiated with 127.0.0.1:port; raises when refused."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            return str(tls.version())


def control_handshake(pki: PKI, version: ssl.TLSVersion) -> str:
    """Handshake ``offers_only(version)`` with a server that accepts it:
    proves the client side really offers that version on this machine."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    errors: list[BaseException] = []

    def serve() -> None:
        conn, _ = server.accept()
        try:
            with accepts_only(pki, version).wrap_socket(conn, server_side=True):
                pass
        except (OSError, ssl.SSLError) as exc:
            errors.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        return handshake(offers_only(version), port)
    finally:
        thread.join(10)
        server.close()


VERSION_NAMES = {
    ssl.TLSVersion.TLSv1_1: "TLSv1.1",
    ssl.TLSVersion.TLSv1_2: "TLSv1.2",
    ssl.TLSVersion.TLSv1_3: "TLSv1.3",
}


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
@pytest.mark.parametrize(
    ("min_version", "refused", "accepted"),
    [
        ("1.2", ssl.TLSVersion.TLSv1_1, ssl.TLSVersion.TLSv1_2),
        ("1.3", ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3),
    ],
)
def test_tls_versions_below_the_minimum_are_refused(
    make_settings, start_node, pki, min_version, refused, accepted
) -> None:
    settings = make_settings(ingress=tls_section(pki, min_version=min_version))
    start_node(settings)
    port = settings.node.port
    try:
        offered = control_handshake(pki, refused)
    except ssl.SSLError as exc:
        pytest.skip(f"this machine's OpenSSL cannot offer {refused.name} at all: {exc}")
    assert offered == VERSION_NAMES[refused]
    with pytest.raises(ssl.SSLError):
        handshake(offers_only(refused), port)
    assert handshake(offers_only(accepted), port) == VERSION_NAMES[accepted]


@pytest.mark.parametrize(
    "profile", ["+py", "+px", "+pz"], ids=["bcp195-nd", "bcp195", "bcp195-extended"]
)
def test_dcmtk_bcp195_profiles_are_accepted(make_settings, start_node, pki, profile) -> None:
    settings = make_settings(ingress=tls_section(pki))
    start_node(settings)
    result = tls_echo(settings.node.port, [*dcmtk_tls(pki), profile])
    assert result.returncode == 0, result.stderr


def test_the_dicom_tools_negotiate_tls_1_3_when_the_node_asks_for_it(
    make_settings, start_node, pki
) -> None:
    settings = make_settings(ingress=tls_section(pki, min_version="1.3"))
    start_node(settings)
    result = tls_echo(settings.node.port, dcmtk_tls(pki))
    assert result.returncode == 0, result.stderr


@pytest.fixture
def sockets() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


def test_silent_connections_to_the_tls_port_neither_block_others_nor_stay(
    make_settings, start_node, pki, sockets
) -> None:
    """A peer that connects and never starts the TLS handshake must not stop
    the listener from accepting others (pynetdicom on its own runs the
    handshake in its accepting thread, without a timeout), and is closed at
    the association deadline."""
    settings = make_settings(
        ingress={**tls_section(pki), "association_deadline": 2, "max_connections_per_address": 8}
    )
    start_node(settings)
    port = settings.node.port
    silent = [
        sockets.enter_context(socket.create_connection(("127.0.0.1", port), timeout=10))
        for _ in range(4)
    ]
    opened = time.monotonic()
    started = time.monotonic()
    result = tls_echo(port, [*dcmtk_tls(pki), "-to", "5"])
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 2, "the echo waited behind the silent connections"
    for sock in silent:
        sock.settimeout(10)
        assert sock.recv(1) == b""  # closed by the node
    assert time.monotonic() - opened >= 1.9


def test_pdu_header_checks_hold_inside_tls(make_settings, start_node, pki) -> None:
    settings = make_settings(ingress=tls_section(pki))
    start_node(settings)
    context = client_context(pki, cert=False)
    with socket.create_connection(("127.0.0.1", settings.node.port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(HUGE_RQ_HEADER)
            received = b""
            while True:
                try:
                    chunk = tls.recv(4096)
                except (ConnectionResetError, ssl.SSLError):
                    break
                if not chunk:
                    break
                received += chunk
    assert received == ABORT_INVALID_PARAMETER


def test_tcp_nodelay_is_set_on_tls_connections(make_settings, start_node, pki) -> None:
    tls_port = free_port()
    settings = make_settings(ingress=tls_section(pki, port=tls_port))
    node = start_node(settings)
    ae = AE(ae_title=SCANNER_AET)
    ae.add_requested_context(Verification)
    assoc = ae.associate(
        "127.0.0.1",
        tls_port,
        ae_title=NODE_AET,
        tls_args=(client_context(pki, cert=False), "localhost"),
    )
    assert assoc.is_established
    try:
        server = node.ingress._servers[1]
        (accepted,) = wait_for(lambda: server.active_associations, 10, "the association")
        sock = accepted.dul.socket.socket
        assert isinstance(sock, ssl.SSLSocket)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert assoc.send_c_echo().Status == 0
    finally:
        assoc.release()


@pytest.mark.slow
def test_two_receiving_processes_serve_both_ports(node_process, ct_series, pki, tmp_path) -> None:
    tls_port = free_port()
    config = node_config(tmp_path, ingress={"processes": 2, **tls_section(pki, port=tls_port)})
    node = node_process(config)  # waits for C-ECHO on the plain port
    series = ct_series(slices=4, size=32)
    result = storescu(series.paths, tls_port, extra=dcmtk_tls(pki))
    assert result.returncode == 0, result.stderr + node.log()
    assert store_statuses(result.stderr) == ["Success"] * 4
    assert "(DICOM over TLS)" in node.log()


@pytest.mark.parametrize("processes", [1, 2])
def test_a_taken_tls_port_is_named_with_what_to_look_for(tmp_path, pki, processes: int) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        tls_port = holder.getsockname()[1]
        config = node_config(
            tmp_path, ingress={"processes": processes, **tls_section(pki, port=tls_port)}
        )
        path = write_config(tmp_path / "node.yaml", config)
        result = subprocess.run(
            [sys.executable, "-m", "dicomnode", "serve", "-c", str(path)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert result.returncode == 1, result.stderr
    assert f"cannot listen on 127.0.0.1:{tls_port}" in result.stderr
    assert "`ss -ltnp` names it" in result.stderr
