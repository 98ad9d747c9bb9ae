"""The pipeline protocol: what a pipeline receives and what it returns.

This module is the whole contract between the node and a pipeline. Pipelines
import this and nothing else of ``dicomnode``; the runner and the result
writers import it too. It holds plain data and a :class:`typing.Protocol`,
no logic of any stage.

Array conventions
-----------------
A :class:`Volume`'s ``array`` has shape ``(slices, rows, columns)`` in source
order: index 0 is the slice (or frame) listed first in ``sources``, row 0 is
the image's top row. Label maps and heatmaps in a :class:`PipelineResult` use
exactly the same grid, so result objects reference the source slice for slice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

Vector3 = tuple[float, float, float]


@dataclass(frozen=True)
class Code:
    """A coded concept, e.g. ``Code("39607008", "SCT", "Lung")``.

    Attributes
    ----------
    value : str
        The code value.
    scheme : str
        The coding scheme designator: ``SCT`` (SNOMED CT), ``DCM``, ``UCUM``...
    meaning : str
        The human-readable meaning.
    """

    value: str
    scheme: str
    meaning: str

    def __post_init__(self) -> None:
        for name in ("value", "scheme", "meaning"):
            if not getattr(self, name):
                raise ValueError(f"Code.{name} must not be empty")


@dataclass(frozen=True)
class SliceSource:
    """Where one slice of a volume came from."""

    sop_instance_uid: str
    sop_class_uid: str
    frame_number: int | None = None  # 1-based, for multi-frame sources


@dataclass(frozen=True)
class Volume:
    """Pixel data with its geometry, as the runner hands it to a pipeline.

    Attributes
    ----------
    array : ndarray, float32, (slices, rows, columns)
        Stored values with rescale slope/intercept applied (HU for CT).
    spacing : (float, float, float)
        Millimetres between slices, between rows, between columns.
    origin : (float, float, float)
        Patient position (mm) of the centre of the first voxel.
    row_direction, column_direction : (float, float, float)
        Image Orientation (Patient): the direction along a row (increasing
        column index) and along a column (increasing row index).
    slice_direction : (float, float, float)
        Unit vector from one slice to the next (increasing slice index).
    modality : str
    study_instance_uid, series_instance_uid, frame_of_reference_uid : str
    sources : tuple of SliceSource
        One per slice, in array order.
    attributes : mapping of str to str
        A few header values pipelines may need (keyword to value), e.g.
        ``PhotometricInterpretation``, ``ViewPosition``, ``BodyPartExamined``.
    """

    array: NDArray[np.float32]
    spacing: Vector3
    origin: Vector3
    row_direction: Vector3
    column_direction: Vector3
    slice_direction: Vector3
    modality: str
    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str
    sources: tuple[SliceSource, ...]
    attributes: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"Volume.array must be 3-D, got shape {self.array.shape}")
        if len(self.sources) != self.array.shape[0]:
            raise ValueError(
                f"Volume.sources has {len(self.sources)} entries for {self.array.shape[0]} slices"
            )
        if any(s <= 0 for s in self.spacing):
            raise ValueError(f"Volume.spacing must be positive, got {self.spacing}")

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in millilitres."""
        return float(np.prod(self.spacing)) / 1000.0


@dataclass(frozen=True)
class Segment:
    """The meaning of one label value in a label map.

    ``laterality`` (SNOMED CT Left 7771000 or Right 24028007) is the side of a
    paired structure: of ``anatomic_region`` when there is one (a cyst of the
    left kidney), else of ``type`` (the left kidney). The SEG writes it as the
    region's or type's modifier, the SR as its finding site's laterality.
    """

    label: int
    name: str
    category: Code
    type: Code
    anatomic_region: Code | None = None
    color: tuple[int, int, int] | None = None  # recommended display RGB
    laterality: Code | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.label <= 255:
            raise ValueError(f"Segment.label must be 1..255, got {self.label}")


@dataclass(frozen=True)
class Measurement:
    """A numeric result with a UCUM unit, optionally of one segment."""

    concept: Code
    value: float
    unit: Code
    segment_label: int | None = None

    def __post_init__(self) -> None:
        if self.unit.scheme != "UCUM":
            raise ValueError(f"Measurement.unit must be a UCUM code, got {self.unit.scheme}")
        if not np.isfinite(self.value):
            raise ValueError(f"Measurement.value must be finite, got {self.value}")


@dataclass(frozen=True)
class Finding:
    """A classification result: a coded finding and its probability."""

    concept: Code
    probability: float
    threshold: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"Finding.probability must be in [0, 1], got {self.probability}")

    @property
    def positive(self) -> bool:
        """Whether the probability reaches the threshold (never, without one)."""
        return self.threshold is not None and self.probability >= self.threshold


Box = tuple[float, float, float, float, float, float]


@dataclass(frozen=True)
class Detection:
    """A detected object: what it is, how sure the model is, and its box.

    Attributes
    ----------
    concept : Code
        What was found (e.g. SNOMED CT 27925004 "Nodule").
    score : float
        The model's score, 0 to 1.
    box : (float, float, float, float, float, float)
        ``(slice0, row0, column0, slice1, row1, column1)`` in the volume's
        grid, in voxel units where voxel ``i`` spans ``[i, i + 1)``: the box
        covers slices ``slice0`` to ``slice1`` and so on (``0 <= a0 < a1 <=``
        the axis' length).
    threshold : float, optional
        The score from which the model's card reports an object.
    name : str
        The label's name in the model card.
    """

    concept: Code
    score: float
    box: Box
    threshold: float | None = None
    name: str = ""

    def __post_init__(self) -> None:
        if not 0.0 <= self.score <= 1.0:
            raise ValueError(f"Detection.score must be in [0, 1], got {self.score}")
        if any(not np.isfinite(v) for v in self.box) or any(
            self.box[a] >= self.box[a + 3] or self.box[a] < 0 for a in range(3)
        ):
            raise ValueError(
                f"Detection.box must be (a0, b0, c0, a1, b1, c1), 0 <= x0 < x1: {self.box}"
            )

    @property
    def centre(self) -> Vector3:
        """The box's centre, in (continuous) voxel units."""
        return (
            (self.box[0] + self.box[3]) / 2,
            (self.box[1] + self.box[4]) / 2,
            (self.box[2] + self.box[5]) / 2,
        )


@dataclass(frozen=True)
class Heatmap:
    """Where the model looked for one finding, in the volume's grid (0..1)."""

    finding: Code
    array: NDArray[np.float32]


@dataclass(frozen=True)
class ModelInfo:
    """Provenance of the weights a pipeline used."""

    name: str
    version: str
    sha256: str


@dataclass(frozen=True)
class ModelFile:
    """A weights file the runner checked against its manifest's SHA-256.

    Attributes
    ----------
    name, version, sha256 : str
        From the manifest.
    path : Path
        The verified weights file.
    labels : tuple of (int, str, Code)
        Output index, name and code of each label or class.
    thresholds : mapping of str to float
        Per-label decision thresholds, by label name (classifiers).
    extra : mapping of str to object
        The manifest's ``input`` contract and anything else it declares.
    files : tuple of Path
        The model's further files (the manifest's ``files``), each checked
        against its own SHA-256 like ``path``: a model that is a folder (an
        nnU-Net trained-model folder's plans, dataset.json and folds).
    """

    name: str
    version: str
    sha256: str
    path: Path
    labels: tuple[tuple[int, str, Code], ...] = ()
    thresholds: Mapping[str, float] = field(default_factory=dict)
    extra: Mapping[str, object] = field(default_factory=dict)
    files: tuple[Path, ...] = ()

    @property
    def info(self) -> ModelInfo:
        """Provenance to put into a :class:`PipelineResult`."""
        return ModelInfo(self.name, self.version, self.sha256)


@dataclass(frozen=True)
class PipelineResult:
    """What :meth:`Pipeline.run` returns.

    Attributes
    ----------
    label_map : ndarray of uint8, optional
        Same shape as the input volume's array; 0 is background, other values
        are ``Segment.label``.
    segments : tuple of Segment
        The meaning of every label value present in ``label_map``.
    measurements, findings, heatmaps : tuples
    detections : tuple of Detection
        Objects found, each with its box in the volume's grid.
    models : tuple of ModelInfo
        Weights used, for provenance (empty for pipelines without weights).
    summary : str
        One or two sentences a radiologist can read.
    """

    label_map: NDArray[np.uint8] | None = None
    segments: tuple[Segment, ...] = ()
    measurements: tuple[Measurement, ...] = ()
    findings: tuple[Finding, ...] = ()
    heatmaps: tuple[Heatmap, ...] = ()
    models: tuple[ModelInfo, ...] = ()
    summary: str = ""
    detections: tuple[Detection, ...] = ()

    def __post_init__(self) -> None:
        labels = [s.label for s in self.segments]
        if len(set(labels)) != len(labels):
            raise ValueError("PipelineResult.segments repeats a label value")
        if self.label_map is not None:
            if self.label_map.dtype != np.uint8:
                raise ValueError(f"label_map must be uint8, got {self.label_map.dtype}")
            unknown = set(np.unique(self.label_map).tolist()) - {0, *labels}
            if unknown:
                raise ValueError(f"label_map holds labels without a segment: {sorted(unknown)}")

    def check_grid(self, volume: Volume) -> None:
        """Raise ``ValueError`` unless every map is in ``volume``'s grid."""
        shape = volume.array.shape
        if self.label_map is not None and self.label_map.shape != shape:
            raise ValueError(f"label_map shape {self.label_map.shape} != volume shape {shape}")
        for heatmap in self.heatmaps:
            if heatmap.array.shape != shape:
                raise ValueError(f"heatmap shape {heatmap.array.shape} != volume shape {shape}")
        for detection in self.detections:
            if any(detection.box[a + 3] > shape[a] for a in range(3)):
                raise ValueError(f"detection box {detection.box} is outside the volume {shape}")


class InputRefused(ValueError):
    """Raised by :meth:`Pipeline.run` when the input is not what the pipeline
    was made for (wrong modality, not in Hounsfield units, a lateral view...).

    The run ends DEAD at once with this message as its reason: retrying the
    same input cannot help. Any other exception counts as a failure that may
    be retried.
    """


@dataclass(frozen=True)
class Algorithm:
    """How a pipeline makes its result, as every object it produces says it.

    Attributes
    ----------
    family : Code
        The Algorithm Family (CID 7162), e.g. (123104, DCM, "Morphological
        Operations") for thresholds and morphology, (123110, DCM, "Artificial
        Intelligence") only for a pipeline that runs a trained model.
    trained_model : bool
        ``True`` when the result comes from a trained model: the results are
        then called "AI" results; otherwise "Automated".
    """

    family: Code
    trained_model: bool

    def __post_init__(self) -> None:
        if self.family.scheme != "DCM":
            raise ValueError(
                "Algorithm.family must be a DCM code of CID 7162, "
                f"got scheme {self.family.scheme!r}"
            )
        if (self.family.value == ARTIFICIAL_INTELLIGENCE_CODE.value) != self.trained_model:
            raise ValueError(
                "Algorithm.family is (123110, DCM, 'Artificial Intelligence') exactly when "
                "Algorithm.trained_model is True"
            )

    @property
    def label(self) -> str:
        """The word results use for this algorithm: ``"AI"`` or ``"Automated"``."""
        return "AI" if self.trained_model else "Automated"


ARTIFICIAL_INTELLIGENCE_CODE = Code("123110", "DCM", "Artificial Intelligence")
MORPHOLOGICAL_OPERATIONS_CODE = Code("123104", "DCM", "Morphological Operations")


Range = tuple[float, float]


@dataclass(frozen=True)
class ValidatedRange:
    """The inputs a pipeline was validated on: its input range.

    Unlike the contract (:class:`InputSpec`), a study outside this range is
    one the pipeline can run on but was not shown to work for (a 5 mm slice
    where it was validated on 0.5 to 3 mm). Each routing rule says what such
    a study gets (``out_of_range``): ``flag`` (the result says so, in the SR
    and the ORU) or ``refuse`` (no result, the reason recorded). Bounds are
    inclusive; ``None`` means "not checked". A header without the value
    checked is reported as outside the range (nothing shows it is inside).

    Attributes
    ----------
    slice_thickness_mm : (float, float), optional
        Slice Thickness (0018,0050).
    pixel_spacing_mm : (float, float), optional
        In-plane pixel spacing, both directions.
    slice_spacing_mm : (float, float), optional
        Distance between slices (volumes of more than one slice).
    kvp : (float, float), optional
        KVP (0018,0060), for CT.
    slices : (int, int), optional
        Number of slices.
    """

    slice_thickness_mm: Range | None = None
    pixel_spacing_mm: Range | None = None
    slice_spacing_mm: Range | None = None
    kvp: Range | None = None
    slices: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        for name in ("slice_thickness_mm", "pixel_spacing_mm", "slice_spacing_mm", "kvp", "slices"):
            bounds = getattr(self, name)
            if bounds is not None and not 0 < bounds[0] <= bounds[1]:
                raise ValueError(
                    f"ValidatedRange.{name} must be (least, greatest) with "
                    f"0 < least <= greatest, got {bounds}"
                )

    @property
    def empty(self) -> bool:
        """Whether nothing is checked."""
        return self == ValidatedRange()


@dataclass(frozen=True)
class InputSpec:
    """What a pipeline needs from its input series: its input contract.

    The runner checks every volume against the pipeline's ``input`` before
    :meth:`Pipeline.run` and refuses (:class:`InputRefused`, the run is DEAD
    at once) one outside it. Bounds are inclusive; ``None`` (or an empty set)
    means "any".

    Attributes
    ----------
    modalities : frozenset of str
        Accepted Modality values (upper case).
    min_slices, max_slices : int
        How many slices (frames) the volume may have.
    field_of_view_mm : (float, float), optional
        Least and greatest extent of an image, in mm, along its rows and along
        its columns (pixels times pixel spacing), e.g. ``(200, 800)`` for a
        whole adult chest.
    pixel_spacing_mm : (float, float), optional
        Least and greatest in-plane pixel spacing, in mm.
    slice_spacing_mm : (float, float), optional
        Least and greatest distance between slices, in mm (checked on volumes
        of more than one slice).
    body_parts : frozenset of str
        Accepted Body Part Examined terms (upper case, letters only, e.g.
        ``CHEST``). When the header gives a body part, it must contain one of
        them once upper-cased and stripped of everything but letters (so
        ``Chest_Routine`` and ``CHESTABDPELVIS`` are a chest); a header without
        one is accepted. Empty: any body part.
    validated : ValidatedRange
        The narrower range the pipeline was validated on; outside it a
        result is flagged or refused as the rule says (not checked when empty).
    """

    modalities: frozenset[str]
    min_slices: int = 1
    max_slices: int | None = None
    field_of_view_mm: Range | None = None
    pixel_spacing_mm: Range | None = None
    slice_spacing_mm: Range | None = None
    body_parts: frozenset[str] = frozenset()
    validated: ValidatedRange = field(default_factory=ValidatedRange)

    def __post_init__(self) -> None:
        if not self.modalities or any(m != m.upper() or not m for m in self.modalities):
            raise ValueError(
                f"InputSpec.modalities must be upper-case Modality values, got {self.modalities}"
            )
        if self.min_slices < 1:
            raise ValueError(f"InputSpec.min_slices must be at least 1, got {self.min_slices}")
        if self.max_slices is not None and self.max_slices < self.min_slices:
            raise ValueError(
                f"InputSpec.max_slices ({self.max_slices}) is below min_slices ({self.min_slices})"
            )
        for name in ("field_of_view_mm", "pixel_spacing_mm", "slice_spacing_mm"):
            bounds = getattr(self, name)
            if bounds is not None and not 0 < bounds[0] <= bounds[1]:
                raise ValueError(
                    f"InputSpec.{name} must be (least, greatest) with 0 < least <= greatest, "
                    f"got {bounds}"
                )
        if any(not part.isalpha() or part != part.upper() for part in self.body_parts):
            raise ValueError(
                "InputSpec.body_parts must be upper-case letters only (e.g. CHEST), "
                f"got {sorted(self.body_parts)}"
            )


@runtime_checkable
class Pipeline(Protocol):
    """A pipeline, found through the ``dicomnode.pipelines`` entry-point group.

    The entry point names a class (or factory) called with no arguments. The
    runner calls :meth:`load` once per worker process and device, then
    :meth:`run` for every study, so models stay loaded between studies.
    """

    name: str
    version: str
    input: InputSpec
    algorithm: Algorithm

    def load(self, device: str) -> None:
        """Prepare to run on ``device`` (``"cpu"``, ``"cuda:0"``).

        A pipeline with weights also declares ``required_models`` (a tuple of
        manifest names); the runner verifies each file's SHA-256 and then calls
        ``load(device, models)`` with a mapping of name to :class:`ModelFile`.
        """
        ...

    def run(self, volume: Volume, device: str) -> PipelineResult:
        """Process one volume and return its result in the volume's grid.

        The runner calls it only with volumes inside :attr:`input`; a
        pipeline refuses anything else it cannot handle with
        :class:`InputRefused`.
        """
        ...


@runtime_checkable
class SetupCheck(Protocol):
    """A pipeline that can tell, before it is loaded, whether what it needs is there.

    ``dicomnode config check`` and ``dicomnode serve`` (before it starts)
    call :meth:`check_setup` for every pipeline a rule routes to, after the
    runner has verified its ``required_models`` and given it its options
    (``configure``), so a node whose rules cannot work does not start.
    """

    def check_setup(self, models: Mapping[str, ModelFile]) -> None:
        """Raise ``ValueError`` (or :class:`InputRefused`) naming what is
        missing or wrong, e.g. an unset or unreadable bundle folder.

        Parameters
        ----------
        models : mapping of str to ModelFile
            The verified models of ``required_models`` (empty when none).
            Nothing is loaded on a device.
        """
        ...


@dataclass(frozen=True)
class ModelReport:
    """What ``dicomnode models check`` says of one loaded model after a test run.

    Attributes
    ----------
    name, version, sha256 : str
        From the verified manifest.
    parameters : int
        Number of weights (0 when the runtime cannot tell).
    device : str
        Where it ran, as the runtime names it (``cpu``, ``CUDAExecutionProvider``).
    input_contract : str
        What the model takes, one line (task, modalities, orientation,
        spacing, normalisation, window).
    labels : tuple of str
        ``value: name (code)`` of each output.
    output : str
        What the synthetic input of the declared shape gave (shapes).
    seconds : float
        How long that run took.
    """

    name: str
    version: str
    sha256: str
    parameters: int
    device: str
    input_contract: str
    labels: tuple[str, ...]
    output: str
    seconds: float


@runtime_checkable
class MultiInput(Protocol):
    """A pipeline that takes further series of the study besides the run's own.

    ``input_roles`` maps each role (in the order the model takes them, e.g.
    ``t1``, ``t1c``, ``t2``, ``flair``) to a regular expression the role's
    Series Description must match; an empty mapping means one series. The
    runner picks each role's series among the study's (the most instances
    among those that match), resamples it onto the run's series' grid, and
    calls :meth:`run_inputs` instead of :meth:`Pipeline.run`.
    """

    input_roles: Mapping[str, str]

    def run_inputs(
        self, volume: Volume, inputs: Mapping[str, Volume], device: str
    ) -> PipelineResult:
        """Process the run's ``volume`` with ``inputs`` (role to a volume in
        ``volume``'s grid); the result is in ``volume``'s grid."""
        ...


@runtime_checkable
class SelfTest(Protocol):
    """A loaded pipeline that can run its model once on a synthetic input of
    the shape it declares, and say what it loaded (``dicomnode models check``)."""

    def self_test(self) -> ModelReport:
        """Run the model once on a synthetic input and describe it.

        Raises
        ------
        InputRefused
            The model's output does not fit what its card declares.
        """
        ...


@dataclass(frozen=True)
class ResultContext:
    """What a result writer needs besides the result and its volume.

    Attributes
    ----------
    job_id : int
        The run's job id.
    pipeline_name, pipeline_version : str
        The pipeline that made the result (algorithm identification).
    source_files : tuple of Path
        The input series' instance files (any order; the writer reads them).
    out_dir : Path
        Where the objects go; created by the writer.
    node_name : str
        The node's AE title, named as the device observer in reports.
    algorithm : Algorithm
        The pipeline's declared algorithm family: the objects name it, and
        call the result "AI" only when it comes from a trained model.
    final : bool
        The rule says its results are verified (``result_status: final``):
        the SR is FINAL and the ORU's result status F. Otherwise (the default)
        the SR is PRELIMINARY and the ORU's status P.
    notifications : tuple of NotificationTarget
        The HL7 receivers to build an ORU^R01 for.
    out_of_range : tuple of str
        Why the input is outside the pipeline's validated range (one phrase
        each), when it is and the rule flags rather than refuses: the SR and
        the ORU say so. Empty: inside the range (or none declared).
    shadow : bool
        A candidate's run in shadow mode: its objects are kept, never sent.
    sources : tuple of pydicom Dataset
        The input series' instances as the worker already read them (any
        order; their pixel data may have been dropped once the volume was
        made): a writer uses these headers rather than reading
        ``source_files`` again. Empty: read the files.
    """

    job_id: int
    pipeline_name: str
    pipeline_version: str
    source_files: tuple[Path, ...]
    out_dir: Path
    node_name: str
    algorithm: Algorithm
    final: bool = False
    notifications: tuple[NotificationTarget, ...] = ()
    out_of_range: tuple[str, ...] = ()
    shadow: bool = False
    sources: tuple[Dataset, ...] = ()


@dataclass(frozen=True)
class NotificationTarget:
    """One HL7 receiver the result writer builds an ORU^R01 for.

    Attributes
    ----------
    destination : str
        The destination's name in the configuration (the outbox row's).
    sending_application, sending_facility, receiving_application, receiving_facility : str
        MSH-3 to MSH-6.
    correction : bool
        An earlier result of the same study, series and pipeline was already
        delivered to this destination: this one replaces it (result status C).
    """

    destination: str
    sending_application: str = "DICOMNODE"
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    correction: bool = False


@dataclass(frozen=True)
class ResultObject:
    """One DICOM object a result writer wrote, as the outbox records it.

    Attributes
    ----------
    kind : str
        What the object is, e.g. ``"SEG"``, ``"SR"``, ``"SC"`` (its Modality).
    sop_class_uid, sop_instance_uid : str
        SOP Class and SOP Instance UIDs.
    study_instance_uid, series_instance_uid : str
        Where it belongs (the source study, a new series).
    path : Path
        The file.
    """

    kind: str
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    path: Path


@dataclass(frozen=True)
class ResultMessage:
    """One notification a result writer built, ready to send as it is.

    Attributes
    ----------
    destination : str
        The :class:`NotificationTarget` it is for.
    control_id : str
        Its message control ID (MSH-10).
    body : str
        The whole message (ER7, segments separated by carriage returns).
    refers_to : tuple of str
        SOP Instance UIDs of the result objects it names: it is sent only
        after they reached the run's DICOM destinations (unless the rule says
        ``notify_after: written``).
    """

    destination: str
    control_id: str
    body: str
    refers_to: tuple[str, ...] = ()


@dataclass(frozen=True)
class WrittenResult:
    """What a result writer made: the objects and the notifications."""

    objects: tuple[ResultObject, ...] = ()
    messages: tuple[ResultMessage, ...] = ()


@runtime_checkable
class ResultWriter(Protocol):
    """Turns a :class:`PipelineResult` into files (DICOM objects) in
    ``context.out_dir`` and notification messages, and says what it made.
    Knows nothing of networks."""

    def write(
        self, result: PipelineResult, volume: Volume, context: ResultContext
    ) -> WrittenResult:
        """Write every object and build every notification for ``result``."""
        ...

    def warm_up(self) -> float:
        """Pay one-off first-use costs (imports, tables) before the first
        study, e.g. by writing a throw-away result; return the seconds spent."""
        ...
