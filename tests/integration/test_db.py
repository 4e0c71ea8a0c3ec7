"""The metadata store against real SQLite and the real PostgreSQL on 127.0.0.1:5432 (issue 13).

Each PostgreSQL run gets a schema of its own in database ``test`` (trust auth), dropped
afterwards; each SQLite run a fresh file. Migrations go up and down on both.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, inspect, text

from tickreplay.db.migrate import current, downgrade, upgrade
from tickreplay.db.models import Base
from tickreplay.db.store import MetaStore, StoreError, hash_token, open_engine

PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
TABLES = {"users", "api_tokens", "jobs", "job_events", "sweeps"}


def _pg_available() -> bool:
    try:
        with create_engine(PG).connect() as conn:
            conn.execute(text("select 1"))
        return True
    except Exception:  # noqa: BLE001 - any failure: no server
        return False


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        eng = open_engine(f"sqlite:///{tmp_path / 'meta.db'}")
        yield eng
        eng.dispose()
        return
    if not _pg_available():
        pytest.fail("PostgreSQL on 127.0.0.1:5432 (database test, trust auth) is required")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'create schema "{schema}"'))
    eng = open_engine(PG, schema=schema)
    try:
        yield eng
    finally:
        eng.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'drop schema "{schema}" cascade'))
        admin.dispose()


@pytest.fixture
def store(engine: Engine) -> MetaStore:
    upgrade(engine)
    return MetaStore(engine)


def _tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names()) - {"alembic_version"}


def test_migrations_go_up_and_down_and_match_the_models(engine: Engine) -> None:
    assert current(engine) is None and _tables(engine) == set()
    upgrade(engine)
    upgrade(engine)  # idempotent at head
    assert current(engine) == "0003" and _tables(engine) == TABLES
    insp = inspect(engine)
    for table in Base.metadata.sorted_tables:  # the ORM mirrors what the migration made
        assert {c["name"] for c in insp.get_columns(table.name)} == set(table.columns.keys())
    downgrade(engine, "0002")
    assert "queued_at" not in {c["name"] for c in inspect(engine).get_columns("jobs")}
    downgrade(engine, "0001")  # step by step down and up again: each is reversible alone
    assert current(engine) == "0001" and _tables(engine) == TABLES - {"sweeps"}
    assert "idempotency_key" not in {c["name"] for c in inspect(engine).get_columns("jobs")}
    upgrade(engine)
    assert current(engine) == "0003"
    downgrade(engine, "base")
    assert current(engine) is None and _tables(engine) == set()


def _spec(**over: object) -> dict:
    return {"strategy": "s.py", "symbols": ["AAA", "BBB"], "start": "2024-03-04",
            "end": "2024-03-08", "params": {"fast": 5}, **over}


def test_tokens_are_stored_hashed_authenticate_and_die_with_their_user(
        store: MetaStore, engine: Engine) -> None:
    token = store.add_user("alice")
    with engine.connect() as conn:
        stored = [r[0] for r in conn.execute(text("select token_sha256 from api_tokens"))]
    assert stored == [hash_token(token)] and token not in stored
    alice = store.authenticate(token)
    assert alice is not None and alice.name == "alice" and not alice.is_admin
    assert store.authenticate(token + "x") is None
    second = store.new_token("alice")
    assert store.authenticate(second) == alice
    with pytest.raises(StoreError, match="already exists"):
        store.add_user("alice")
    store.revoke_user("alice")
    assert store.authenticate(token) is None and store.authenticate(second) is None
    assert store.users()[0]["revoked"] is True


def test_a_job_lives_pending_running_terminal_and_transitions_are_idempotent(
        store: MetaStore) -> None:
    alice = store.authenticate(store.add_user("alice"))
    assert alice is not None
    assert store.create_job(alice, "j1", _spec(), "d" * 64) is True
    assert store.create_job(alice, "j1", _spec(), "d" * 64) is False  # same id: no second row
    job = store.job("j1", alice)
    assert job is not None and job["status"] == "PENDING" and job["symbols"] == ["AAA", "BBB"]
    assert job["start_date"] == dt.date(2024, 3, 4) and job["params"] == {"fast": 5}
    assert store.set_status("j1", "RUNNING", data_fingerprint="f" * 64) is True
    assert store.set_status("j1", "RUNNING") is False  # a retried activity: no change
    assert store.set_status("j1", "SUCCEEDED", result_hash="h" * 64,
                            metrics={"sharpe": 1.5, "undefined": None},
                            results_path="s3://results/j1/") is True
    assert store.set_status("j1", "SUCCEEDED") is False
    with pytest.raises(StoreError, match="cannot become RUNNING"):
        store.set_status("j1", "RUNNING")  # a terminal status is never left
    with pytest.raises(StoreError, match="cannot become FAILED"):
        store.set_status("j1", "FAILED")
    job = store.job("j1", alice)
    assert job is not None and job["status"] == "SUCCEEDED"
    assert job["metrics"] == {"sharpe": 1.5, "undefined": None}
    assert job["started_at"] <= job["finished_at"] and job["data_fingerprint"] == "f" * 64
    with pytest.raises(StoreError, match="no job"):
        store.set_status("nope", "RUNNING")
    with pytest.raises(StoreError, match="unknown status"):
        store.set_status("j1", "DONE")
    with pytest.raises(StoreError, match="cannot set"):
        store.set_status("j1", "SUCCEEDED", user_id=2)
    store.add_event("j1", "published", results_url="s3://results/j1/")
    (ev,) = store.events("j1")
    assert ev["kind"] == "published" and ev["results_url"] == "s3://results/j1/"


def test_users_see_only_their_jobs_admins_all_with_cursor_pages(store: MetaStore) -> None:
    alice = store.authenticate(store.add_user("alice"))
    bob = store.authenticate(store.add_user("bob"))
    root = store.authenticate(store.add_user("root", admin=True))
    assert alice and bob and root
    for i in range(5):
        store.create_job(alice, f"a{i}", _spec(), "d" * 64)
    store.create_job(bob, "b0", _spec(), "d" * 64)
    store.set_status("a3", "CANCELLED")
    assert store.job("b0", alice) is None and store.job("a0", bob) is None
    assert store.job("b0", root) is not None

    pages, after = [], None
    while True:
        page = store.jobs(alice, limit=2, after=after)
        if not page:
            break
        pages.append([j["job_id"] for j in page])
        after = (page[-1]["submitted_at"], page[-1]["job_id"])
    assert pages == [["a0", "a1"], ["a2", "a3"], ["a4"]]
    assert [j["job_id"] for j in store.jobs(alice, status="CANCELLED")] == ["a3"]
    assert [j["job_id"] for j in store.jobs(bob)] == ["b0"]
    assert {j["job_id"] for j in store.jobs(root, limit=100)} == {f"a{i}" for i in range(5)} | {"b0"}


def test_admission_holds_the_limits_under_concurrent_workers(store: MetaStore) -> None:
    """Eight threads admit at once, as eight workers would, holding each admitted job RUNNING
    a moment: never more RUNNING than the per-user limit (2) or the global cap (3), and each
    user's jobs start in submission order. Three users, so both limits bind."""
    import threading
    import time

    users = [store.authenticate(store.add_user(n)) for n in ("alice", "bob", "carol")]
    ids = {u.name: [f"{u.name}{i}" for i in range(6)] for u in users if u}
    for i in range(6):
        for u in users:
            assert u
            store.create_job(u, ids[u.name][i], _spec(), "d" * 64)
    for i in range(6):  # every job's workflow asks once, in submission order (no slot yet)
        for u in users:
            assert u and store.admit(ids[u.name][i], per_user=2, global_cap=0) == "PENDING"
    order: list[str] = []
    peak = {"user": 0, "all": 0}
    lock = threading.Lock()

    def worker(seed: int) -> None:
        import random

        rnd = random.Random(seed)
        pending = [j for js in ids.values() for j in js]
        for _ in range(2000):
            job = rnd.choice(pending)
            if store.admit(job, per_user=2, global_cap=5) == "RUNNING":
                with lock:
                    if job in order:
                        continue
                    order.append(job)
                    counts = store.counts()
                    running = {u: n for (u, s), n in counts.items() if s == "RUNNING"}
                    peak["user"] = max(peak["user"], *running.values())
                    peak["all"] = max(peak["all"], sum(running.values()))
                time.sleep(rnd.uniform(0.01, 0.03))  # running a moment
                store.set_status(job, "SUCCEEDED")  # the slot frees
            if len(order) == 18:
                return

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(order) == sorted(j for js in ids.values() for j in js)
    # The limits held; and the threads did overlap (how far depends on the machine's load).
    assert peak["user"] <= 2 and 2 <= peak["all"] <= 5
    for js in ids.values():  # each user's jobs started in submission order
        started = [store.job_record(j)["started_at"] for j in js]
        assert started == sorted(started)
    assert store.admit("alice0", per_user=2, global_cap=5) == "SUCCEEDED"  # terminal stays
    # A job whose workflow has not asked yet holds no one up (a sweep's later points).
    store.create_job(users[0], "early", _spec(), "d" * 64)  # type: ignore[arg-type]
    store.create_job(users[0], "late", _spec(), "d" * 64)  # type: ignore[arg-type]
    assert store.admit("late", per_user=2, global_cap=5) == "RUNNING"
    assert store.admit("early", per_user=2, global_cap=5) == "RUNNING"
    with pytest.raises(StoreError, match="no job"):
        store.admit("nope", per_user=2, global_cap=5)


def test_idempotency_keys_are_unique_per_user(store: MetaStore) -> None:
    alice = store.authenticate(store.add_user("alice"))
    bob = store.authenticate(store.add_user("bob"))
    assert alice and bob
    assert store.create_job(alice, "a", _spec(), "d" * 64, idempotency_key="k",
                            request_sha256="1" * 64)
    with pytest.raises(StoreError, match="idempotency key"):
        store.create_job(alice, "b", _spec(), "d" * 64, idempotency_key="k")
    assert store.create_job(bob, "c", _spec(), "d" * 64, idempotency_key="k")
    found = store.by_idempotency_key(alice, "k")
    assert found is not None and found["job_id"] == "a" and found["request_sha256"] == "1" * 64
    assert store.by_idempotency_key(alice, "other") is None
