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
# Branches clone files where the file system can (tests/branch_cow.rs makes an XFS file system
# with reflink on a loop device, as root).
if [ "$(id -u)" = 0 ] && ! command -v mkfs.xfs >/dev/null; then apt_install xfsprogs; fi
# Both pool modes are tested with real drivers (tests/drivers.rs, tests/transaction.rs):
# Python's psycopg 3, asyncpg and pg8000 from PyPI…
if ! python3 -c 'import psycopg, psycopg_pool, asyncpg, pg8000' 2>/dev/null; then
  log "installing psycopg, psycopg-pool, asyncpg and pg8000 from PyPI…"
  python3 -m pip install --quiet --disable-pip-version-check "psycopg[binary]" psycopg-pool asyncpg pg8000 >&2
fi
# …Java's pgjdbc (Debian's libpostgresql-jdbc-java, compiled against with javac)…
if command -v javac >/dev/null && [ ! -f /usr/share/java/postgresql.jar ]; then
  apt_install libpostgresql-jdbc-java
fi
# …and node-postgres (Debian's node-pg). Node from elsewhere (NodeSource's nodejs) does not
# satisfy node-pg's dependency on Debian's nodejs, so there its packages are unpacked into
# target/test-deps instead; pg needs nothing beyond itself (its parts are bundled) and split2.
node_debs_dir="$PWD/target/test-deps/node"
export PGTIDE_NODE_PATH="/usr/share/nodejs:$node_debs_dir/usr/share/nodejs"
if command -v node >/dev/null && ! NODE_PATH="$PGTIDE_NODE_PATH" node -e "require('pg')" 2>/dev/null; then
  if ! apt_install node-pg 2>/dev/null; then
    log "node-pg does not install beside this node; unpacking it into $node_debs_dir…"
    download_dir=$(mktemp -d)
    mkdir -p "$node_debs_dir"
    (cd "$download_dir" && apt-get download node-pg node-split2 >&2)
    for deb in "$download_dir"/*.deb; do dpkg-deb -x "$deb" "$node_debs_dir"; done
    rm -rf "$download_dir"
  fi
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
