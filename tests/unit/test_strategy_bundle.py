"""Strategy bundles: digest over normalised sources, loading by file and by module."""

from __future__ import annotations

from pathlib import Path

from tickreplay.strategy.loader import StrategyBundle, bundle_from_spec, load_strategy

SRC = "from tickreplay import Strategy\n\nclass S(Strategy):\n    pass\n"


def test_digest_ignores_line_endings_and_location_but_not_content(tmp_path: Path) -> None:
    a = tmp_path / "a" / "strat.py"
    b = tmp_path / "b" / "strat.py"
    a.parent.mkdir()
    b.parent.mkdir()
    a.write_text(SRC)
    b.write_bytes(SRC.replace("\n", "\r\n").encode())
    assert bundle_from_spec(str(a)).digest == bundle_from_spec(str(b)).digest
    b.write_text(SRC + "# changed\n")
    assert bundle_from_spec(str(a)).digest != bundle_from_spec(str(b)).digest


def test_bundle_round_trips_through_bytes_and_loads(tmp_path: Path) -> None:
    f = tmp_path / "strat.py"
    f.write_text(SRC)
    bundle = bundle_from_spec(f"{f}:S")
    again = StrategyBundle.from_bytes(bundle.to_bytes())
    assert again == bundle
    strategy, _ = load_strategy(again)
    assert type(strategy).__name__ == "S"


def test_module_colon_class_spec_loads_an_importable_module() -> None:
    bundle = bundle_from_spec("tickreplay.strategy.api:Strategy")
    assert bundle.entry == "api.py" and bundle.class_name == "Strategy"
    assert len(bundle.digest) == 64
