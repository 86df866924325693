#!/usr/bin/env bash
# Regenerate the hash-pinned lockfiles lockfiles/cpu.txt and lockfiles/dev.txt from lockfiles/*.in.
#
# Usage:   scripts/lock.sh [--upgrade]        (the body of `make lock`)
# Needs:   Python 3.11 (the lockfiles pin cp311 wheels), the package index, and the local CPU torch
#          wheel in $TKC_WHEELS (default /opt/wheels) so its hash is that of the +cpu file.
# How:     pip-tools (pinned below) is installed into a throwaway venv; `pip-compile --generate-hashes`
#          resolves each .in file. Without --upgrade, pins already in a lockfile are kept (pip-compile
#          reuses them), so re-running is a no-op unless an .in file changed.
# cuda.txt, rocm.txt and npu.txt are derived from cpu.txt: the same == pins without hashes, torch swapped
# for the platform build, plus the platform's extra packages (see `platform` below and their headers).
set -euo pipefail
cd "$(dirname "$0")/.."

PIP_TOOLS_VERSION=7.6.2
PYTHON=${PYTHON:-python3}
WHEELS=${TKC_WHEELS:-/opt/wheels}
UPGRADE=()
if [[ ${1:-} == "--upgrade" ]]; then UPGRADE=(--upgrade); fi

"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "lock.sh needs Python 3.11")'
if ! compgen -G "$WHEELS/torch-2.13.0+cpu-*.whl" > /dev/null; then
  echo "lock.sh: no torch-2.13.0+cpu wheel in $WHEELS (set TKC_WHEELS)" >&2
  exit 1
fi

tools=$(mktemp -d)
trap 'rm -rf "$tools"' EXIT
"$PYTHON" -m venv "$tools/venv"
"$tools/venv/bin/pip" install --quiet "pip-tools==$PIP_TOOLS_VERSION"

# lock NAME DESCRIPTION: compile lockfiles/NAME.in into lockfiles/NAME.txt behind a fixed header.
lock() {
  local name=$1 description=$2 body="$tools/$1.body"
  if [[ -f "lockfiles/$name.txt" ]]; then cp "lockfiles/$name.txt" "$body"; fi
  # Run inside lockfiles/ so the "# via -r NAME.in" annotations carry no machine path.
  (cd lockfiles && "$tools/venv/bin/pip-compile" --quiet --generate-hashes --allow-unsafe \
    --strip-extras --no-header --no-emit-index-url --no-emit-find-links \
    --find-links "$WHEELS" "${UPGRADE[@]}" --output-file "$body" "$name.in")
  {
    echo "# $description"
    echo "# Produced by scripts/lock.sh (pip-tools $PIP_TOOLS_VERSION: pip-compile --generate-hashes"
    echo "#   --allow-unsafe --strip-extras) from lockfiles/$name.in, with Python 3.11 on linux x86_64."
    echo "# torch is the local CPU build (torch-2.13.0+cpu wheel); its hash is that file's."
    echo "# Install: pip install --require-hashes -r lockfiles/$name.txt   (do not edit by hand)"
    echo "#"
    grep -v '^#' "$body" | sed '/./,$!d'
  } > "lockfiles/$name.txt"
}

# platform NAME TORCH_LINE EXTRAS WHY: lockfiles/NAME.txt = cpu.txt's pins (no hashes) with TORCH_LINE and EXTRAS.
platform() {
  local name=$1 torch=$2 extras=$3 why=$4
  {
    echo "# $name runtime stack: pinned (==) WITHOUT hashes. Produced by scripts/lock.sh from lockfiles/cpu.txt"
    echo "#   (same pins, torch swapped for the $name build, plus: ${extras:-nothing})."
    echo "# No hashes because $why"
    echo "# torch's transitive platform wheels (driver/runtime libraries) are resolved at install time."
    echo "#"
    { grep -E '^[A-Za-z0-9]' lockfiles/cpu.txt | sed 's/ *\\$//' | grep -v '^torch=='
      echo "$torch"
      for x in $extras; do echo "$x"; done
    } | LC_ALL=C sort -f
  } > "lockfiles/$name.txt"
}

DEEPSPEED="deepspeed==0.19.8 einops==0.8.2 hjson==3.1.0 msgpack==1.2.4 ninja==1.13.2 py-cpuinfo==9.0.0"

lock cpu "CPU runtime stack (tkc core + runtime extra), pinned with hashes."
lock dev "Everything the tests need: cpu.txt plus test/lint tools and the serve extra, pinned with hashes."
platform cuda "torch==2.13.0" "$DEEPSPEED" \
  "the CUDA torch wheel is locked on a CPU host whose local +cpu wheel would shadow it, and the CUDA
#   wheels' hashes belong on the GPU host that installs them. Install: pip install -r lockfiles/cuda.txt"
platform rocm "torch==2.13.0" "$DEEPSPEED" \
  "the ROCm torch build (version label +rocmX.Y) lives on PyTorch's own wheel index, not on PyPI.
#   Install: pip install --index-url <PyTorch ROCm index for the host's ROCm> -r lockfiles/rocm.txt
#   (envcheck compares torch's public version, so 2.13.0+rocmX.Y satisfies the pin)."
platform npu "torch==2.13.0" "torch-npu==2.13.0 $DEEPSPEED" \
  "Ascend hosts are usually aarch64 and torch-npu needs the host's CANN toolkit (set_env.sh sourced);
#   neither can be resolved from this x86_64 host. Install: pip install -r lockfiles/npu.txt"
echo "lock.sh: wrote lockfiles/cpu.txt dev.txt cuda.txt rocm.txt npu.txt"
