"""Hypothesis strategies that break encoded datasets the way a broken or
hostile sender does: cut them, flip bytes, rewrite length fields and tags,
insert, delete and repeat ranges."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from hypothesis import strategies as st
from pydicom.uid import UID

from tests.fuzz.datasets import Seed, seeds

#: Values a 4-byte length field is most interesting at.
LENGTHS = st.one_of(
    st.sampled_from([0, 1, 2, 0xFFFFFFFF, 0xFFFFFFFE, 0x7FFFFFFF, 0x80000000]),
    st.integers(0, 0xFFFFFFFF),
    st.integers(0, 4096),
)
#: Tags with a meaning to the walk: item, delimiters, Pixel Data, a sequence.
TAGS = st.one_of(
    st.sampled_from([0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD, 0x7FE00010, 0x300A00B0, 0x0040A730]),
    st.integers(0, 0xFFFFFFFF),
)
VRS = st.sampled_from([b"SQ", b"UN", b"OB", b"OW", b"UT", b"LO", b"US", b"ui", b"\x00\x00"])


@st.composite
def mutation(draw: st.DrawFn, data: bytearray) -> str:
    """Apply one mutation to ``data`` in place; return its name."""
    size = len(data)
    kind = draw(
        st.sampled_from(
            ["truncate", "flip", "length", "tag", "vr", "insert", "delete", "repeat", "extend"]
        )
    )
    at = draw(st.integers(0, max(size - 1, 0)))
    if kind == "truncate":
        del data[at:]
    elif kind == "flip" and size:
        data[at] ^= draw(st.integers(1, 255))
    elif kind == "length" and size >= 4:
        at = min(at, size - 4)
        order = draw(st.sampled_from(["<", ">"]))
        data[at : at + 4] = struct.pack(order + "L", draw(LENGTHS))
    elif kind == "tag" and size >= 4:
        at = min(at, size - 4)
        group, element = divmod(draw(TAGS), 0x10000)
        data[at : at + 4] = struct.pack("<HH", group, element)
    elif kind == "vr" and size >= 2:
        at = min(at, size - 2)
        data[at : at + 2] = draw(VRS)
    elif kind == "insert":
        data[at:at] = draw(st.binary(min_size=1, max_size=64))
    elif kind == "delete":
        del data[at : at + draw(st.integers(1, 64))]
    elif kind == "repeat":
        end = min(size, at + draw(st.integers(1, 256)))
        data[end:end] = data[at:end]
    elif kind == "extend":
        data.extend(draw(st.binary(min_size=1, max_size=64)))
    return kind


#: Every transfer syntax a seed is in, for a sender that claims one and sends another.
SYNTAXES = sorted({seed.syntax for seed in seeds()})


@dataclass(frozen=True)
class Broken:
    """A seed broken by ``mutations``, claimed to be in ``syntax``."""

    seed: Seed
    syntax: str
    data: bytes
    mutations: tuple[str, ...]

    def __repr__(self) -> str:
        claimed = "" if self.syntax == self.seed.syntax else f" sent as {UID(self.syntax).name}"
        return f"Broken({self.seed!r}{claimed}, {'+'.join(self.mutations)}, {self.data!r})"


@st.composite
def broken_datasets(draw: st.DrawFn, max_mutations: int = 4) -> Broken:
    """A seed after one to ``max_mutations`` mutations; one in ten is claimed
    to be in another transfer syntax than it is encoded in."""
    seed = draw(st.sampled_from(seeds()))
    data = bytearray(seed.data)
    applied = [draw(mutation(data)) for _ in range(draw(st.integers(1, max_mutations)))]
    syntax = seed.syntax
    if draw(st.integers(0, 9)) == 0:
        syntax = draw(st.sampled_from(SYNTAXES))
        applied.append("syntax")
    return Broken(seed, syntax, bytes(data), tuple(applied))
