#!/usr/bin/env bash
# Run the cached perf_analyzer (see setup.sh) with its bundled libraries.
# All arguments are passed through; the exit code is perf_analyzer's.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="$(cd "$HERE/../.." && pwd)/.cache/perf_analyzer"
BIN="$CACHE/bin/perf_analyzer"

if [[ ! -x "$BIN" ]]; then
  echo "run.sh: perf_analyzer is not set up; run bench/perf_analyzer/setup.sh first" >&2
  exit 2
fi

export LD_LIBRARY_PATH="$CACHE/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec "$BIN" "$@"
