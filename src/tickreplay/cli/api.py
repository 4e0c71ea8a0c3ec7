"""``tickreplay api``: serve the job API, REST (uvicorn) and gRPC, in one process."""

from __future__ import annotations

from typing import Annotated

import typer

from tickreplay.cli.app import app, load_settings
from tickreplay.cli.db import open_meta_store


@app.command("api")
def api_command(
    host: Annotated[str, typer.Option(help="Interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="REST port")] = 8000,
    grpc_port: Annotated[int, typer.Option(min=0, max=65535,
                                           help="gRPC port (0: no gRPC server)")] = 50051,
) -> None:
    """Serve the job API over the stack's metadata database (migrated first), with JSON logs.

    REST and gRPC share one JobService (one Temporal client, one database pool) and one
    event loop; SIGTERM stops both.
    """
    import asyncio

    import uvicorn

    from tickreplay import logjson
    from tickreplay.api.rest import create_app

    logjson.configure()
    settings = load_settings()
    rest = create_app(open_meta_store(), settings)

    async def serve() -> None:
        server = uvicorn.Server(uvicorn.Config(rest, host=host, port=port, log_config=None,
                                               access_log=False))
        grpc_server = None
        if grpc_port:
            from tickreplay.api.grpc_server import create_server

            grpc_server = create_server(rest.state.service, host, grpc_port)
            await grpc_server.start()
        try:
            await server.serve()
        finally:
            if grpc_server is not None:
                await grpc_server.stop(5)

    asyncio.run(serve())
