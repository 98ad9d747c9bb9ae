"""Hypothesis strategies for configuration documents: every key the schema
has, at any depth, with values of the right type, values at and past their
bounds, and values of any other type; plus keys the schema does not have."""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

from hypothesis import strategies as st
from pydantic import BaseModel

from dicomnode.config import Settings

#: Any YAML value: scalars of every type, lists and mappings of them.
JUNK: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["", " ", "yes", "NO", "~", "0x10", "1e309", "-0", "\n", "a\\b", "é"]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
#: Mapping keys where the schema takes names of the user's choosing: DICOM
#: keywords good and bad (a typo, a sequence, binary data), and any text.
FREE_KEYS = st.sampled_from(
    ["Modality", "SliceThickness", "StudyDescription", "Modalty", "PixelData",
     "ReferencedSeriesSequence", "pacs", "ris", "out", ""]
) | st.text(max_size=8)  # fmt: skip
#: Text in the shapes the schema's fields take: AE titles, addresses, URLs,
#: device names, regular expressions (broken ones too), module paths.
TEXT = st.sampled_from(
    ["DICOMNODE", "STORESCU", "A" * 17, "  ", "AE\\X", "127.0.0.1", "::1", "0.0.0.0", "300.1.1.1",
     "localhost", "sqlite:///x.db", "sqlite:///", "postgresql://h/db", "cpu", "cuda", "cuda:1",
     "auto", "tpu", "(?i)chest", "(", "[a-", "ct-lung", "cxr-classify", "qa-archive", "pacs",
     "ris", "out", "mod:attr", "most_instances", "thinnest_slices", "description_regex",
     "preliminary", "final", "delivered", "written", "dicom", "hl7", "folder", "2.5.1", "INFO",
     "debug"]
) | st.text(max_size=10)  # fmt: skip
NUMBERS = st.sampled_from([0, 1, -1, 0.5, 1e-9, 16, 64, 65535, 65536, 2**31, 1e300]) | st.integers(
    -5, 100000
)


def _members(annotation: Any) -> tuple[Any, ...]:
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def values_for(annotation: Any, depth: int = 0) -> st.SearchStrategy[Any]:
    """Values for a field of type ``annotation``: of that type mostly, of any
    other type sometimes."""
    typed = _typed(annotation, depth)
    return st.one_of(typed, typed, typed, typed, typed, typed, typed, JUNK)


def _typed(annotation: Any, depth: int) -> st.SearchStrategy[Any]:
    if typing.get_origin(annotation) is typing.Annotated:
        return _typed(typing.get_args(annotation)[0], depth)
    options = [_one(member, depth) for member in _members(annotation)]
    return st.one_of(*options)


def _one(annotation: Any, depth: int) -> st.SearchStrategy[Any]:
    if typing.get_origin(annotation) is typing.Annotated:
        return _typed(typing.get_args(annotation)[0], depth)
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is type(None):
        return st.none()
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return documents_for(annotation, depth + 1)
    if origin is Literal:
        return st.sampled_from(args)
    if origin in (tuple, list):
        return st.lists(values_for(args[0], depth + 1), max_size=3 if depth < 4 else 1)
    if origin is dict:
        return st.dictionaries(FREE_KEYS, values_for(args[1], depth + 1), max_size=2)
    if annotation is bool:
        return st.booleans()
    if annotation in (int, float):
        return NUMBERS
    if annotation in (str, Path) or annotation is re.Pattern or origin is re.Pattern:
        return TEXT
    return JUNK


#: Names that refer to each other (rules to destinations, rule to rule), from
#: few enough choices that they meet: duplicates, missing ones, wrong kinds.
NAMES = st.sampled_from(["pacs", "ris", "out", "nowhere"])
#: Fields whose values are such names, by model and field.
REFERENCES: dict[tuple[str, str], st.SearchStrategy[Any]] = {
    ("Rule", "name"): st.sampled_from(["a", "b", "fallback"]),
    ("Rule", "pipeline"): st.sampled_from(["ct-lung", "cxr-classify", "qa-archive"]),
    ("Rule", "destinations"): st.lists(NAMES, max_size=3),
    ("Rule", "notify"): st.lists(NAMES, max_size=2),
    ("Settings", "destinations"): st.dictionaries(
        NAMES, st.deferred(lambda: _one(DESTINATION, 1)), max_size=3
    ),
}


def documents_for(model: type[BaseModel], depth: int = 0) -> st.SearchStrategy[dict[Any, Any]]:
    """A mapping for ``model``: any subset of its keys, sometimes a key it
    does not have."""
    fields = {
        name: st.deferred(lambda f=field: values_for(f.annotation, depth))
        if (model.__name__, name) not in REFERENCES
        else st.one_of(REFERENCES[(model.__name__, name)], values_for(field.annotation, depth))
        for name, field in model.model_fields.items()
    }
    known = st.fixed_dictionaries({}, optional=fields)
    unknown = st.dictionaries(
        st.sampled_from(["typo", "Port", "extra"]) | FREE_KEYS, JUNK, max_size=1
    )
    nothing: st.SearchStrategy[dict[Any, Any]] = st.just({})
    extra = st.one_of(nothing, nothing, nothing, nothing, nothing, nothing, nothing, unknown)
    return st.builds(lambda a, b: {**b, **a}, known, extra)


DESTINATION = typing.get_args(Settings.model_fields["destinations"].annotation)[1]

#: A whole configuration document.
SETTINGS_DOCUMENTS = documents_for(Settings)
