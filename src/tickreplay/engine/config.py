"""Run configuration of the simulation: frozen data, part of a result's hashed inputs."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Commission(BaseModel):
    """Commission per fill: ``per_share`` x |qty|, or ``bps`` of notional, never below ``minimum``.

    ``per_share`` and ``bps`` are exclusive; ``minimum`` alone is a flat fee per fill; all zero
    means free trading.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    per_share: float = Field(default=0.0, ge=0)
    bps: float = Field(default=0.0, ge=0)
    minimum: float = Field(default=0.0, ge=0)

    @model_validator(mode="after")
    def _exclusive(self) -> Commission:
        if self.per_share and self.bps:
            raise ValueError("commission: give per_share or bps, not both")
        return self

    @classmethod
    def parse(cls, spec: str) -> Commission:
        """Parse a CLI spec: ``none``, ``per_share=0.005,min=1``, ``bps=1.5`` (``min`` optional)."""
        spec = spec.strip()
        if spec.lower() in ("", "0", "none", "free"):
            return cls()
        fields: dict[str, float] = {}
        for part in spec.split(","):
            key, sep, value = part.partition("=")
            key = key.strip().lower()
            key = {"min": "minimum", "share": "per_share", "per-share": "per_share"}.get(key, key)
            if not sep or key not in ("per_share", "bps", "minimum"):
                raise ValueError(
                    f"commission: cannot parse {part!r}; use per_share=X[,min=Y] or bps=X[,min=Y]"
                )
            try:
                fields[key] = float(value)
            except ValueError:
                raise ValueError(f"commission: {key} must be a number, got {value!r}") from None
        return cls(**fields)

    def fee(self, qty: float, price: float) -> float:
        """Commission for one fill (shared by the per-tick and vectorised paths)."""
        if self.per_share:
            fee = self.per_share * abs(qty)
        elif self.bps:
            fee = abs(qty * price) * self.bps / 10_000.0
        else:
            fee = 0.0
        return max(fee, self.minimum)


class RunConfig(BaseModel):
    """Simulation settings. ``seed`` seeds ``Strategy.rng``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    initial_cash: float = Field(default=1_000_000.0, gt=0)
    latency_ns: int = Field(default=0, ge=0)
    slippage_bps: float = Field(default=0.0, ge=0)
    commission: Commission = Commission()
    seed: int = Field(default=0, ge=0)
    mode: Literal["auto", "tick", "vector"] = "auto"
    # How orders fill (docs/semantics.md): "trade" (against trade prints, in full: the
    # original rules) or "quote" (market orders at the touch of L1 quotes, up to its size).
    fill_model: Literal["trade", "quote"] = "trade"
    # Fraction of each event's size (trade size, or the touch's size) orders may take;
    # None: no cap (trade model: fills in full; quote model: the size shown).
    max_participation: float | None = Field(default=None, gt=0, le=1)
    # Cancels take ``latency_ns`` to reach the venue (the order can fill meanwhile), and a
    # modify's old version stays live until its replacement arrives. False: cancels are
    # immediate (the original rule); a modify's replacement still takes the order latency.
    cancel_latency: bool = False
