"""What the listener accepts: every storage SOP class, the usual transfer syntaxes."""

from __future__ import annotations

from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    JPEG2000MC,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEG2000MCLossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import build_context
from pynetdicom.presentation import AllStoragePresentationContexts, PresentationContext
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

#: Accepted as received, never transcoded by the node. pynetdicom picks, for
#: each proposed context, the first syntax of this list the sender offers, so
#: the order is the node's preference: uncompressed first (no sender is asked
#: to compress, every decoder reads it), then lossless compression, then the
#: rest, lossy last (a sender is never asked to compress lossily). A sender
#: that offers only its file's syntax (a PACS that cannot transcode) gets it.
TRANSFER_SYNTAXES: tuple[str, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGLSLossless,
    JPEG2000Lossless,
    JPEG2000MCLossless,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    RLELossless,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSNearLossless,
    JPEG2000,
    JPEG2000MC,
    HTJ2K,
)


class SupportedContext(PresentationContext):
    """A supported presentation context that is cheap to copy.

    pynetdicom deep-copies the listener's contexts for every association it
    accepts. A plain deep copy re-validates each UID (some 3,000 of them here),
    which cost about 25 ms per association, more than the rest of accepting it.
    UIDs are immutable strings, so the copy shares them and copies only the
    lists, which negotiation must not change in the listener's own contexts.
    """

    def __deepcopy__(self, memo: dict[int, object]) -> SupportedContext:
        clone = type(self).__new__(type(self))
        clone.__dict__.update(
            {name: list(v) if isinstance(v, list) else v for name, v in vars(self).items()}
        )
        return clone


def _context(abstract_syntax: str, transfer_syntaxes: list[str]) -> SupportedContext:
    built = build_context(abstract_syntax, transfer_syntaxes)
    context = SupportedContext()
    context.abstract_syntax = built.abstract_syntax
    context.transfer_syntax = list[str | bytes | UID](built.transfer_syntax)
    return context


def supported_contexts() -> list[PresentationContext]:
    """Verification plus every storage SOP class, each with :data:`TRANSFER_SYNTAXES`."""
    contexts: list[PresentationContext] = [
        _context(Verification, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    ]
    for storage in AllStoragePresentationContexts:
        assert storage.abstract_syntax is not None
        contexts.append(_context(storage.abstract_syntax, list(TRANSFER_SYNTAXES)))
    return contexts
