"""``tickreplay db upgrade / downgrade / current`` and ``tickreplay users add / list / revoke``."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.table import Table

from tickreplay.cli.app import app, console, err, fail, load_settings

db_app = typer.Typer(no_args_is_help=True, help="The metadata database: schema migrations.")
users_app = typer.Typer(no_args_is_help=True, help="Users of the job API and their tokens.")
app.add_typer(db_app, name="db")
app.add_typer(users_app, name="users")

Dsn = Annotated[str | None, typer.Option(
    "--dsn", help="SQLAlchemy URL [default: TICKREPLAY_DB_DSN, else SQLite in the state dir]")]


def _engine(dsn: str | None) -> Any:
    from tickreplay.db.store import open_engine

    settings = load_settings()
    if dsn is None:
        settings.home.mkdir(parents=True, exist_ok=True)
    return open_engine(dsn or settings.resolved_db_dsn())


def open_meta_store(dsn: str | None = None) -> Any:
    """The metadata store, its schema migrated first (``users``, ``tickreplay api``).

    A user command on a fresh state dir must not need a separate ``db upgrade`` step.
    """
    from tickreplay.db.migrate import upgrade
    from tickreplay.db.store import MetaStore

    engine = _engine(dsn)
    upgrade(engine)
    return MetaStore(engine)


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument()] = "head", dsn: Dsn = None) -> None:
    """Apply the schema migrations up to ``revision`` (default: the newest)."""
    from tickreplay.db.migrate import current, upgrade

    engine = _engine(dsn)
    upgrade(engine, revision)
    console.print(f"database at revision {current(engine)}")


@db_app.command("downgrade")
def db_downgrade(revision: Annotated[str, typer.Argument(help="Target, e.g. base")],
                 dsn: Dsn = None) -> None:
    """Take the schema back to ``revision`` (``base`` removes every table)."""
    from tickreplay.db.migrate import current, downgrade

    engine = _engine(dsn)
    downgrade(engine, revision)
    console.print(f"database at revision {current(engine) or 'base'}")


@db_app.command("current")
def db_current(dsn: Dsn = None) -> None:
    """The schema revision of the database."""
    from tickreplay.db.migrate import current

    console.print(current(_engine(dsn)) or "base (empty)")


@users_app.command("add")
def users_add(name: str, admin: Annotated[bool, typer.Option("--admin")] = False,
              dsn: Dsn = None) -> None:
    """Create a user and print its API token (shown this once; only its hash is stored)."""
    from tickreplay.db.store import StoreError

    try:
        token = open_meta_store(dsn).add_user(name, admin=admin)
    except StoreError as e:
        raise fail(str(e), 1) from None
    err.print(f"user {name}{' (admin)' if admin else ''} created; its token (shown once):",
              highlight=False)
    sys.stdout.write(token + "\n")


@users_app.command("list")
def users_list(as_json: Annotated[bool, typer.Option("--json")] = False,
               dsn: Dsn = None) -> None:
    """Users, their role and whether they are revoked."""
    users = open_meta_store(dsn).users()
    if as_json:
        sys.stdout.write(json.dumps(users, default=str, indent=2) + "\n")
        return
    table = Table(title="users")
    for col in ("name", "admin", "created", "revoked"):
        table.add_column(col)
    for u in users:
        table.add_row(u["name"], "yes" if u["admin"] else "", str(u["created_at"])[:19],
                      "yes" if u["revoked"] else "")
    console.print(table)


@users_app.command("revoke")
def users_revoke(name: str, dsn: Dsn = None) -> None:
    """Revoke a user and all its tokens (its jobs and results stay)."""
    from tickreplay.db.store import StoreError

    try:
        open_meta_store(dsn).revoke_user(name)
    except StoreError as e:
        raise fail(str(e), 1) from None
    console.print(f"revoked {name}")
