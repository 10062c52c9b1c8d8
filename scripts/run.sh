#!/usr/bin/env bash
# Runs pgtide on config/pgtide.toml (or $PGTIDE_CONFIG), installing what is missing first.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
prepare_machine
cargo build --release --quiet
config=${PGTIDE_CONFIG:-config/pgtide.toml}
log "pgtide serve --config $config  (Ctrl-C stops it and every Postgres it started)"
exec ./target/release/pgtide serve --config "$config" "$@"
