"""``tickreplay api``: serve the REST job API (uvicorn)."""

from __future__ import annotations

from typing import Annotated

import typer

from tickreplay.cli.app import app
from tickreplay.cli.db import open_meta_store


@app.command("api")
def api_command(
    host: Annotated[str, typer.Option(help="Interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port")] = 8080,
) -> None:
    """Serve the REST job API over the stack's metadata database (migrated first)."""
    import uvicorn

    from tickreplay.api.rest import create_app

    uvicorn.run(create_app(open_meta_store()), host=host, port=port, log_level="info")
