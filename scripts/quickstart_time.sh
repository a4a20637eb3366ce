#!/usr/bin/env bash
# Time the README's two Quickstart commands as a newcomer meets them: each on its own fresh
# clone of this repository's HEAD (no .venv, no numba cache) with pip's cache off, so every
# wheel is downloaded again, one after the other. Debian packages already installed (the
# dataset, the test tools) stay installed: on a fresh machine apt adds its own time.
#   bash scripts/quickstart_time.sh [WORKDIR]    # default WORKDIR: a new temporary folder
# Prints wall, user and system seconds of each command (GNU time) and where its log is.
# Wall time depends on the load of the machine: measure on an otherwise idle one.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-$(mktemp -d)}"
mkdir -p "$work"
export PIP_NO_CACHE_DIR=1
timer=/usr/bin/time
[ -x "$timer" ] || { echo "quickstart_time: needs GNU time (Debian: apt-get install time)" >&2; exit 2; }

# the two commands, read from README.md's Quickstart block so they cannot drift apart
mapfile -t cmds < <(awk '/^## Quickstart/{q=1} q&&/^```bash/{b=1;next} b&&/^```/{exit} b' \
  "$repo/README.md")
[ "${#cmds[@]}" = 2 ] || { echo "quickstart_time: README's Quickstart must hold exactly two commands" >&2; exit 2; }

for i in 0 1; do
  dir="$work/clone$((i + 1))"
  rm -rf "$dir"
  git clone -q "$repo" "$dir"
  log="$work/command$((i + 1)).log"
  echo "command $((i + 1)): ${cmds[$i]}"
  (cd "$dir" && "$timer" -f "wall %e s, user %U s, system %S s" -o "$work/time$((i + 1))" \
    bash -c "${cmds[$i]}" >"$log" 2>&1) || echo "  failed (exit $?): see $log"
  echo "  $(cat "$work/time$((i + 1))" | tail -1); log: $log"
done
