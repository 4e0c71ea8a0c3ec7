"""Authenticity of what the platform stores: sealed checkpoints and signed result manifests.

Why: checkpoints and staged results live in a bucket that other jobs, other users or an
attacker may be able to write to. A checksum only proves the bytes are intact, not that this
platform wrote them for THIS run; restoring another run's (valid!) checkpoint silently gives a
wrong result that still looks verified. So:

- a checkpoint is sealed in an envelope carrying the run's identity (job id, strategy digest,
  data fingerprint, the full spec with params and config, engine version) and an HMAC-SHA256
  over identity + engine state, keyed with a secret only the platform's workers hold;
- a result manifest carries an HMAC-SHA256 signature over its canonical JSON, so "verified"
  means "produced by this platform from these inputs".

The worker seals and checks; the runner process that executes strategy code never gets the key
(it is not in its environment, and the sandbox does not mount the key file).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import struct
from pathlib import Path
from typing import Any

from tickreplay.errors import IntegrityError
from tickreplay.osutil import atomic_write

ALG = "HMAC-SHA256"
_ENVELOPE_MAGIC = b"TRSEAL1\n"
_MIN_KEY_BYTES = 16


def load_or_create_key(path: Path) -> bytes:
    """The platform key at ``path``; created (32 random bytes, hex, mode 0600) if missing.

    Created complete, then linked into place only if absent (``atomic_write(exclusive=True)``):
    two workers starting at once agree on one key, and neither can read a half-written one.
    """
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            atomic_write(path, secrets.token_hex(32) + "\n", mode=0o600, exclusive=True)
        except FileExistsError:
            pass
    return parse_key(path.read_text().strip(), str(path))


def parse_key(text: str, where: str = "signing key") -> bytes:
    """A key given as hex (as written by :func:`load_or_create_key`)."""
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        raise IntegrityError(f"{where}: the signing key must be hex") from None
    if len(key) < _MIN_KEY_BYTES:
        raise IntegrityError(f"{where}: the signing key must be at least {_MIN_KEY_BYTES} bytes")
    return key


def key_id(key: bytes) -> str:
    """A short public name of a key (so a verifier can say WHICH key signed)."""
    return hashlib.sha256(b"tickreplay-key-id" + key).hexdigest()[:12]


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _mac(key: bytes, *parts: bytes) -> bytes:
    h = hmac.new(key, digestmod=hashlib.sha256)
    for p in parts:
        h.update(struct.pack(">Q", len(p)))
        h.update(p)
    return h.digest()


# ---------------------------------------------------------------------- checkpoints
def seal_checkpoint(blob: bytes, identity: dict[str, Any], ticks_done: int, key: bytes) -> bytes:
    """Wrap engine checkpoint bytes in an authenticated envelope bound to ``identity``."""
    header = _canonical({"identity": identity, "ticks_done": int(ticks_done),
                         "state_sha256": hashlib.sha256(blob).hexdigest(), "key_id": key_id(key)})
    tag = _mac(key, _ENVELOPE_MAGIC, header, blob)
    return _ENVELOPE_MAGIC + struct.pack(">I", len(header)) + header + tag + blob


def open_checkpoint(data: bytes, identity: dict[str, Any], key: bytes) -> tuple[bytes, int]:
    """The engine checkpoint inside a sealed envelope and its tick count.

    Raises:
        IntegrityError: Not an envelope, a wrong signature (written by someone without the
            key, or altered), or sealed for another run (the differing identity fields are named).
    """
    head = len(_ENVELOPE_MAGIC)
    if data[:head] != _ENVELOPE_MAGIC or len(data) < head + 4:
        raise IntegrityError("not a sealed tickreplay checkpoint")
    (n,) = struct.unpack(">I", data[head:head + 4])
    header = data[head + 4:head + 4 + n]
    tag = data[head + 4 + n:head + 4 + n + 32]
    blob = data[head + 4 + n + 32:]
    if not hmac.compare_digest(tag, _mac(key, _ENVELOPE_MAGIC, header, blob)):
        raise IntegrityError("checkpoint signature does not verify (not written by this "
                             "platform's workers, or altered)")
    meta = json.loads(header)
    theirs = meta.get("identity", {})
    if theirs != identity:
        fields = sorted(k for k in set(theirs) | set(identity) if theirs.get(k) != identity.get(k))
        raise IntegrityError(f"checkpoint belongs to another run (job {theirs.get('job_id')!r}; "
                             f"differs in {', '.join(fields)})")
    if hashlib.sha256(blob).hexdigest() != meta.get("state_sha256"):
        raise IntegrityError("checkpoint state does not match its sealed sha256")
    return blob, int(meta["ticks_done"])


# ---------------------------------------------------------------------- manifests
def sign_manifest(manifest: dict[str, Any], key: bytes) -> dict[str, Any]:
    """A copy of ``manifest`` with a ``signature`` over everything else in it."""
    body = {k: v for k, v in manifest.items() if k != "signature"}
    mac = _mac(key, b"tickreplay-manifest-v1", _canonical(body)).hex()
    return {**body, "signature": {"alg": ALG, "key_id": key_id(key), "value": mac}}


def check_manifest_signature(manifest: dict[str, Any], key: bytes) -> None:
    """Raise :class:`IntegrityError` unless ``manifest`` was signed with ``key``."""
    sig = manifest.get("signature")
    if not isinstance(sig, dict) or "value" not in sig:
        raise IntegrityError("manifest is not signed: not produced by this platform's workers")
    if sig.get("key_id") != key_id(key):
        raise IntegrityError(f"manifest signed with key {sig.get('key_id')!r}, this platform's "
                             f"key is {key_id(key)!r}")
    body = {k: v for k, v in manifest.items() if k != "signature"}
    want = _mac(key, b"tickreplay-manifest-v1", _canonical(body)).hex()
    if not hmac.compare_digest(str(sig["value"]), want):
        raise IntegrityError("manifest signature does not verify (altered after signing)")
