"""The CLI as a user drives it: generate data, run backtests, get identical result hashes.

Every command runs as a real subprocess (`python -m tickreplay.cli`) against a local catalog or
a real SeaweedFS bucket.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tickreplay.results import verify_results
from tickreplay.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
RANGE = ["--start", "2024-03-04", "--end", "2024-03-08"]


def tr(*args: str, env: dict[str, str], ok: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the CLI; assert success (or failure) and return the process."""
    p = subprocess.run([sys.executable, "-m", "tickreplay.cli", *args], capture_output=True,
                       text=True, env=env, cwd=ROOT, timeout=300, check=False)
    if ok:
        assert p.returncode == 0, f"tickreplay {' '.join(args)} failed:\n{p.stdout}\n{p.stderr}"
    else:
        assert p.returncode != 0, f"tickreplay {' '.join(args)} should have failed:\n{p.stdout}"
    return p


def env_for(home: Path, settings: Settings | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TICKREPLAY_")}
    env["TICKREPLAY_HOME"] = str(home)
    if settings is not None:
        env["TICKREPLAY_S3_ENDPOINT"] = settings.s3_endpoint or ""
        env["TICKREPLAY_S3_ACCESS_KEY"] = settings.s3_access_key
        env["TICKREPLAY_S3_SECRET_KEY"] = settings.s3_secret_key
    return env


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("catalog")
    tr("data", "generate", "--out", str(data), "--symbols", "AAA,BBB", *RANGE,
       "--ticks-per-day", "3000", "--seed", "5", env=env_for(data / "home"))
    return data


def run_json(strategy: str, data: str, out: Path, env: dict[str, str], *extra: str) -> dict:
    p = tr("run", strategy, "--data", data, "--symbols", "AAA,BBB", *RANGE,
           "--param", "fast=10", "--param", "slow=60", "--latency-ms", "2", "--slippage-bps", "1",
           "--commission", "per_share=0.005,min=1", "--out", str(out), "--json", *extra, env=env)
    return json.loads(p.stdout)


def test_result_hash_is_identical_across_runs_and_cold_or_warm_cache(catalog: Path,
                                                                      tmp_path: Path) -> None:
    env = env_for(tmp_path / "home")
    cold = run_json(str(EXAMPLES / "sma_cross.py"), str(catalog), tmp_path / "r1", env)
    assert (tmp_path / "home" / "cache").exists()
    warm = run_json(str(EXAMPLES / "sma_cross.py"), str(catalog), tmp_path / "r2", env)
    other_cache = run_json(str(EXAMPLES / "sma_cross.py"), str(catalog), tmp_path / "r3",
                           env_for(tmp_path / "home2"))
    assert len(cold["result_hash"]) == 64
    assert cold["result_hash"] == warm["result_hash"] == other_cache["result_hash"]
    for d in ("r1", "r2", "r3"):
        verify_results(tmp_path / d)
    trades = pq.read_table(tmp_path / "r1" / "trades.parquet")
    assert trades.num_rows > 20
    metrics = json.loads((tmp_path / "r1" / "metrics.json").read_text())
    assert metrics["num_trades"] == trades.num_rows


def test_per_tick_and_vectorised_examples_trade_identically(catalog: Path, tmp_path: Path) -> None:
    env = env_for(tmp_path / "home")
    run_json(str(EXAMPLES / "sma_cross.py"), str(catalog), tmp_path / "tick", env)
    run_json(str(EXAMPLES / "sma_cross_vectorized.py"), str(catalog), tmp_path / "vec", env)
    tick = pq.read_table(tmp_path / "tick" / "trades.parquet")
    vec = pq.read_table(tmp_path / "vec" / "trades.parquet")
    assert tick.num_rows > 20
    assert tick.equals(vec)
    assert pq.read_table(tmp_path / "tick" / "equity.parquet").equals(
        pq.read_table(tmp_path / "vec" / "equity.parquet"))


def test_s3_catalog_gives_the_same_result_hash_as_a_local_one(
        catalog: Path, tmp_path: Path, s3_server: Settings, s3_bucket: str) -> None:
    env = env_for(tmp_path / "home", s3_server)
    tr("data", "generate", "--out", s3_bucket, "--symbols", "AAA,BBB", *RANGE,
       "--ticks-per-day", "3000", "--seed", "5", env=env)
    listing = tr("data", "ls", s3_bucket, "--json", env=env)
    assert len(json.loads(listing.stdout)) == 10
    s3 = run_json(str(EXAMPLES / "sma_cross.py"), s3_bucket, tmp_path / "s3", env)
    local = run_json(str(EXAMPLES / "sma_cross.py"), str(catalog), tmp_path / "local", env)
    assert s3["inputs"]["data_fingerprint"] == local["inputs"]["data_fingerprint"]
    assert s3["result_hash"] == local["result_hash"]


def test_data_query_runs_sql_over_the_catalog(catalog: Path, tmp_path: Path) -> None:
    p = tr("data", "query", str(catalog),
           "select symbol, count(*) as n from ticks group by symbol order by symbol",
           env=env_for(tmp_path / "home"))
    assert "AAA" in p.stdout and "15000" in p.stdout


def test_corrupt_partition_fails_the_run_naming_the_partition(catalog: Path, tmp_path: Path
                                                              ) -> None:
    import shutil

    data = tmp_path / "data"
    shutil.copytree(catalog, data)
    victim = data / "ticks" / "symbol=BBB" / "date=2024-03-06" / "data.parquet"
    meta = pq.ParquetFile(victim).metadata
    col = meta.row_group(0).column(meta.schema.names.index("price"))
    raw = bytearray(victim.read_bytes())
    raw[col.data_page_offset + col.total_compressed_size // 2] ^= 0x10
    victim.write_bytes(bytes(raw))
    p = tr("run", str(EXAMPLES / "sma_cross.py"), "--data", str(data), "--symbols", "AAA,BBB",
           *RANGE, "--out", str(tmp_path / "out"), "--quiet", env=env_for(tmp_path / "home"),
           ok=False)
    assert "symbol=BBB/date=2024-03-06" in p.stderr
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_strategy_reading_a_missing_column_names_it(catalog: Path, tmp_path: Path) -> None:
    strat = tmp_path / "quotes.py"
    strat.write_text(
        "from tickreplay import Strategy\n\n"
        "class Quotes(Strategy):\n"
        "    columns = ('price', 'size', 'bid')\n"
        "    def on_tick(self, tick):\n"
        "        pass\n")
    p = tr("run", str(strat), "--data", str(catalog), "--symbols", "AAA", *RANGE,
           "--out", str(tmp_path / "out"), "--quiet", env=env_for(tmp_path / "home"), ok=False)
    assert "bid" in p.stderr and "symbol=AAA" in p.stderr


def test_strategy_exception_fails_with_its_traceback(catalog: Path, tmp_path: Path) -> None:
    strat = tmp_path / "boom.py"
    strat.write_text(
        "from tickreplay import Strategy\n\n"
        "class Boom(Strategy):\n"
        "    def on_tick(self, tick):\n"
        "        if tick.price > 0:\n"
        "            helper(tick)\n\n"
        "def helper(tick):\n"
        "    raise KeyError('no such level')\n")
    args = ["run", str(strat), "--data", str(catalog), "--symbols", "AAA", *RANGE,
            "--out", str(tmp_path / "out"), "--quiet"]
    p = tr(*args, env=env_for(tmp_path / "home"), ok=False)
    assert_one_line_error(p, "KeyError")
    assert "no such level" in p.stderr and "--verbose" in p.stderr
    p = tr(*args, "--verbose", env=env_for(tmp_path / "home"), ok=False)
    assert "KeyError" in p.stderr and "no such level" in p.stderr
    assert "boom.py" in p.stderr and "helper" in p.stderr  # the user's frames are shown
    assert "engine/core.py" not in p.stderr  # ... and not the platform's
    assert p.stderr.strip().splitlines()[-1].startswith("error: strategy failed: KeyError")
    assert not (tmp_path / "out" / "manifest.json").exists()


def assert_one_line_error(p: subprocess.CompletedProcess[str], needle: str) -> None:
    """Failed with exit code 1 and exactly one stderr line, ``error: ...``, naming ``needle``."""
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert p.returncode == 1, p.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], p.stderr


@pytest.mark.parametrize("case", ["strategy_missing", "empty_partition", "bad_spec"])
def test_local_run_errors_are_one_line_never_a_traceback(catalog: Path, tmp_path: Path,
                                                         case: str) -> None:
    import shutil

    data = tmp_path / "data"
    shutil.copytree(catalog, data)
    strategy, needle, extra = str(EXAMPLES / "sma_cross.py"), "", []
    if case == "strategy_missing":
        strategy, needle = str(tmp_path / "nope.py"), "nope.py"
    elif case == "empty_partition":
        (data / "ticks" / "symbol=AAA" / "date=2024-03-05" / "data.parquet").write_bytes(b"")
        needle = "partition ticks/symbol=AAA/date=2024-03-05/data.parquet: the file is empty (0 bytes)"
    else:
        extra, needle = ["--mode", "sideways"], "mode"
    p = tr("run", strategy, "--data", str(data), "--symbols", "AAA", *RANGE, "--out",
           str(tmp_path / "out"), "--quiet", *extra, env=env_for(tmp_path / "home"), ok=False)
    assert "Traceback" not in p.stderr
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], p.stderr


def test_missing_symbols_are_named_unless_allowed(catalog: Path, tmp_path: Path) -> None:
    args = ["run", str(EXAMPLES / "sma_cross.py"), "--data", str(catalog), "--symbols",
            "AAA,ZZZZ,YYY", *RANGE, "--out", str(tmp_path / "out"), "--quiet", "--json"]
    p = tr(*args, env=env_for(tmp_path / "home"), ok=False)
    assert_one_line_error(p, "YYY,ZZZZ")
    assert "--allow-missing" in p.stderr and not (tmp_path / "out").exists()
    p = tr(*args, "--allow-missing", env=env_for(tmp_path / "home"))
    assert json.loads(p.stdout)["result_hash"]
    assert "ZZZZ" in p.stderr  # still said, as a warning


def test_an_error_message_with_brackets_prints_as_it_is(catalog: Path, tmp_path: Path) -> None:
    p = tr("run", str(tmp_path / "[/x]" / "s.py"), "--data", str(catalog), "--symbols", "AAA",
           *RANGE, "--out", str(tmp_path / "out"), "--quiet", env=env_for(tmp_path / "home"),
           ok=False)
    assert_one_line_error(p, "[/x]")


@pytest.mark.parametrize("args, needle", [
    (["--param", "fast=abc"], "param 'fast'"),
    (["--param", "fast=500", "--param", "slow=100"], "fast must be smaller than slow"),
    (["--param", "fastt=5"], "param 'fastt'"),
    (["--symbols", "AAA,B/B"], "invalid symbol"),
    (["--start", "2024-03-08", "--end", "2024-03-04"], "field 'end': value error, end 2024-03-04 is before start"),
    (["--commission", "per_share=x"], "commission"),
    (["--symbols", "ZZZ"], "no partitions"),
])
def test_bad_inputs_are_rejected_with_a_clear_message(catalog: Path, tmp_path: Path,
                                                      args: list[str], needle: str) -> None:
    base = {"--symbols": "AAA", "--start": "2024-03-04", "--end": "2024-03-08"}
    for flag in ("--symbols", "--start", "--end"):
        if flag in args:
            base.pop(flag)
    cmd = ["run", str(EXAMPLES / "sma_cross.py"), "--data", str(catalog), "--out",
           str(tmp_path / "out"), "--quiet", *[x for kv in base.items() for x in kv], *args]
    p = tr(*cmd, env=env_for(tmp_path / "home"), ok=False)
    assert needle in p.stderr.lower() or needle in p.stderr


def test_ingest_any_column_naming_and_reject_bad_rows(tmp_path: Path) -> None:
    env = env_for(tmp_path / "home")
    good = tmp_path / "good.csv"
    good.write_text("time,px,qty,bid_px\n"
                    "2024-03-04 14:30:00.000001,101.5,10,101.4\n"
                    "2024-03-04 14:30:00.5,101.6,5,101.5\n"
                    "2024-03-05 14:30:01,101.4,7,101.3\n")
    tr("data", "ingest", str(good), "--symbol", "XYZ", "--ts-col", "time", "--price-col", "px",
       "--size-col", "qty", "--column", "bid_px=bid", "--out", str(tmp_path / "cat"), env=env)
    parts = json.loads(tr("data", "ls", str(tmp_path / "cat"), "--json", env=env).stdout)
    assert [(p["symbol"], p["date"]) for p in parts] == [("XYZ", "2024-03-04"),
                                                         ("XYZ", "2024-03-05")]
    table = pq.read_table(tmp_path / "cat" / "ticks" / "symbol=XYZ" / "date=2024-03-04" /
                          "data.parquet")
    assert table["ts"].to_pylist()[0] == 1709562600000001000  # microseconds kept, in ns
    assert table["bid"].to_pylist() == [101.4, 101.5]
    bad = tmp_path / "bad.csv"
    bad.write_text("time,px,qty\n"
                   "2024-03-04 14:30:02,101.5,10\n"
                   "2024-03-04 14:30:01,101.6,5\n")
    p = tr("data", "ingest", str(bad), "--symbol", "XYZ", "--ts-col", "time", "--price-col",
           "px", "--size-col", "qty", "--out", str(tmp_path / "cat2"), env=env, ok=False)
    assert "row 2" in p.stderr and "'time'" in p.stderr


def test_a_plan_larger_than_the_cache_cap_is_refused_up_front(catalog: Path, tmp_path: Path
                                                              ) -> None:
    env = {**env_for(tmp_path / "home"), "TICKREPLAY_CACHE_MAX_BYTES": "100000"}
    p = tr("run", str(EXAMPLES / "sma_cross.py"), "--data", str(catalog), "--symbols", "AAA",
           *RANGE, "--out", str(tmp_path / "out"), "--quiet", env=env, ok=False)
    assert "node cache is capped" in p.stderr
