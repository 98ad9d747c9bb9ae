"""What the listener accepts: every storage SOP class, the usual transfer syntaxes."""

from __future__ import annotations

from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    JPEG2000MC,
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


def supported_contexts() -> list[PresentationContext]:
    """Verification plus every storage SOP class, each with :data:`TRANSFER_SYNTAXES`."""
    contexts = [build_context(Verification, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])]
    for storage in AllStoragePresentationContexts:
        assert storage.abstract_syntax is not None
        contexts.append(build_context(storage.abstract_syntax, list(TRANSFER_SYNTAXES)))
    return contexts
