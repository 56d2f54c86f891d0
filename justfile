# Entry points. `uv run just --list` shows them; the README's two commands are `just run`
# and `just test` (each also works as the raw `uv run …` line below it).

set positional-arguments

# Start the gateway on :7680 (embedded PostgreSQL when none is configured). The gateway
# compiles the one large module it needs (genai-prices' price table) once, and says so; the
# whole environment is not recompiled at every start (that took 8 s, 20-26 s the first time).
run *args:
    uv run majordomo serve "$@"

# Run the whole test suite against real PostgreSQL (embedded, or MAJORDOMO_TEST_DSN).
test *args:
    uv run pytest "$@"

# The inner loop: pure and unit tests only (the `fast` marker), no database, under 30 s.
test-fast *args:
    uv run pytest -m fast -q "$@"

# Lint and type-check (mypy --strict over src, tests and benchmarks).
lint:
    uv run ruff check src tests benchmarks
    uv run ruff format --check src tests benchmarks
    uv run mypy

# Format the code.
fmt:
    uv run ruff format src tests benchmarks
    uv run ruff check --fix src tests benchmarks

# Apply schema.sql to the configured database.
migrate:
    uv run majordomo db migrate

# Benchmark the gateway against a fast local upstream (`--quick` for a smoke check, `--help`).
bench *args:
    uv run python -m benchmarks.bench "$@"

# Build the container image with podman (BASE_IMAGE: any python3.11 Debian-like image; the
# default is the one `just container-base` builds, for machines without registry access).
# Uses scripts/containers.conf (runc, ulimits 1024) when the hard open-files limit is below
# podman's default, as on the development sandbox; `--format docker` keeps the HEALTHCHECK.
container base="localhost/majordomo-base:bookworm" tag="localhost/majordomo:latest":
    #!/usr/bin/env bash
    set -euo pipefail
    hard="$(ulimit -Hn)"
    if [ -z "${CONTAINERS_CONF:-}" ] && [ "$hard" != unlimited ] && [ "$hard" -lt 1048576 ]; then
        export CONTAINERS_CONF="{{justfile_directory()}}/scripts/containers.conf"
    fi
    podman build --format docker --build-arg BASE_IMAGE={{base}} -t {{tag}} -f Containerfile .

# Build the local base image (Debian bookworm + python3) with mmdebstrap, no registry needed.
container-base tag="localhost/majordomo-base:bookworm":
    scripts/podman-build-base.sh {{tag}}
