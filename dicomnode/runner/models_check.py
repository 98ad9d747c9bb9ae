"""``dicomnode models check``: every configured model loaded and run once, before go-live.

For each pipeline the rules route to or ``runner.pipelines`` configures,
:func:`check_models` verifies every model manifest it requires (a wrong
SHA-256 is refused before anything is loaded), loads the pipeline on the
node's device and, when the pipeline can (:class:`~dicomnode.protocol.SelfTest`),
runs its model once on a synthetic input of the declared shape. The report
says what was loaded: parameters, input contract, labels, device.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from dicomnode.config import Settings
from dicomnode.errors import ModelError, PipelineNotFoundError
from dicomnode.protocol import ModelFile, ModelReport, SelfTest
from dicomnode.runner.manifest import verify_model
from dicomnode.runner.registry import PipelineRegistry
from dicomnode.runner.requirements import routed_rules
from dicomnode.runner.stage import pipeline_options
from dicomnode.runner.worker import resolve_device

__all__ = ["ModelCheck", "check_models"]

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelCheck:
    """What the check found for one pipeline.

    Attributes
    ----------
    pipeline : str
        The pipeline's name.
    rules : tuple of str
        The rules routing to it (field path and name).
    device : str
        The device it was loaded on.
    models : tuple of dict
        Each verified model: name, version, sha256, file.
    report : ModelReport, optional
        The pipeline's own account of its test run (pipelines with a self-test).
    problem : str, optional
        Why it cannot run here; ``None`` when it can.
    """

    pipeline: str
    rules: tuple[str, ...]
    device: str
    models: tuple[dict[str, str], ...] = ()
    report: ModelReport | None = None
    problem: str | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        """Whether the pipeline loaded (and its test run passed)."""
        return self.problem is None

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        out = asdict(self)
        out["ok"] = self.ok
        return out


def check_models(settings: Settings, device: str | None = None) -> list[ModelCheck]:
    """Load every configured pipeline's models and run each once.

    Parameters
    ----------
    settings : Settings
        The node's configuration.
    device : str, optional
        Where to load (default ``runner.device``, ``auto`` meaning CUDA when
        there is one).

    Returns
    -------
    list of ModelCheck
        One per pipeline routed to or configured, in name order.

    Raises
    ------
    PipelineNotFoundError
        A ``runner.plugins`` entry cannot be imported.
    """
    registry = PipelineRegistry.discover(settings.runner.plugins)
    options = pipeline_options(settings.runner)
    models_dir = settings.runner.models_dir.resolve()
    on = resolve_device(device or settings.runner.device)
    rules: dict[str, list[str]] = {name: [] for name in settings.runner.pipelines}
    for path, rule in routed_rules(settings):
        rules.setdefault(rule.pipeline, []).append(f"{path} ({rule.name})")
    return [
        _check_one(registry, name, tuple(rules[name]), options.get(name, {}), models_dir, on)
        for name in sorted(rules)
    ]


def _check_one(
    registry: PipelineRegistry,
    name: str,
    rules: tuple[str, ...],
    options: dict[str, object],
    models_dir: Any,
    device: str,
) -> ModelCheck:
    def failed(problem: str, models: tuple[dict[str, str], ...] = ()) -> ModelCheck:
        return ModelCheck(name, rules, device, models, problem=problem)

    if name not in registry:
        return failed(
            f"no pipeline {name!r} is installed (installed: {', '.join(registry.names())})"
        )
    try:
        pipeline = registry.create(name)
    except PipelineNotFoundError as exc:
        return failed(str(exc))
    configure: Callable[[dict[str, object]], None] | None = getattr(pipeline, "configure", None)
    try:
        if options and callable(configure):
            configure(options)
    except ValueError as exc:
        return failed(f"runner.pipelines.{name}: {exc}")
    required: tuple[str, ...] = getattr(pipeline, "required_models", ())
    models: dict[str, ModelFile] = {}
    for model in required:
        try:
            models[model] = verify_model(models_dir, model)
        except ModelError as exc:
            return failed(str(exc))  # refused before anything is loaded
    listed = tuple(
        {"name": m.name, "version": m.version, "sha256": m.sha256, "file": str(m.path)}
        for m in models.values()
    )
    try:
        if required:
            pipeline.load(device, models)  # type: ignore[call-arg]
        else:
            pipeline.load(device)
        report = pipeline.self_test() if isinstance(pipeline, SelfTest) else None
    except (ValueError, OSError, RuntimeError, ImportError) as exc:
        return failed(f"{type(exc).__name__}: {exc}", listed)
    notes = () if report is not None else ("loaded; this pipeline has no test run",)
    return ModelCheck(name, rules, device, listed, report, None, notes)
