#!/bin/bash
# Provide a CRIU >= 4.2 for the criu engine (issue #3).
#
# Debian 12's criu 3.17.1 (and 4.1.x) stop their parasite with a hardware breakpoint; on hosts where
# ptrace hardware breakpoints are accepted but never fire (nested VMs) every dump hangs. CRIU 4.2
# probes for that and falls back to syscall tracing. So: use the system's criu when it is >= 4.2 and
# `criu check` passes; otherwise unpack Debian sid's criu and the libraries it needs (their Depends
# closure, read from the package metadata) into <root>/.deps/criu/root and run it through that
# prefix's own loader, never touching the system libc or the system's apt state.
#
# Also caches bookworm's criu in <root>/.deps/criu-old (same method), which the engine's tests use
# to prove that the probe rejects an old CRIU quickly and cleanly. Failure there is not fatal.
#
# Idempotent: a prefix whose stamp matches is reused without touching the network.
# Usage: scripts/setup.d/criu.sh [--force]   (run as root from the project root)
set -euo pipefail

ROOT=${CRBENCH_ROOT:-$(pwd)}
DEPS="$ROOT/.deps"
FORCE=0
[[ ${1:-} == --force ]] && FORCE=1

log() { echo "setup/criu: $*" >&2; }

version_ge() {  # version_ge A B: A >= B (dpkg ordering)
  dpkg --compare-versions "$1" ge "$2"
}

criu_version() {  # criu_version CMD...: prints "4.2.1" or nothing
  "$@" --version 2>/dev/null | sed -n 's/^Version: *\([0-9.]*\).*/\1/p' | head -n1
}

# The mirror URI comes from the system's own sources (never hard-coded).
mirror_uri() {
  local f uri=""
  for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list.d/*.sources; do
    [[ -f $f ]] || continue
    uri=$(awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i ~ /debian\/?$/) { print $i; exit } }' "$f")
    [[ -n $uri ]] && break
  done
  if [[ -z $uri && -f /etc/apt/sources.list ]]; then
    uri=$(awk '$1 == "deb" && $2 ~ /debian\/?$/ { print $2; exit }' /etc/apt/sources.list)
  fi
  [[ -n $uri ]] || { log "no Debian mirror found in /etc/apt/sources.list{,.d}"; return 1; }
  echo "$uri"
}

# apt with a private configuration for one suite: own sources list, lists, cache and (empty)
# dpkg status, so the closure is computed against nothing installed and the system's apt state is
# untouched.
apt_private() {  # apt_private STATE_DIR apt-get|apt-cache ARGS...
  local st=$1 tool=$2
  shift 2
  "$tool" -q \
    -o Dir::Etc::SourceList="$st/sources.list" -o Dir::Etc::SourceParts="$st/parts" \
    -o Dir::State="$st/state" -o Dir::State::Lists="$st/state/lists" \
    -o Dir::State::status="$st/state/status" -o Dir::Cache="$st/cache" \
    -o Dir::Cache::pkgcache="" -o Dir::Cache::srcpkgcache="" \
    -o APT::Architectures::=amd64 -o APT::Architecture=amd64 -o Acquire::Languages=none \
    -o APT::Sandbox::User=root -o Debug::NoLocking=1 "$@"
}

# Unpack PKG (from SUITE) and its Depends/Pre-Depends closure into DEST/root; write DEST/bin/criu.
build_prefix() {  # build_prefix SUITE DEST
  local suite=$1 dest=$2 uri st
  uri=$(mirror_uri)
  st="$DEPS/apt-$suite"
  rm -rf "$dest.tmp"
  mkdir -p "$dest.tmp" "$st/parts" "$st/state/lists/partial" "$st/cache/archives/partial" "$st/debs"
  : >"$st/state/status"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri $suite main" >"$st/sources.list"
  log "reading $suite package lists from $uri (private apt state in $st)"
  apt_private "$st" apt-get update >/dev/null
  # The closure of criu's hard dependencies in that suite, first alternatives included.
  local pkgs
  pkgs=$(apt_private "$st" apt-cache depends --recurse --no-recommends --no-suggests \
    --no-conflicts --no-breaks --no-replaces --no-enhances criu | grep -v '^ ' | grep -v '^<' | sort -u)
  [[ -n $pkgs ]] || { log "criu not found in $suite"; return 1; }
  log "$suite closure: $(echo $pkgs)"
  (cd "$st/debs" && rm -f ./*.deb && apt_private "$st" apt-get download $pkgs >/dev/null)
  local deb
  for deb in "$st"/debs/*.deb; do
    dpkg-deb -x "$deb" "$dest.tmp/root"
  done
  # Paths inside the prefix differ between suites (merged /usr in sid, /lib in bookworm).
  local ldso="" exe="" libpath="" d
  for d in usr/lib/x86_64-linux-gnu lib/x86_64-linux-gnu; do
    [[ -z $ldso && -e $dest.tmp/root/$d/ld-linux-x86-64.so.2 ]] && ldso=$d/ld-linux-x86-64.so.2
    [[ -d $dest.tmp/root/$d ]] && libpath+="${libpath:+:}\$R/$d"
  done
  for d in usr/sbin/criu sbin/criu usr/bin/criu; do
    [[ -z $exe && -x $dest.tmp/root/$d ]] && exe=$d
  done
  [[ -n $ldso && -n $exe ]] || { log "unpacked $suite prefix lacks a loader or criu"; return 1; }
  mkdir -p "$dest.tmp/bin"
  # The wrapper finds its prefix from its own location, so the tree may move.
  cat >"$dest.tmp/bin/criu" <<EOF
#!/bin/sh
# criu from Debian $suite, unpacked by scripts/setup.d/criu.sh and run through the prefix's own
# loader and libraries (the system libc may be older than the one it was built against).
P=\$(CDPATH= cd -- "\$(dirname -- "\$0")/.." && pwd) || exit 127
R="\$P/root"
exec "\$R/$ldso" --library-path "$libpath" "\$R/$exe" "\$@"
EOF
  chmod 0755 "$dest.tmp/bin/criu"
  local v
  v=$(criu_version "$dest.tmp/bin/criu")
  [[ -n $v ]] || { log "unpacked criu from $suite does not run: $("$dest.tmp/bin/criu" --version 2>&1 | tail -n1)"; return 1; }
  echo "$suite $v" >"$dest.tmp/stamp"
  # The old prefix is replaced only once the new one runs.
  rm -rf "$dest"
  mv "$dest.tmp" "$dest"
  log "criu $v from $suite ready: $dest/bin/criu"
}

prefix_ok() {  # prefix_ok DEST SUITE
  [[ $FORCE == 0 && -x $1/bin/criu && -f $1/stamp ]] || return 1
  [[ $(cut -d' ' -f1 <"$1/stamp") == "$2" ]] || return 1
  [[ -n $(criu_version "$1/bin/criu") ]]
}

main() {
  mkdir -p "$DEPS"
  local sysv=""
  if command -v criu >/dev/null 2>&1; then
    sysv=$(criu_version criu)
    if [[ -n $sysv ]] && version_ge "$sysv" 4.2 && criu check >/dev/null 2>&1; then
      log "system criu $sysv passes (>= 4.2, criu check ok): using it"
    else
      log "system criu ${sysv:-?} is not usable here (needs >= 4.2 and a passing 'criu check')"
      sysv=""
    fi
  fi
  if [[ -z $sysv ]]; then
    if prefix_ok "$DEPS/criu" sid; then
      log "cached: $(cat "$DEPS/criu/stamp") in $DEPS/criu"
    else
      build_prefix sid "$DEPS/criu"
    fi
  fi
  # Old CRIUs for the engine's probe tests (optional): bookworm's 3.17.1 fails `criu check` on
  # new kernels, trixie's 4.1.x passes it but hangs in dump where hardware breakpoints never fire.
  local suite dir
  for suite in bookworm:criu-old trixie:criu-4.1; do
    dir="$DEPS/${suite#*:}"
    suite=${suite%%:*}
    if prefix_ok "$dir" "$suite"; then
      log "cached test criu: $(cat "$dir/stamp") in $dir"
    else
      build_prefix "$suite" "$dir" || log "warning: could not cache $suite's criu in $dir (its probe test will skip)"
    fi
  done
}

main "$@"
