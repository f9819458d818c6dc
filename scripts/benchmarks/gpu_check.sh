#!/usr/bin/env bash
# The prepared GPU check (one H100/H200, <= 8 minutes; <= 14 where TensorRT is installed): CUDA tests, the training
# data path alone, end-to-end training slices/s with the new (batched) and the old (monai) data path against the
# no-loading rate (a bf16 train step on resident tensors), forward and whole-volume inference in fp32 / bf16 / compile,
# and TensorRT engines as configs/inference_trt.yaml builds them (parity vs eager fp32, slices/s).
#
#   bash scripts/benchmarks/gpu_check.sh            # records in docs/benchmarks/*_cuda.{json,md}; a tarball in $OUT when set
#
# The device machine of this project's workplace has torch, timm, scipy, h5py and tensorboard but not MONAI, Ignite,
# nibabel, ITK or fire: carry them as wheels in .whl/ (docs/performance.md, "GPU check"); they are installed first.
# TensorRT (`pip install torch-tensorrt==2.14.0 polygraphy`, ~2 GB of wheels) must already be on the machine: without
# it the TensorRT test skips and docs/benchmarks/tensorrt_cuda.md records why.
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1 MSA2NET_INFERENCE_BACKEND=eager
START=$(date +%s)
step() { echo "== $1 (t+$(( $(date +%s) - START )) s)"; }
mkdir -p docs/benchmarks

HAS_TRT=$($PY -c "import tensorrt, polygraphy; print(1)" 2>/dev/null || echo 0)

step "environment"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$PY -c "import torch, monai, timm; print('torch', torch.__version__, 'monai', monai.__version__, 'timm', timm.__version__, torch.cuda.get_device_name(0))"

step "CUDA tests (pytest -m cuda)"
timeout $(( HAS_TRT ? 330 : 150 )) $PY -m pytest -q -m cuda -p no:cacheprovider tests/ 2>&1 | tee docs/benchmarks/gpu_tests_cuda.log | tail -5

step "training: data path alone, end to end (batched, monai) vs no loading, bf16, channels_last"
timeout 200 $PY scripts/benchmarks/benchmark.py training --device cuda --backends batched,monai --batch 20 --iterations 40 \
  --warmup 8 --cases 4 --depth 100 --amp True --channels_last True --workers 8 --name training_cuda | tail -8

step "forward: eager fp32/bf16, compile"
timeout 120 $PY scripts/benchmarks/benchmark.py forward --device cuda --backends eager,compile --dtypes fp32,bf16 \
  --batches 1,32,128 --reps 10 --warmup 3 --train False --name forward_cuda | tail -12

step "volume inference 512x512x200: fp32, bf16"
for dt in fp32 bf16; do
  timeout 60 $PY scripts/benchmarks/benchmark.py volume --device cuda --backend eager --dtype $dt --batch 32 --slices 200 \
    --name volume_cuda_$dt | tail -4
done

step "TensorRT: configs/inference_trt.yaml's engines (fp32, tf32) vs eager fp32: parity, forward and volume slices/s"
timeout $(( HAS_TRT ? 330 : 60 )) $PY scripts/benchmarks/benchmark.py tensorrt --precisions fp32,tf32 --batches 1,16,32 \
  --opt_level 3 --reps 20 --slices 200 --name tensorrt_cuda | tail -16

step "done"
if [ -n "${OUT:-}" ]; then
  tar czf "$OUT/gpu_records.tgz" docs/benchmarks/*cuda* 2>/dev/null && echo "records: $OUT/gpu_records.tgz"
fi
