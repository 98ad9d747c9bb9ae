"""What the routed pipelines need, checked before a node may run them.

``dicomnode config check`` (the systemd unit's ``ExecStartPre``) and
``dicomnode serve`` call :func:`setup_problems`: for every pipeline a rule
routes to, it must be installed and declare a valid contract (the registry),
every model manifest it requires must be there with weights whose SHA-256 is
the manifest's (the manifest code), and its own setup check
(:class:`~dicomnode.protocol.SetupCheck`, e.g. ``monai-bundle``'s bundle
folder) must pass. Nothing is loaded on a device.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from dicomnode.config import Settings
from dicomnode.config.rules import Rule
from dicomnode.errors import ModelError, PipelineNotFoundError
from dicomnode.protocol import ModelFile, Pipeline, SetupCheck
from dicomnode.runner.manifest import verify_model
from dicomnode.runner.registry import PipelineRegistry
from dicomnode.runner.stage import pipeline_options

__all__ = ["pipeline_setup_problems", "routed_rules", "served_problems", "setup_problems"]

LOGGER = logging.getLogger(__name__)


def routed_rules(settings: Settings) -> list[tuple[str, Rule]]:
    """Every rule with its field path: ``routing.rules.N``, then ``routing.fallback``."""
    rules = [(f"routing.rules.{i}", rule) for i, rule in enumerate(settings.routing.rules)]
    if settings.routing.fallback is not None:
        rules.append(("routing.fallback", settings.routing.fallback))
    return rules


def pipeline_setup_problems(
    pipeline: Pipeline, options: dict[str, object], models_dir: Path
) -> list[str]:
    """What ``pipeline`` lacks to run here, one line each (empty: nothing).

    Parameters
    ----------
    pipeline : Pipeline
        Built by the registry, not loaded.
    options : dict
        Its ``runner.pipelines.<name>`` options, given to its ``configure``.
    models_dir : Path
        Where its model manifests are looked up.

    Returns
    -------
    list of str
        Each model that is missing or does not match its SHA-256, or what the
        pipeline's own :meth:`~dicomnode.protocol.SetupCheck.check_setup` says.
    """
    configure: Callable[[dict[str, object]], None] | None = getattr(pipeline, "configure", None)
    try:
        if options and callable(configure):
            configure(options)
    except ValueError as exc:
        return [f"runner.pipelines.{pipeline.name}: {exc}"]
    required: tuple[str, ...] = getattr(pipeline, "required_models", ())
    models: dict[str, ModelFile] = {}
    problems: list[str] = []
    for name in required:
        try:
            models[name] = verify_model(models_dir, name)
        except ModelError as exc:
            problems.append(str(exc))
    if problems or not isinstance(pipeline, SetupCheck):
        return problems
    try:
        pipeline.check_setup(models)
    except (ValueError, OSError) as exc:
        return [str(exc)]
    return []


def setup_problems(settings: Settings) -> list[str]:
    """Rules routing to a pipeline that cannot run in this node, one line each.

    Every line names the rule (its field path and name), the pipeline and
    what is missing, e.g. ``routing.rules.0 (rule 'chest-xr'): pipeline
    'cxr-classify': model 'cxr-classify': no manifest at models/cxr-classify.yaml``.
    A pipeline that is not installed is named whatever the runner settings;
    models and setup are checked only when ``runner.enabled`` (pipelines run
    in this node: ``runner.executor: local``; Celery workers check theirs
    with :func:`served_problems`).

    Raises
    ------
    PipelineNotFoundError
        A ``runner.plugins`` entry cannot be imported.
    DuplicatePipelineError
        Two plugins claim one name.
    """
    registry = PipelineRegistry.discover(settings.runner.plugins)
    installed = ", ".join(registry.names()) or "none"
    options = pipeline_options(settings.runner)
    models_dir = settings.runner.models_dir.resolve()
    checked: dict[str, list[str]] = {}
    problems: list[str] = []
    for path, rule in routed_rules(settings):
        name = rule.pipeline
        if name not in registry:
            problems.append(
                f"{path}.pipeline: no pipeline {name!r} is installed (installed: {installed})"
            )
            continue
        if name not in checked:
            try:
                pipeline = registry.create(name)
            except PipelineNotFoundError as exc:
                checked[name] = [str(exc)]
            else:
                checked[name] = (
                    pipeline_setup_problems(pipeline, options.get(name, {}), models_dir)
                    if settings.runner.enabled and settings.runner.executor == "local"
                    else []
                )
        problems.extend(
            f"{path} (rule {rule.name!r}): pipeline {name!r}: {problem}"
            for problem in checked[name]
        )
    return problems


def served_problems(settings: Settings, pipelines: tuple[str, ...]) -> list[str]:
    """What the pipelines a Celery worker serves lack to run on its host, one
    line each, naming the pipeline (empty: nothing).

    Raises
    ------
    PipelineNotFoundError
        A ``runner.plugins`` entry cannot be imported.
    DuplicatePipelineError
        Two plugins claim one name.
    """
    registry = PipelineRegistry.discover(settings.runner.plugins)
    installed = ", ".join(registry.names()) or "none"
    options = pipeline_options(settings.runner)
    models_dir = settings.runner.models_dir.resolve()
    if not pipelines:
        return ["--pipelines: name at least one pipeline"]
    problems: list[str] = []
    for name in pipelines:
        if name not in registry:
            problems.append(
                f"--pipelines: no pipeline {name!r} is installed (installed: {installed})"
            )
            continue
        try:
            pipeline = registry.create(name)
        except PipelineNotFoundError as exc:
            problems.append(f"pipeline {name!r}: {exc}")
            continue
        problems.extend(
            f"pipeline {name!r}: {problem}"
            for problem in pipeline_setup_problems(pipeline, options.get(name, {}), models_dir)
        )
    return problems
