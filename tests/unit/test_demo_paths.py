"""``make demo`` finds the checkout it runs in (it broke once when demo.py moved into cli/)."""

from __future__ import annotations

from tickreplay.cli import demo


def test_demo_root_is_the_checkout_with_the_examples() -> None:
    assert (demo.ROOT / "examples" / "sma_cross.py").is_file()
    assert (demo.ROOT / "Makefile").is_file()
    assert demo.STATE == demo.ROOT / ".state"
