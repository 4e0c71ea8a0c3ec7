"""``tickreplay image build STRATEGY.py --tag REF`` and ``tickreplay image push REF``.

A strategy image is the runner image plus the strategy's sources (and, optionally, its own
pinned packages from a local wheelhouse): ``FROM`` the runner image, the files under
``/strategy``, ``TICKREPLAY_STRATEGY`` naming the entry. The build has no network (podman
``--network=none``), a fixed timestamp and exec-form steps only: the runner image has no shell.
Jobs then name the image (``submit --image``); the first activity pins its digest.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from tickreplay.cli.app import app, err, fail, load_settings

image_app = typer.Typer(no_args_is_help=True, help="Strategy images: build and push.")
app.add_typer(image_app, name="image")

TlsVerify = Annotated[bool | None, typer.Option(
    "--tls-verify/--no-tls-verify",
    help="HTTPS to the registry [default: plain HTTP for loopback and TICKREPLAY_REGISTRY_INSECURE "
         "registries, HTTPS otherwise]")]


def containerfile(base: str, target: str, *, requirements: bool = False) -> str:
    """The strategy image's Containerfile: ``target`` is what ``TICKREPLAY_STRATEGY`` names."""
    lines = [f"FROM {base}"]
    if requirements:  # the user's pinned packages, from their wheelhouse, hashes checked
        lines += ["USER 0:0",
                  "COPY wheels/ /strategy-wheels/",
                  "COPY requirements.txt /strategy-wheels/requirements.txt",
                  "RUN " + json.dumps(["/opt/tickreplay/bin/pip", "install", "--no-index",
                                       "--no-cache-dir", "--require-hashes", "--find-links",
                                       "/strategy-wheels", "-r",
                                       "/strategy-wheels/requirements.txt"]),
                  "USER 10001:10001"]
    lines += ["COPY strategy/ /strategy/",
              f"ENV TICKREPLAY_STRATEGY={target} PYTHONPATH=/strategy",
              f"LABEL io.tickreplay.strategy={json.dumps(target)}"]
    return "\n".join(lines) + "\n"


@image_app.command("build")
def build_cmd(
    strategy: Annotated[str, typer.Argument(help="Strategy file.py[:Class] or module:Class")],
    tag: Annotated[str, typer.Option(help="Image reference, e.g. localhost:5000/me/sma:v1")],
    base: Annotated[str | None, typer.Option(
        help="Runner image to build on [default: TICKREPLAY_RUNNER_IMAGE]")] = None,
    requirements: Annotated[Path | None, typer.Option(
        help="Your own packages, pinned with --hash (pip's requirements format)")] = None,
    wheels: Annotated[Path | None, typer.Option(
        help="Directory with the wheels --requirements names (no network at build)")] = None,
) -> None:
    """Build a strategy image with podman: the runner image plus this strategy."""
    from tickreplay.errors import TickreplayError
    from tickreplay.runner.registry import ImageRef
    from tickreplay.strategy.api import StrategyError
    from tickreplay.strategy.loader import _split_spec, bundle_from_spec

    try:
        ImageRef.parse(tag)
        bundle = bundle_from_spec(strategy)
    except (StrategyError, TickreplayError) as e:
        raise fail(str(e)) from None
    if (requirements is None) != (wheels is None):
        raise fail("--requirements and --wheels go together")
    target, class_name = _split_spec(strategy)
    entry = (f"/strategy/{bundle.entry}" if Path(target).suffix == ".py" or Path(target).exists()
             else target)  # a module: found on PYTHONPATH=/strategy
    if class_name:
        entry += f":{class_name}"
    base = base or load_settings().runner_image
    with tempfile.TemporaryDirectory(prefix="tickreplay-image-") as tmp:
        ctx = Path(tmp)
        for rel, text in bundle.files.items():
            dest = ctx / "strategy" / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(text)
        if requirements is not None and wheels is not None:
            (ctx / "requirements.txt").write_bytes(requirements.read_bytes())
            (ctx / "wheels").mkdir()
            for w in wheels.glob("*.whl"):
                (ctx / "wheels" / w.name).write_bytes(w.read_bytes())
        (ctx / "Containerfile").write_text(containerfile(base, entry,
                                                         requirements=requirements is not None))
        proc = subprocess.run(["podman", "build", "-q", "--pull=never", "--network=none",
                               "--timestamp", "0", "-f", str(ctx / "Containerfile"), "-t", tag,
                               str(ctx)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise fail(f"podman build failed: {proc.stderr.strip()[-2000:]}")
    image_id = proc.stdout.strip().splitlines()[-1]
    err.print(f"built {tag} (strategy {entry}, sources {bundle.digest[:12]})")
    sys.stdout.write(image_id + "\n")  # machine-readable: never wrapped


@image_app.command("push")
def push_cmd(
    ref: Annotated[str, typer.Argument(help="The image reference built with `image build`")],
    tls_verify: TlsVerify = None,
) -> None:
    """Push a strategy image and print the digest the registry now serves for it (verified)."""
    from tickreplay.errors import TickreplayError
    from tickreplay.runner.registry import ImageRef, plain_http, resolve

    settings = load_settings()
    try:
        image = ImageRef.parse(ref)
    except TickreplayError as e:
        raise fail(str(e)) from None
    http = plain_http(image.registry, settings.registry_insecure_hosts()) \
        if tls_verify is None else not tls_verify
    argv = ["podman", "push", "-q", f"--tls-verify={str(not http).lower()}"]
    if settings.registry_username:
        argv.append(f"--creds={settings.registry_username}:{settings.registry_password or ''}")
    proc = subprocess.run([*argv, ref], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise fail(f"podman push failed: {proc.stderr.strip()[-2000:]}")
    try:
        resolved = resolve(image, credentials=settings.registry_credentials(),
                           scheme="http" if http else "https")
    except TickreplayError as e:
        raise fail(f"pushed, but cannot resolve it back: {e}") from None
    err.print(f"pushed {ref}")
    sys.stdout.write(resolved.pinned + "\n")
