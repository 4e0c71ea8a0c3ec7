"""The REST API over real HTTP (uvicorn on a free port) and a real SQLite metadata store.

Covers what exists so far of issue 13: 401 without a valid token, 404 across users, admin
visibility, cursor pagination and the status filter, health and readiness. Job submission
through the API is not built yet.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from tickreplay.api.rest import create_app
from tickreplay.db.migrate import upgrade
from tickreplay.db.store import MetaStore, open_engine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def api(tmp_path: Path) -> Iterator[dict[str, Any]]:
    engine = open_engine(f"sqlite:///{tmp_path / 'meta.db'}")
    upgrade(engine)
    store = MetaStore(engine)
    tokens = {"alice": store.add_user("alice"), "bob": store.add_user("bob"),
              "root": store.add_user("root", admin=True)}
    server = uvicorn.Server(uvicorn.Config(create_app(store), host="127.0.0.1",
                                           port=_free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    url = f"http://127.0.0.1:{server.config.port}"
    try:
        yield {"url": url, "store": store, "tokens": tokens}
    finally:
        server.should_exit = True
        thread.join(10)
        engine.dispose()


def _get(api: dict[str, Any], path: str, who: str | None, **params: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {api['tokens'][who]}"} if who else {}
    return httpx.get(api["url"] + path, headers=headers, params=params, timeout=10)


def _spec() -> dict[str, Any]:
    return {"strategy": "s.py", "symbols": ["AAA"], "start": "2024-03-04", "end": "2024-03-08",
            "params": {}}


def test_every_v1_endpoint_needs_a_valid_token(api: dict[str, Any]) -> None:
    for path in ("/v1/jobs", "/v1/jobs/x"):
        assert _get(api, path, None).status_code == 401
        bad = httpx.get(api["url"] + path, headers={"Authorization": "Bearer nope"}, timeout=10)
        assert bad.status_code == 401 and bad.headers["www-authenticate"] == "Bearer"
    api["store"].revoke_user("bob")
    assert _get(api, "/v1/jobs", "bob").status_code == 401
    assert _get(api, "/healthz", None).json() == {"status": "ok"}
    assert _get(api, "/readyz", None).json() == {"status": "ok", "db": "ok"}


def test_users_see_only_their_own_jobs_admins_all_in_cursor_pages(api: dict[str, Any]) -> None:
    store: MetaStore = api["store"]
    alice, bob = (store.authenticate(api["tokens"][n]) for n in ("alice", "bob"))
    assert alice and bob
    for i in range(5):
        store.create_job(alice, f"a{i}", _spec(), "d" * 64)
    store.create_job(bob, "b0", _spec(), "d" * 64)
    store.set_status("a2", "RUNNING")

    got = _get(api, "/v1/jobs/a1", "alice")
    assert got.status_code == 200 and got.json()["status"] == "PENDING"
    assert got.json()["symbols"] == ["AAA"] and "user_id" not in got.json()
    assert _get(api, "/v1/jobs/b0", "alice").status_code == 404  # exists, but not hers
    assert _get(api, "/v1/jobs/zz", "alice").status_code == 404
    assert _get(api, "/v1/jobs/b0", "root").json()["job_id"] == "b0"

    ids, cursor = [], None
    while True:
        page = _get(api, "/v1/jobs", "alice", limit=2, **({"cursor": cursor} if cursor else {}))
        assert page.status_code == 200
        ids.append([j["job_id"] for j in page.json()["jobs"]])
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    assert ids == [["a0", "a1"], ["a2", "a3"], ["a4"]]
    running = _get(api, "/v1/jobs", "alice", status="RUNNING").json()["jobs"]
    assert [j["job_id"] for j in running] == ["a2"]
    assert [j["job_id"] for j in _get(api, "/v1/jobs", "bob").json()["jobs"]] == ["b0"]
    assert len(_get(api, "/v1/jobs", "root", limit=100).json()["jobs"]) == 6


def test_bad_queries_are_422_naming_the_field(api: dict[str, Any]) -> None:
    bad = _get(api, "/v1/jobs", "alice", status="DONE")
    assert bad.status_code == 422 and "status" in bad.text
    bad = _get(api, "/v1/jobs", "alice", cursor="garbage")
    assert bad.status_code == 422 and "cursor" in bad.text
    bad = _get(api, "/v1/jobs", "alice", limit=0)
    assert bad.status_code == 422 and "limit" in bad.text


def test_the_committed_openapi_document_is_the_served_one(api: dict[str, Any]) -> None:
    """`make openapi` rewrites docs/openapi.json; this fails when it is stale."""
    import json

    served = httpx.get(api["url"] + "/openapi.json", timeout=10).json()
    committed = json.loads((Path(__file__).resolve().parents[2] / "docs" / "openapi.json")
                           .read_text())
    assert served == committed, "docs/openapi.json is stale: run `make openapi`"
