"""Routing rules in the node YAML (schema only; the engine is dicomnode.routing)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Rule(_Model):
    """One routing rule (placeholder, completed with the routing engine)."""

    name: str
    pipeline: str


class RoutingConfig(_Model):
    """The ordered rule list and the optional fallback."""

    rules: tuple[Rule, ...] = ()
    fallback: Rule | None = None
