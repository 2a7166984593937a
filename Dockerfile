# syntax=docker/dockerfile:1
#
# The runner's container image: `runner serve` as a non-root user, configured through RUNNER_*
# environment variables and a mounted runner.yaml (RUNNER_CONFIG), state in PostgreSQL
# (RUNNER_DATABASE_URL) or, for one node, in SQLite under /var/lib/runner.
#
#   docker build -t runner:0.1.0 .
#   docker build --build-arg EXTRAS=postgres,dagger,agents -t runner:0.1.0-local .
#
# The image cannot be built on the project's development machines or in its CI (they have no
# Docker engine): tests/test_deploy.py checks these instructions and lints them with hadolint,
# and docs/operations.md says how to build and run it.
#
# Versions are pinned here and nowhere else in the image:
#   PYTHON_IMAGE    the base image, by exact version (add @sha256:<digest> after resolving it
#                   with `docker buildx imagetools inspect`, to pin it by content as well).
#   DAGGER_VERSION  the Dagger Python SDK (dagger-io), the `dagger` CLI it drives, and the engine
#                   the deployments run (registry.dagger.io/engine:v<DAGGER_VERSION>): all three
#                   must be the same release.
#   EXTRAS          the runner's optional dependencies: postgres (psycopg) and dagger (dagger-io);
#                   add `agents` to run the built-in agents as local processes in the container
#                   (the local executor) instead of in containers through Dagger.

ARG PYTHON_IMAGE=python:3.12.8-slim-bookworm
ARG DAGGER_VERSION=0.21.11

# --- build: the runner and its dependencies in a virtual environment -----------------------------
FROM ${PYTHON_IMAGE} AS build
ARG DAGGER_VERSION
ARG EXTRAS=postgres,dagger
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/runner
WORKDIR /src
# runner/schemas and runner/agents are links to the top-level folders: copy those too
COPY pyproject.toml README.md ./
COPY schemas/ schemas/
COPY agents/ agents/
COPY runner/ runner/
RUN /opt/runner/bin/pip install ".[${EXTRAS}]" "dagger-io==${DAGGER_VERSION}"

# --- dagger-cli: the CLI the Dagger SDK drives, from the official release, checksum-verified ----
# Without it the SDK downloads a CLI at the first step (and fails where the network is closed).
FROM ${PYTHON_IMAGE} AS dagger-cli
ARG DAGGER_VERSION
ARG TARGETARCH
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /tmp/dagger
ADD https://dl.dagger.io/dagger/releases/${DAGGER_VERSION}/checksums.txt ./
ADD https://dl.dagger.io/dagger/releases/${DAGGER_VERSION}/dagger_v${DAGGER_VERSION}_linux_${TARGETARCH}.tar.gz ./
RUN grep " dagger_v${DAGGER_VERSION}_linux_${TARGETARCH}.tar.gz\$" checksums.txt | sha256sum --check --strict - \
    && tar -xzf "dagger_v${DAGGER_VERSION}_linux_${TARGETARCH}.tar.gz" dagger \
    && install -m 0755 dagger /usr/local/bin/dagger

# --- runtime: only the virtual environment and the CLI on the slim base --------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG DAGGER_VERSION
LABEL org.opencontainers.image.title="runner" \
      org.opencontainers.image.description="GitOps pipeline runner: workflows declared in git, run as DAGs of agent steps" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.dagger.version="${DAGGER_VERSION}"
RUN groupadd --system --gid 10001 runner \
    && useradd --system --uid 10001 --gid runner --home-dir /var/lib/runner --no-create-home \
       --shell /usr/sbin/nologin runner \
    && mkdir -p /var/lib/runner /etc/runner \
    && chown runner:runner /var/lib/runner
COPY --from=build /opt/runner /opt/runner
COPY --from=dagger-cli /usr/local/bin/dagger /usr/local/bin/dagger
# In a container the service must listen on every interface; the data folder is a volume (git
# mirrors, run workspaces, and the SQLite file when no RUNNER_DATABASE_URL is given).
ENV PATH=/opt/runner/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    RUNNER_LISTEN_HOST=0.0.0.0 \
    RUNNER_LISTEN_PORT=8080 \
    RUNNER_DATA_DIR=/var/lib/runner \
    HOME=/var/lib/runner \
    XDG_CACHE_HOME=/var/lib/runner/.cache \
    _EXPERIMENTAL_DAGGER_CLI_BIN=/usr/local/bin/dagger
WORKDIR /var/lib/runner
VOLUME ["/var/lib/runner"]
USER 10001:10001
EXPOSE 8080
# Liveness as the orchestrators see it; Kubernetes uses its own probes (deploy/k8s/).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('RUNNER_LISTEN_PORT', '8080'), timeout=4)"]
ENTRYPOINT ["runner"]
CMD ["serve", "--role", "all"]
