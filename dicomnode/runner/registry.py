"""Finding pipelines: the ``dicomnode.pipelines`` entry-point group, plus
``runner.plugins`` import paths from the config."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points

from dicomnode.errors import DuplicatePipelineError, PipelineNotFoundError
from dicomnode.protocol import Algorithm, InputSpec, Pipeline

ENTRY_POINT_GROUP = "dicomnode.pipelines"

Factory = Callable[[], Pipeline]


def _import_path(spec: str) -> Factory:
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise PipelineNotFoundError(f"plugin {spec!r} must be 'module:attribute'")
    try:
        module = importlib.import_module(module_name)
        factory = getattr(module, attribute)
    except (ImportError, AttributeError) as exc:
        raise PipelineNotFoundError(f"plugin {spec!r} cannot be imported: {exc}") from exc
    if not callable(factory):
        raise PipelineNotFoundError(f"plugin {spec!r} is not a class or factory")
    return factory  # type: ignore[no-any-return]


def _constant(factory: Factory) -> Callable[[], Factory]:
    def loader() -> Factory:
        return factory

    return loader


class PipelineRegistry:
    """Pipeline names to the factories that build them; names are unique.

    Parameters
    ----------
    sources : mapping of name to (origin, loader)
        ``loader`` returns the factory (importing the plugin only when called).
    """

    def __init__(self, sources: dict[str, tuple[str, Callable[[], Factory]]]) -> None:
        self._sources = dict(sources)

    @classmethod
    def discover(cls, plugins: Sequence[str] = ()) -> PipelineRegistry:
        """Installed entry points plus ``plugins`` ("module:attribute").

        A plugin's name is its factory's ``name`` attribute.

        Raises
        ------
        DuplicatePipelineError
            Two sources declare the same name.
        PipelineNotFoundError
            A plugin path cannot be imported.
        """
        sources: dict[str, tuple[str, Callable[[], Factory]]] = {}

        def add(name: str, origin: str, loader: Callable[[], Factory]) -> None:
            if name in sources:
                raise DuplicatePipelineError(
                    f"pipeline name {name!r} is declared twice: by {sources[name][0]} "
                    f"and by {origin}; uninstall or rename one"
                )
            sources[name] = (origin, loader)

        for ep in entry_points(group=ENTRY_POINT_GROUP):
            add(ep.name, f"entry point {ep.value}", ep.load)
        for spec in plugins:
            factory = _import_path(spec)
            name = getattr(factory, "name", None)
            if not isinstance(name, str) or not name:
                raise PipelineNotFoundError(f"plugin {spec!r} has no 'name' attribute")
            add(name, f"plugin {spec}", _constant(factory))
        return cls(sources)

    def names(self) -> list[str]:
        """Every known pipeline name, sorted."""
        return sorted(self._sources)

    def __contains__(self, name: object) -> bool:
        return name in self._sources

    def create(self, name: str) -> Pipeline:
        """Build the pipeline called ``name``.

        Raises
        ------
        PipelineNotFoundError
            No such pipeline, or the plugin cannot be loaded, or what it builds
            does not follow the pipeline protocol: the message names the
            declaration that is missing or of the wrong type (``input`` must
            be an :class:`~dicomnode.protocol.InputSpec`, ``algorithm`` an
            :class:`~dicomnode.protocol.Algorithm`).
        """
        if name not in self._sources:
            known = ", ".join(self.names()) or "none"
            raise PipelineNotFoundError(f"no pipeline {name!r} is installed (installed: {known})")
        origin, loader = self._sources[name]
        try:
            pipeline = loader()()
        except ImportError as exc:
            raise PipelineNotFoundError(f"pipeline {name!r} ({origin}) cannot load: {exc}") from exc
        _check_declarations(pipeline, name, origin)
        if not isinstance(pipeline, Pipeline):
            raise PipelineNotFoundError(f"{origin} does not follow the pipeline protocol")
        if pipeline.name != name:
            raise PipelineNotFoundError(
                f"{origin} is registered as {name!r} but calls itself {pipeline.name!r}"
            )
        return pipeline


_DECLARATIONS: tuple[tuple[str, type, str], ...] = (
    ("name", str, "a str"),
    ("version", str, "a str"),
    ("input", InputSpec, "a dicomnode.protocol.InputSpec (its input contract)"),
    ("algorithm", Algorithm, "a dicomnode.protocol.Algorithm (its algorithm family)"),
)


def _check_declarations(pipeline: object, name: str, origin: str) -> None:
    """Refuse a pipeline whose declarations are missing or of the wrong type."""
    for attribute, kind, wanted in _DECLARATIONS:
        if not hasattr(pipeline, attribute):
            raise PipelineNotFoundError(
                f"pipeline {name!r} ({origin}) declares no {attribute!r}; it must be {wanted}"
            )
        value = getattr(pipeline, attribute)
        if not isinstance(value, kind):
            raise PipelineNotFoundError(
                f"pipeline {name!r} ({origin}): {attribute!r} is {type(value).__name__}, "
                f"not {wanted}"
            )
    for method in ("load", "run"):
        if not callable(getattr(pipeline, method, None)):
            raise PipelineNotFoundError(f"pipeline {name!r} ({origin}) has no {method}() method")
    required = getattr(pipeline, "required_models", ())
    if not isinstance(required, tuple) or not all(isinstance(m, str) and m for m in required):
        raise PipelineNotFoundError(
            f"pipeline {name!r} ({origin}): 'required_models' must be a tuple of manifest "
            f"names, got {required!r}"
        )
