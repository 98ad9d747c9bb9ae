"""The listener's presentation contexts."""

from __future__ import annotations

import copy

from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, JPEG2000Lossless

from dicomnode.ingress.contexts import TRANSFER_SYNTAXES, SupportedContext, supported_contexts


def test_every_storage_class_with_every_syntax_and_verification() -> None:
    contexts = {c.abstract_syntax: c for c in supported_contexts()}
    assert "1.2.840.10008.1.1" in contexts  # Verification
    assert contexts[CTImageStorage].transfer_syntax == list(TRANSFER_SYNTAXES)
    assert len(contexts) > 100
    assert all(isinstance(c, SupportedContext) for c in contexts.values())


def test_a_copy_for_one_association_leaves_the_listener_s_contexts_alone() -> None:
    contexts = supported_contexts()
    ct = next(c for c in contexts if c.abstract_syntax == CTImageStorage)
    copies = copy.deepcopy(contexts)
    clone = next(c for c in copies if c.abstract_syntax == CTImageStorage)
    assert clone is not ct and type(clone) is SupportedContext
    assert (clone.abstract_syntax, clone.transfer_syntax) == (
        ct.abstract_syntax,
        ct.transfer_syntax,
    )
    # what negotiation does to an association's copy
    clone.transfer_syntax.append(JPEG2000Lossless)  # in place, on the copy's list
    clone.context_id = 7
    clone.result = 0
    clone.transfer_syntax = [JPEG2000Lossless]
    clone.scp_role = True
    clone.scu_role = False
    assert ct.context_id is None and ct.result is None
    assert (ct.scp_role, ct.scu_role) == (None, None)
    assert ct.transfer_syntax == list(TRANSFER_SYNTAXES)
    assert ct.transfer_syntax[0] == ExplicitVRLittleEndian
