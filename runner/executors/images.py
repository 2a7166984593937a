"""Agent image references: valid OCI references, from allowed registries, pinned by digest.

Parsing is docker-image-py's port of `github.com/distribution/reference` (the grammar Docker,
containerd and the Dagger engine use), with Docker's normalisation: `python:3.12-slim` is
`docker.io/library/python:3.12-slim`. Nothing here touches the network.

The policy is plain data so that it can run where an image is first seen (compiling a revision,
with `file:line`) and again just before a step runs (the executor), with the same answer.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from docker_image import digest as oci_digest  # type: ignore[import-untyped]
from docker_image import reference

_LEGACY_HUB = "index.docker.io"
_HUB = "docker.io"


@dataclass(frozen=True, kw_only=True)
class ImageRef:
    """A parsed, normalised reference: `registry/repository[:tag][@digest]`."""

    registry: str
    repository: str
    tag: str | None
    digest: str | None

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}"

    @property
    def pinned(self) -> bool:
        """Pinned by content digest: the same bytes every time, whatever happens to tags."""
        return self.digest is not None

    def __str__(self) -> str:
        tag = f":{self.tag}" if self.tag else ""
        digest = f"@{self.digest}" if self.digest else ""
        return f"{self.name}{tag}{digest}"


class InvalidImage(ValueError):
    """Not an image reference; the message says why, in the parser's words."""


def parse_image(text: str) -> ImageRef:
    """The normalised reference of `text`, or `InvalidImage`."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidImage("an image reference cannot be empty")
    if text != text.strip():
        raise InvalidImage("an image reference cannot start or end with spaces")
    try:
        parsed = reference.Reference.parse_normalized_named(text)
    except (reference.InvalidReference, oci_digest.InvalidDigest) as exc:
        raise InvalidImage(str(exc) or "invalid reference format") from None
    return ImageRef(
        registry=str(parsed.domain()),
        repository=str(parsed.path()),
        tag=parsed["tag"] or None,
        digest=parsed["digest"] or None,
    )


def _prefix(entry: str) -> str:
    """An allowed-registries entry, normalised: `docker.io`, `ghcr.io/acme`, `localhost:5000`."""
    entry = entry.strip().rstrip("/").lower()
    if entry == _LEGACY_HUB or entry.startswith(_LEGACY_HUB + "/"):
        entry = _HUB + entry[len(_LEGACY_HUB) :]
    return entry


@dataclass(frozen=True, kw_only=True)
class ImagePolicy:
    """Which images agents may use.

    `allowed_registries`: registries or registry/namespace prefixes (`ghcr.io/acme`,
    `registry.example.com:5000`, `docker.io/library`); empty allows every registry.
    `require_digest`: refuse images not pinned by `@sha256:...`. Without it an unpinned image is
    allowed and the executor notes it in the step log (a tag can move between two runs).
    """

    allowed_registries: tuple[str, ...] = ()
    require_digest: bool = False

    @classmethod
    def of(
        cls, allowed_registries: Iterable[str] = (), require_digest: bool = False
    ) -> ImagePolicy:
        return cls(
            allowed_registries=tuple(_prefix(e) for e in allowed_registries if e.strip()),
            require_digest=require_digest,
        )

    def allows_registry(self, image: ImageRef) -> bool:
        if not self.allowed_registries:
            return True
        name = image.name
        return any(name == p or name.startswith(p + "/") for p in self.allowed_registries)


def image_problems(text: str, policy: ImagePolicy | None = None) -> list[str]:
    """Why `text` may not be used as an agent image (empty when it may), each message saying
    what to write instead. This is the one check the spec compiler and the executor share."""
    try:
        image = parse_image(text)
    except InvalidImage as exc:
        return [
            f"{text!r} is not a valid image reference ({exc}); write e.g. python:3.12-slim "
            "or registry.example.com/team/agent@sha256:<digest>"
        ]
    problems: list[str] = []
    if policy is None:
        return problems
    if not policy.allows_registry(image):
        allowed = ", ".join(policy.allowed_registries)
        problems.append(
            f"image {text!r} ({image.name}) is not from an allowed registry; allowed: {allowed}"
        )
    if policy.require_digest and not image.pinned:
        problems.append(
            f"image {text!r} is not pinned by digest; write it as "
            f"{image.name}{':' + image.tag if image.tag else ''}@sha256:<digest>"
        )
    return problems
