"""The committed gRPC code (src/tickreplay/v1) is what protos/ generates today.

Why a test: generated code is committed (so installing the package needs no protoc), and a
.proto edited without regenerating would serve the old API silently. The test runs the exact
command of ``make proto`` into a temporary directory and compares bytes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO = "tickreplay/v1/jobs.proto"
GENERATED = ("jobs_pb2.py", "jobs_pb2.pyi", "jobs_pb2_grpc.py")
PINNED = "1.85.1"  # pyproject's grpcio-tools pin: another protoc writes other bytes


def _generate(out: Path) -> None:
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", "protos",
                    f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}",
                    f"protos/{PROTO}"], cwd=ROOT, check=True, capture_output=True, text=True)


def test_grpcio_tools_is_the_pinned_version() -> None:
    from importlib.metadata import version

    assert version("grpcio-tools") == PINNED, (
        f"grpcio-tools {version('grpcio-tools')} is installed; the committed code is from "
        f"{PINNED} (pip install -e '.[dev]')")


def test_committed_code_is_what_make_proto_generates(tmp_path: Path) -> None:
    _generate(tmp_path)
    fresh = tmp_path / "tickreplay" / "v1"
    committed = ROOT / "src" / "tickreplay" / "v1"
    assert sorted(p.name for p in fresh.iterdir()) == sorted(GENERATED)
    for name in GENERATED:
        assert (committed / name).is_file(), f"src/tickreplay/v1/{name} is missing: run `make proto`"
        assert (committed / name).read_bytes() == (fresh / name).read_bytes(), (
            f"src/tickreplay/v1/{name} is stale: run `make proto`")
    # Nothing generated from a proto that no longer exists lingers beside them.
    stale = {p.name for p in committed.glob("*_pb2*")} - set(GENERATED)
    assert not stale, f"{sorted(stale)} come from no proto: remove them (`make proto`)"


def test_the_generated_modules_import_and_name_the_service() -> None:
    from tickreplay.v1 import jobs_pb2, jobs_pb2_grpc

    service = jobs_pb2.DESCRIPTOR.services_by_name["JobService"]
    assert service.full_name == "tickreplay.v1.JobService"
    assert [m.name for m in service.methods] == [
        "SubmitBacktest", "GetJob", "ListJobs", "CancelJob", "WatchJob"]
    assert service.methods_by_name["WatchJob"].server_streaming
    assert hasattr(jobs_pb2_grpc, "JobServiceStub")
