"""``tickreplay api``: serve the REST job API (uvicorn)."""

from __future__ import annotations

from typing import Annotated

import typer

from tickreplay.cli.app import app, load_settings


@app.command("api")
def api_command(
    host: Annotated[str, typer.Option(help="Interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port")] = 8080,
) -> None:
    """Serve the REST job API over the stack's metadata database (migrated first)."""
    import uvicorn

    from tickreplay.api.rest import create_app
    from tickreplay.db.migrate import upgrade
    from tickreplay.db.store import MetaStore, open_engine

    settings = load_settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    engine = open_engine(settings.resolved_db_dsn())
    upgrade(engine)
    uvicorn.run(create_app(MetaStore(engine)), host=host, port=port, log_level="info")
