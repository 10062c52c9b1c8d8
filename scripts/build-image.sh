#!/usr/bin/env bash
# Builds the image of the docker runtime, pgtide/postgres:15 (or $PGTIDE_IMAGE), without any
# registry: a root filesystem made of this machine's own PostgreSQL 15 server binaries and
# their shared-library closure (ldd), /bin/sh, the share directory and the time zone data, with
# a `postgres` user whose uid and gid equal the host's (so that data directories owned by the
# host's postgres user can be bind-mounted), packed into a tar and imported with `docker import`.
#
# The docker runtime keeps each container idle under `sleep infinity` until a cluster is given to
# it, so coreutils' sleep is in the image too. The image carries the label pgtide.image-version;
# an image with an older one is rebuilt.
#
# Idempotent: does nothing when an image of this version exists (`--force` rebuilds it). Prints
# each step and how long the build took. (pgtide gives each container its stop signal, SIGINT, itself: the
# engines this was written on refuse STOPSIGNAL in `docker import --change`.)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

image=${PGTIDE_IMAGE:-pgtide/postgres:15}
image_version=2
force=0
[ "${1:-}" = "--force" ] && force=1

if ! command -v docker >/dev/null || ! docker info >/dev/null 2>&1; then
  log "build-image: Docker is not usable here (docker info failed); cannot build $image"
  exit 1
fi
if [ "$force" = 0 ] && docker image inspect "$image" >/dev/null 2>&1; then
  have=$(docker image inspect --format '{{ index .Config.Labels "pgtide.image-version" }}' "$image" 2>/dev/null || true)
  if [ "$have" = "$image_version" ]; then
    log "build-image: $image exists"
    exit 0
  fi
  log "build-image: $image is of version '${have:-1}', not $image_version: rebuilding it"
fi

started=$(date +%s%N)
ensure_postgres_server
ensure_run_as_user postgres
bin_dir=/usr/lib/postgresql/15/bin
pkg_lib_dir=/usr/lib/postgresql/15/lib
share_dir=$(pg_config --sharedir 2>/dev/null || echo /usr/share/postgresql/15)
[ -x "$bin_dir/postgres" ] || { log "build-image: no $bin_dir/postgres"; exit 1; }
uid=$(id -u postgres)
gid=$(id -g postgres)

work=$(mktemp -d "${TMPDIR:-/tmp}/pgtide-image.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
log "build-image: assembling a root filesystem in $root"

# Debian's merged /usr: /bin, /lib, /lib64 and /sbin are links into /usr, as on the host.
mkdir -p "$root"/usr/{bin,lib,lib64,sbin} "$root"/{etc,tmp,dev,proc,sys,run,var/run/postgresql}
for dir in bin lib lib64 sbin; do ln -s "usr/$dir" "$root/$dir"; done
chmod 1777 "$root/tmp"

# Copies a file (following links) to the same path in the root filesystem, with its directory
# resolved (so /lib/x86_64-linux-gnu/libc.so.6 lands in usr/lib/x86_64-linux-gnu).
copy() {
  local src=$1 dest
  dest=$root$(readlink -f "$(dirname "$src")")/$(basename "$src")
  [ -e "$dest" ] && return 0
  mkdir -p "$(dirname "$dest")"
  cp -L "$src" "$dest"
}

# The server binaries (JIT is left out: llvmjit.so would bring 100 MB of LLVM; without the file
# Postgres runs with JIT off), the extensions and encoding conversions, and /bin/sh.
server_bins="postgres initdb pg_ctl pg_controldata pg_resetwal pg_isready"
elves=()
log "build-image: copying the PostgreSQL 15 server from $bin_dir"
for bin in $server_bins; do
  copy "$bin_dir/$bin"
  elves+=("$bin_dir/$bin")
done
ln -s postgres "$root$bin_dir/postmaster"
for lib in "$pkg_lib_dir"/*.so; do
  case $(basename "$lib") in llvmjit*) continue ;; esac
  copy "$lib"
  elves+=("$lib")
done
copy /usr/bin/dash
ln -s dash "$root/usr/bin/sh"
elves+=(/usr/bin/dash)
copy /usr/bin/sleep
elves+=(/usr/bin/sleep)

log "build-image: copying the shared libraries they need (ldd closure)"
libs=$(ldd "${elves[@]}" 2>/dev/null | awk '/=> \//{print $3} /^[[:space:]]*\/[^ ]+ \(/{print $1}' | sort -u)
count=0
for lib in $libs; do
  copy "$lib"
  count=$((count + 1))
done
log "build-image: $count libraries"

log "build-image: copying $share_dir and the time zone data"
mkdir -p "$root$(dirname "$share_dir")"
cp -a "$share_dir" "$root$share_dir"
mkdir -p "$root/usr/share"
cp -a /usr/share/zoneinfo "$root/usr/share/zoneinfo"

# Postgres looks its own user up (getpwuid): the postgres user has the host's uid and gid.
cat >"$root/etc/passwd" <<EOF
root:x:0:0:root:/root:/bin/sh
postgres:x:$uid:$gid:PostgreSQL:/var/lib/postgresql:/bin/sh
EOF
cat >"$root/etc/group" <<EOF
root:x:0:
postgres:x:$gid:
EOF
echo "passwd: files" >"$root/etc/nsswitch.conf"
echo "group: files" >>"$root/etc/nsswitch.conf"
mkdir -p "$root/var/lib/postgresql"
chown "$uid:$gid" "$root/var/lib/postgresql" "$root/var/run/postgresql"

size=$(du -sh "$root" | cut -f1)
log "build-image: importing $size as $image"
tar --numeric-owner -C "$root" -cf - . | docker import \
  --change "ENV PATH=$bin_dir:/usr/bin:/bin" \
  --change "USER postgres" \
  --change "WORKDIR /var/lib/postgresql" \
  --change "CMD [\"postgres\", \"--version\"]" \
  --change "LABEL pgtide.image-version=$image_version" \
  --message "pgtide: PostgreSQL 15 from the host's binaries" \
  - "$image" >/dev/null

# An image that cannot run Postgres must not stay behind to be found "existing" next time.
if ! version=$(docker run --rm --network none "$image" sh -c 'sleep 0 && postgres --version' 2>&1); then
  docker image rm "$image" >/dev/null 2>&1 || true
  log "build-image: the imported image does not run postgres: $version"
  exit 1
fi
elapsed_ms=$((($(date +%s%N) - started) / 1000000))
log "build-image: $image built in $((elapsed_ms / 1000)).$(printf %03d $((elapsed_ms % 1000))) s ($version)"
