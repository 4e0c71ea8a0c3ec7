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
        if not grpc_port:
            await server.serve()
            return
        from tickreplay.api.grpc_server import serve_grpc

        # uvicorn handles SIGTERM/SIGINT; when it returns, gRPC turns NOT_SERVING and drains.
        stop, started = asyncio.Event(), asyncio.Event()
        grpc_task = asyncio.create_task(serve_grpc(rest.state.service, host, grpc_port,
                                                   stop=stop, started=started))
        await asyncio.wait([grpc_task, asyncio.create_task(started.wait())],
                           return_when=asyncio.FIRST_COMPLETED)
        if grpc_task.done():
            grpc_task.result()  # could not listen: fail now, naming the port
        try:
            await server.serve()
        finally:
            stop.set()
            await grpc_task

    asyncio.run(serve())
