"""Shared pieces of the config schema: strict models and small value types."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """A config model that rejects unknown keys (they are typos more often than not)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
