"""Label values, segment descriptions and measurement concepts of ``ct-lung``.

Segment types are SNOMED CT; measurement units are UCUM. Where DICOM PS3.16
has no concept for a measurement, a private coding scheme (``99DICOMNODE``,
the ``99`` prefix marks a local scheme in DICOM) says so openly rather than
borrowing a standard code that means something else.
"""

from __future__ import annotations

from dicomnode.protocol import Code, Segment

__all__ = [
    "AIRWAY",
    "ANATOMICAL_STRUCTURE",
    "ATTENUATION_COEFFICIENT",
    "BODY",
    "HOUNSFIELD_UNIT",
    "LAA_950",
    "LEFT_LUNG",
    "LUNG_LABELS",
    "MILLILITER",
    "PERCENT",
    "RIGHT_LUNG",
    "SEGMENTS",
    "VOLUME",
]

BODY = 1
RIGHT_LUNG = 2
LEFT_LUNG = 3
AIRWAY = 4
LUNG_LABELS = (RIGHT_LUNG, LEFT_LUNG)

ANATOMICAL_STRUCTURE = Code("91723000", "SCT", "Anatomical Structure")

SEGMENTS: dict[int, Segment] = {
    BODY: Segment(
        BODY,
        "Body",
        ANATOMICAL_STRUCTURE,
        Code("38266002", "SCT", "Entire body"),
        color=(241, 214, 145),
    ),
    RIGHT_LUNG: Segment(
        RIGHT_LUNG,
        "Right lung",
        ANATOMICAL_STRUCTURE,
        Code("3341006", "SCT", "Right lung"),
        color=(0, 151, 206),
    ),
    LEFT_LUNG: Segment(
        LEFT_LUNG,
        "Left lung",
        ANATOMICAL_STRUCTURE,
        Code("44029006", "SCT", "Left lung"),
        color=(216, 101, 79),
    ),
    AIRWAY: Segment(
        AIRWAY,
        "Airway",
        ANATOMICAL_STRUCTURE,
        Code("89187006", "SCT", "Airway structure"),
        color=(255, 255, 128),
    ),
}
"""Every label value the pipeline writes, with its meaning and display colour."""

VOLUME = Code("118565006", "SCT", "Volume")

ATTENUATION_COEFFICIENT = Code("112031", "DCM", "Attenuation Coefficient")
"""Mean lung density. PS3.16 Table D-1: "A quantitative numerical statement of
the relative attenuation of the X-Ray beam ... Usually expressed in Hounsfield
units"; CID 7180 pairs it with the UCUM unit ``[hnsf'U]``."""

LAA_950 = Code("LAA950", "99DICOMNODE", "Low attenuation area below -950 HU")
"""Percentage of lung volume below -950 HU (%LAA-950, the emphysema index).

Private on purpose: DICOM PS3.16 has no code for it. The neighbouring
(112032, DCM, "Threshold Attenuation Coefficient") is the threshold itself
(an attenuation value "used as a threshold, e.g. in calcium scoring"), not a
fraction of a volume, so it would mislabel this percentage."""

MILLILITER = Code("mL", "UCUM", "milliliter")
HOUNSFIELD_UNIT = Code("[hnsf'U]", "UCUM", "Hounsfield unit")
PERCENT = Code("%", "UCUM", "percent")
