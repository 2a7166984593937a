"""Agent image references: the grammar (docker-image-py, as Docker and the engine read it), the
allowed-registries policy and pinning by digest; and, once the compiler calls it, a bad image as
a spec error with its file:line."""

from __future__ import annotations

import textwrap

import pytest

from runner.executors.images import ImagePolicy, InvalidImage, image_problems, parse_image
from runner.spec.compile import SourceFile, compile_files
from runner.spec.repo import builtin_agents

DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("text", "name", "tag", "pinned"),
    [
        ("python:3.12-slim", "docker.io/library/python", "3.12-slim", False),
        ("python", "docker.io/library/python", None, False),
        ("acme/agent:1", "docker.io/acme/agent", "1", False),
        (f"ghcr.io/acme/agent@{DIGEST}", "ghcr.io/acme/agent", None, True),
        (f"python:3.12@{DIGEST}", "docker.io/library/python", "3.12", True),
        ("localhost:5000/x:dev", "localhost:5000/x", "dev", False),
        ("index.docker.io/library/python:3", "docker.io/library/python", "3", False),
    ],
)
def test_references_are_read_as_docker_reads_them(
    text: str, name: str, tag: str | None, pinned: bool
) -> None:
    image = parse_image(text)
    assert (image.name, image.tag, image.pinned) == (name, tag, pinned)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "cannot be empty"),
        (" python", "spaces"),
        ("Python:3", "must be lowercase"),
        ("python image", "invalid reference format"),
        ("python@sha256:abc", "invalid reference format"),
        ("python@sha256:" + "a" * 63, "invalid checksum digest length"),
        ("python@md5:" + "a" * 64, "unsupported digest algorithm"),
        ("python:" + "t" * 129, "invalid reference format"),
    ],
)
def test_invalid_references_say_why(text: str, why: str) -> None:
    with pytest.raises(InvalidImage, match=why):
        parse_image(text)
    (problem,) = image_problems(text)
    assert "is not a valid image reference" in problem
    assert "write e.g. python:3.12-slim" in problem


def test_allowed_registries_match_whole_path_components() -> None:
    policy = ImagePolicy.of(["ghcr.io/acme", "Index.Docker.IO/library/"])
    assert image_problems("ghcr.io/acme/agent:1", policy) == []
    assert image_problems("ghcr.io/acme/team/agent:1", policy) == []
    assert image_problems("python:3.12-slim", policy) == []
    (problem,) = image_problems("ghcr.io/acmecorp/agent:1", policy)
    assert problem == (
        "image 'ghcr.io/acmecorp/agent:1' (ghcr.io/acmecorp/agent) is not from an allowed "
        "registry; allowed: ghcr.io/acme, docker.io/library"
    )
    assert image_problems("acme/agent:1", policy)  # docker.io/acme, not docker.io/library
    assert image_problems("anything:1", ImagePolicy.of([])) == []


def test_pinning_by_digest_can_be_required() -> None:
    policy = ImagePolicy.of(require_digest=True)
    assert image_problems(f"python:3.12-slim@{DIGEST}", policy) == []
    (problem,) = image_problems("python:3.12-slim", policy)
    assert problem == (
        "image 'python:3.12-slim' is not pinned by digest; write it as "
        "docker.io/library/python:3.12-slim@sha256:<digest>"
    )


def test_an_invalid_image_is_a_spec_error_at_its_line() -> None:
    manifest = textwrap.dedent(
        """\
        apiVersion: runner/v1
        kind: Agent
        metadata: {name: bad}
        spec:
          command: [python, main.py]
          image: "Python:3.12 slim"
        """
    )
    result = compile_files(
        [
            SourceFile(
                path="agents/bad/agent.yaml",
                data=manifest.encode(),
                role="agent",
                agent_dir="agents/bad",
            )
        ],
        builtins=builtin_agents(),
    )
    messages = [str(e) for e in result.errors]
    assert any(
        m.startswith("agents/bad/agent.yaml:6:10: 'Python:3.12 slim' is not a valid image")
        for m in messages
    ), messages
