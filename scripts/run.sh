#!/usr/bin/env bash
# Runs pgtide on config/pgtide.toml (or $PGTIDE_CONFIG), installing what is missing first (and
# building the docker runtime's image when the config asks for that runtime).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
prepare_machine
cargo build --release --quiet
config=${PGTIDE_CONFIG:-config/pgtide.toml}
# The docker runtime needs its image (built from this machine's Postgres, no registry).
if grep -Eq '^[[:space:]]*kind[[:space:]]*=[[:space:]]*"docker"' "$config"; then
  ./scripts/build-image.sh
fi
log "pgtide serve --config $config  (Ctrl-C stops it and every Postgres it started)"
exec ./target/release/pgtide serve --config "$config" "$@"
