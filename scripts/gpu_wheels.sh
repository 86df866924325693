#!/usr/bin/env bash
# Prepare .whl/: the wheels `make gpu-check` needs on a bare single-GPU CUDA machine that has its own Python 3.12
# torch (CUDA), transformers, peft, accelerate, safetensors, tokenizers, typer, rich, pyyaml, jinja2, numpy
# and psutil, and no network. Versions are the cuda lockfile's pins (lockfiles/cuda.txt); about 5 MiB in all.
#
#   bash scripts/gpu_wheels.sh            # here, with network: fills .whl/ (ignored by git via .git/info/exclude)
#
# Then, on the GPU machine, from the repository root, with .whl/ beside it, the one device command is
# `make gpu-check` (installs .whl/ into /tmp/tkc-gpu-site unless the machine has the packages, then runs the check
# with the machine's python3); without make, the same thing:
#
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
#     && PYTHONPATH=/tmp/site python3 scripts/gpu_check.py      # results: $OUT or run/gpu-check/gpu_check.json
#
# What travels: pydantic + pydantic-core (cp312 manylinux), annotated-types, typing-inspection, typing-extensions,
# attrs and cattrs (tkc's compile path), hjson and deepspeed (DeepSpeed ZeRO; PyPI has only deepspeed's sdist,
# so it is built here as a pure-Python wheel, DS_BUILD_OPS=0: its ops are JIT-built at run time if ever needed).
# tkc itself runs from this checkout's src/ (scripts/gpu_check.py puts it on the path). Which distributions the
# compile and run paths import was read off a CPU run (gpu_check.json's modules_imported) against the machine's
# package list.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
WHL=.whl
EXCLUDE="$(git rev-parse --git-path info/exclude)"
mkdir -p "$(dirname "$EXCLUDE")" "$WHL"
grep -qxF '/.whl/' "$EXCLUDE" 2>/dev/null || echo '/.whl/' >> "$EXCLUDE"

pin() {  # the cuda lockfile's version of a distribution
  local v
  v="$(grep -iE "^$1==" lockfiles/cuda.txt | head -1 | sed -E 's/^[^=]+==([^ ;\\]+).*/\1/')"
  [ -n "$v" ] || { echo "gpu_wheels: $1 is not pinned in lockfiles/cuda.txt" >&2; exit 2; }
  echo "$v"
}

PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
download() {
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]}" -d "$WHL" "$@"
}

download "pydantic-core==$(pin pydantic-core)"
for dist in pydantic annotated-types typing-inspection typing-extensions attrs cattrs hjson; do
  download "$dist==$(pin "$dist")"
done
ds="deepspeed==$(pin deepspeed)"
if ! ls "$WHL"/deepspeed-"$(pin deepspeed)"-*.whl >/dev/null 2>&1; then
  # the sdist's setup.py imports torch: build with this venv's (no isolation, so no torch download)
  DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$WHL" "$ds"
fi

ls -1 "$WHL"
total=$(du -cb "$WHL"/*.whl | tail -1 | cut -f1)
echo "gpu_wheels: $(ls "$WHL"/*.whl | wc -l) wheels, $((total / 1024)) KiB in $WHL"
if [ "$total" -gt $((60 * 1024 * 1024)) ]; then
  echo "gpu_wheels: more than 60 MiB" >&2
  exit 1
fi
