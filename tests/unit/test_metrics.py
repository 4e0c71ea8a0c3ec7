"""Metrics against an independent implementation written here with plain loops and `statistics`.

The reference below deliberately shares no code with tickreplay.results.metrics: if both agree on
hypothesis-generated curves, a convention slip in either would have to be made twice.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import statistics

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from tickreplay.results.metrics import ZERO_STD, compute

REL = 1e-9


def reference(values, dates=None, initial=None, rf=0.0, periods=252):
    """Textbook formulas, one loop each (see docs/metrics.md)."""
    curve = list(values)
    times = list(range(len(curve))) if dates is None else [d.toordinal() for d in dates]
    if initial is not None:
        curve = [initial] + curve
        times = [times[0]] + times if dates is not None else list(range(len(curve)))
    out = {}
    n_ret = len(curve) - 1
    out["total_return"] = curve[-1] / curve[0] - 1 if n_ret >= 1 else None
    out["cagr"] = (1 + out["total_return"]) ** (periods / n_ret) - 1 if n_ret >= 1 else None
    rets = [curve[i] / curve[i - 1] - 1 for i in range(1, len(curve))]
    excess = [r - rf / periods for r in rets]
    if len(rets) >= 2:
        sd = statistics.stdev(rets)
        out["annual_volatility"] = sd * math.sqrt(periods) if sd > ZERO_STD else 0.0
        sdx = statistics.stdev(excess)
        out["sharpe"] = (
            statistics.fmean(excess) / sdx * math.sqrt(periods) if sdx > ZERO_STD else None
        )
        down = math.sqrt(sum(min(x, 0.0) ** 2 for x in excess) / len(excess))
        out["sortino"] = (
            statistics.fmean(excess) / down * math.sqrt(periods) if down > ZERO_STD else None
        )
    else:
        out["annual_volatility"] = out["sharpe"] = out["sortino"] = None
    worst, peak_val = 0.0, curve[0]
    for v in curve:
        peak_val = max(peak_val, v)
        worst = min(worst, v / peak_val - 1)
    out["max_drawdown"] = worst
    # Duration: for every point below its running peak, the time from where that peak was last
    # set until the curve regains it (or the end); the longest such stretch.
    longest = 0
    for i, v in enumerate(curve):
        peak_i = max(range(i + 1), key=lambda j: (curve[j], j))  # latest index of the max so far
        if v < curve[peak_i]:
            end = next(
                (k for k in range(i + 1, len(curve)) if curve[k] >= curve[peak_i]), len(curve) - 1
            )
            longest = max(longest, times[end] - times[peak_i])
    out["max_drawdown_duration_days"] = longest
    out["calmar"] = out["cagr"] / abs(worst) if worst < 0 and out["cagr"] is not None else None
    return out


def close(a, b):
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=REL, abs_tol=1e-12)


def assert_matches(got, want):
    for key, value in want.items():
        assert close(got[key], value), f"{key}: got {got[key]!r}, reference {value!r}"


curves = st.tuples(
    st.floats(1e3, 1e7),
    st.lists(st.floats(-0.5, 0.5, allow_nan=False), min_size=0, max_size=40),
)


def build(start, returns):
    values, v = [], start
    for r in returns:
        v *= 1 + r
        values.append(v)
    return values


@settings(max_examples=300, deadline=None)
@given(curves, st.booleans(), st.floats(0.0, 0.1))
def test_equity_metrics_match_reference(curve, with_initial, rf):
    start, returns = curve
    values = build(start, returns)
    assume(values)
    initial = start if with_initial else None
    want = reference(values, initial=initial, rf=rf)
    rets_ref = want["annual_volatility"]
    # Skip curves whose std sits on the zero threshold: there the two std algorithms may
    # legitimately round to different sides of it.
    if rets_ref:
        sd = rets_ref / math.sqrt(252)
        assume(not (ZERO_STD / 10 < sd < 1e-7))
    got = compute(values, initial_equity=initial, rf=rf)
    if want["cagr"] is not None and abs(want["cagr"]) > 1e300:
        want["cagr"] = want["calmar"] = None  # overflow guard, tested separately
    assert_matches(got, want)
    json.dumps(got, allow_nan=False)


@settings(max_examples=150, deadline=None)
@given(curves, st.lists(st.integers(1, 5), min_size=40, max_size=40))
def test_drawdown_duration_counts_calendar_days(curve, gaps):
    start, returns = curve
    values = build(start, returns)
    assume(values)
    dates, d = [], dt.date(2024, 1, 2)
    for g in gaps[: len(values)]:
        dates.append(d)
        d += dt.timedelta(days=g)
    series = pd.Series(values, index=pd.to_datetime(dates))
    want = reference(values, dates=dates, initial=start)
    got = compute(series, initial_equity=start)
    assert got["max_drawdown_duration_days"] == want["max_drawdown_duration_days"]
    assert close(got["max_drawdown"], want["max_drawdown"])


def test_hand_computed_drawdown_of_25_percent_over_3_days():
    # Peak 100 on Jan 2, under water Jan 3-5 (trough 75 = -25%), regained on Jan 8 (a Monday).
    table = pa.table(
        {
            "date": ["2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05", "2024-01-08"],
            "equity": [100.0, 90.0, 80.0, 75.0, 100.0],
        }
    )
    m = compute(table)
    assert m["max_drawdown"] == -0.25
    assert m["max_drawdown_duration_days"] == 6  # Jan 2 -> Jan 8, calendar days
    assert compute(table.column("equity").to_pylist())["max_drawdown_duration_days"] == 4  # periods
    assert m["total_return"] == 0.0
    assert m["num_days"] == 5 and m["final_equity"] == 100.0


def test_hand_computed_returns_sharpe_sortino():
    # Returns +10%, -10%, +10%: mean 1/30, stdev (ddof=1) of [.1,-.1,.1] = sqrt(0.04/3)*... by hand.
    m = compute([110.0, 99.0, 108.9], initial_equity=100.0)
    mean = (0.1 - 0.1 + 0.1) / 3
    sd = math.sqrt(((0.1 - mean) ** 2 * 2 + (-0.1 - mean) ** 2) / 2)
    assert math.isclose(m["sharpe"], mean / sd * math.sqrt(252), rel_tol=1e-12)
    assert math.isclose(m["sortino"], mean / math.sqrt(0.01 / 3) * math.sqrt(252), rel_tol=1e-12)
    assert math.isclose(m["annual_volatility"], sd * math.sqrt(252), rel_tol=1e-12)
    assert math.isclose(m["total_return"], 0.089, rel_tol=1e-12)
    assert math.isclose(m["cagr"], 1.089 ** (252 / 3) - 1, rel_tol=1e-12)
    assert math.isclose(m["max_drawdown"], -0.1, rel_tol=1e-12)
    assert math.isclose(m["calmar"], m["cagr"] / 0.1, rel_tol=1e-12)


def test_risk_free_rate_is_subtracted_per_period():
    values = [101.0, 100.5, 102.0, 101.0]
    plain = compute(values, initial_equity=100.0)
    with_rf = compute(values, initial_equity=100.0, rf=0.0504)
    assert with_rf["sharpe"] < plain["sharpe"]
    assert with_rf["annual_volatility"] == plain["annual_volatility"]  # a constant shift


@pytest.mark.parametrize(
    ("values", "initial", "none_keys"),
    [
        ([], None, ["total_return", "sharpe", "max_drawdown", "final_equity"]),
        ([100.0], None, ["total_return", "cagr", "annual_volatility", "sharpe", "calmar"]),
        ([100.0, 101.0], None, ["annual_volatility", "sharpe", "sortino"]),  # one return
        ([100.0, 100.0, 100.0], None, ["sharpe", "sortino", "calmar"]),  # flat: zero std
        ([100.0, 101.0, 103.0, 104.0], None, ["sortino", "calmar"]),  # no down day, no drawdown
        ([0.0, 10.0, 20.0], None, ["total_return", "sharpe", "max_drawdown"]),  # no base equity
        ([1e9, 1e12], 1.0, ["cagr", "calmar"]),  # annualising overflows float
    ],
)
def test_degenerate_curves_give_none_and_strict_json(values, initial, none_keys):
    m = compute(values, initial_equity=initial)
    for key in none_keys:
        assert m[key] is None, key
    json.dumps(m, allow_nan=False)


def test_constant_growth_has_no_sharpe_but_zero_volatility():
    values = [100.0 * 1.001**i for i in range(1, 30)]
    m = compute(values, initial_equity=100.0)
    assert m["sharpe"] is None and m["annual_volatility"] == 0.0 and m["max_drawdown"] == 0.0


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="non-finite value nan at position 1"):
        compute([100.0, float("nan")])
    with pytest.raises(ValueError, match="strictly increasing; 2024-01-02"):
        compute(pd.Series([1.0, 2.0], index=pd.to_datetime(["2024-01-03", "2024-01-02"])))
    with pytest.raises(ValueError, match="lacks column"):
        compute(pa.table({"day": ["2024-01-02"], "equity": [1.0]}))
    with pytest.raises(ValueError, match=r"trades lack column\(s\) \['is_close'\]"):
        compute([1.0, 2.0], {"qty": [1.0], "price": [1.0], "fee": [0.0], "realized_pnl": [0.0]})


def trades_table():
    # open 10 @ 100, close 10 @ 110 (+100), open -5 @ 110, close 5 @ 114 (-20), open 2, close -2 (0)
    return pa.table(
        {
            "ts": pa.array([1, 2, 3, 4, 5, 6], pa.int64()),
            "symbol": ["A", "A", "B", "B", "A", "A"],
            "qty": [10.0, -10.0, -5.0, 5.0, 2.0, -2.0],
            "price": [100.0, 110.0, 110.0, 114.0, 50.0, 50.0],
            "fee": [1.0, 1.0, 0.5, 0.5, 0.25, 0.25],
            "realized_pnl": [0.0, 100.0, 0.0, -20.0, 0.0, 0.0],
            "is_close": [False, True, False, True, False, True],
        }
    )


def test_trade_metrics_hand_computed():
    equity = pa.table({"date": ["2024-01-02", "2024-01-03"], "equity": [10_000.0, 10_200.0]})
    m = compute(equity, trades_table(), initial_equity=10_000.0, exposure_days=1)
    assert m["num_trades"] == 6 and m["num_closed"] == 3
    assert m["win_rate"] == pytest.approx(1 / 3, rel=1e-15)
    assert m["profit_factor"] == 5.0
    assert m["avg_win"] == 100.0 and m["avg_loss"] == -20.0
    assert m["fees"] == 3.5
    notional = 1000 + 1100 + 550 + 570 + 100 + 100
    assert m["turnover"] == pytest.approx(notional / 10_100.0, rel=1e-15)
    assert m["exposure"] == 0.5


def test_trade_metrics_accept_a_dataframe_and_no_losses():
    df = trades_table().to_pandas().iloc[:2]
    m = compute([100.0, 101.0], df)
    assert m["profit_factor"] is None and m["avg_loss"] is None and m["win_rate"] == 1.0


def test_no_trades_is_zero_not_unknown():
    empty = trades_table().slice(0, 0)
    m = compute([100.0, 100.0], empty)
    assert (m["num_trades"], m["num_closed"], m["fees"], m["turnover"]) == (0, 0, 0.0, 0.0)
    assert m["win_rate"] is None
    assert compute([100.0, 100.0])["num_trades"] is None


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(-100, 100).filter(lambda q: q != 0),
            st.floats(0.01, 1000),
            st.floats(0, 5),
            st.floats(-1000, 1000),
            st.booleans(),
        ),
        max_size=30,
    )
)
@example(rows=[(1.0, 1.0, 0.0, 1.0, True), (1.0, 1.0, 0.0, -2.225073858507203e-309, True)])
def test_trade_metrics_match_reference(rows):
    table = pa.table(
        {
            "qty": [r[0] for r in rows] or pa.array([], pa.float64()),
            "price": [r[1] for r in rows] or pa.array([], pa.float64()),
            "fee": [r[2] for r in rows] or pa.array([], pa.float64()),
            "realized_pnl": [r[3] if r[4] else 0.0 for r in rows] or pa.array([], pa.float64()),
            "is_close": [r[4] for r in rows] or pa.array([], pa.bool_()),
        }
    )
    equity = [1000.0, 1200.0, 900.0]
    m = compute(equity, table)
    closes = [r[3] for r in rows if r[4]]
    wins = [p for p in closes if p > 0]
    losses = [p for p in closes if p < 0]
    assert m["num_trades"] == len(rows) and m["num_closed"] == len(closes)
    assert close(m["win_rate"], len(wins) / len(closes) if closes else None)
    # A ratio that overflows (a subnormal total loss) is reported as unknown, like NaN.
    pf = math.fsum(wins) / -math.fsum(losses) if losses else None
    assert close(m["profit_factor"], pf if pf is None or math.isfinite(pf) else None)
    assert close(m["avg_win"], statistics.fmean(wins) if wins else None)
    assert close(m["avg_loss"], statistics.fmean(losses) if losses else None)
    assert close(m["fees"], math.fsum(r[2] for r in rows))
    assert close(
        m["turnover"], math.fsum(abs(r[0] * r[1]) for r in rows) / statistics.fmean(equity)
    )


def test_numpy_input_and_positional_series_agree_with_list():
    values = [100.0, 95.0, 97.0, 101.0, 99.0]
    a = compute(values)
    assert compute(np.array(values)) == a
    assert compute(pd.Series(values)) == a
