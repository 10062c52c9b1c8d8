#!/usr/bin/env bash
# The soak (tests/soak.rs): a cluster with six copies under pgbench and a commit ledger while a
# seeded schedule of faults hits it, one at a time (compute and pgtide killed, walsender
# terminated, copies broken and on a full disk, data directory deleted, pause and resume, load
# steps for the scaler, hostile connections). It fails if an acknowledged commit is missing, if
# the copies disagree, or if the cluster stops committing after a fault; timings are reported.
#
#   scripts/soak.sh [--minutes N] [--seed S] [--docker-minutes M] [--faults a,b] [--release]
#
# N defaults to 10 (the process runtime); the docker runtime runs M minutes (default N/4, at
# least 1) where `docker info` works, and is skipped with a note elsewhere. S fixes the fault
# schedule (the same seed draws the same faults in the same order, with the same gaps and
# durations). --faults keeps only some kinds (compute_kill, pgtide_kill, walsender_kill,
# two_copies, disk_full, data_dir_deleted, pause_resume, scale, hostile). --release builds pgtide
# optimised (a full release build the first time). The report, the timeline, the acknowledged
# ids and pgtide's log are kept in target/tmp/soak-<runtime>/. `cargo test --test soak` runs the
# same soak for 2 minutes with a fixed seed.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

minutes=10
seed=
docker_minutes=
faults=
release=()
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) minutes=${2:?--minutes needs a number}; shift 2 ;;
    --seed) seed=${2:?--seed needs a number}; shift 2 ;;
    --docker-minutes) docker_minutes=${2:?--docker-minutes needs a number}; shift 2 ;;
    --faults) faults=${2:?--faults needs a list}; shift 2 ;;
    --release) release=(--release); shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) log "soak.sh: unknown argument $1 (see --help)"; exit 2 ;;
  esac
done

prepare_machine
export PGTIDE_SOAK_MINUTES=$minutes
[ -n "$seed" ] && export PGTIDE_SOAK_SEED=$seed
[ -n "$docker_minutes" ] && export PGTIDE_SOAK_DOCKER_MINUTES=$docker_minutes
[ -n "$faults" ] && export PGTIDE_SOAK_FAULTS=$faults
# Where Docker works, its soak must run (a broken image or engine fails instead of skipping).
if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
  export PGTIDE_REQUIRE_DOCKER=1
  ./scripts/build-image.sh
fi
log "soak: ${minutes} min, seed ${seed:-default}"
started=$(date +%s)
status=0
cargo test "${release[@]}" --test soak -- --nocapture --test-threads=1 || status=$?
log "soak: done in $(( $(date +%s) - started )) s (exit $status)"
exit $status
