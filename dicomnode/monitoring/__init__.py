"""Watching what the pipelines see and say once the node is live."""

__all__: list[str] = []
