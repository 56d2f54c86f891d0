# Entry points. `uv run just --list` shows them; the README's two commands are `just run`
# and `just test` (each also works as the raw `uv run …` line below it).

set positional-arguments

# Start the gateway on :7680 (embedded PostgreSQL when none is configured).
run *args:
    uv run majordomo serve "$@"

# Run the whole test suite against real PostgreSQL (embedded, or MAJORDOMO_TEST_DSN).
test *args:
    uv run pytest "$@"

# Lint and type-check.
lint:
    uv run ruff check src tests
    uv run ruff format --check src tests
    uv run mypy

# Format the code.
fmt:
    uv run ruff format src tests
    uv run ruff check --fix src tests

# Apply schema.sql to the configured database.
migrate:
    uv run majordomo db migrate

# Benchmark the gateway against a fast local upstream (`--quick` for a smoke check, `--help`).
bench *args:
    uv run python -m benchmarks.bench "$@"
