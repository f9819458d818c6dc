#!/usr/bin/env bash
# The prepared GPU check: one call of at most 8 minutes on one H100/H200, the carried wheels' install included.
#
#   bash scripts/benchmarks/prepare_gpu_carry.sh    # here, once: .whl/ (MONAI, Ignite, nibabel, fire, timm for cp312)
#   then on the device, carrying ".whl":  bash scripts/benchmarks/gpu_check.sh
#
# Steps, most telling first: the CUDA tests (pytest -m cuda); forward slices/s, eager fp32 / bf16 at batch 1, 32, 128;
# 512x512x200 volume inference as configs/inference.yaml runs it on a GPU (volume, resampling and argmax on the device)
# in fp32 and under bf16 autocast, whole slices and sliding windows at 1.0 mm (slice_window sliding) alternated;
# end-to-end training slices/s through train#trainer with the batched and the monai data path against the no-loading
# rate (bf16, channels_last, cudnn_benchmark); TensorRT (a line saying why not, where
# torch-tensorrt is not installed); torch.compile last: one graph (bf16, batch 32), with whatever time is left.
#
# Records land in $OUT (docs/benchmarks/gpu_check/ without it) the moment each step ends: gpu_check.log grows line by
# line, and each step's JSON record (docs/benchmarks/<name>.json, rewritten row by row by the forward steps) is copied
# there as soon as the step returns, killed or not. Each step gets min(its budget, the time left before the deadline,
# GPU_CHECK_SECONDS = 450 s after the start), or is skipped with a line saying so. At most 7 files come back (the
# device tool returns 8).
set -uo pipefail
cd "$(dirname "$0")/../.."
START=$(date +%s)
DEADLINE=$((START + ${GPU_CHECK_SECONDS:-450}))
PY=${PYTHON:-python3}
OUT=${OUT:-docs/benchmarks/gpu_check}
mkdir -p "$OUT" docs/benchmarks
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1 MSA2NET_INFERENCE_BACKEND=eager
elapsed() { echo $(($(date +%s) - START)); }

# step NAME BUDGET RECORD CMD...: CMD under a time limit; RECORD's JSON (if any) is copied to $OUT right after
step() {
  local name=$1 budget=$2 record=$3 left rc
  shift 3
  left=$((DEADLINE - $(date +%s)))
  if ((left < 20)); then
    echo "== $name: skipped, ${left} s left before the deadline"
    return
  fi
  ((budget > left)) && budget=$left
  [ -n "$record" ] && rm -f "docs/benchmarks/$record.json" "docs/benchmarks/$record.md"
  echo "== $name (t+$(elapsed) s, up to $budget s)"
  timeout -k 5 "$budget" "$@"
  rc=$?
  ((rc == 124 || rc == 137)) && echo "== $name: stopped at its $budget s limit"
  [ -n "$record" ] && [ -f "docs/benchmarks/$record.json" ] && cp "docs/benchmarks/$record.json" "$OUT/"
  echo "== $name: exit $rc (t+$(elapsed) s)"
}

echo "== install carried wheels (t+$(elapsed) s)"
if compgen -G ".whl/*.whl" >/dev/null; then
  # into the image's environment (the machine is bare at every start), so that subprocesses which set their own
  # PYTHONPATH (python -m monai.bundle in some tests) see them too; a read-only one: a --target folder instead
  pipi="$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade"
  if ! $pipi .whl/*.whl; then
    $pipi --target /tmp/site .whl/*.whl || { echo "== the carried wheels did not install"; exit 1; }
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$PY -c "import sys, torch, monai, ignite, nibabel, fire, timm; print('python', sys.version.split()[0], 'torch', \
torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'monai', monai.__version__, \
'ignite', ignite.__version__, 'timm', timm.__version__, torch.cuda.get_device_name(0))" ||
  { echo "== no CUDA device, or a package is missing (scripts/benchmarks/prepare_gpu_carry.sh, carry .whl)"; exit 1; }
HAS_TRT=$($PY -c "import tensorrt, polygraphy, torch_tensorrt; print(1)" 2>/dev/null || echo 0)
BENCH="$PY scripts/benchmarks/benchmark.py"

step "CUDA tests (pytest -m cuda)" 100 "" \
  $PY -m pytest -q -m cuda -p no:cacheprovider -rs $(grep -rl "mark.cuda" tests --include="*.py")
step "forward: eager fp32 / bf16, batch 1, 32, 128" 60 forward_cuda \
  $BENCH forward --device cuda --backends eager --dtypes fp32,bf16 --batches 1,32,128 --reps 10 --warmup 3 \
  --train False --name forward_cuda
# whole slices (official) and sliding windows at 1.0 mm, alternated: 2 windows a slice (the synthetic body is
# 280 x 210 mm, write_body_ct)
for dt in fp32 bf16; do
  step "volume 512x512x200 as inference.yaml on the GPU, $dt: whole slices, sliding windows at 1 mm" 75 \
    "volume_cuda_$dt" $BENCH volume --device cuda --backend auto --dtype $dt --batch 16 --slices 200 \
    --modes whole,sliding:1.0 --name "volume_cuda_$dt"
done
step "training: data path alone, end to end (batched, monai) vs no loading" 140 training_cuda \
  $BENCH training --device cuda --backends batched,monai --batch 20 --iterations 30 --warmup 8 --cases 2 \
  --depth 80 --amp True --channels_last True --workers 8 --name training_cuda
if ((HAS_TRT)); then  # engine builds take minutes: the budget left decides how far it gets
  step "TensorRT: configs/inference_trt.yaml's engines (tf32) vs eager fp32" 200 tensorrt_cuda \
    $BENCH tensorrt --precisions tf32 --batches 1,16 --opt_level 3 --reps 20 --slices 200 --name tensorrt_cuda
else
  echo "== TensorRT: not installed on this machine (torch-tensorrt + polygraphy, ~2 GB: over the carry limit)"
fi
step "torch.compile: one graph, bf16, batch 32" 200 compile_cuda \
  $BENCH forward --device cuda --backends compile --dtypes bf16 --batches 32 --reps 10 --warmup 2 --train False \
  --name compile_cuda
echo "== done (t+$(elapsed) s); records in $OUT: $(ls "$OUT" | tr '\n' ' ')"
