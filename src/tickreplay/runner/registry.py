"""Strategy images: turn ``host/repo/strategy:v1.2`` into the immutable digest that will run.

The first activity of an image job calls :func:`resolve` once; the digest it returns is stored on
the job and in the result manifest, and every later attempt pulls exactly that digest. A tag
moved after submission therefore cannot change what a job runs, and a result can always name
the bytes that produced it.

Why the digest is verified, not taken from ``Docker-Content-Digest``: the header is only the
registry's claim. The manifest body is fetched by that digest and its sha256 must equal it (for a
by-digest reference, equal the requested digest), so a registry, mirror or proxy that serves
other bytes than it names is refused instead of silently changing the strategy that runs.

Why the platform is resolved here: a multi-arch tag names an index, whose digest says nothing
about which manifest a linux/amd64 node would pull (that choice is made by the puller, at pull
time). Resolving to the platform manifest's digest up front makes every attempt, on any node,
run the same manifest; the index digest is kept alongside for provenance. A tag that names a
single manifest is taken as is (its platform is in its config blob, checked when it is run).

References need a registry host (``localhost:5000/strategies/sma:v1``): nothing can be pulled
from Docker Hub here, so a Hub-style ``strategies/sma:v1`` is refused rather than mapped to
docker.io. No tag and no digest means ``latest``, as in Docker. Plain HTTP is used for loopback
registries unless ``insecure=False``; ``scheme=`` forces one either way.

The push helpers (:func:`push_image`, :func:`push_index`) speak the same API for the tests and
for ``tickreplay image push``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import urljoin

import httpx

from tickreplay.errors import ImageError, ImageNotFound, RegistryAuthError, RegistryUnavailable

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
ACCEPT = {"Accept": f"{OCI_INDEX}, {OCI_MANIFEST}, {DOCKER_LIST}, {DOCKER_MANIFEST}"}
# distribution's own cap on a manifest; a body past it is not a manifest, and is not read on.
MAX_BODY = 4 * 1024 * 1024
_NOT_FOUND = {"MANIFEST_UNKNOWN", "NAME_UNKNOWN", "BLOB_UNKNOWN"}
Scheme = Literal["http", "https"]

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REF = re.compile(
    r"^(?P<registry>localhost(?::\d+)?|\[[0-9a-fA-F:]+\](?::\d+)?|[A-Za-z0-9.-]+(?::\d+)?)"
    rf"/(?P<repository>{_COMPONENT}(?:/{_COMPONENT})*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?(?:@(?P<digest>[^@]+))?$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_PARAM = re.compile(r'(\w+)=(?:"([^"]*)"|([^\s,]*))')


def _check_digest(digest: str, what: str) -> str:
    if not _DIGEST.match(digest):
        raise ImageError(f"{what}: {digest!r} is not a sha256 digest (sha256:<64 hex>)")
    return digest


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class ImageRef:
    """A parsed image reference: ``registry`` is ``host[:port]``, ``repository`` the path."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, ref: str) -> ImageRef:
        first = ref.split("/", 1)[0]
        if "/" not in ref or not ("." in first or ":" in first or first == "localhost"):
            raise ImageError(
                f"image reference {ref!r} names no registry host; Docker Hub cannot be reached "
                "here, so write it in full, e.g. localhost:5000/strategies/sma:v1")
        m = _REF.match(ref)
        if not m:
            raise ImageError(f"invalid image reference {ref!r}: expected "
                             "host[:port]/repo/path[:tag][@sha256:<64 hex>], lower-case path")
        digest = m["digest"] and _check_digest(m["digest"], f"image reference {ref!r}")
        return cls(m["registry"], m["repository"], m["tag"], digest or None)

    @property
    def reference(self) -> str:
        """What goes after ``/manifests/``: the digest if given, else the tag (``latest``)."""
        return self.digest or self.tag or "latest"

    def pinned(self, digest: str) -> str:
        """``host/repo@sha256:...``: the reference every attempt pulls."""
        return f"{self.registry}/{self.repository}@{_check_digest(digest, str(self))}"

    def __str__(self) -> str:
        return (f"{self.registry}/{self.repository}" + (f":{self.tag}" if self.tag else "")
                + (f"@{self.digest}" if self.digest else ""))


@dataclass(frozen=True)
class ResolvedImage:
    """What a reference resolved to. ``digest`` is the manifest to run (the platform's manifest
    when the reference named an index, whose digest is then ``index_digest``)."""

    reference: str
    digest: str
    index_digest: str | None
    media_type: str
    pinned: str


@dataclass(frozen=True)
class Descriptor:
    """An OCI descriptor of something pushed: what an index or manifest lists."""

    media_type: str
    digest: str
    size: int

    def as_json(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="...",service="...",scope="..."`` -> ``("bearer", {"realm": ...})``."""
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), {k.lower(): q or b for k, q, b in _PARAM.findall(rest)}


def _is_loopback(registry: str) -> bool:
    host = registry.split("]")[0] + "]" if registry.startswith("[") else registry.split(":")[0]
    return host in ("localhost", "[::1]") or host.startswith("127.")


def plain_http(registry: str, insecure_hosts: set[str] | frozenset[str] = frozenset()) -> bool:
    """Whether ``registry`` (``host[:port]``) is spoken to over plain HTTP: loopback ones and
    those an operator listed (``TICKREPLAY_REGISTRY_INSECURE``)."""
    return _is_loopback(registry) or registry in insecure_hosts


class _Registry:
    """One conversation with a registry: its URL, the client and the Authorization it earned.

    Auth is answered when asked for (a 401's challenge), as docker and podman do: Basic with
    the credentials, or a Bearer token fetched from the challenge's realm for its scope.
    """

    def __init__(self, ref: str | ImageRef, *, credentials: tuple[str, str] | None,
                 insecure: bool, scheme: Scheme | None, timeout: float) -> None:
        self.image = ref if isinstance(ref, ImageRef) else ImageRef.parse(ref)
        scheme = scheme or ("http" if insecure and _is_loopback(self.image.registry) else "https")
        self.base = f"{scheme}://{self.image.registry}"
        self.credentials, self.timeout = credentials, timeout
        self.client = httpx.Client(timeout=timeout, follow_redirects=True)
        self.authorization: str | None = None
        self.answered: str | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.client.close()

    def _call(self, method: str, url: str, *, what: str, headers: dict[str, str],
              content: bytes | None = None,
              params: dict[str, str] | None = None) -> tuple[httpx.Response, bytes]:
        """One HTTP exchange, its body read up to :data:`MAX_BODY`; no answer -> retryable."""
        origin = httpx.URL(url).copy_with(path="/", query=None)
        try:
            req = self.client.build_request(method, url, headers=headers, content=content,
                                            params=params)
            resp = self.client.send(req, stream=True)
            try:
                body = bytearray()
                for chunk in resp.iter_bytes():
                    body += chunk
                    if len(body) > MAX_BODY:
                        raise ImageError(f"{what}: {url} sent more than {MAX_BODY} bytes")
            finally:
                resp.close()
        except httpx.TimeoutException as e:
            raise RegistryUnavailable(f"{what}: {origin} did not answer within "
                                      f"{self.timeout:g}s") from e
        except httpx.TransportError as e:
            raise RegistryUnavailable(f"{what}: {origin} unreachable: {e}") from e
        return resp, bytes(body)

    def send(self, method: str, path: str, *, what: str, scope: str = "pull",
             headers: dict[str, str] | None = None,
             content: bytes | None = None) -> tuple[httpx.Response, bytes]:
        """``path`` (or an absolute upload URL) with auth as the registry asks; errors mapped."""
        url = urljoin(self.base + "/", path)
        for _ in range(3):  # at most: a pull token, then a push token
            hdrs = dict(headers or {})
            if self.authorization:
                hdrs["Authorization"] = self.authorization
            resp, body = self._call(method, url, what=what, headers=hdrs, content=content)
            challenge = resp.headers.get("www-authenticate", "")
            if resp.status_code != 401 or not challenge or challenge == self.answered:
                break
            self.authorization, self.answered = self._authorize(challenge, scope, what), challenge
        _raise_for(resp, body, what, self.image.registry, self.credentials is not None)
        return resp, body

    def _basic(self) -> str:
        assert self.credentials is not None
        return "Basic " + base64.b64encode(":".join(self.credentials).encode()).decode()

    def _authorize(self, challenge: str, scope: str, what: str) -> str:
        scheme, params = parse_challenge(challenge)
        if scheme == "basic":
            if self.credentials is None:
                raise RegistryAuthError(f"{what}: registry {self.image.registry} requires "
                                        "credentials (basic auth) and none were given")
            return self._basic()
        if scheme != "bearer" or not params.get("realm"):
            raise RegistryAuthError(f"{what}: unsupported auth challenge {challenge!r}")
        query = {"scope": params.get("scope") or f"repository:{self.image.repository}:{scope}"}
        if params.get("service"):
            query["service"] = params["service"]
        headers = {}
        if self.credentials is not None:
            headers["Authorization"], query["account"] = self._basic(), self.credentials[0]
        resp, body = self._call("GET", params["realm"], what=what, headers=headers, params=query)
        if resp.status_code in (401, 403):
            raise RegistryAuthError(
                f"{what}: token server {params['realm']} refused "
                + ("the credentials" if self.credentials else "anonymous access (no credentials "
                   "were given)") + f" for {query['scope']}")
        _raise_for(resp, body, f"{what}: token from {params['realm']}", self.image.registry,
                   self.credentials is not None)
        return "Bearer " + token_from(body, params["realm"])


def token_from(body: bytes, realm: str) -> str:
    """The token of a token server's answer: ``token``, or OAuth2's ``access_token``."""
    try:
        doc = json.loads(body)
        token = doc.get("token") or doc.get("access_token")
    except (ValueError, AttributeError):
        token = None
    if not isinstance(token, str) or not token:
        raise RegistryAuthError(f"token server {realm} answered no token")
    return token


def _raise_for(resp: httpx.Response, body: bytes, what: str, registry: str,
               had_credentials: bool) -> None:
    status = resp.status_code
    if status < 400:
        return
    try:
        errors = json.loads(body).get("errors") or []
        codes = {str(e.get("code")) for e in errors}
        detail = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors)
    except (ValueError, AttributeError):
        codes, detail = set(), ""
    detail = f" ({detail})" if detail else ""
    if status in (401, 403):
        raise RegistryAuthError(f"{what}: registry {registry} refused access ({status})" + (
            detail if had_credentials else f"{detail}; no credentials were given"))
    if status == 404 or codes & _NOT_FOUND:
        raise ImageNotFound(f"{what}: not found in registry {registry}{detail}")
    if status == 429 or status >= 500:
        raise RegistryUnavailable(f"{what}: registry {registry} answered {status}{detail}")
    raise ImageError(f"{what}: registry {registry} answered {status}{detail}")


def _manifest_path(image: ImageRef, reference: str) -> str:
    return f"/v2/{image.repository}/manifests/{reference}"


def _fetch_manifest(reg: _Registry, what: str) -> tuple[dict[str, Any], str, str]:
    """The manifest ``reg.image`` names, fetched by digest and verified: (doc, media, digest)."""
    image = reg.image
    head, _ = reg.send("HEAD", _manifest_path(image, image.reference), what=what, headers=ACCEPT)
    target = image.digest or head.headers.get("docker-content-digest")
    # GET by digest, not by tag: a tag moved between HEAD and GET cannot mix two manifests.
    resp, body = reg.send("GET", _manifest_path(image, target or image.reference), what=what,
                          headers=ACCEPT)
    actual = _sha256(body)
    for claim in (target, head.headers.get("docker-content-digest"),
                  resp.headers.get("docker-content-digest")):
        if claim and claim != actual:
            raise ImageError(f"{what}: registry {image.registry} named digest {claim} but served "
                             f"a manifest whose sha256 is {actual}; refusing it")
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise ImageError(f"{what}: the manifest is not a JSON object")
    media = doc.get("mediaType") or resp.headers.get("content-type", "").split(";")[0].strip()
    if media not in INDEX_TYPES | MANIFEST_TYPES:
        raise ImageError(f"{what}: unexpected manifest media type {media!r}")
    return doc, media, actual


def _parse_platform(platform: str) -> tuple[str, str, str | None]:
    parts = platform.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ImageError(f"invalid platform {platform!r}: expected os/architecture[/variant]")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else None


def _pick_platform(doc: dict[str, Any], platform: str, what: str) -> dict[str, Any]:
    want_os, want_arch, want_variant = _parse_platform(platform)
    seen = []
    for entry in doc.get("manifests") or []:
        p = entry.get("platform") or {}
        variant = p.get("variant") or ("v8" if p.get("architecture") == "arm64" else None)
        seen.append("/".join(str(p[k]) for k in ("os", "architecture", "variant") if p.get(k)))
        if (p.get("os"), p.get("architecture")) == (want_os, want_arch) and (
                want_variant is None or want_variant == variant):
            return dict(entry)
    raise ImageError(f"{what}: its index has no manifest for {platform} "
                     f"(it has: {', '.join(seen) or 'none'})")


def resolve(ref: str | ImageRef, *, platform: str = "linux/amd64",
            credentials: tuple[str, str] | None = None, insecure: bool = True,
            scheme: Scheme | None = None, timeout: float = 10.0) -> ResolvedImage:
    """Resolve ``ref`` to the verified digest of the manifest to run on ``platform``.

    Raises:
        ImageNotFound: No such repository, tag or digest (not retryable).
        RegistryAuthError: Credentials needed and none given, or refused.
        ImageError: Bad reference, digest mismatch, no manifest for ``platform``, odd media type.
        RegistryUnavailable: Connection refused, timeout, 429 or 5xx (retryable).
    """
    with _Registry(ref, credentials=credentials, insecure=insecure, scheme=scheme,
                   timeout=timeout) as reg:
        image, what = reg.image, f"image {reg.image}"
        doc, media, digest = _fetch_manifest(reg, what)
        index_digest = None
        if media in INDEX_TYPES:
            entry = _pick_platform(doc, platform, what)
            index_digest, digest = digest, _check_digest(str(entry.get("digest")), what)
            media = entry.get("mediaType") or DOCKER_MANIFEST
            if media not in MANIFEST_TYPES:
                raise ImageError(f"{what}: the {platform} entry of its index is a {media!r}, "
                                 "not an image manifest")
            head, _ = reg.send("HEAD", _manifest_path(image, digest), what=f"{what} ({platform})",
                               headers=ACCEPT)
            served = head.headers.get("docker-content-digest")
            if served and served != digest:
                raise ImageError(f"{what}: registry answered {served} for {digest}; refusing it")
        return ResolvedImage(str(image), digest, index_digest, media, image.pinned(digest))


def _push_blob(reg: _Registry, data: bytes, media_type: str) -> Descriptor:
    desc, name = Descriptor(media_type, _sha256(data), len(data)), reg.image.repository
    what = f"blob {desc.digest} of {reg.image}"
    try:
        reg.send("HEAD", f"/v2/{name}/blobs/{desc.digest}", what=what, scope="pull,push")
        return desc  # already there (content-addressed: same bytes)
    except ImageNotFound:
        pass
    resp, _ = reg.send("POST", f"/v2/{name}/blobs/uploads/", what=what, scope="pull,push")
    location = resp.headers.get("location")
    if not location:
        raise ImageError(f"{what}: the registry gave no upload location")
    sep = "&" if "?" in location else "?"
    reg.send("PUT", f"{location}{sep}digest={desc.digest}", what=what, scope="pull,push",
             headers={"Content-Type": "application/octet-stream"}, content=data)
    return desc


def _push_manifest(reg: _Registry, doc: dict[str, Any]) -> Descriptor:
    """PUT a manifest under the reference's tag (by digest when it has none)."""
    body = json.dumps(doc, separators=(",", ":")).encode()
    desc, image = Descriptor(doc["mediaType"], _sha256(body), len(body)), reg.image
    if image.digest and image.digest != desc.digest:
        raise ImageError(f"manifest {image}: its sha256 is {desc.digest}")
    resp, _ = reg.send("PUT", _manifest_path(image, image.tag or desc.digest),
                       what=f"manifest {image}", scope="pull,push",
                       headers={"Content-Type": desc.media_type}, content=body)
    served = resp.headers.get("docker-content-digest")
    if served and served != desc.digest:
        raise ImageError(f"manifest {image}: registry stored {served}, expected {desc.digest}")
    return desc


def push_image(ref: str | ImageRef, config: bytes, layers: list[bytes], *, docker: bool = False,
               credentials: tuple[str, str] | None = None, insecure: bool = True,
               scheme: Scheme | None = None, timeout: float = 30.0) -> Descriptor:
    """Push the config and layer blobs (skipping those present), then an OCI image manifest
    (a Docker v2 one with ``docker=True``) under ``ref``'s tag; returns its descriptor."""
    kinds = (("application/vnd.docker.container.image.v1+json",
              "application/vnd.docker.image.rootfs.diff.tar.gzip", DOCKER_MANIFEST) if docker else
             ("application/vnd.oci.image.config.v1+json",
              "application/vnd.oci.image.layer.v1.tar+gzip", OCI_MANIFEST))
    with _Registry(ref, credentials=credentials, insecure=insecure, scheme=scheme,
                   timeout=timeout) as reg:
        cfg = _push_blob(reg, config, kinds[0])
        blobs = [_push_blob(reg, layer, kinds[1]).as_json() for layer in layers]
        return _push_manifest(reg, {"schemaVersion": 2, "mediaType": kinds[2],
                                    "config": cfg.as_json(), "layers": blobs})


def push_index(ref: str | ImageRef, manifests: list[tuple[Descriptor, str]], *,
               docker: bool = False, credentials: tuple[str, str] | None = None,
               insecure: bool = True, scheme: Scheme | None = None,
               timeout: float = 30.0) -> Descriptor:
    """Push an OCI index (a Docker manifest list with ``docker=True``) of already pushed
    manifests, each with its ``os/architecture[/variant]``, under ``ref``'s tag."""
    entries = []
    for desc, platform in manifests:
        os_, arch, variant = _parse_platform(platform)
        plat = {"os": os_, "architecture": arch} | ({"variant": variant} if variant else {})
        entries.append(desc.as_json() | {"platform": plat})
    with _Registry(ref, credentials=credentials, insecure=insecure, scheme=scheme,
                   timeout=timeout) as reg:
        return _push_manifest(reg, {"schemaVersion": 2, "mediaType": DOCKER_LIST if docker
                                    else OCI_INDEX, "manifests": entries})
