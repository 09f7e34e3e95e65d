#!/bin/bash
# Install what a fresh Debian 12 machine lacks, run the per-area set-up steps, and build crbench.
# Idempotent: when everything is already there it only checks (dpkg-query), runs scripts/setup.d/*
# (each idempotent itself) and lets ninja find nothing to do.
#
#   scripts/setup.sh            (as root)
#
# Environment: CRBENCH_BUILD_DIR (default: build), CRBENCH_SKIP_BUILD=1 to stop after set-up.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
build_dir="${CRBENCH_BUILD_DIR:-build}"
started=$(date +%s.%N)

say() { printf 'setup: %s\n' "$*"; }
warn() { printf 'setup: WARNING: %s\n' "$*" >&2; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

if [[ $(id -u) -ne 0 ]]; then
  die "must run as root (it installs Debian packages and the tests create namespaces and cgroups); rerun as root, e.g. 'sudo $0'"
fi
[[ -r /etc/os-release ]] && . /etc/os-release
codename="${VERSION_CODENAME:-bookworm}"
if [[ "${ID:-}" != debian ]]; then
  warn "this is ${PRETTY_NAME:-an unknown system}, not Debian; package names assume Debian 12 (bookworm)"
fi

export DEBIAN_FRONTEND=noninteractive
apt_opts=(-y -q -o DPkg::Lock::Timeout=600 --no-install-recommends)

# --- bookworm-backports source ------------------------------------------------------------------
# Take the mirror URI the system already uses for the main suite: machines behind a mirror or a
# snapshot must keep using it.
backports_file=/etc/apt/sources.list.d/crbench-backports.sources
backports_suite="${codename}-backports"
main_uri() {
  local f=/etc/apt/sources.list.d/debian.sources
  if [[ -r $f ]]; then
    # deb822: stanzas separated by blank lines; pick the one whose Suites has "<codename>".
    awk -v suite="$codename" '
      BEGIN { RS=""; FS="\n" }
      {
        uri=""; ok=0
        for (i = 1; i <= NF; i++) {
          if ($i ~ /^URIs:/) { sub(/^URIs:[ \t]*/, "", $i); split($i, u, /[ \t]+/); uri=u[1] }
          if ($i ~ /^Suites:/) { n = split($i, s, /[ \t]+/); for (j = 2; j <= n; j++) if (s[j] == suite) ok=1 }
        }
        if (ok && uri != "") { print uri; exit }
      }' "$f"
    return
  fi
  # One-line format fallback: "deb [opts] URI bookworm main"
  if [[ -r /etc/apt/sources.list ]]; then
    awk -v suite="$codename" '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { if ($(i+1) == suite) { print $i; exit } } }' /etc/apt/sources.list
  fi
}

backports_ok=0
uri="$(main_uri || true)"
if [[ -z $uri ]]; then
  warn "no '$codename' entry in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list; cannot add $backports_suite"
else
  want="Types: deb
URIs: $uri
Suites: $backports_suite
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg"
  if [[ ! -f $backports_file ]] || [[ "$(cat "$backports_file")" != "$want" ]]; then
    printf '%s\n' "$want" > "$backports_file.tmp"
    mv "$backports_file.tmp" "$backports_file"
    say "added $backports_suite from $uri ($backports_file)"
  fi
  backports_ok=1
fi

# --- packages -----------------------------------------------------------------------------------
# scripts/packages/*.txt: one package a line, "pkg" or "pkg@suite", '#' starts a comment.
declare -A wanted=()   # pkg -> suite ("" = default)
shopt -s nullglob
for list in scripts/packages/*.txt; do
  while IFS= read -r line || [[ -n $line ]]; do
    line="${line%%#*}"
    line="${line//[[:space:]]/}"
    [[ -z $line ]] && continue
    pkg="${line%%@*}"
    suite=""
    [[ $line == *@* ]] && suite="${line#*@}"
    # A backports request wins over a plain one for the same package.
    if [[ -z ${wanted[$pkg]+x} || -n $suite ]]; then wanted[$pkg]="$suite"; fi
  done < "$list"
done

missing_default=()
missing_suite=()
if ((${#wanted[@]})); then
  # One dpkg-query for all packages keeps the second run fast.
  declare -A status=()
  while IFS='|' read -r name st ver; do
    status[$name]="$st|$ver"
  done < <(dpkg-query -W -f='${Package}|${db:Status-Abbrev}|${Version}\n' "${!wanted[@]}" 2>/dev/null || true)
  for pkg in "${!wanted[@]}"; do
    suite="${wanted[$pkg]}"
    st="${status[$pkg]:-}"
    ok=0
    if [[ ${st%%|*} == "ii " ]]; then
      ok=1
      if [[ $suite == *-backports && $backports_ok == 1 && ${st#*|} != *bpo* ]]; then ok=0; fi
    fi
    ((ok)) && continue
    if [[ -n $suite ]]; then missing_suite+=("$pkg@$suite"); else missing_default+=("$pkg"); fi
  done
fi

if ((${#missing_default[@]} + ${#missing_suite[@]})); then
  say "installing ${#missing_default[@]} + ${#missing_suite[@]} missing packages: ${missing_default[*]} ${missing_suite[*]}"
  apt-get -q -o DPkg::Lock::Timeout=600 update || warn "apt-get update reported errors (see above); trying with the lists we have"
  if ((${#missing_default[@]})); then
    apt-get install "${apt_opts[@]}" "${missing_default[@]}" ||
      die "apt-get install failed for: ${missing_default[*]} (see the apt output above)"
  fi
  # Group the per-suite requests so each suite gets one apt-get call with -t (its dependencies
  # then come from the same suite, as backports needs).
  declare -A by_suite=()
  for item in "${missing_suite[@]}"; do
    by_suite[${item#*@}]+="${item%%@*} "
  done
  for suite in "${!by_suite[@]}"; do
    read -r -a pkgs <<< "${by_suite[$suite]}"
    if [[ $suite == *-backports && $backports_ok != 1 ]] ||
      ! apt-get install "${apt_opts[@]}" -t "$suite" "${pkgs[@]}"; then
      warn "could not install ${pkgs[*]} from $suite; falling back to $codename's versions" \
        "(older QEMU/libvirt: QEMU 7.2 has a dirty-bitmap bug under TCG pre-copy; results record the versions)"
      apt-get install "${apt_opts[@]}" "${pkgs[@]}" ||
        die "apt-get install failed for: ${pkgs[*]} (see the apt output above)"
    fi
  done
else
  say "all ${#wanted[@]} packages from scripts/packages/*.txt are installed"
fi

# --- per-area set-up steps -------------------------------------------------------------------------
for step in scripts/setup.d/*.sh; do
  say "running $step"
  bash "$step" || die "$step failed (exit $?); fix what it reports and rerun scripts/setup.sh"
done

# --- build ---------------------------------------------------------------------------------------
if [[ ${CRBENCH_SKIP_BUILD:-0} != 1 ]]; then
  if [[ ! -f $build_dir/build.ninja ]]; then
    say "meson setup $build_dir"
    meson setup "$build_dir" || die "meson setup $build_dir failed (see above)"
  fi
  ninja -C "$build_dir" || die "build failed: ninja -C $build_dir (see the compiler output above)"
fi

say "done in $(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s"
