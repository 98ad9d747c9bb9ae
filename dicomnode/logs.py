"""Log lines that values from the wire cannot forge.

A sender controls UIDs, AE titles and element values; a newline among them,
logged raw, starts a line of its own that reads like one the node wrote. Two
defences: :func:`escape` for the values the node itself puts in a message, and
:class:`SafeFormatter` on every handler the CLI installs, which escapes control
characters in every message, from any logger (pynetdicom's and pydicom's
included), and marks each line of a traceback so no line of one can pass for a
record.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

#: Longest value :func:`escape` keeps, in characters.
MAX_VALUE = 128
#: What starts each continuation line of a traceback or stack in the log.
CONTINUATION = "    | "
_CONTROL = {code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F)}
_CONTROL.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})
#: C1 controls and the Unicode line and paragraph separators end lines too.
_CONTROL.update({code: f"\\x{code:02x}" for code in range(0x80, 0xA0)})
_CONTROL.update({0x2028: "\\u2028", 0x2029: "\\u2029"})
#: In a value, a backslash is escaped too, so an escape in it cannot be mistaken.
_VALUE = {**_CONTROL, ord("\\"): "\\\\"}


def escape(value: object, limit: int = MAX_VALUE) -> str:
    """``value`` as text safe on one log line.

    Control characters, backslashes and line separators become escapes
    (``\\n``, ``\\x1b``); a value longer than ``limit`` is cut and says so.

    Parameters
    ----------
    value : object
        A value from the wire (decoded or raw bytes).
    limit : int
        The most characters kept.

    Returns
    -------
    str
        The escaped text.
    """
    if isinstance(value, bytes | bytearray | memoryview):
        text = bytes(value).decode("latin-1")
    else:
        text = str(value)
    more = len(text) - limit
    if more > 0:
        text = text[:limit]
    escaped = text.translate(_VALUE)
    return f"{escaped}...({more} more)" if more > 0 else escaped


def _escape_text(text: str) -> str:
    return text.translate(_CONTROL)


class SafeFormatter(logging.Formatter):
    """A formatter whose every record is one line, plus marked traceback lines.

    The message (after ``%`` substitution) has its control characters escaped;
    the lines of an exception's traceback or a stack follow, each starting with
    :data:`CONTINUATION`, themselves escaped.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = _escape_text(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: object) -> str:
        return self._continuation(super().formatException(ei))  # type: ignore[arg-type]

    def formatStack(self, stack_info: str) -> str:
        return self._continuation(super().formatStack(stack_info))

    @staticmethod
    def _continuation(text: str) -> str:
        return "\n".join(CONTINUATION + _escape_text(line) for line in text.splitlines())


#: The ``extra=`` keys of the node's records that JSON lines carry as fields.
CONTEXT_FIELDS = ("study_uid", "job_id")


class JsonFormatter(SafeFormatter):
    """One JSON object per line, for log collectors.

    Fields: ``time`` (ISO 8601, UTC, milliseconds), ``level``, ``process``,
    ``logger``, ``message``, the context the record carries (``study_uid``,
    ``job_id``) and, with an exception, ``exception`` (its traceback). The
    message and the traceback are escaped as :class:`SafeFormatter` escapes
    them (the traceback's lines marked with :data:`CONTINUATION`, joined by a
    newline that JSON writes as ``\\n``), and the object is written with
    ``ensure_ascii``, so a line holds no raw control character or line
    separator whatever a sender sent. Only the record's own message goes out:
    the node keeps patient data out of its messages, and no field is added
    from the datasets.
    """

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        record.message = _escape_text(record.getMessage())
        document: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "process": record.processName,
            "logger": record.name,
            "message": record.message,
        }
        for name in CONTEXT_FIELDS:
            value = record.__dict__.get(name)
            if isinstance(value, int | float | bool):
                document[name] = value
            elif value is not None:
                document[name] = escape(value)
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            document["stack"] = self.formatStack(record.stack_info)
        return json.dumps(document, ensure_ascii=True)


#: The text format of the console log.
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(processName)s %(name)s: %(message)s"


def formatter(style: str) -> logging.Formatter:
    """The formatter of ``logging.format``: ``json`` (:class:`JsonFormatter`)
    or ``text`` (:class:`SafeFormatter` with :data:`TEXT_FORMAT`)."""
    if style == "json":
        return JsonFormatter()
    return SafeFormatter(TEXT_FORMAT)


class PeerNoiseFilter(logging.Filter):
    """One line, not five, when pynetdicom refuses what a peer sent.

    pynetdicom logs a message it cannot decode three times (the value's
    validation error, "Received an invalid DIMSE message", then the exception
    with its traceback). Outside DEBUG this keeps one line: the exception's
    message, without the traceback (it is about the peer's data, not a fault
    of the node). Install it on a handler: records of child loggers do not
    pass through a logger's own filters.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Drop or trim a pynetdicom record; pass the others unchanged."""
        if not record.name.startswith("pynetdicom"):
            return True
        if record.getMessage() == "Received an invalid DIMSE message":
            return False
        if record.exc_info is not None:
            record.exc_info = None
            record.exc_text = None
        return True
