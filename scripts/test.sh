#!/usr/bin/env bash
# Runs the whole test suite: unit tests, then end-to-end tests against real Postgres, psql and
# pgbench (each test starts its own pgtide and Postgres in a temporary directory).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
prepare_machine
if ! command -v openssl >/dev/null; then apt_install openssl; fi
# The dashboard is tested in a real headless browser, and its pseudo-terminal view with script(1).
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then apt_install chromium; fi
if ! command -v script >/dev/null; then apt_install bsdutils; fi
# Transaction pooling is tested with real Python drivers too (psycopg 3 and asyncpg, from PyPI).
if ! python3 -c 'import psycopg, psycopg_pool, asyncpg' 2>/dev/null; then
  log "installing psycopg, psycopg-pool and asyncpg from PyPI…"
  python3 -m pip install --quiet --disable-pip-version-check "psycopg[binary]" psycopg-pool asyncpg >&2
fi
# The docker runtime's tests (tests/docker.rs) skip where Docker is not usable; where `docker info`
# works they must run, so a broken image or engine fails the suite instead of skipping.
if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
  export PGTIDE_REQUIRE_DOCKER=1
  ./scripts/build-image.sh
fi
# Two cores: two tests at a time; each one runs a Postgres of its own. cargo-nextest, where the
# machine has it, runs each test in a process of its own and once more when it fails
# (.config/nextest.toml: a second pass is printed as FLAKY, a second failure fails the suite).
threads="${PGTIDE_TEST_THREADS:-2}"
if cargo nextest --version >/dev/null 2>&1; then
  exec cargo nextest run --lib --bins --tests --test-threads="$threads" "$@"
fi
exec cargo test --lib --bins --tests -- --test-threads="$threads" "$@"
