# Shared steps of scripts/*.sh: make sure what pgtide needs is on this machine.
# Sourced, not run.

log() { printf '%s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    log "need root for: $*"; return 1; fi
}

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then
    as_root apt-get update -qq >&2
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "$@" >&2
}

postgres_server_present() {
  local dir
  dir=$(pg_config --bindir 2>/dev/null || true)
  [ -n "$dir" ] && [ -x "$dir/postgres" ] && [ -x "$dir/initdb" ] && return 0
  for dir in /usr/lib/postgresql/*/bin; do
    [ -x "$dir/postgres" ] && [ -x "$dir/initdb" ] && return 0
  done
  return 1
}

# The PostgreSQL server binaries (postgresql-15 also brings pgbench), without the default
# cluster that Debian's package would otherwise create and start on port 5432.
ensure_postgres_server() {
  if postgres_server_present && command -v pgbench >/dev/null && command -v psql >/dev/null; then
    return 0
  fi
  log "installing the PostgreSQL 15 server (Debian's postgresql-15)…"
  as_root mkdir -p /etc/postgresql-common
  if [ ! -f /etc/postgresql-common/createcluster.conf ] || ! grep -q '^create_main_cluster' /etc/postgresql-common/createcluster.conf; then
    echo 'create_main_cluster = false' | as_root tee -a /etc/postgresql-common/createcluster.conf >/dev/null
  fi
  apt_install postgresql-15 postgresql-client-15
}

# Postgres refuses to run as root: a root pgtide runs it as runtime.run_as ("postgres").
ensure_run_as_user() {
  local user=${1:-postgres}
  [ "$(id -u)" = 0 ] || return 0
  id "$user" >/dev/null 2>&1 && return 0
  log "creating the OS user $user that runs Postgres…"
  useradd --system --user-group --no-create-home --shell /usr/sbin/nologin "$user"
}

ensure_rust() {
  command -v cargo >/dev/null && return 0
  log "cargo is missing: install Rust (rustup) first"; return 1
}

# What every script needs before it builds or runs pgtide.
prepare_machine() {
  ensure_rust
  ensure_postgres_server
  ensure_run_as_user postgres
}
