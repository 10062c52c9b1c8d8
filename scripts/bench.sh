#!/usr/bin/env bash
# Benchmarks, side by side in one run, interleaved rounds, medians and ratios. Never run by the
# tests: this machine is shared and noisy, so figures come from here, not from assertions.
#
#   scripts/bench.sh [proxy]   pgbench select-only and tpcb-like, 8 clients, against pgtide's
#                              compute: straight over its unix socket, through pgtide in session
#                              mode, PgBouncer 1.18 in session mode and a bare tokio relay
#                              (benches/relay.rs) on it; and through pgtide in transaction mode
#                              and PgBouncer in transaction mode on a second, alike cluster's
#                              compute; ratios are to the compute itself
#   scripts/bench.sh resume    20 pause → connect → first row cycles against a paused cluster, for
#                              four targets side by side (interleaved): the process runtime cold
#                              (warm_pool_size = 0) and with its pool (1), the docker runtime cold
#                              and with its pool (skipped where Docker is not usable); beside the
#                              same figure for a running cluster (p50, p90, max)
#   scripts/bench.sh pool      transaction pooling: (a) pgbench -C -S against PgBouncer, pgtide and
#                              direct; (b) -M prepared -S, pgtide transaction vs session mode (and
#                              PgBouncer, which fails it); (c) memory per idle client with 10,000
#                              idle clients, and a pause with them all connected
#   scripts/bench.sh storage   tpcb-like, 8 clients: pgtide with copies off (local commit), pgtide
#                              with six copies (4-of-6 quorum), with one copy (quorum 1), direct
#                              Postgres, and direct Postgres with one synchronous standby
#                              (pg_receivewal --synchronous): the floor synchronous replication
#                              has on the machine
#   scripts/bench.sh scale     a stepped pgbench load (0 → 2 → 8 → 2 → 0 clients) through pgtide:
#                              a per-second timeline of clients, ACU, CPU used and TPS, and the
#                              reaction from each load change to the applied ACU; then a 24-hour
#                              synthetic trace through the policy alone (benches/day_trace.rs)
#
#   scripts/bench.sh tenants   many tenants on one pgtide: TENANTS clusters (default 500) created
#                              through POST /clusters (time per creation, p50/p90), each written
#                              once with psql, all left to pause (auto_pause_after = 3s); pgtide's
#                              RSS per paused cluster and its wake-ups while they all sleep; then
#                              20 random tenants woken at once (connect → first row, p50/p90) and
#                              50 tenants running `pgbench -c 1 -T 5` at once (total TPS,
#                              failures). Copies off unless TENANTS_COPIES=1; the machine budget
#                              is TENANTS_BUDGET ACU (default 1000: off, so that the 50 all run)
#
#   scripts/bench.sh syscalls  per select-only transaction, for pgtide (both pool modes), PgBouncer
#                              and the relay on one compute: CPU µs (median of interleaved rounds),
#                              system calls and context switches (strace -c, /proc); then per
#                              login (pgbench -C -S, transaction mode vs PgBouncer): the proxy's
#                              CPU, the whole machine's, and the ceiling a proxy costing nothing
#                              would reach (machine / (machine - proxy))
#   scripts/bench.sh branch    pgtide branch of a pgbench -i -s N database with six copies, for
#                              N in BRANCH_SCALES (default "70 350": ~1 and ~5 GB; a scale the
#                              disk cannot hold is skipped, saying why), with a base backup taken
#                              after the load, while pgbench (tpcb-like) runs on the source: time
#                              from the request to the branch answering its first query (and
#                              pgtide's own split: lay out, replay, start), the source's TPS
#                              before and during the branch, failed transactions. Once with the
#                              data on $WORK's file system (BRANCH_PLAIN=0 skips it), once on an
#                              XFS file system with reflink on a loop device made, mounted and
#                              removed here (copy-on-write; root and mkfs.xfs needed, skipped
#                              saying why otherwise). PGTIDE_BIN=target/debug/pgtide skips the
#                              release build
#   scripts/bench.sh failover  Multi-AZ (standbys = 1, six copies, 1–4 ACU) under pgbench tpcb-like
#                              (-c 4, scale SCALE, restarted in 5 s chunks) and a commit client
#                              (one INSERT per ~10 ms, autocommit, over the wire protocol):
#                              FAILOVERS (default 10) kill -9 of the writer's postmaster, kill →
#                              first commit on the new writer (p50, p90, max), then as many planned
#                              `pgtide failover` (command start → first commit on the new writer),
#                              each after the new standby streams again; acknowledged commits
#                              missing at the end (must be 0); then writer TPS with one standby vs
#                              none (tpcb-like -c 4 -j 2, FAILOVER_TPS_SECONDS (20) a round, 4 ACU,
#                              ROUNDS interleaved, default 3 here), medians and ratio (aim ≥ 0.9x)
#   scripts/bench.sh all       every mode above, one after the other, and then all their tables
#
# Knobs: ROUNDS (default 5), SECONDS_PER_ROUND (default 6), CLIENTS (default 8), SCALE (10),
# TENANTS (500), TENANTS_COPIES (0), TENANTS_BUDGET (1000), FAILOVERS (10), FAILOVER_TPS_SECONDS (20).
# BRANCH_SCALES ("70 350"), BRANCH_PLAIN (1), BRANCH_COW (1), BRANCH_LOAD_SECONDS (600: the most pgbench runs on the
# source around a branch; it is stopped 2 s after the branch answers), PGTIDE_BIN (a built pgtide).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

MODE=${1:-proxy}
if [ "$MODE" = all ]; then
  # Every mode, one after the other (each starts and stops its own processes), then every
  # table together. Progress goes to stderr; the tables are what each mode prints on stdout.
  out=$(mktemp -d /tmp/pgtide-bench-all-XXXXXX)
  for mode in proxy syscalls pool storage resume scale; do
    log "=== scripts/bench.sh $mode"
    "$0" "$mode" > "$out/$mode.txt" || log "bench.sh $mode failed (exit $?)"
  done
  for mode in proxy syscalls pool storage resume scale; do
    printf '\n=== %s\n' "$mode"
    grep -v '^$' "$out/$mode.txt" || true
  done
  rm -rf "$out"
  exit 0
fi
prepare_machine

[ "$MODE" = failover ] && ROUNDS=${ROUNDS:-3}
ROUNDS=${ROUNDS:-5}
SECONDS_PER_ROUND=${SECONDS_PER_ROUND:-6}
CLIENTS=${CLIENTS:-8}
SCALE=${SCALE:-10}
BIN=$(dirname "$(ls /usr/lib/postgresql/*/bin/postgres | sort -V | tail -1)")

WORK=$(mktemp -d /tmp/pgtide-bench-XXXXXX)
chmod 755 "$WORK"
PIDS=()
MOUNTS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
  for _ in $(seq 1 100); do
    alive=0
    for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  # Anything else that runs on this benchmark's files (a Postgres a wrapper started, a backend
  # left behind): a process left running skews every later figure.
  pkill -9 -f "$WORK" 2>/dev/null || true
  # Containers of the docker runtime a killed pgtide left (their slots are under $WORK).
  if command -v docker >/dev/null; then
    for id in $(docker ps -aq --filter label=pgtide.slot 2>/dev/null); do
      docker inspect --format '{{index .HostConfig.Binds 0}}' "$id" 2>/dev/null | grep -q "^$WORK/" &&
        docker rm -f "$id" >/dev/null 2>&1 || true
    done
  fi
  # File systems a benchmark mounted under $WORK (the branch's XFS loop device).
  for mnt in "${MOUNTS[@]}"; do
    [ -n "$mnt" ] && { umount "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true; }
  done
  rm -rf "$WORK"
  if pgrep -f "$WORK" >/dev/null; then log "warning: processes of $WORK are still running"; fi
}
trap cleanup EXIT INT TERM

# As root, runs a command as postgres in the same process (setpriv execs; runuser would fork and
# leave $! naming a wrapper whose child outlives a kill).
as_pg() { if [ "$(id -u)" = 0 ]; then setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"; else "$@"; fi; }
# The same for a server started in the background: `exec` replaces the subshell that `&` makes,
# so that $! is the server's own pid.
bg_as_pg() { if [ "$(id -u)" = 0 ]; then exec setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"; else exec "$@"; fi; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 600); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; log "port $1 never opened"; return 1; }

PGTIDE_BIN=${PGTIDE_BIN:-}
if [ -z "$PGTIDE_BIN" ]; then
  log "building (release)…"
  cargo build --release --quiet
  PGTIDE_BIN=./target/release/pgtide
fi
if [ "$MODE" = proxy ] || [ "$MODE" = syscalls ]; then
  cargo bench --bench relay --no-run --quiet 2>/dev/null
  RELAY_BIN=$(ls -t target/release/deps/relay-* | grep -v '\.d$' | head -1)
fi

start_pgtide() { # $1 = name, $2 = extra cluster lines, $3 = [storage] lines, $4 = [runtime] lines; sets PGTIDE_PORT, ADMIN_PORT
  # (MAX_ACU in the environment: the cluster's max_acu, default 8)
  PGTIDE_PORT=$(free_port); ADMIN_PORT=$(free_port)
  # (PGTIDE_PASSWORD in the environment: the user's password; none means trust)
  local password_line=""
  [ -n "${PGTIDE_PASSWORD:-}" ] && password_line="password = \"$PGTIDE_PASSWORD\""
  cat > "$WORK/$1.toml" <<EOF
[admin]
listen = "127.0.0.1:$ADMIN_PORT"
[runtime]
data_dir = "$1-data"
${4:-}
[storage]
${3:-copies = []}
[[clusters]]
name = "bench"
listen = "127.0.0.1:$PGTIDE_PORT"
max_acu = ${MAX_ACU:-8}
$2
[[clusters.users]]
name = "postgres"
superuser = true
$password_line
EOF
  "$PGTIDE_BIN" serve --config "$WORK/$1.toml" 2> "$WORK/$1.log" &
  PIDS+=($!)
  wait_port "$PGTIDE_PORT"
  until curl -sf "127.0.0.1:$ADMIN_PORT/status" | grep -q '"state":"running"'; do sleep 0.1; done
}

start_direct() { # a plain Postgres on TCP (and a unix socket in $WORK/sock); sets DIRECT_PORT
  # $1 = its folder under $WORK (default direct), further arguments = more `-c name=value`s
  local name=${1:-direct}; shift || true
  local settings=(); for setting in "$@"; do settings+=(-c "$setting"); done
  DIRECT_PORT=$(free_port)
  mkdir -p "$WORK/$name" "$WORK/sock" && chown postgres: "$WORK/$name" "$WORK/sock" 2>/dev/null || true
  as_pg "$BIN/initdb" -D "$WORK/$name/pgdata" -U postgres --auth=trust --no-locale -E UTF8 >/dev/null
  bg_as_pg "$BIN/postgres" -D "$WORK/$name/pgdata" -c listen_addresses=127.0.0.1 -c port="$DIRECT_PORT" \
    -c unix_socket_directories="$WORK/sock" -c max_connections=200 -c shared_buffers=128MB \
    "${settings[@]}" > "$WORK/$name.log" 2>&1 &
  PIDS+=($!)
  wait_port "$DIRECT_PORT"
}

scram_verifier() { # the SCRAM-SHA-256 verifier of password $1, as Postgres stores it
  python3 - "$1" <<'PY'
import base64, hashlib, hmac, os, sys
salt, iterations = os.urandom(16), 4096
salted = hashlib.pbkdf2_hmac("sha256", sys.argv[1].encode(), salt, iterations)
client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
b64 = lambda b: base64.b64encode(b).decode()
print(f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(hashlib.sha256(client_key).digest())}:{b64(server_key)}")
PY
}
start_bouncer() { # PgBouncer 1.18 in transaction mode; sets BOUNCER_PORT
  # $1 = the Postgres socket dir and $2 its port (default: the direct Postgres), $3 = the OS user
  # it runs as (default postgres; it must be able to open that socket), $4 = its pool_mode
  # (default transaction).
  BOUNCER_PORT=$(free_port)
  local sock=${1:-$WORK/sock} port=${2:-$DIRECT_PORT} user=${3:-postgres} mode=${4:-transaction}
  local ini="$WORK/pgbouncer-$BOUNCER_PORT.ini"
  cat > "$ini" <<EOF
[databases]
postgres = host=$sock port=$port dbname=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
unix_socket_dir =
auth_type = ${BOUNCER_AUTH:-trust}
auth_file = $ini.users
pool_mode = $mode
default_pool_size = 20
max_client_conn = 1000
EOF
  # The password as Postgres keeps it, a SCRAM-SHA-256 verifier (with a plain text password
  # PgBouncer would run PBKDF2's 4096 rounds itself at every login).
  printf '"postgres" "%s"\n' "$(scram_verifier bench)" > "$ini.users"
  chmod 644 "$ini" "$ini.users"
  if [ "$(id -u)" = 0 ]; then
    (exec setpriv --reuid="$user" --regid="$user" --init-groups -- pgbouncer "$ini" 2> "$ini.log") &
  else
    (exec pgbouncer "$ini" 2> "$ini.log") &
  fi
  PIDS+=($!)
  wait_port "$BOUNCER_PORT"
}

# compare "WORKLOAD…" NAME=PORT…: interleaved rounds of pgbench over every target, then the
# median TPS of each and the median of the per-round ratios to the first target. A target may
# also be NAME=SOCKET_DIR:PORT, a unix socket.
compare() {
  local workloads=$1; shift
  local results="$WORK/results.tsv"; : > "$results"
  for workload in $workloads; do
    local flag=""; [ "$workload" = select-only ] && flag="-S"
    for round in $(seq 1 "$ROUNDS"); do
      for target in "$@"; do
        local name=${target%%=*} port=${target#*=} host=127.0.0.1
        case $port in */*) host=${port%:*}; port=${port##*:} ;; esac
        local out tps failed
        out=$(pgbench -h "$host" -p "$port" -U postgres $flag ${PGBENCH_EXTRA:-} -c "$CLIENTS" -j 2 \
              -T "$SECONDS_PER_ROUND" postgres 2>&1 || true)
        tps=$(printf '%s\n' "$out" | sed -n 's/^tps = \([0-9.]*\).*/\1/p' | head -1)
        failed=$(printf '%s\n' "$out" | sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' | head -1)
        # Clients that hit an error abort and pgbench prints the TPS of those left: no figure.
        if printf '%s\n' "$out" | grep -q "Run was aborted"; then tps=0; failed=aborted; fi
        printf '%s\t%s\t%s\t%s\t%s\n' "$workload" "$round" "$name" "${tps:-0}" "${failed:-?}" >> "$results"
        log "$workload round $round $name: tps ${tps:-FAILED} failed ${failed:-?}"
      done
    done
  done
  python3 - "$results" "$@" <<'EOF'
import sys, statistics, collections
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
names = [t.split("=")[0] for t in sys.argv[2:]]
tps, failed = collections.defaultdict(dict), collections.defaultdict(int)
for workload, rnd, target, value, fails in rows:
    tps[(workload, target)][rnd] = float(value)
    failed[(workload, target)] += int(fails) if fails.isdigit() else 10**9
print(f"\n{'workload':<12} {'target':<16} {'median tps':>11} {'ratio to ' + names[0]:>22} {'failed':>7}")
for workload in dict.fromkeys(r[0] for r in rows):
    base = tps[(workload, names[0])]
    for name in names:
        values = tps[(workload, name)]
        ratios = [values[r] / base[r] for r in values if base.get(r)]
        fails = failed[(workload, name)]
        fails = "aborted" if fails >= 10**9 else fails
        print(f"{workload:<12} {name:<16} {statistics.median(values.values()):>11.0f} {statistics.median(ratios) if ratios else 0:>21.2f}x {fails:>7}")
EOF
}

# ---------------------------------------------------------------------------------------------
bench_proxy() {
  if ! command -v pgbouncer >/dev/null; then log "installing pgbouncer…"; apt_install pgbouncer; fi
  # The whole machine (8 ACU = 2 cores): this measures the proxy, not the scaler. Two clusters,
  # one per pool mode, each compared with the peer of the same mode.
  start_pgtide pgtide "min_acu = 8"
  local session_port=$PGTIDE_PORT
  start_pgtide pooled $'min_acu = 8\npool_mode = "transaction"'
  local transaction_port=$PGTIDE_PORT
  # Every proxy fronts pgtide's own compute over its private socket (as root, the compute runs
  # as the OS user postgres-<cluster>, who alone may open it): the gap between "compute" and
  # each proxy is that proxy's own cost, with no difference between instances. Session mode's
  # peers front the session cluster's compute, transaction mode's the other's (their computes
  # are alike: ratios are to the first).
  local sock="$WORK/pgtide-data/clusters/bench/socket" pooled_sock="$WORK/pooled-data/clusters/bench/socket"
  local owner=postgres
  [ "$(id -u)" = 0 ] && owner=postgres-bench
  log "starting PgBouncer (session and transaction mode) and the bare relay in front of pgtide's computes"
  start_bouncer "$sock" 5432 "$owner" session
  local bouncer_session_port=$BOUNCER_PORT
  start_bouncer "$pooled_sock" 5432 "$owner" transaction
  local bouncer_transaction_port=$BOUNCER_PORT
  RELAY_PORT=$(free_port)
  "$RELAY_BIN" "127.0.0.1:$RELAY_PORT" "$sock/.s.PGSQL.5432" 2>/dev/null &
  PIDS+=($!)
  wait_port "$RELAY_PORT"
  for port in "$session_port" "$transaction_port"; do
    pgbench -h 127.0.0.1 -p "$port" -U postgres -i -q -s "$SCALE" postgres >/dev/null 2>&1
  done
  compare "select-only tpcb-like" compute="$sock:5432" pgtide-session="$session_port" \
    pgbouncer-session="$bouncer_session_port" relay="$RELAY_PORT" \
    pgtide-transaction="$transaction_port" pgbouncer-transaction="$bouncer_transaction_port"
}

# ---------------------------------------------------------------------------------------------
bench_storage() {
  log "starting direct Postgres, pgtide with copies off and pgtide with six copies in $WORK"
  start_direct
  start_pgtide local "min_acu = 8"
  LOCAL_PORT=$PGTIDE_PORT
  start_pgtide copies "min_acu = 8" "write_quorum = 4"
  COPIES_PORT=$PGTIDE_PORT
  # One copy, quorum 1: pgtide's receiver path alone, beside pg_receivewal's (below); what six
  # copies cost beyond it is their fsyncs, four of them per commit group on this one disk.
  start_pgtide one-copy "min_acu = 8" $'copies = ["one-copy-data/copies/a1"]\nwrite_quorum = 1'
  local one_copy_port=$PGTIDE_PORT
  local plain_port=$DIRECT_PORT
  # The peer a user would pick for "every commit on another copy": Postgres with one synchronous
  # standby, Postgres's own pg_receivewal --synchronous (one copy, fsynced, on the same disk).
  # Its ratio to plain Postgres is the floor synchronous replication has on this machine.
  start_direct direct-sync "synchronous_standby_names=pg_receivewal" "synchronous_commit=on"
  local sync_port=$DIRECT_PORT
  mkdir -p "$WORK/receivewal" && chown postgres: "$WORK/receivewal" 2>/dev/null || true
  as_pg "$BIN/pg_receivewal" -h 127.0.0.1 -p "$sync_port" -U postgres --slot=receivewal \
    --create-slot --if-not-exists >/dev/null 2>&1
  (bg_as_pg "$BIN/pg_receivewal" -h 127.0.0.1 -p "$sync_port" -U postgres --slot=receivewal \
    --synchronous -D "$WORK/receivewal" > "$WORK/receivewal.log" 2>&1) &
  PIDS+=($!)
  for port in "$plain_port" "$sync_port" "$LOCAL_PORT" "$COPIES_PORT" "$one_copy_port"; do
    pgbench -h 127.0.0.1 -p "$port" -U postgres -i -q -s "$SCALE" postgres >/dev/null 2>&1
  done
  compare "tpcb-like" copies-off="$LOCAL_PORT" six-copies="$COPIES_PORT" one-copy="$one_copy_port" \
    direct="$plain_port" direct-sync-standby="$sync_port"
}

# ---------------------------------------------------------------------------------------------
# The branch benchmark: per scale, one run with pgtide's data on /work's own file system and one
# on an XFS file system with reflink (a loop device made and removed here) where the machine
# allows it. Each run: load, a base backup after the load (as a user would have after loading:
# the branch then replays bounded WAL), the source's TPS before, then pgbench on the source
# while it is branched, until the branch answers its first query.
bench_branch() {
  local scales=${BRANCH_SCALES:-"70 350"} xfs_reason=""
  log "file systems: /work $(stat -f -c %T /work), /tmp $(stat -f -c %T /tmp), $WORK $(stat -f -c %T "$WORK")"
  if [ "${BRANCH_COW:-1}" = 0 ]; then
    xfs_reason="BRANCH_COW=0"
  elif [ "$(id -u)" != 0 ]; then
    xfs_reason="not root: cannot mount a loop device"
  elif ! command -v mkfs.xfs >/dev/null; then
    log "installing xfsprogs…"; apt_install xfsprogs >/dev/null 2>&1 || true
    command -v mkfs.xfs >/dev/null || xfs_reason="mkfs.xfs is not available"
  fi
  for scale in $scales; do
    # pgbench: about 16 MiB per scale unit. Six copies hold up to two backups and the WAL of
    # the load each; the source, the branch, its copies' first backup and the image: ~28x,
    # and 6 GiB for what does not grow with the scale (WAL segments, the warm pool).
    local need_mib=$((scale * 16 * 28 + 6144)) free_mib
    free_mib=$(df -m --output=avail "$WORK" | tail -1 | tr -d ' ')
    if [ "$need_mib" -gt "$free_mib" ]; then
      echo "scale $scale: skipped: it needs about $need_mib MiB of disk (six copies of the WAL and base backups), $free_mib MiB are free"
      continue
    fi
    if [ "${BRANCH_PLAIN:-1}" = 1 ]; then
      mkdir -p "$WORK/plain-$scale"
      branch_run "$scale" "$(stat -f -c %T "$WORK"), no copy-on-write" "$WORK/plain-$scale"
      rm -rf "$WORK/plain-$scale"
    fi
    if [ -n "$xfs_reason" ]; then
      echo "scale $scale with copy-on-write: skipped: $xfs_reason"
      continue
    fi
    local img="$WORK/xfs-$scale.img" mnt="$WORK/xfs-$scale"
    mkdir -p "$mnt"
    truncate -s "${need_mib}M" "$img"
    if mkfs.xfs -q -m reflink=1 "$img" && mount -o loop "$img" "$mnt"; then
      MOUNTS+=("$mnt")
      chmod 755 "$mnt"
      branch_run "$scale" "XFS reflink on a loop device, copy-on-write" "$mnt"
      umount "$mnt" && MOUNTS=("${MOUNTS[@]/$mnt/}")
    else
      echo "scale $scale with copy-on-write: skipped: mkfs.xfs or mount -o loop failed"
    fi
    rm -f "$img"
  done
}

branch_config() { # $1 = data dir, $2 = base_backup_after_mib; writes $WORK/branch.toml
  cat > "$WORK/branch.toml" <<EOF
[tenants]
listen = "127.0.0.1:$TENANTS_PORT"
[admin]
listen = "127.0.0.1:$ADMIN_PORT"
[capacity]
# The source (4–8 ACU) and its branch (4) both run: this measures branching, not the budget,
# whose default (the machine's 8 ACU) a source at its max would fill.
max_total_acu = 16
[runtime]
data_dir = "$1"
warm_pool_size = 1
[storage]
write_quorum = 4
base_backup_after_mib = $2
[[clusters]]
name = "bench"
listen = "127.0.0.1:$PGTIDE_PORT"
min_acu = 4
max_acu = 8
[[clusters.users]]
name = "postgres"
password = "bench"
superuser = true
EOF
}

branch_serve() { # starts pgtide on $WORK/branch.toml and waits for the source to run; sets SERVE_PID
  "$PGTIDE_BIN" serve --config "$WORK/branch.toml" 2>> "$WORK/branch.log" &
  SERVE_PID=$!
  PIDS+=("$SERVE_PID")
  wait_port "$PGTIDE_PORT"
  psql -X -tA -c 'SELECT 1' "host=127.0.0.1 port=$PGTIDE_PORT user=postgres dbname=postgres sslmode=disable" >/dev/null
  until curl -sf "127.0.0.1:$ADMIN_PORT/status" | grep -q '"state":"running"'; do sleep 0.1; done
}

branch_stop() {
  kill -INT "$SERVE_PID" 2>/dev/null || true
  wait "$SERVE_PID" 2>/dev/null || true
}

branch_run() { # $1 = scale, $2 = what the file system is, $3 = pgtide's data dir
  local scale=$1 fs=$2 data=$3 load_lsn bench_pid t0 t1 answer rows
  PGTIDE_PORT=$(free_port); ADMIN_PORT=$(free_port); TENANTS_PORT=$(free_port)
  export PGPASSWORD=bench
  local source_conn="host=127.0.0.1 port=$PGTIDE_PORT user=postgres dbname=postgres sslmode=disable"
  local branch_conn="host=127.0.0.1 port=$TENANTS_PORT user=postgres dbname=postgres options=endpoint=copy sslmode=disable"
  log "[$fs] pgbench -i -s $scale on the source (six copies)"
  branch_config "$data" 1024
  branch_serve
  pgbench -h 127.0.0.1 -p "$PGTIDE_PORT" -U postgres -i -q -s "$scale" postgres >/dev/null 2>&1
  load_lsn=$(psql -X -tA -c 'SELECT pg_current_wal_lsn()' "$source_conn")
  # A base backup after the load: one run of pgtide whose copies want a backup after any WAL.
  log "[$fs] a base backup after the load (at $load_lsn or later)"
  branch_stop
  branch_config "$data" 1
  branch_serve
  until curl -sf "127.0.0.1:$ADMIN_PORT/status" | python3 -c '
import json, sys
lsn = lambda t: (int(t.split("/")[0], 16) << 32) + int(t.split("/")[1], 16)
load = lsn(sys.argv[1])
c = json.load(sys.stdin)["clusters"][0]
taken = [e["message"].split(" at ")[1].split()[0] for e in c.get("events", [])
         if e["message"].startswith("base backup taken at")]
sys.exit(0 if any(lsn(t) >= load for t in taken) else 1)' "$load_lsn"; do sleep 1; done
  branch_stop
  branch_config "$data" 1024
  branch_serve
  # Where the copies clone files, the newest backup is kept unpacked in the background: wait
  # for it (a user's steady state), at most 10 minutes.
  local newest
  newest=$(ls "$data"/copies/*/bench/base/ | sed -n 's/\.tar$//p' | sort | tail -1)
  if [ "$(stat -f -c %T "$data")" = xfs ]; then
    for _ in $(seq 1 600); do
      ls -d "$data"/copies/*/bench/base/"$newest".image >/dev/null 2>&1 && break
      sleep 1
    done
  fi
  # One pgbench run throughout: its samples of the SECONDS_PER_ROUND seconds before the request
  # (after as many seconds of warm-up) are "before", those until the branch answers "during".
  log "[$fs] pgbench on the source (tpcb-like, $CLIENTS clients): ${SECONDS_PER_ROUND}s of warm-up, ${SECONDS_PER_ROUND}s before the branch, then branching"
  pgbench -h 127.0.0.1 -p "$PGTIDE_PORT" -U postgres -c "$CLIENTS" -j 2 -T "${BRANCH_LOAD_SECONDS:-600}" -P 1 \
    --progress-timestamp postgres > "$WORK/during.txt" 2>&1 &
  bench_pid=$!
  PIDS+=("$bench_pid")
  sleep $((SECONDS_PER_ROUND * 2))
  t0=$(date +%s.%N)
  answer=$(curl -s -X POST -H 'content-type: application/json' -d '{"name": "copy"}' \
    "127.0.0.1:$ADMIN_PORT/clusters/bench/branch")
  for _ in $(seq 1 600); do
    psql -X -tA -c 'SELECT 1' "$branch_conn" >/dev/null 2>&1 && break
    sleep 0.05
  done
  t1=$(date +%s.%N)
  sleep 2
  kill -INT "$bench_pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$bench_pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$bench_pid" 2>/dev/null || true
  wait "$bench_pid" 2>/dev/null || true
  rows=$(psql -X -tA -c 'SELECT count(*) FROM pgbench_accounts' "$branch_conn" 2>&1 || true)
  python3 - "$WORK/during.txt" "$t0" "$t1" "$SECONDS_PER_ROUND" "$answer" "$scale" "$rows" "$fs" <<'EOF'
import json, re, sys
path, t0, t1, window, answer, scale, rows, fs = sys.argv[1:9]
t0, t1, window = float(t0), float(t1), float(window)
text = open(path).read()
samples = [(float(m.group(1)), float(m.group(2)), int(m.group(3) or 0)) for m in
           re.finditer(r"^progress: ([0-9.]+) s, ([0-9.]+) tps.*?(?:(\d+) failed)?$", text, re.M)]
during = [tps for at, tps, _ in samples if t0 < at <= t1 + 1]
ahead = [tps for at, tps, _ in samples if t0 - window < at <= t0]
before = sum(ahead) / len(ahead) if ahead else 0.0
failed = sum(f for _, _, f in samples)
try:
    made = json.loads(answer)
except ValueError:
    print(f"scale {scale} [{fs}]: the branch failed:", answer.strip())
    sys.exit(0)
mean = sum(during) / len(during) if during else 0.0
how = "by cloning" if made.get("copy_on_write") else "from the tar"
print(f"\nscale {scale} [{fs}]: branch answering its first query after {t1 - t0:.2f} s "
      f"(pgtide: laid out {made['lay_out_ms']} ms {how}, replayed {made['replay_ms']} ms, "
      f"started with its first base backup {made['start_ms']} ms); {rows} accounts in the branch")
print(f"source tps before {before:.0f} ({len(ahead)} one-second samples), during the branch {mean:.0f} "
      f"({mean / before if before else 0:.2f}x, {len(during)} one-second samples); "
      f"failed transactions {failed}")
EOF
  branch_stop
}

bench_pool() {
  if ! command -v pgbouncer >/dev/null; then log "installing pgbouncer…"; apt_install pgbouncer; fi
  if ! python3 -c 'import asyncpg' 2>/dev/null; then python3 -m pip install --quiet asyncpg >&2; fi
  log "starting direct Postgres, pgtide (session and transaction mode, and transaction mode with a password) and a PgBouncer in front of each of pgtide's computes"
  start_direct
  start_pgtide session "min_acu = 8"
  SESSION_PORT=$PGTIDE_PORT
  start_pgtide transaction $'min_acu = 8\npool_mode = "transaction"'
  TRANSACTION_PORT=$PGTIDE_PORT; TRANSACTION_ADMIN=$ADMIN_PORT
  PGTIDE_PASSWORD=bench start_pgtide password $'min_acu = 8\npool_mode = "transaction"'
  PASSWORD_PORT=$PGTIDE_PORT
  # Every PgBouncer fronts the compute of the pgtide cluster it is compared with (as root the
  # computes run as the OS user postgres-bench, who alone may open their sockets): the gap
  # between the two is the proxies' own.
  local owner=postgres; [ "$(id -u)" = 0 ] && owner=postgres-bench
  start_bouncer "$WORK/transaction-data/clusters/bench/socket" 5432 "$owner"
  local bouncer_port=$BOUNCER_PORT
  start_bouncer "$WORK/session-data/clusters/bench/socket" 5432 "$owner" session
  local bouncer_session_port=$BOUNCER_PORT
  BOUNCER_AUTH=scram-sha-256 start_bouncer "$WORK/password-data/clusters/bench/socket" 5432 "$owner"
  local bouncer_password_port=$BOUNCER_PORT
  for port in "$DIRECT_PORT" "$SESSION_PORT" "$TRANSACTION_PORT" "$PASSWORD_PORT"; do
    PGPASSWORD=bench pgbench -h 127.0.0.1 -p "$port" -U postgres -i -q -s "$SCALE" postgres >/dev/null 2>&1
  done
  log "(a) a new connection per transaction: pgbench -C -S, trust"
  PGBENCH_EXTRA="-C" compare "select-only" pgbouncer="$bouncer_port" pgtide-transaction="$TRANSACTION_PORT" \
    direct="$DIRECT_PORT"
  log "(a') the same with a password (SCRAM-SHA-256 on both proxies; pgbench's own PBKDF2 is in every login)"
  PGPASSWORD=bench PGBENCH_EXTRA="-C" compare "select-only" pgbouncer-scram="$bouncer_password_port" \
    pgtide-scram="$PASSWORD_PORT"
  log "(b) protocol-level prepared statements: pgbench -M prepared -S (PgBouncer 1.18's transaction mode aborts: P_0 already exists)"
  PGBENCH_EXTRA="-M prepared" compare "select-only" pgtide-transaction="$TRANSACTION_PORT" \
    pgbouncer-session="$bouncer_session_port" pgtide-session="$SESSION_PORT" pgbouncer="$bouncer_port"
  log "(c) memory per idle client: 10,000 idle clients on the transaction-mode cluster"
  pgtide_pid=$(pgrep -f "pgtide serve --config $WORK/transaction.toml" | head -1)
  python3 - "$TRANSACTION_PORT" "$TRANSACTION_ADMIN" "$pgtide_pid" <<'EOF'
import asyncio, json, resource, sys, time, urllib.request
port, admin, pid = int(sys.argv[1]), sys.argv[2], sys.argv[3]
import asyncpg
resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
def rss_kib():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
def status():
    return json.load(urllib.request.urlopen(f"http://127.0.0.1:{admin}/status", timeout=10))["clusters"][0]
async def main():
    before = rss_kib()
    conns = []
    for start in range(0, 10000, 500):
        conns += await asyncio.gather(*(asyncpg.connect(host="127.0.0.1", port=port, user="postgres",
                                                          database="postgres", statement_cache_size=0)
                                         for _ in range(500)))
    await asyncio.sleep(2)
    after = rss_kib()
    print(f"pgtide RSS {before} KiB with no client, {after} KiB with {len(conns)} idle clients: "
          f"{(after - before) * 1024 / len(conns) / 1024:.1f} KiB per idle client")
    print(f"clients in /status: {status()['clients']}")
    # Ask it to pause now: idle transaction-mode clients do not keep it awake.
    req = urllib.request.Request(f"http://127.0.0.1:{admin}/clusters/bench/pause", method="POST", data=b"")
    print("pause with 10,000 idle clients:", urllib.request.urlopen(req, timeout=60).read().decode().strip())
    print("state:", status()["state"])
    row = await conns[0].fetchval("SELECT 1")
    print("the next query of an idle client resumed it:", row == 1, status()["state"])
    await asyncio.gather(*(c.close() for c in conns))
asyncio.run(main())
EOF
}

# ---------------------------------------------------------------------------------------------
bench_resume() {
  local targets=()
  start_pgtide process-cold 'auto_pause_after = "1h"' '' 'warm_pool_size = 0'
  targets+=("process cold,$PGTIDE_PORT,$ADMIN_PORT")
  start_pgtide process-pool 'auto_pause_after = "1h"' '' 'warm_pool_size = 1'
  targets+=("process with pool,$PGTIDE_PORT,$ADMIN_PORT")
  if command -v docker >/dev/null && docker info >/dev/null 2>&1 && ./scripts/build-image.sh; then
    start_pgtide docker-cold 'auto_pause_after = "1h"' '' $'kind = "docker"\nwarm_pool_size = 0'
    targets+=("docker cold,$PGTIDE_PORT,$ADMIN_PORT")
    start_pgtide docker-pool 'auto_pause_after = "1h"' '' $'kind = "docker"\nwarm_pool_size = 1'
    targets+=("docker with pool,$PGTIDE_PORT,$ADMIN_PORT")
  else
    log "Docker is not usable here: the docker targets are skipped"
  fi
  export PGPASSWORD=unused
  python3 - "${targets[@]}" <<'EOF'
import json, sys, time, subprocess, urllib.request
targets = [t.split(",") for t in sys.argv[1:]]
def post(admin, path):
    req = urllib.request.Request(f"http://127.0.0.1:{admin}{path}", method="POST", data=b"")
    urllib.request.urlopen(req, timeout=120).read()
def status(admin):
    return json.load(urllib.request.urlopen(f"http://127.0.0.1:{admin}/status", timeout=5))
def first_row_ms(port):
    t = time.perf_counter()
    subprocess.run(["psql", "-X", "-tA", "-h", "127.0.0.1", "-p", port, "-U", "postgres", "-d", "postgres",
                    "-c", "SELECT 1"], check=True, capture_output=True)
    return (time.perf_counter() - t) * 1000
def pct(values, p):
    values = sorted(values); return values[min(len(values) - 1, int(round(p * (len(values) - 1))))]
paused = {name: [] for name, _, _ in targets}
running = {name: [] for name, _, _ in targets}
for _ in range(20):
    for name, port, admin in targets:
        post(admin, "/clusters/bench/pause")
        # A pool is measured full: wait for the refill that followed the last resume.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            pool = status(admin)["warm_pool"]
            if pool["ready"] >= pool["size"]:
                break
            time.sleep(0.05)
        paused[name].append(first_row_ms(port))
        running[name].append(first_row_ms(port))
print(f"\n{'connect to first row (psql)':<34} {'p50':>8} {'p90':>8} {'max':>8}   warm pool")
for name, port, admin in targets:
    pool = status(admin)["warm_pool"]
    for label, values in [(f"{name}: paused", paused[name]), (f"{name}: running", running[name])]:
        extra = f"   hits {pool['hits']}, misses {pool['misses']}" if label.endswith("paused") else ""
        print(f"{label:<34} {pct(values, .5):>6.0f}ms {pct(values, .9):>6.0f}ms {max(values):>6.0f}ms{extra}")
EOF
}

# ---------------------------------------------------------------------------------------------
bench_scale() {
  start_pgtide pgtide $'min_acu = 0.5\nscale_down_after = "3s"'
  pgbench -h 127.0.0.1 -p "$PGTIDE_PORT" -U postgres -i -q -s "$SCALE" postgres >/dev/null 2>&1
  log "waiting for the ACUs to settle back to the minimum after loading the data…"
  for _ in $(seq 1 300); do
    curl -sf "127.0.0.1:$ADMIN_PORT/status" | grep -q '"acu":0.5,' && break
    sleep 1
  done
  python3 - "$PGTIDE_PORT" "$ADMIN_PORT" <<'EOF'
import json, re, subprocess, sys, threading, time, urllib.request
port, admin = sys.argv[1], sys.argv[2]
phases = [(0, 10), (2, 20), (8, 20), (2, 20), (0, 40)]
samples, tps = [], {}
start = time.monotonic()
def status():
    return json.load(urllib.request.urlopen(f"http://127.0.0.1:{admin}/status", timeout=5))["clusters"][0]
stop = False
def poll():
    while not stop:
        c = status()
        samples.append((time.monotonic() - start, c["acu"], c["cpu_used_cores"]))
        time.sleep(0.1)
poller = threading.Thread(target=poll); poller.start()
phase_starts, failed = [], 0
for clients, seconds in phases:
    phase_starts.append((time.monotonic() - start, clients))
    if clients == 0:
        time.sleep(seconds); continue
    t0 = time.monotonic() - start
    out = subprocess.run(["pgbench", "-h", "127.0.0.1", "-p", port, "-U", "postgres", "-S", "-c", str(clients),
                          "-j", "2", "-T", str(seconds), "-P", "1", "postgres"], capture_output=True, text=True)
    for m in re.finditer(r"progress: ([0-9.]+) s, ([0-9.]+) tps", out.stderr):
        tps[int(t0 + float(m.group(1)))] = float(m.group(2))
    f = re.search(r"number of failed transactions: (\d+)", out.stdout)
    failed += int(f.group(1)) if f else 0
stop = True; poller.join()
def clients_at(t):
    current = 0
    for s, c in phase_starts:
        if s <= t: current = c
    return current
print(f"\n{'t(s)':>5} {'clients':>7} {'ACU':>5} {'CPU used':>9} {'TPS':>8}")
for second in range(int(samples[-1][0]) + 1):
    inside = [s for s in samples if int(s[0]) == second]
    if not inside: continue
    acu = inside[-1][1]; cpu = max(s[2] for s in inside)
    print(f"{second:>5} {clients_at(second):>7} {acu:>5} {cpu:>9.2f} {tps.get(second, 0):>8.0f}")
print("\nreaction from a load change to the applied ACU:")
for (t, clients), (t_prev, prev) in zip(phase_starts[1:], phase_starts):
    before = [s[1] for s in samples if s[0] <= t][-1]
    after = [s for s in samples if s[0] > t and s[1] != before]
    direction = "up" if clients > prev else "down"
    if after:
        print(f"  {prev} -> {clients} clients ({direction}): ACU {before} -> {after[0][1]} after {after[0][0] - t:.1f} s")
    else:
        print(f"  {prev} -> {clients} clients ({direction}): ACU stayed at {before}")
print(f"failed transactions: {failed}")
EOF
  log "24-hour synthetic trace through the policy alone:"
  cargo bench --bench day_trace --quiet 2>/dev/null | grep -v '^$'
}

# ---------------------------------------------------------------------------------------------
# Where a proxy's time goes, per transaction: the system calls and context switches of the proxy
# process (all its threads) while pgbench runs a fixed number of select-only transactions
# through it. strace slows everything down; the counts, not the speed, are the result.
bench_syscalls() {
  if ! command -v pgbouncer >/dev/null; then log "installing pgbouncer…"; apt_install pgbouncer; fi
  if ! command -v strace >/dev/null; then log "installing strace…"; apt_install strace; fi
  start_pgtide pgtide "min_acu = 8"; local session_pid=${PIDS[-1]} session_port=$PGTIDE_PORT
  start_pgtide pooled "min_acu = 8
pool_mode = \"transaction\""; local tx_pid=${PIDS[-1]} tx_port=$PGTIDE_PORT
  # PgBouncer and the relay front the session cluster's compute: waking a backend costs the
  # waker more when the backend sits in a cgroup, so another Postgres would not compare.
  local sock="$WORK/pgtide-data/clusters/bench/socket" owner=postgres
  [ "$(id -u)" = 0 ] && owner=postgres-bench
  start_bouncer "$sock" 5432 "$owner"; local bouncer_pid=${PIDS[-1]}
  RELAY_PORT=$(free_port)
  "$RELAY_BIN" "127.0.0.1:$RELAY_PORT" "$sock/.s.PGSQL.5432" 2>/dev/null &
  PIDS+=($!); local relay_pid=$!
  wait_port "$RELAY_PORT"
  for port in "$session_port" "$tx_port"; do
    pgbench -h 127.0.0.1 -p "$port" -U postgres -i -q -s 1 postgres >/dev/null 2>&1
  done
  local per_client=${TRANSACTIONS:-2000}
  # CPU time per transaction first, without strace (which slows every system call): utime +
  # stime of the proxy's process, all threads, in clock ticks.
  cpu_ticks() { awk '{print $14 + $15}' /proc/"$1"/stat; }
  local ticks_per_s; ticks_per_s=$(getconf CLK_TCK)
  declare -A cpu_us
  local targets=("pgtide-session=$session_pid=$session_port" "pgtide-transaction=$tx_pid=$tx_port"
                 "pgbouncer=$bouncer_pid=$BOUNCER_PORT" "relay=$relay_pid=$RELAY_PORT")
  # Interleaved rounds, the median of each: one run alone swings by a third here.
  for round in $(seq 1 "${CPU_ROUNDS:-5}"); do
    for target in "${targets[@]}"; do
      IFS== read -r name pid port <<< "$target"
      local t0 t1
      t0=$(cpu_ticks "$pid")
      pgbench -h 127.0.0.1 -p "$port" -U postgres -S -c 4 -j 2 -t "$((per_client * 2))" postgres >/dev/null 2>&1
      t1=$(cpu_ticks "$pid")
      cpu_us[$name]+="$(( (t1 - t0) * 1000000 / ticks_per_s / (per_client * 8) )) "
    done
  done
  for name in "${!cpu_us[@]}"; do
    cpu_us[$name]=$(python3 -c "import statistics,sys; print(f'{statistics.median(map(float, sys.argv[1:])):.1f}')" ${cpu_us[$name]})
  done
  printf '\n%-20s %10s %12s %16s   %s\n' "select-only via" "cpu µs/tx" "syscalls/tx" "ctx switches/tx" "top syscalls per tx"
  for target in "pgtide-session=$session_pid=$session_port" "pgtide-transaction=$tx_pid=$tx_port" \
                "pgbouncer=$bouncer_pid=$BOUNCER_PORT" "relay=$relay_pid=$RELAY_PORT"; do
    IFS== read -r name pid port <<< "$target"
    local before after
    before=$(cat /proc/"$pid"/task/*/status | awk '/ctxt_switches/ {s += $2} END {print s}')
    strace -c -f -p "$pid" -o "$WORK/$name.strace" 2>/dev/null &
    local strace_pid=$!
    sleep 0.5
    pgbench -h 127.0.0.1 -p "$port" -U postgres -S -c 4 -j 2 -t "$per_client" postgres >/dev/null 2>&1
    kill -INT "$strace_pid"; wait "$strace_pid" 2>/dev/null || true
    after=$(cat /proc/"$pid"/task/*/status | awk '/ctxt_switches/ {s += $2} END {print s}')
    python3 - "$WORK/$name.strace" "$name" "$((per_client * 4))" "$((after - before))" "${cpu_us[$name]}" <<'EOF'
import sys
path, name, tx, switches, cpu = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
calls = {}
for line in open(path):
    parts = line.split()
    if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
        calls[parts[-1]] = int(parts[3])
total = sum(calls.values())
top = ", ".join(f"{k} {v / tx:.2f}" for k, v in sorted(calls.items(), key=lambda kv: -kv[1])[:4])
print(f"{name:<20} {cpu:>10} {total / tx:>12.2f} {switches / tx:>16.2f}   {top}")
EOF
  done
  # A new connection per transaction (pgbench -C -S), transaction mode against PgBouncer's: the
  # proxy's CPU per login beside the whole machine's. A proxy that cost nothing would make the
  # machine's per-login CPU smaller by the proxy's share, and no more: that bounds the ratio
  # any proxy can reach against another on this machine (`ceiling`).
  machine_busy() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8}' /proc/stat; }
  declare -A login_us machine_us
  local logins=$(( ${LOGINS:-500} * 4 ))
  for round in $(seq 1 "${CPU_ROUNDS:-5}"); do
    for target in "pgtide-transaction=$tx_pid=$tx_port" "pgbouncer=$bouncer_pid=$BOUNCER_PORT"; do
      IFS== read -r name pid port <<< "$target"
      local t0 t1 m0 m1
      t0=$(cpu_ticks "$pid"); m0=$(machine_busy)
      pgbench -h 127.0.0.1 -p "$port" -U postgres -S -C -c 4 -j 2 -t "${LOGINS:-500}" postgres >/dev/null 2>&1
      t1=$(cpu_ticks "$pid"); m1=$(machine_busy)
      login_us[$name]+="$(( (t1 - t0) * 1000000 / ticks_per_s / logins )) "
      machine_us[$name]+="$(( (m1 - m0) * 1000000 / ticks_per_s / logins )) "
    done
  done
  printf '\n%-20s %14s %18s %10s\n' "pgbench -C -S via" "proxy µs/login" "machine µs/login" "ceiling"
  for name in pgtide-transaction pgbouncer; do
    python3 - "$name" "${login_us[$name]}" "${machine_us[$name]}" <<'EOF'
import statistics, sys
name, proxy, machine = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
proxy, machine = statistics.median(map(float, proxy)), statistics.median(map(float, machine))
print(f"{name:<20} {proxy:>14.1f} {machine:>18.1f} {machine / (machine - proxy):>9.2f}x")
EOF
  done
}

# ---------------------------------------------------------------------------------------------
bench_tenants() {
  local tenants=${TENANTS:-500} shared_port copies=''
  shared_port=$(free_port)
  [ "${TENANTS_COPIES:-0}" = 1 ] || copies='copies = []'
  # [tenants] and [capacity] ride on the [runtime] lines (each opens its own table).
  start_pgtide tenants 'auto_pause_after = "3s"' "$copies" \
    $'warm_pool_size = 1\n[tenants]\nlisten = "127.0.0.1:'"$shared_port"$'"\n[capacity]\nmax_total_acu = '"${TENANTS_BUDGET:-1000}"
  local pid=${PIDS[-1]}
  export PGPASSWORD=bench
  python3 - "$tenants" "$shared_port" "$ADMIN_PORT" "$pid" "${TENANTS_COPIES:-0}" <<'EOF'
import json, random, subprocess, sys, time, urllib.request
from concurrent.futures import ThreadPoolExecutor
tenants, port, admin, pid, copies = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
names = [f"t{i:04d}" for i in range(tenants)]
def log(*a): print(*a, file=sys.stderr, flush=True)
def api(method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{admin}{path}", method=method, data=data,
                                 headers={"content-type": "application/json"})
    return urllib.request.urlopen(req, timeout=300).read()
def status():
    return json.loads(api("GET", "/status"))
def rss_kib():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
def switches():
    n = 0
    for line in open(f"/proc/{pid}/status"):
        if "ctxt_switches" in line:
            n += int(line.split()[1])
    return n
def ticks():
    total = 0.0
    for line in api("GET", "/metrics").decode().splitlines():
        if line.startswith("pgtide_cluster_ticks_total{"):
            total += float(line.split()[-1])
    return total
def psql(name, sql):
    t = time.perf_counter()
    out = subprocess.run(["psql", "-X", "-tA", "-h", "127.0.0.1", "-p", port, "-U", "postgres", "-d", name,
                          "-c", sql], capture_output=True, text=True)
    return (time.perf_counter() - t) * 1000, out.returncode == 0, out.stderr.strip()
def pct(values, p):
    values = sorted(values); return values[min(len(values) - 1, int(round(p * (len(values) - 1))))]
def wait_all_paused(limit_s):
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        states = [c["state"] for c in status()["clusters"] if c["name"] in wanted]
        if states.count("paused") == len(wanted):
            return True
        time.sleep(0.5)
    return False

# The config cluster pauses first: the baseline is pgtide with nothing running.
wanted = {"bench"}
wait_all_paused(60)
rss_before = rss_kib()
create_ms, write_failures = [], 0
for i, name in enumerate(names):
    t = time.perf_counter()
    api("POST", "/clusters", {"name": name, "password": "bench", "auto_pause_after": "3s", "max_acu": 2})
    create_ms.append((time.perf_counter() - t) * 1000)
    ms, ok, err = psql(name, "CREATE TABLE written AS SELECT now() AS at")
    write_failures += not ok
    if not ok:
        log(f"{name}: {err}")
    if (i + 1) % 50 == 0:
        log(f"{i + 1} tenants created")
wanted = set(names) | {"bench"}
if not wait_all_paused(120):
    log("not every tenant paused within 120 s")
time.sleep(2)
rss_after = rss_kib()
t0, s0, k0 = time.monotonic(), switches(), ticks()
time.sleep(10)
elapsed = time.monotonic() - t0
wakeups = (switches() - s0) / elapsed
tick_rate = (ticks() - k0) / elapsed

# 20 random tenants woken at once: connect → first row.
woken = random.sample(names, min(20, tenants))
with ThreadPoolExecutor(len(woken)) as pool:
    wakes = list(pool.map(lambda n: psql(n, "SELECT 1"), woken))
wake_ms = [ms for ms, ok, _ in wakes if ok]
wake_failures = sum(1 for _, ok, _ in wakes if not ok)

# 50 tenants running pgbench -c 1 -T 5 at once (tables made first, ten at a time).
loaded = random.sample(names, min(50, tenants))
def init(name):
    return subprocess.run(["pgbench", "-i", "-s", "1", "-q", "-h", "127.0.0.1", "-p", port, "-U", "postgres",
                           name], capture_output=True, text=True).returncode == 0
with ThreadPoolExecutor(10) as pool:
    inits = list(pool.map(init, loaded))
def bench(name):
    out = subprocess.run(["pgbench", "-c", "1", "-T", "5", "-h", "127.0.0.1", "-p", port, "-U", "postgres",
                          name], capture_output=True, text=True)
    text = out.stdout + out.stderr
    tps, failed = 0.0, 0
    for line in text.splitlines():
        if line.startswith("tps = "):
            tps = float(line.split()[2])
        if line.startswith("number of failed transactions:"):
            failed = int(line.split()[4])
    return tps, failed, out.returncode == 0
with ThreadPoolExecutor(len(loaded)) as pool:
    runs = list(pool.map(bench, loaded))
budget = status().get("capacity") or {}

print(f"\n{tenants} tenants on one pgtide (six copies {'on' if copies == '1' else 'off'}; "
      f"max_total_acu {budget.get('max_total_acu')})")
print(f"{'figure':<52} {'value':>12}   aim")
print(f"{'creation, POST /clusters → answered: p50':<52} {pct(create_ms, .5):>10.0f}ms   ≤ 300 ms")
print(f"{'creation: p90':<52} {pct(create_ms, .9):>10.0f}ms")
print(f"{'first writes failed':<52} {write_failures:>12}")
print(f"{'pgtide RSS before → after (all paused)':<52} {rss_before // 1024:>5}→{rss_after // 1024:<4}MiB")
print(f"{'pgtide RSS per paused cluster':<52} {(rss_after - rss_before) / tenants:>9.1f}KiB   ≤ 64 KiB")
print(f"{'pgtide wake-ups/s while all are paused (ctx switches)':<52} {wakeups:>12.1f}")
print(f"{'cluster ticks/s while all are paused':<52} {tick_rate:>12.1f}")
print(f"{'20 woken at once, connect → first row: p50':<52} {pct(wake_ms, .5) if wake_ms else 0:>10.0f}ms   ≤ 150 ms")
print(f"{'20 woken at once: p90':<52} {pct(wake_ms, .9) if wake_ms else 0:>10.0f}ms")
print(f"{'20 woken at once: failed':<52} {wake_failures:>12}")
print(f"{'50 × pgbench -c 1 -T 5 at once: total TPS':<52} {sum(r[0] for r in runs):>12.0f}")
print(f"{'50 × pgbench: failed transactions / failed runs':<52} {sum(r[1] for r in runs):>6} / {sum(1 for r in runs if not r[2]) + inits.count(False)}")
EOF
}

# ---------------------------------------------------------------------------------------------
# Multi-AZ failover. The commit client speaks the wire protocol itself (psycopg is not needed):
# one connection, INSERT … RETURNING pg_postmaster_start_time() in autocommit, so that each
# acknowledged id is known to have committed on which writer; on any error it drops the
# connection, sleeps 20 ms and tries again with a new id.
bench_failover() {
  local failovers=${FAILOVERS:-10} tps_seconds=${FAILOVER_TPS_SECONDS:-20} fo_pid
  log "starting pgtide with one standby and six copies (1–4 ACU) in $WORK"
  MAX_ACU=4 start_pgtide failover $'min_acu = 1\nstandbys = 1' "write_quorum = 4"
  fo_pid=${PIDS[-1]}
  log "pgbench -i -s $SCALE through pgtide"
  pgbench -h 127.0.0.1 -p "$PGTIDE_PORT" -U postgres -i -q -s "$SCALE" postgres >/dev/null 2>&1
  psql -X -q -h 127.0.0.1 -p "$PGTIDE_PORT" -U postgres -d postgres -c 'CREATE TABLE ledger (id bigint)'
  local failed=0
  if python3 - "$PGTIDE_PORT" "$ADMIN_PORT" "$WORK/failover.toml" "$WORK/failover-data/clusters/bench/pgdata" \
    "$failovers" "$PGTIDE_BIN" "$WORK/odd" <<'EOF'
import json, os, re, socket, struct, subprocess, sys, threading, time, urllib.request
port, admin, config, pgdata, failovers, pgtide, odd = sys.argv[1:8]
port, failovers = int(port), int(failovers)
def log(*a): print(*a, file=sys.stderr, flush=True)
class QueryError(Exception): pass
def error_text(payload):
    fields = dict((f[:1], f[1:].decode(errors="replace")) for f in payload.split(b"\0") if f)
    return f"{fields.get(b'C', '?')} {fields.get(b'M', '')}"
class Conn:
    def __init__(self):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        body = struct.pack("!i", 196608) + b"user\0postgres\0database\0postgres\0\0"
        self.s.sendall(struct.pack("!i", len(body) + 4) + body)
        while True:
            kind, payload = self.message()
            if kind == b"R" and struct.unpack("!i", payload[:4])[0] != 0:
                raise QueryError("the server asks for a password")
            if kind == b"E":
                raise QueryError(error_text(payload))
            if kind == b"Z":
                return
    def message(self):
        while len(self.buf) < 5 or len(self.buf) < 1 + struct.unpack("!i", self.buf[1:5])[0]:
            data = self.s.recv(65536)
            if not data:
                raise QueryError("connection closed")
            self.buf += data
        n = struct.unpack("!i", self.buf[1:5])[0]
        kind, payload, self.buf = self.buf[:1], self.buf[5:1 + n], self.buf[1 + n:]
        return kind, payload
    def query(self, sql):
        text = sql.encode() + b"\0"
        self.s.sendall(b"Q" + struct.pack("!i", len(text) + 4) + text)
        rows, error = [], None
        while True:
            kind, p = self.message()
            if kind == b"D":
                row, off = [], 2
                for _ in range(struct.unpack("!h", p[:2])[0]):
                    n = struct.unpack("!i", p[off:off + 4])[0]; off += 4
                    row.append(None if n < 0 else p[off:off + n].decode()); off += max(n, 0)
                rows.append(row)
            elif kind == b"E":
                error = error_text(p)
            elif kind == b"Z":
                if error:
                    raise QueryError(error)
                return rows
    def close(self):
        try: self.s.close()
        except OSError: pass

stop = threading.Event()
acked, errors, latencies = [], [], []   # acked: (id, monotonic time, writer's postmaster start)
def committer():
    next_id, conn = 1, None
    while not stop.is_set():
        try:
            if conn is None:
                conn = Conn()
            i, t = next_id, time.monotonic(); next_id += 1
            rows = conn.query(f"INSERT INTO ledger VALUES ({i}) RETURNING pg_postmaster_start_time()::text")
            done = time.monotonic()
            acked.append((i, done, rows[0][0])); latencies.append(done - t)
            time.sleep(0.01)
        except (OSError, QueryError) as e:
            errors.append((time.monotonic(), str(e)))
            if conn: conn.close()
            conn = None
            time.sleep(0.02)
    if conn: conn.close()
chunks, current = [], [None]   # pgbench in 5 s chunks, restarted when it exits (it aborts a
def loader():                  # client whose connection is lost)
    while not stop.is_set():
        t = time.monotonic()
        p = subprocess.Popen(["pgbench", "-n", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-c", "4",
                              "-j", "2", "-T", "5", "postgres"], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
        current[0] = p
        out = p.communicate()[0]
        m = re.search(r"^tps = ([0-9.]+)", out, re.M)
        chunks.append((t, time.monotonic(), float(m.group(1)) if m else 0.0, p.returncode))
        if p.returncode != 0 and not stop.is_set():
            time.sleep(0.2)

seen, event_log = set(), []
def cluster():
    c = json.load(urllib.request.urlopen(f"http://127.0.0.1:{admin}/status", timeout=10))["clusters"][0]
    for e in reversed(c["events"]):
        key = (e["at"], e["kind"], e["message"])
        if key not in seen:
            seen.add(key)
            if e["kind"] in ("failover", "failover_failed", "compute_exited", "crashed") or "standby" in e["kind"]:
                log(f"  event {e['kind']}: {e['message']}")
            event_log.append(key)
    return c
def settled(old_zone=None, limit=300):
    """Waits until the writer runs (in a zone other than old_zone) and every standby streams."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        c = cluster(); z = c["zones"]
        if (c["state"] == "running" and z["standbys"] and all(s["state"] == "streaming" for s in z["standbys"])
                and z["writer_zone"] != old_zone):
            return time.monotonic(), z["writer_zone"]
        time.sleep(0.2)
    raise SystemExit(f"the cluster did not settle within {limit} s: {json.dumps(c['zones'])}")
def first_commit_after(t0, old_writer, limit=300):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        for i, t, writer in reversed(acked):
            if t <= t0: break
            if writer != old_writer:
                first = [a for a in acked if a[1] > t0 and a[2] != old_writer][0]
                return first[1]
        time.sleep(0.01)
    raise SystemExit(f"no commit on a new writer within {limit} s")
def pct(values, p):
    values = sorted(values); return values[min(len(values) - 1, int(round(p * (len(values) - 1))))]

threads = [threading.Thread(target=committer, daemon=True), threading.Thread(target=loader, daemon=True)]
for t in threads: t.start()
try:
    _, zone = settled()
    unplanned, unplanned_settle, planned, planned_cmd, planned_settle, failures = [], [], [], [], [], []
    in_place = []   # kills after which the writer restarted in its zone instead
    for n in range(failovers):
        time.sleep(3)
        old_writer = acked[-1][2]
        pid = int(open(os.path.join(pgdata, "postmaster.pid")).readline())
        cmdline = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()
        if "postgres" not in cmdline:
            raise SystemExit(f"postmaster.pid names {pid}, which is not a Postgres: {cmdline}")
        t0, n0 = time.monotonic(), len(event_log)
        os.kill(pid, 9)
        ms = (first_commit_after(t0, old_writer) - t0) * 1000
        # A commit on a new postmaster: the standby took over, or the writer restarted where it was
        # (pgtide restarts it in place when it finds no standby in sync).
        for _ in range(20):
            if cluster()["zones"]["writer_zone"] != zone or any(e[1] == "failover" for e in event_log[n0:]):
                break
            time.sleep(0.1)
        if cluster()["zones"]["writer_zone"] == zone:
            t_settled, _ = settled()
            in_place.append(ms)
            log(f"kill {n + 1}/{failovers}: NO failover, the writer restarted in zone {zone}; kill -> first commit "
                f"{ms:.0f} ms; events since the kill: " + "; ".join(f"{e[1]}: {e[2]}" for e in event_log[n0:]))
            open(odd, "a").write("restart in place\n")
            continue
        t_settled, new_zone = settled(zone)
        unplanned.append(ms); unplanned_settle.append(t_settled - t0)
        log(f"unplanned failover {n + 1}/{failovers}: writer {zone} -> {new_zone}, kill -> first commit {ms:.0f} ms, "
            f"new standby streaming after {t_settled - t0:.1f} s")
        zone = new_zone
    for n in range(failovers):
        time.sleep(3)
        old_writer = acked[-1][2]
        t0 = time.monotonic()
        out = subprocess.run([pgtide, "failover", "bench", "--config", config], capture_output=True, text=True)
        t_cmd = time.monotonic()
        if out.returncode != 0:
            failures.append(f"planned failover {n + 1}: {out.stderr.strip() or out.stdout.strip()}")
            log(failures[-1]); continue
        ms = (first_commit_after(t0, old_writer) - t0) * 1000
        t_settled, new_zone = settled(zone)
        planned.append(ms); planned_cmd.append((t_cmd - t0) * 1000); planned_settle.append(t_settled - t0)
        log(f"planned failover {n + 1}/{failovers}: writer {zone} -> {new_zone}, command start -> first commit "
            f"{ms:.0f} ms (the command took {(t_cmd - t0) * 1000:.0f} ms), new standby streaming after "
            f"{t_settled - t0:.1f} s: {out.stdout.strip()}")
        zone = new_zone
    time.sleep(1)
finally:  # the clients stop with any outcome: nothing is left running
    stop.set()
    if current[0] and current[0].poll() is None: current[0].terminate()
    for t in threads: t.join(timeout=60)
conn = Conn()
present = {int(r[0]) for r in conn.query("SELECT id FROM ledger")}
conn.close()
lost = [i for i, _, _ in acked if i not in present]
steady = sorted(latencies)
failed_events = [e for e in event_log if e[1] == "failover_failed"]
own = {"unplanned": [], "planned": []}
for _, kind, message in event_log:
    m = re.match(r"(unplanned|planned) failover from zone \S+ to zone \S+ in (\d+) ms", message)
    if kind == "failover" and m:
        own[m.group(1)].append(float(m.group(2)))
print(f"\nfailover (standbys = 1, six copies, 1–4 ACU; pgbench tpcb-like -c 4 and a commit client)")
print(f"{'figure':<52} {'p50':>8} {'p90':>8} {'max':>8}   n")
for label, values in [("unplanned: kill -9 → first commit on the new writer", unplanned),
                      ("planned: pgtide failover → first commit", planned),
                      ("planned: the command's own duration", planned_cmd),
                      ("unplanned: pgtide's own (its failover event)", own["unplanned"]),
                      ("planned: pgtide's own (its failover event)", own["planned"])]:
    if values:
        print(f"{label:<52} {pct(values, .5):>6.0f}ms {pct(values, .9):>6.0f}ms {max(values):>6.0f}ms   {len(values)}")
for label, values in [("unplanned: kill → new standby streaming", unplanned_settle),
                      ("planned: command → new standby streaming", planned_settle)]:
    if values:
        print(f"{label:<52} {pct(values, .5):>7.1f}s {pct(values, .9):>7.1f}s {max(values):>7.1f}s   {len(values)}")
print(f"commit client: {len(acked)} acknowledged, {len(errors)} errors, one commit p50 "
      f"{pct(steady, .5) * 1000:.1f} ms, p90 {pct(steady, .9) * 1000:.1f} ms (retry sleep 20 ms)")
print(f"acknowledged commits lost: {len(lost)}{' ' + str(lost[:20]) if lost else ''}")
print(f"pgbench chunks: {len(chunks)}, {sum(1 for c in chunks if c[3] != 0)} ended by an error")
print(f"failover_failed events: {len(failed_events)}; failed planned failovers: {len(failures)}")
for f in failures + [e[2] for e in failed_events]:
    print(f"  {f}")
if in_place:
    print(f"kills after which the writer restarted in its own zone (no failover): {len(in_place)} of {failovers}, "
          f"kill → first commit {', '.join(f'{v:.0f}' for v in in_place)} ms")
if lost or failures or failed_events:
    open(odd, "a").write("lost commits or failed failovers\n")
EOF
  then :; else touch "$WORK/odd"; failed=1; fi
  if [ -e "$WORK/odd" ]; then
    local kept
    kept=/tmp/pgtide-bench-failover-$(date +%s).log
    cp "$WORK/failover.log" "$kept"
    log "something went wrong: pgtide's log is kept at $kept"
  fi
  [ "$failed" = 0 ] || exit 1
  log "stopping the failover instance"
  kill -INT "$fo_pid"
  for _ in $(seq 1 600); do kill -0 "$fo_pid" 2>/dev/null || break; sleep 0.1; done

  log "writer TPS with one standby vs none: two instances (4 ACU), one resumed at a time"
  local none_port none_admin one_port one_admin
  MAX_ACU=4 start_pgtide tps-none 'min_acu = 4' "write_quorum = 4"
  none_port=$PGTIDE_PORT; none_admin=$ADMIN_PORT
  MAX_ACU=4 start_pgtide tps-one $'min_acu = 4\nstandbys = 1' "write_quorum = 4"
  one_port=$PGTIDE_PORT; one_admin=$ADMIN_PORT
  for port in "$none_port" "$one_port"; do
    pgbench -h 127.0.0.1 -p "$port" -U postgres -i -q -s "$SCALE" postgres >/dev/null 2>&1
  done
  python3 - "$ROUNDS" "$tps_seconds" "none,$none_port,$none_admin" "one,$one_port,$one_admin" \
    <<'EOF'
import json, re, statistics, subprocess, sys, threading, time, urllib.request
rounds, seconds, targets = int(sys.argv[1]), sys.argv[2], [t.split(",") for t in sys.argv[3:]]
def log(*a): print(*a, file=sys.stderr, flush=True)
def cluster(admin):
    return json.load(urllib.request.urlopen(f"http://127.0.0.1:{admin}/status", timeout=10))["clusters"][0]
def post(admin, path):
    req = urllib.request.Request(f"http://127.0.0.1:{admin}{path}", method="POST", data=b"")
    urllib.request.urlopen(req, timeout=300).read()
def wait(admin, ready, limit=600):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        c = cluster(admin)
        if ready(c): return
        time.sleep(0.2)
    raise SystemExit(f"timed out: {c['state']} {json.dumps(c['zones'])}")
running = lambda c: c["state"] == "running" and all(s["state"] == "streaming" for s in c["zones"]["standbys"])
for name, port, admin in targets:
    wait(admin, running)
    post(admin, "/clusters/bench/pause"); wait(admin, lambda c: c["state"] == "paused")
tps = {name: [] for name, _, _ in targets}
cpu = {name: [] for name, _, _ in targets}   # (writer, standbys) cores used, sampled each second
def sample(name, admin, until):
    while not until.wait(1):
        c = cluster(admin)
        cpu[name].append((c["cpu_used_cores"], sum(s["cpu_used_cores"] for s in c["zones"]["standbys"])))
for r in range(rounds):
    # Each round in the other order (a, b, b, a, …): figures drift upwards over the first rounds.
    for name, port, admin in (targets if r % 2 == 0 else targets[::-1]):
        post(admin, "/clusters/bench/resume"); wait(admin, running)
        done = threading.Event(); sampler = threading.Thread(target=sample, args=(name, admin, done)); sampler.start()
        out = subprocess.run(["pgbench", "-h", "127.0.0.1", "-p", port, "-U", "postgres", "-c", "4", "-j", "2",
                              "-T", seconds, "postgres"], capture_output=True, text=True)
        done.set(); sampler.join()
        m = re.search(r"^tps = ([0-9.]+)", out.stdout, re.M)
        tps[name].append(float(m.group(1)) if m else 0.0)
        log(f"round {r + 1} {name} standby: tps {tps[name][-1]:.0f}")
        post(admin, "/clusters/bench/pause"); wait(admin, lambda c: c["state"] == "paused")
none, one = statistics.median(tps["none"]), statistics.median(tps["one"])
ratios = [b / a for a, b in zip(tps["none"], tps["one"]) if a]
print(f"\nwriter tpcb-like -c 4 -j 2, {seconds} s, 4 ACU, {rounds} interleaved rounds (medians)")
def cores(name, i):
    values = [c[i] for c in cpu[name]]; return statistics.mean(values) if values else 0.0
print(f"{'no standby':<20} {none:>8.0f} tps   {'':>5}    writer CPU {cores('none', 0):.2f} cores")
print(f"{'one standby':<20} {one:>8.0f} tps   {statistics.median(ratios) if ratios else 0:.2f}x   "
      f"writer CPU {cores('one', 0):.2f} cores, standby {cores('one', 1):.2f} (aim ≥ 0.9x)")
print(f"per round: none {' '.join(f'{v:.0f}' for v in tps['none'])}; one {' '.join(f'{v:.0f}' for v in tps['one'])}")
EOF
}

case "$MODE" in
  proxy) bench_proxy ;;
  syscalls) bench_syscalls ;;
  resume) bench_resume ;;
  scale) bench_scale ;;
  storage) bench_storage ;;
  pool) bench_pool ;;
  tenants) bench_tenants ;;
  branch) bench_branch ;;
  failover) bench_failover ;;
  *) log "unknown benchmark $MODE (proxy, syscalls, pool, resume, scale, storage, tenants, branch, failover, all)"; exit 2 ;;
esac
