"""The backtest specification a user submits: validated once, at the door, with field names in errors."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from tickreplay.data.schema import validate_symbol
from tickreplay.engine.config import RunConfig
from tickreplay.errors import SpecError


class BacktestSpec(BaseModel):
    """What to run: strategy, data selection, parameters and simulation settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    strategy: str = Field(min_length=1, description="file.py[:Class] or module:Class")
    data_url: str = Field(min_length=1, description="catalog: a directory or s3://bucket[/prefix]")
    symbols: tuple[str, ...] = Field(min_length=1)
    start: dt.date
    end: dt.date
    params: dict[str, Any] = Field(default_factory=dict)
    config: RunConfig = RunConfig()
    # The data kinds to plan: "trades" and/or "quotes". None: as the strategy declares
    # (clients that load it fill this in); where nothing loaded it, trades, plus quotes under
    # the quote fill model (see kinds()).
    events: tuple[Literal["trades", "quotes"], ...] | None = Field(default=None, min_length=1)

    @field_validator("symbols", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [s for s in (x.strip() for x in v.split(",")) if s]
        return v

    @field_validator("symbols")
    @classmethod
    def _symbols(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for s in v:
            validate_symbol(s)
        return tuple(sorted(set(v)))

    @field_validator("end")
    @classmethod
    def _dates(cls, end: dt.date, info: ValidationInfo) -> dt.date:
        start = info.data.get("start")
        if start is not None and start > end:
            raise ValueError(f"end {end} is before start {start}")
        return end

    def kinds(self) -> tuple[str, ...]:
        """The data kinds to plan (``events``, or what they default to without a strategy)."""
        if self.events is not None:
            return tuple(k for k in ("trades", "quotes") if k in self.events)
        return ("trades", "quotes") if self.config.fill_model == "quote" else ("trades",)

    @classmethod
    def parse(cls, data: dict[str, Any]) -> BacktestSpec:
        """Validate, turning pydantic's error list into one message naming every bad field."""
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise SpecError(format_validation_error(e, "invalid backtest spec")) from None


def format_validation_error(e: ValidationError, title: str) -> str:
    """``title: field 'a.b': message (got x); ...``."""
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "<spec>"
        got = err.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        parts.append(f"field {loc!r}: {err['msg']}{shown}")
    return f"{title}: " + "; ".join(parts)


def parse_params(pairs: list[str]) -> dict[str, Any]:
    """``["fast=10", "name=x"]`` -> ``{"fast": "10", ...}``; the strategy's Params does the typing."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise SpecError(f"field 'params': expected key=value, got {pair!r}")
        out[key.strip()] = value
    return out
