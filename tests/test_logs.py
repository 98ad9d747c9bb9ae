"""One record, one line: what the node's log handlers do to wire values."""

from __future__ import annotations

import io
import logging

from dicomnode.logs import CONTINUATION, PeerNoiseFilter, SafeFormatter, escape


def emit(logger_name: str, *records: tuple[str, tuple[object, ...], bool]) -> list[str]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(SafeFormatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(PeerNoiseFilter())
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    logger.propagate = False
    try:
        for message, args, with_exc in records:
            if with_exc:
                try:
                    raise ValueError("bad\nvalue")
                except ValueError:
                    logger.exception(message, *args)
            else:
                logger.warning(message, *args)
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    return stream.getvalue().splitlines()


def test_escape_keeps_a_value_on_one_line_and_bounded() -> None:
    assert escape("1.2\n3\r\x1b[31m\u2028\\") == "1.2\\n3\\r\\x1b[31m\\u2028\\\\"
    assert escape(b"A\x00B") == "A\\x00B"
    assert escape("9" * 200, limit=10) == "9" * 10 + "...(190 more)"


def test_a_newline_in_any_logger_s_message_stays_escaped() -> None:
    lines = emit("some.library", ("value %s", ("1.2\nFORGED LINE",), False))
    assert lines == ["WARNING some.library: value 1.2\\nFORGED LINE"]


def test_traceback_lines_are_marked() -> None:
    lines = emit("dicomnode.test", ("failed", (), True))
    assert lines[0] == "ERROR dicomnode.test: failed"
    assert all(line.startswith(CONTINUATION) for line in lines[1:])
    # the message's own newline splits it too, but the part after it is marked
    assert lines[-2:] == [CONTINUATION + "ValueError: bad", CONTINUATION + "value"]


def test_pynetdicom_s_refusal_of_a_message_is_one_line() -> None:
    lines = emit(
        "pynetdicom.dimse",
        ("Received an invalid DIMSE message", (), False),
        ("Invalid 'Affected SOP Instance UID' value", (), True),
    )
    assert lines == ["ERROR pynetdicom.dimse: Invalid 'Affected SOP Instance UID' value"]


def test_json_lines_are_one_object_each_with_the_wire_value_escaped() -> None:
    """``logging.format: json``: a sender's newline, line separator or escape
    sequence, in the message or a traceback, leaves one parseable line per
    record whose message reads as the text line's would."""
    import json

    from dicomnode.logs import JsonFormatter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("tests.json")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("from %s", "EVIL\nINFO forged\u2028\x1b[31m", extra={"job_id": 7})
        try:
            raise ValueError("bad\nvalue")
        except ValueError:
            logger.exception("failed", extra={"study_uid": "1.2\n3"})
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["message"] == "from EVIL\\nINFO forged\\u2028\\x1b[31m"
    assert (first["level"], first["logger"], first["job_id"]) == ("WARNING", "tests.json", 7)
    assert second["study_uid"] == "1.2\\n3"
    assert all(line.startswith(CONTINUATION) for line in second["exception"].split("\n"))
    # as in a text line: the exception's own newline starts a marked line
    assert second["exception"].endswith("ValueError: bad\n" + CONTINUATION + "value")
    assert all(ch.isascii() and ch.isprintable() for ch in stream.getvalue().replace("\n", ""))
