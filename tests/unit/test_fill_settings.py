"""The fill settings through every door: CLI flags, the REST body, the gRPC message, the spec's
planned data kinds."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from tickreplay.api.grpc_server import job_request
from tickreplay.api.models import JobRequest
from tickreplay.engine.config import RunConfig
from tickreplay.spec import BacktestSpec
from tickreplay.v1 import jobs_pb2 as pb

BODY = {"strategy": "a" * 64, "symbols": ["AAPL"], "start_date": "2024-01-02",
        "end_date": "2024-01-03"}


def test_the_rest_body_carries_the_fill_settings_and_names_a_bad_field() -> None:
    req = JobRequest.model_validate({**BODY, "fill_model": "quote", "max_participation": 0.25,
                                     "cancel_latency": True, "events": ["quotes"]})
    assert (req.fill_model, req.max_participation, req.cancel_latency, req.events) == \
        ("quote", 0.25, True, ["quotes"])
    for bad, field in (({"fill_model": "mid"}, "fill_model"),
                       ({"max_participation": 1.5}, "max_participation"),
                       ({"events": ["bars"]}, "events")):
        with pytest.raises(ValidationError, match=field):
            JobRequest.model_validate({**BODY, **bad})


def test_the_grpc_message_carries_the_fill_settings() -> None:
    msg = pb.SubmitBacktestRequest(strategy="a" * 64, symbols=["AAPL"], start_date="2024-01-02",
                                   end_date="2024-01-03", fill_model="quote",
                                   max_participation=0.5, cancel_latency=True,
                                   events=["trades", "quotes"])
    req, _ = job_request(msg)
    assert (req.fill_model, req.max_participation, req.cancel_latency, req.events) == \
        ("quote", 0.5, True, ["trades", "quotes"])
    plain, _ = job_request(pb.SubmitBacktestRequest(strategy="a" * 64, symbols=["AAPL"],
                                                    start_date="2024-01-02",
                                                    end_date="2024-01-03"))
    assert (plain.fill_model, plain.max_participation, plain.cancel_latency, plain.events) == \
        ("trade", None, False, None)


def test_the_spec_plans_its_events_or_what_the_fill_model_needs() -> None:
    base = {"strategy": "x.py", "data_url": "/d", "symbols": "A", "start": "2024-01-02",
            "end": "2024-01-02"}
    assert BacktestSpec.parse(base).kinds() == ("trades",)
    quote = RunConfig(fill_model="quote")
    assert BacktestSpec.parse({**base, "config": quote}).kinds() == ("trades", "quotes")
    assert BacktestSpec.parse({**base, "config": quote, "events": ["quotes"]}).kinds() == \
        ("quotes",)
    with pytest.raises(Exception, match="events"):
        BacktestSpec.parse({**base, "events": ["bars"]})


def test_a_trade_model_run_on_quotes_only_data_says_what_to_do(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tickreplay.data.generate import generate
    from tickreplay.data.objectstore import open_store

    generate(open_store(tmp_path / "all"), ["FX"], "2024-01-02", "2024-01-02",
             ticks_per_day=50, seed=1, quote_partitions=True)
    quotes = tmp_path / "all" / "quotes"
    (tmp_path / "fx").mkdir()
    quotes.rename(tmp_path / "fx" / "quotes")  # a catalog with quotes and no trades
    example = Path(__file__).resolve().parents[2] / "examples" / "quote_bracket.py"
    argv = [sys.executable, "-m", "tickreplay.cli", "run", str(example),
            "--data", str(tmp_path / "fx"), "--symbols", "FX", "--start", "2024-01-02",
            "--end", "2024-01-02", "--out", str(tmp_path / "out"), "--quiet"]
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert out.returncode != 0
    assert "FX: quotes only there; a run over quotes needs --fill-model quote" in out.stderr
    ok = subprocess.run([*argv, "--fill-model", "quote"], capture_output=True, text=True,
                        check=False)
    assert ok.returncode == 0, ok.stderr
