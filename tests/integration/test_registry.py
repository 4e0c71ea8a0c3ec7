"""Strategy-image resolution (``tickreplay.runner.registry``) against REAL registries.

What is real: Debian's ``docker-registry`` (distribution 2.8), started by the fixtures on free
ports with filesystem storage in tmp, three times: open; htpasswd basic auth (bcrypt); and
``auth: token`` with a token server run by this module (a self-signed certificate from the
``openssl`` CLI as the registry's ``rootcertbundle``, RS256 JWTs signed by ``openssl dgst``), so
the registry itself checks every bearer token. Images (OCI and Docker v2 manifests, an OCI index
and a Docker manifest list) are pushed over the registry HTTP API by the module's own push
helpers, then resolved.

What is not: a registry that lies about digests or answers 5xx is a few-line fake HTTP server
(no real registry does that on purpose); "registry down" is a closed port and a socket that
accepts but never answers.

Without ``docker-registry`` (``make system-deps`` installs it) the registry tests skip, saying so.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import shutil
import socket
import subprocess
import tarfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
import pytest
from registrykit import start_registry

from tickreplay.errors import ImageError, ImageNotFound, RegistryAuthError, RegistryUnavailable
from tickreplay.runner.registry import (
    ACCEPT,
    DOCKER_MANIFEST,
    OCI_MANIFEST,
    ImageRef,
    parse_challenge,
    push_image,
    push_index,
    resolve,
    token_from,
)
from tickreplay.stack.ports import free_port

pytestmark = pytest.mark.integration

USER, PASSWORD = "alice", "s3cret"
SERVICE, ISSUER = "tickreplay-test-registry", "tickreplay-test-issuer"


# ---------------------------------------------------------------------------- real registries
@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with start_registry(tmp_path_factory.mktemp("registry")) as host:
        yield host


def _bcrypt(password: str) -> str:
    """A bcrypt hash for htpasswd (the only kind distribution accepts), from what is at hand."""
    try:
        import bcrypt  # type: ignore[import-not-found]

        return str(bcrypt.hashpw(password.encode(), bcrypt.gensalt()).decode())
    except ImportError:
        pass
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt  # libxcrypt does bcrypt; removed in Python 3.13

            hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))
        if hashed and hashed.startswith("$2"):
            return hashed
    except (ImportError, AttributeError):
        pass
    if htpasswd := shutil.which("htpasswd"):
        out = subprocess.run([htpasswd, "-nbB", USER, password], capture_output=True, text=True,
                             check=True).stdout
        return out.strip().split(":", 1)[1]
    pytest.skip("no bcrypt hasher: install the `bcrypt` package or apache2-utils (htpasswd)")


@pytest.fixture(scope="module")
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    base = tmp_path_factory.mktemp("basic-registry")
    (base / "htpasswd").write_text(f"{USER}:{_bcrypt(PASSWORD)}\n")
    auth = {"htpasswd": {"realm": "tickreplay-test", "path": str(base / "htpasswd")}}
    with start_registry(base, auth) as host:
        yield host


# ------------------------------------------------------------------ token server (bearer auth)
def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _openssl(*args: str, data: bytes | None = None) -> bytes:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl CLI is needed to sign registry tokens")
    return subprocess.run(["openssl", *args], input=data, capture_output=True, check=True).stdout


class _TokenServer:
    """Issues RS256 JWTs the registry verifies against its rootcertbundle.

    ``alice`` gets a token signed by the trusted key; ``mallory`` (same password) gets one signed
    by another key, which the registry must refuse; anyone else gets a 401.
    """

    def __init__(self, base: Path) -> None:
        self.cert, self.key, self.rogue = base / "cert.pem", base / "key.pem", base / "rogue.pem"
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(self.key),
                 "-out", str(self.cert), "-days", "2", "-subj", "/CN=tickreplay-test-token")
        _openssl("genrsa", "-out", str(self.rogue), "2048")
        self.cert_der = _openssl("x509", "-in", str(self.cert), "-outform", "DER")
        self.requests: list[dict[str, list[str]]] = []
        self.port = free_port()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                query = parse_qs(urlparse(self.path).query)
                server.requests.append(query)
                user = server.user(self.headers.get("Authorization", ""))
                if user is None:
                    self._answer(401, {"details": "credentials required"})
                    return
                self._answer(200, {"access_token": server.token(user, query), "expires_in": 300})

            def _answer(self, status: int, doc: dict[str, Any]) -> None:
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def user(self, authorization: str) -> str | None:
        if not authorization.startswith("Basic "):
            return None
        user, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
        return user if user in (USER, "mallory") and password == PASSWORD else None

    def token(self, user: str, query: dict[str, list[str]]) -> str:
        access = []
        for scope in query.get("scope", []):
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        claims = {"iss": ISSUER, "sub": user, "aud": query.get("service", [""])[0],
                  "exp": now + 300, "nbf": now - 10, "iat": now, "jti": f"{user}-{now}",
                  "access": access}
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(self.cert_der).decode()]}
        signing_input = ".".join(_b64url(json.dumps(part).encode()) for part in (header, claims))
        key = self.key if user == USER else self.rogue
        signature = _openssl("dgst", "-sha256", "-sign", str(key), data=signing_input.encode())
        return f"{signing_input}.{_b64url(signature)}"


@pytest.fixture(scope="module")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, _TokenServer]]:
    base = tmp_path_factory.mktemp("token-registry")
    tokens = _TokenServer(base)
    auth = {"token": {"realm": f"http://127.0.0.1:{tokens.port}/token", "service": SERVICE,
                      "issuer": ISSUER, "rootcertbundle": str(tokens.cert)}}
    try:
        with start_registry(base, auth) as host:
            yield host, tokens
    finally:
        tokens.httpd.shutdown()
        tokens.httpd.server_close()


# ------------------------------------------------------------------------------- test images
def _image(arch: str, salt: str = "") -> tuple[bytes, list[bytes]]:
    """A small, deterministic image: a config for linux/``arch`` and one gzipped tar layer."""
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w") as tar:
        content = f"# strategy for {arch} {salt}\n".encode()
        info = tarfile.TarInfo("app/strategy.py")
        info.size, info.mtime = len(content), 0
        tar.addfile(info, io.BytesIO(content))
    layer = gzip.compress(tar_bytes.getvalue(), mtime=0)
    diff_id = "sha256:" + hashlib.sha256(tar_bytes.getvalue()).hexdigest()
    config = {"architecture": arch, "os": "linux", "config": {},
              "rootfs": {"type": "layers", "diff_ids": [diff_id]}}
    return json.dumps(config).encode(), [layer]


def _served_digest(host: str, repo: str, reference: str) -> str:
    """sha256 of the manifest body as the registry serves it, fetched independently."""
    resp = httpx.get(f"http://{host}/v2/{repo}/manifests/{reference}", headers=ACCEPT)
    resp.raise_for_status()
    return "sha256:" + hashlib.sha256(resp.content).hexdigest()


MADE_UP = "sha256:" + "ab" * 32


# ------------------------------------------------------------------------------ open registry
def test_tag_resolves_to_the_pushed_manifest_digest(registry: str) -> None:
    ref = f"{registry}/strategies/sma:v1"
    pushed = push_image(ref, *_image("amd64"))
    got = resolve(ref)
    assert got.digest == pushed.digest == _served_digest(registry, "strategies/sma", "v1")
    assert (got.reference, got.index_digest, got.media_type) == (ref, None, OCI_MANIFEST)
    assert got.pinned == f"{registry}/strategies/sma@{pushed.digest}"

    # The tag moves; the pinned reference still names (and resolves to) the old bytes.
    moved = push_image(ref, *_image("amd64", salt="v1 again"))
    assert resolve(ref).digest == moved.digest != pushed.digest
    assert resolve(got.pinned).digest == pushed.digest


def test_digest_reference_is_verified_to_exist(registry: str) -> None:
    pushed = push_image(f"{registry}/strategies/bydigest:v1", *_image("amd64", "d"))
    pinned = f"{registry}/strategies/bydigest@{pushed.digest}"
    got = resolve(pinned)
    assert (got.digest, got.pinned, got.index_digest) == (pushed.digest, pinned, None)
    assert resolve(ImageRef.parse(f"{registry}/strategies/bydigest:v1@{pushed.digest}")).digest \
        == pushed.digest

    with pytest.raises(ImageNotFound, match=f"strategies/bydigest@{MADE_UP}") as e:
        resolve(f"{registry}/strategies/bydigest@{MADE_UP}")
    assert not e.value.retryable


def test_multi_arch_index_resolves_to_the_platform_manifest(registry: str) -> None:
    repo = f"{registry}/strategies/multi"
    amd64 = push_image(repo, *_image("amd64", "multi"))  # untagged: pushed by digest
    arm64 = push_image(repo, *_image("arm64", "multi"))
    index = push_index(f"{repo}:v2", [(amd64, "linux/amd64"), (arm64, "linux/arm64")])

    got = resolve(f"{repo}:v2")
    assert (got.digest, got.index_digest, got.media_type) == (amd64.digest, index.digest,
                                                              OCI_MANIFEST)
    assert got.pinned == f"{repo}@{amd64.digest}"
    assert index.digest == _served_digest(registry, "strategies/multi", "v2")
    assert resolve(f"{repo}:v2", platform="linux/arm64").digest == arm64.digest
    assert resolve(f"{repo}:v2", platform="linux/arm64/v8").digest == arm64.digest
    by_index = resolve(f"{repo}@{index.digest}")  # an index named by digest: still resolved
    assert (by_index.digest, by_index.index_digest) == (amd64.digest, index.digest)

    with pytest.raises(ImageError, match=r"no manifest for linux/s390x.*linux/amd64, linux/arm64"):
        resolve(f"{repo}:v2", platform="linux/s390x")
    with pytest.raises(ImageError, match="invalid platform"):
        resolve(f"{repo}:v2", platform="amd64")


def test_docker_v2_media_types(registry: str) -> None:
    repo = f"{registry}/strategies/docker"
    single = push_image(f"{repo}:single", *_image("amd64", "docker"), docker=True)
    got = resolve(f"{repo}:single")
    assert (got.digest, got.media_type, got.index_digest) == (single.digest, DOCKER_MANIFEST, None)

    arm64 = push_image(repo, *_image("arm64", "docker"), docker=True)
    listed = push_index(f"{repo}:list", [(arm64, "linux/arm64"), (single, "linux/amd64")],
                        docker=True)
    got = resolve(f"{repo}:list")
    assert (got.digest, got.index_digest, got.media_type) == (single.digest, listed.digest,
                                                              DOCKER_MANIFEST)


def test_missing_tag_or_repository_is_a_clear_not_found(registry: str) -> None:
    push_image(f"{registry}/strategies/present:v1", *_image("amd64", "present"))
    with pytest.raises(ImageNotFound) as e:
        resolve(f"{registry}/strategies/present:v9")
    assert f"image {registry}/strategies/present:v9: not found" in str(e.value)
    assert not e.value.retryable
    with pytest.raises(ImageNotFound, match="strategies/absent:v1: not found"):
        resolve(f"{registry}/strategies/absent:v1")


# ------------------------------------------------------------------------- registry down
def test_registry_down_is_retryable() -> None:
    closed = free_port()
    with pytest.raises(RegistryUnavailable, match="unreachable") as e:
        resolve(f"127.0.0.1:{closed}/strategies/sma:v1", timeout=2)
    assert e.value.retryable

    with socket.socket() as silent:  # accepts connections (kernel backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        with pytest.raises(RegistryUnavailable, match="did not answer within 0.3s"):
            resolve(f"127.0.0.1:{silent.getsockname()[1]}/strategies/sma:v1", timeout=0.3)


def test_scheme_follows_insecure_and_can_be_forced(registry: str) -> None:
    pushed = push_image(f"{registry}/strategies/scheme:v1", *_image("amd64", "scheme"))
    with pytest.raises(RegistryUnavailable):  # https to a plain-HTTP registry: no TLS handshake
        resolve(f"{registry}/strategies/scheme:v1", insecure=False, timeout=2)
    assert resolve(f"{registry}/strategies/scheme:v1", insecure=False,
                   scheme="http").digest == pushed.digest


def test_stopped_registry_is_retryable(tmp_path: Path) -> None:
    with start_registry(tmp_path / "stopped") as host:
        push_image(f"{host}/strategies/sma:v1", *_image("amd64", "stopped"))
        assert resolve(f"{host}/strategies/sma:v1").digest
    with pytest.raises(RegistryUnavailable):
        resolve(f"{host}/strategies/sma:v1", timeout=2)


# ------------------------------------------------------------------------------ fake liars
@contextmanager
def _fake_registry(answer: Callable[[str], tuple[int, dict[str, str], bytes]]) -> Iterator[str]:
    """An HTTP server answering every HEAD/GET with ``answer(path)``."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _reply(self, body: bool) -> None:
            status, headers, content = answer(self.path)
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            if body:
                self.wfile.write(content)

        def do_HEAD(self) -> None:
            self._reply(body=False)

        def do_GET(self) -> None:
            self._reply(body=True)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_registry_that_lies_about_the_digest_is_refused() -> None:
    real = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {},
                       "layers": []}).encode()
    claimed = "sha256:" + "0" * 64  # what the liar names; its bytes hash to something else

    def liar(path: str) -> tuple[int, dict[str, str], bytes]:
        if "/v2/broken/" in path:
            return 503, {}, b""
        return 200, {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": claimed}, real

    with _fake_registry(liar) as host:
        with pytest.raises(ImageError, match=f"named digest {claimed} but served a manifest"):
            resolve(f"{host}/strategies/sma:v1")
        with pytest.raises(ImageError, match="refusing"):  # by digest: the body must hash to it
            resolve(f"{host}/strategies/sma@{MADE_UP}")
        with pytest.raises(RegistryUnavailable, match="answered 503"):
            resolve(f"{host}/broken/sma:v1")


# ---------------------------------------------------------------------------- authenticated
def test_basic_auth_registry(basic_registry: str) -> None:
    ref = f"{basic_registry}/strategies/private:v1"
    pushed = push_image(ref, *_image("amd64", "basic"), credentials=(USER, PASSWORD))
    with pytest.raises(RegistryAuthError, match="requires credentials .basic auth. and none") as e:
        resolve(ref)
    assert not e.value.retryable
    with pytest.raises(RegistryAuthError, match=r"refused access \(401\)"):
        resolve(ref, credentials=(USER, "wrong"))
    assert resolve(ref, credentials=(USER, PASSWORD)).digest == pushed.digest


def test_bearer_token_registry(token_registry: tuple[str, _TokenServer]) -> None:
    host, tokens = token_registry
    ref = f"{host}/strategies/tokened:v1"
    pushed = push_image(ref, *_image("amd64", "bearer"), credentials=(USER, PASSWORD))
    asked = [s.rpartition(":") for q in tokens.requests for s in q.get("scope", [])]
    assert ("repository:strategies/tokened", ":", "pull,push") in asked or \
        ("repository:strategies/tokened", ":", "push,pull") in asked, asked

    with pytest.raises(RegistryAuthError, match="refused anonymous access"):
        resolve(ref)
    with pytest.raises(RegistryAuthError, match="refused the credentials"):
        resolve(ref, credentials=(USER, "wrong"))
    # A token the registry cannot verify (signed by another key) is refused by the registry.
    with pytest.raises(RegistryAuthError, match=r"refused access \(401\)"):
        resolve(ref, credentials=("mallory", PASSWORD))

    tokens.requests.clear()
    got = resolve(ref, credentials=(USER, PASSWORD))
    assert got.digest == pushed.digest
    assert tokens.requests[0]["scope"] == ["repository:strategies/tokened:pull"]
    assert tokens.requests[0]["service"] == [SERVICE]
    assert tokens.requests[0]["account"] == [USER]


# ----------------------------------------------------------------- parsing (no server needed)
@pytest.mark.parametrize(("ref", "parts"), [
    ("localhost:5000/strategies/sma:v1.2", ("localhost:5000", "strategies/sma", "v1.2", None)),
    ("localhost/sma", ("localhost", "sma", None, None)),
    ("registry.example.com/a/b/c", ("registry.example.com", "a/b/c", None, None)),
    (f"127.0.0.1:5000/x/y:t@{MADE_UP}", ("127.0.0.1:5000", "x/y", "t", MADE_UP)),
    (f"[::1]:5000/x@{MADE_UP}", ("[::1]:5000", "x", None, MADE_UP)),
])
def test_image_ref_parse(ref: str, parts: tuple[str, str, str | None, str | None]) -> None:
    image = ImageRef.parse(ref)
    assert (image.registry, image.repository, image.tag, image.digest) == parts
    assert str(image) == ref
    assert image.pinned(MADE_UP) == f"{parts[0]}/{parts[1]}@{MADE_UP}"


@pytest.mark.parametrize(("ref", "message"), [
    ("strategies/sma:v1", "names no registry host; Docker Hub"),
    ("sma", "names no registry host"),
    ("localhost:5000/Strategies/sma", "invalid image reference"),
    ("localhost:5000/sma@sha256:abc", "not a sha256 digest"),
    ("localhost:5000/sma@sha512:" + "a" * 128, "not a sha256 digest"),
])
def test_image_ref_refused(ref: str, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        ImageRef.parse(ref)


def test_challenge_and_token_parsing() -> None:
    assert parse_challenge('Bearer realm="https://auth.example/token",service="reg.example",'
                           'scope="repository:a/b:pull,push",error="insufficient_scope"') == (
        "bearer", {"realm": "https://auth.example/token", "service": "reg.example",
                   "scope": "repository:a/b:pull,push", "error": "insufficient_scope"})
    assert parse_challenge('Basic realm="Registry Realm"') == ("basic", {"realm": "Registry Realm"})
    assert token_from(b'{"token": "t1", "access_token": "t2"}', "r") == "t1"
    assert token_from(b'{"access_token": "t2"}', "r") == "t2"
    with pytest.raises(RegistryAuthError, match="answered no token"):
        token_from(b'{"expires_in": 60}', "r")
