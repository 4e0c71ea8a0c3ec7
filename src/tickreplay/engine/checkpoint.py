"""Checkpoint bytes: ``TRCKPT | format version (uint16 BE) | sha256(payload) | payload``.

The payload is the engine's state dict pickled with protocol 5; ``Engine.checkpoint`` and
``Engine.restore`` (``core.py``) decide what the state holds, this module owns the envelope and
every check a restore makes (magic, format version, checksum, engine version, strategy class),
each failing with a :class:`~tickreplay.errors.CheckpointError` that says which.

Pickle, because the state is the strategy object's own attributes (any picklable Python) and a
resumed run must continue bit for bit. Checkpoints are trusted data: they are only ever read
from the platform's own object store.

This module does not import ``core`` (``core`` imports it): the engine version is passed in.
"""

from __future__ import annotations

import hashlib
import pickle
import struct
from typing import Any

from tickreplay.errors import CheckpointError
from tickreplay.strategy.api import Strategy

MAGIC = b"TRCKPT"
FORMAT_VERSION = 2  # 2: the trade record is stored as typed arrays
_HEAD = len(MAGIC)
# Strategy attributes that are not its state: the engine binding (rebound on restore) and the
# rng (saved as its bit generator's state, which is what a resumed run needs).
_NOT_STATE = ("_context", "rng")


def strategy_class(strategy: Strategy) -> str:
    """The dotted name a checkpoint is tied to (a restore refuses any other class)."""
    return f"{type(strategy).__module__}.{type(strategy).__qualname__}"


def strategy_state(strategy: Strategy) -> dict[str, Any]:
    """The strategy object's attributes, minus the engine binding and the rng."""
    return {k: v for k, v in strategy.__dict__.items() if k not in _NOT_STATE}


def restore_strategy(strategy: Strategy, state: dict[str, Any]) -> None:
    """Put :func:`strategy_state` and the rng state of a checkpoint back on ``strategy``."""
    strategy.__dict__.update(state["strategy_state"])
    strategy.rng.bit_generator.state = state["rng_state"]


def encode(state: dict[str, Any]) -> bytes:
    """Serialize the engine state with the header and a sha256 of the payload."""
    try:
        payload = pickle.dumps(state, protocol=5)
    except Exception as e:
        raise CheckpointError(f"strategy state cannot be checkpointed: {e}") from e
    digest = hashlib.sha256(payload).digest()
    return MAGIC + struct.pack(">H", FORMAT_VERSION) + digest + payload


def decode(data: bytes, engine_version: str, strategy: Strategy) -> dict[str, Any]:
    """The state dict of :func:`encode` bytes, after every check a restore makes."""
    if data[:_HEAD] != MAGIC:
        raise CheckpointError("not a tickreplay checkpoint")
    (version,) = struct.unpack(">H", data[_HEAD:_HEAD + 2])
    if version != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint version {version}, this engine reads {FORMAT_VERSION}")
    digest, payload = data[_HEAD + 2:_HEAD + 34], data[_HEAD + 34:]
    if hashlib.sha256(payload).digest() != digest:
        raise CheckpointError("checkpoint checksum mismatch (corrupt or truncated)")
    try:
        state: dict[str, Any] = pickle.loads(payload)
    except Exception as e:  # an older engine's objects (open orders) no longer fit
        raise CheckpointError(f"checkpoint cannot be read by engine {engine_version} (written "
                              f"by another engine version?): {type(e).__name__}: {e}") from e
    if state["engine_version"] != engine_version:
        raise CheckpointError(
            f"checkpoint from engine {state['engine_version']}, this is {engine_version}"
        )
    want = strategy_class(strategy)
    if state["strategy_class"] != want:
        raise CheckpointError(f"checkpoint is for {state['strategy_class']}, not {want}")
    return state
