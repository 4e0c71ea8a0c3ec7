"""Loading a strategy from a file (``path.py`` or ``path.py:Class``) or ``module:Class``, and its digest.

The bundle digest is sha256 over the normalised source files (UTF-8, LF line endings, sorted
relative paths), so the same code checked out on Windows or Linux, anywhere on disk, has the
same digest. The loaded module is registered under a digest-derived name so that strategy
objects pickled into a checkpoint are found again on another worker.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from tickreplay.strategy.api import Strategy, StrategyError


@dataclass(frozen=True)
class StrategyBundle:
    """The source of a strategy: files (relative path -> normalised text), entry file, class."""

    files: dict[str, str]
    entry: str
    class_name: str | None
    digest: str

    def to_bytes(self) -> bytes:
        """Canonical serialisation (what is uploaded, content-addressed by ``digest``)."""
        import json

        return json.dumps({"files": self.files, "entry": self.entry, "class": self.class_name},
                          sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> StrategyBundle:
        """Inverse of :meth:`to_bytes`; the digest is recomputed, never trusted."""
        import json

        d = json.loads(data)
        return cls(d["files"], d["entry"], d["class"], bundle_digest(d["files"]))


def _normalise(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def bundle_digest(files: dict[str, str]) -> str:
    """sha256 over (path, normalised text) of every file, in sorted path order."""
    h = hashlib.sha256()
    for rel in sorted(files):
        data = _normalise(files[rel]).encode()
        h.update(f"{rel}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def _split_spec(spec: str) -> tuple[str, str | None]:
    head, sep, cls = spec.rpartition(":")
    if sep and head and not cls.startswith(("\\", "/")) and cls.isidentifier():
        return head, cls
    return spec, None


def bundle_from_spec(spec: str) -> StrategyBundle:
    """Read a strategy's sources: ``file.py[:Class]`` or ``package.module:Class``."""
    target, class_name = _split_spec(spec)
    path = Path(target)
    if path.suffix == ".py" or path.exists():
        if not path.is_file():
            raise StrategyError(f"strategy file {target!r} not found")
        files = {path.name: _read(path)}
        return StrategyBundle(files, path.name, class_name, bundle_digest(files))
    try:
        found = importlib.util.find_spec(target)
    except (ImportError, ValueError) as e:
        raise StrategyError(f"cannot find strategy module {target!r}: {e}") from None
    if found is None or found.origin is None:
        raise StrategyError(f"cannot find strategy module {target!r} (not a file, not importable)")
    origin = Path(found.origin)
    if found.submodule_search_locations:  # a package: every .py file under it
        root = origin.parent
        files = {p.relative_to(root.parent).as_posix(): _read(p) for p in sorted(root.rglob("*.py"))}
        entry = origin.relative_to(root.parent).as_posix()
    else:
        files = {origin.name: _read(origin)}
        entry = origin.name
    return StrategyBundle(files, entry, class_name, bundle_digest(files))


def _read(path: Path) -> str:
    try:
        return _normalise(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise StrategyError(f"strategy file {path} is not UTF-8: {e}") from None


def load_class(bundle: StrategyBundle) -> type[Strategy]:
    """Import a bundle's entry module (once per digest per process) and pick its Strategy class."""
    mod_name = f"tickreplay_strategy_{bundle.digest[:16]}"
    module = sys.modules.get(mod_name)
    if module is None:
        module = _import_bundle(bundle, mod_name)
    candidates = {
        name: obj for name, obj in vars(module).items()
        if inspect.isclass(obj) and issubclass(obj, Strategy) and obj is not Strategy
        and obj.__module__ == module.__name__
    }
    if bundle.class_name:
        cls = candidates.get(bundle.class_name) or getattr(module, bundle.class_name, None)
        if not (inspect.isclass(cls) and issubclass(cls, Strategy)):
            raise StrategyError(f"{bundle.entry} has no Strategy subclass {bundle.class_name!r}")
        return cls
    if len(candidates) != 1:
        found = ", ".join(sorted(candidates)) or "none"
        raise StrategyError(
            f"{bundle.entry}: expected exactly one Strategy subclass, found {found}; "
            f"name one with {bundle.entry}:ClassName"
        )
    return next(iter(candidates.values()))


def _import_bundle(bundle: StrategyBundle, mod_name: str) -> ModuleType:
    code = bundle.files[bundle.entry]
    module = ModuleType(mod_name)
    module.__file__ = f"<strategy {bundle.entry}>"
    sys.modules[mod_name] = module
    try:
        exec(compile(code, bundle.entry, "exec"), module.__dict__)  # noqa: S102 - loading it is the point
    except Exception as e:
        del sys.modules[mod_name]
        tb = "".join(traceback.format_exception(e)[-6:])
        raise StrategyError(f"strategy {bundle.entry} failed to import: {type(e).__name__}: {e}\n{tb}") from e
    return module


def load_strategy(spec_or_bundle: str | StrategyBundle, params: dict[str, Any] | None = None
                  ) -> tuple[Strategy, StrategyBundle]:
    """Load and instantiate a strategy with validated params."""
    bundle = (spec_or_bundle if isinstance(spec_or_bundle, StrategyBundle)
              else bundle_from_spec(spec_or_bundle))
    cls = load_class(bundle)
    try:
        return cls(params or {}), bundle
    except StrategyError:
        raise
    except Exception as e:
        raise StrategyError(f"{cls.__name__}() failed: {type(e).__name__}: {e}") from e
