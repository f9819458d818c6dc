#!/usr/bin/env bash
# Prepares the wheels scripts/benchmarks/gpu_check.sh installs on a device machine whose image has Python 3.12 and
# torch 2.11 (with numpy, scipy, timm, h5py, tensorboard, onnxruntime, pytest) but no MONAI, Ignite, nibabel or fire.
#
#   bash scripts/benchmarks/prepare_gpu_carry.sh          # -> .whl/ (gitignored): carry ".whl" with the device call
#   bash scripts/benchmarks/prepare_gpu_carry.sh --check  # then a dry run: install them for Python 3.12 here
#
# The set is the bundle's pins (pyproject.toml) that the image lacks, plus timm at the bundle's pin and the
# dependencies of these that the image lacks (termcolor for fire). Left out: SimpleITK and itk (DICOM, NRRD and MHA
# input: the GPU check reads NIfTI; their cp312 wheels are ~50 and ~80 MB, over the carry limit with the work tree).
# Everything carried (work tree + wheels) must stay under the device tool's 64 MiB: the sizes are printed and checked.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
DEST=.whl
LIMIT=$((64 * 1024 * 1024))
pin() { sed -n "s/^ *\"\($1==[^\"]*\)\".*/\1/p" pyproject.toml; }
PINS="$(pin monai) $(pin pytorch-ignite) $(pin nibabel) $(pin fire) $(pin timm) termcolor==3.3.0"
rm -rf "$DEST" && mkdir -p "$DEST"
# every wheel is pure Python (py3-none-any); the platform tags only let pip answer for the device's image
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$DEST" $PINS
ls -l "$DEST"
wheels=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
tree=$(git ls-files -co --exclude-standard -z | du -cb --files0-from=- | tail -1 | cut -f1)
echo "wheels $((wheels / 1024)) KiB + work tree $((tree / 1024)) KiB = $(((wheels + tree) / 1024)) KiB (limit 65536 KiB)"
if ((wheels + tree > LIMIT)); then
  echo "over the device tool's 64 MiB: drop a wheel or ignore files in the work tree" >&2
  exit 1
fi
if [ "${1:-}" = "--check" ]; then
  # gpu_check.sh's install (its --target fallback, here into a throw-away folder) for a Python 3.12 here (PY312)
  PY312=${PY312:-python3.12}
  site=$(mktemp -d)
  $PY312 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$DEST"/*.whl
  PYTHONPATH=$site $PY312 - <<'EOF'
import importlib.metadata as md
import sys

need = {"monai": "monai", "ignite": "pytorch-ignite", "nibabel": "nibabel", "fire": "fire", "timm": "timm"}
print("python", sys.version.split()[0])
for module, dist in need.items():
    print(f"{dist} {md.version(dist)} installed; requires:", [r for r in md.requires(dist) or [] if "extra" not in r])
EOF
  rm -rf "$site"
fi
