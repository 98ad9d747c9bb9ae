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
