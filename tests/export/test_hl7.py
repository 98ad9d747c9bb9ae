"""HL7 over MLLP: ORU^R01 messages (built by :mod:`dicomnode.results.oru`)
delivered to hl7apy's MLLP server acting as the RIS on loopback, ACKs read
and classified."""

from __future__ import annotations

import socket
import time

import pytest

from dicomnode.errors import (
    ExportError,
    HL7ConnectionError,
    HL7Error,
    HL7NackError,
    HL7TimeoutError,
)
from dicomnode.export.hl7 import (
    AckResult,
    classify,
    deliver,
    message_control_id,
    send_mllp,
)
from tests.export.mllp_ris import running_ris
from tests.export.mllp_ris import unescape as reference_unescape
from tests.results.oru_messages import NASTY_NAME, make_patient, oru, segments, strict


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- delivery over MLLP -------------------------------------------------------------------


def test_aa_is_delivered_and_the_ris_got_exactly_that_message() -> None:
    message = oru()
    with running_ris("AA") as ris:
        ack = deliver(message, "127.0.0.1", ris.port, timeout=5)
        received = ris.messages()
    assert (ack.code, ack.control_id) == ("AA", "MSG-0001")
    assert received == [message]
    strict(received[0])


def test_ae_is_a_permanent_failure_with_its_reason() -> None:
    with running_ris("AE", reason="Unknown patient | PID-1") as ris:
        with pytest.raises(HL7NackError) as info:
            deliver(oru(), "127.0.0.1", ris.port, timeout=5)
    error = info.value
    assert error.permanent and error.code == "AE"
    assert error.reason == "Unknown patient | PID-1"
    assert "Unknown patient | PID-1" in str(error)
    assert isinstance(error, ExportError)


def test_ar_is_retryable_and_the_retry_sends_the_same_message() -> None:
    message = oru()
    with running_ris("AR", reason="busy") as ris:
        for _ in range(2):
            with pytest.raises(HL7NackError) as info:
                deliver(message, "127.0.0.1", ris.port, timeout=5)
            assert not info.value.permanent and info.value.code == "AR"
        received = ris.messages()
    assert received == [message, message]
    assert {message_control_id(m) for m in received} == {"MSG-0001"}


def test_wrong_control_id_is_retryable() -> None:
    with running_ris("wrong-id") as ris:
        with pytest.raises(HL7NackError) as info:
            deliver(oru(), "127.0.0.1", ris.port, timeout=5)
    assert not info.value.permanent
    assert info.value.code == "AA" and info.value.control_id == "NOT-MSG-0001"


def test_no_answer_times_out_within_the_deadline() -> None:
    timeout = 1.0
    with running_ris("none") as ris:
        started = time.monotonic()
        with pytest.raises(HL7TimeoutError) as info:
            send_mllp(oru(), "127.0.0.1", ris.port, timeout=timeout)
        elapsed = time.monotonic() - started
        assert len(ris.messages()) == 1
    assert not info.value.permanent
    assert timeout - 0.05 <= elapsed < timeout + 1.0


def test_a_trickling_peer_cannot_stretch_the_deadline() -> None:
    """A peer sending one byte at a time (never an end block) still hits the deadline."""
    import threading

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    stop = threading.Event()

    def trickle() -> None:
        conn, _ = server.accept()
        with conn:
            conn.sendall(b"\x0bMSH|")
            while not stop.wait(0.2):
                try:
                    conn.sendall(b"x")
                except OSError:
                    return

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        started = time.monotonic()
        with pytest.raises(HL7TimeoutError):
            send_mllp(oru(), "127.0.0.1", port, timeout=1.0)
        assert time.monotonic() - started < 2.0
    finally:
        stop.set()
        server.close()
        thread.join(2)


def test_connection_refused_is_retryable() -> None:
    with pytest.raises(HL7ConnectionError) as info:
        send_mllp(oru(), "127.0.0.1", _free_port(), timeout=2)
    assert not info.value.permanent and isinstance(info.value, HL7Error)


def test_delimiters_and_non_ascii_arrive_intact_at_the_ris() -> None:
    name = f"{NASTY_NAME}^Müller"  # family, given, middle
    message = oru(patient=make_patient(patient_name=name))
    with running_ris("AA") as ris:
        deliver(message, "127.0.0.1", ris.port, timeout=5)
        received = ris.messages()
    assert received == [message]
    parsed = strict(received[0])
    pid_5 = parsed.oru_r01_patient_result.oru_r01_patient.pid.pid_5
    components = [reference_unescape(c.to_er7()) for c in (pid_5.xpn_1, pid_5.xpn_2, pid_5.xpn_3)]
    assert "^".join(components) == name.replace("\r", " ")
    assert components == ["O'Brien|X", "Y&Z~W\\V Jr", "Müller"]
    assert len(received[0].split("\r")) == len(message.split("\r")) == 15
    assert len(segments(received[0], "PID")[0]) == 9


def test_classify() -> None:
    assert classify(AckResult("CA", "X", ""), "X").code == "CA"
    for code, permanent in (("CE", True), ("CR", False), ("", False), ("ZZ", False)):
        with pytest.raises(HL7NackError) as info:
            classify(AckResult(code, "X", "why"), "X")
        assert info.value.permanent is permanent
    with pytest.raises(HL7NackError) as info:
        classify(AckResult("AE", "Y", "why"), "X")
    assert not info.value.permanent  # an ACK for another message says nothing about ours


def test_ack_parsing_is_tolerant() -> None:
    from dicomnode.export.hl7 import parse_ack

    ack = parse_ack("MSH|^~\\&|RIS|H|||20240101||ACK|9|P|2.3\nMSA|AE|C7|Bad \\F\\ field\n")
    assert (ack.code, ack.control_id, ack.text) == ("AE", "C7", "Bad | field")
    ack = parse_ack("MSH|^~\\&|RIS\rMSA|AR|C7\rERR|||207^Busy^HL70357|E\r")
    assert (ack.code, ack.text) == ("AR", "Busy")
    with pytest.raises(HL7Error) as info:
        parse_ack("MSH|^~\\&|RIS\r")
    assert not info.value.permanent
