"""MSA²Net benchmarks: network forward / train step, whole-volume inference, data loader, side by side.

Every sub-command writes a record ``docs/benchmarks/<name>.json`` and ``.md`` with the device, CPU/GPU model,
library versions, dtype, batch size, threads, load average and date. Shared machines are noisy: on them only
the ``side_by_side`` ratios (implementations timed alternately in one process) are comparable between
implementations; absolute times are context.

Examples::

    python scripts/benchmarks/benchmark.py forward --threads 2                        # CPU: eager/onnx, fp32/bf16
    python scripts/benchmarks/benchmark.py forward --device cuda --dtypes fp32,bf16,fp16 --batches 1,8,32,128
    python scripts/benchmarks/benchmark.py volume --threads 2 --backend auto --batch 4
    python scripts/benchmarks/benchmark.py volume --threads 2 --batch 8 --modes whole,sliding:1.0 --rounds 2
    python scripts/benchmarks/benchmark.py side_by_side --threads 2 --official_repo /tmp/msa2net_src --rounds 10
    python scripts/benchmarks/benchmark.py loader
    python scripts/benchmarks/benchmark.py tensorrt --precisions fp32,tf32 --batches 1,16,32       # CUDA + TensorRT only
"""

from bench_data import datapath, loader, training
from bench_low_precision import int8_recipes, organ_dice
from bench_network import forward, tensorrt
from bench_side_by_side import side_by_side
from bench_volume import volume

from bundle.errors import run_script

if __name__ == "__main__":
    run_script(
        {
            "forward": forward,
            "volume": volume,
            "loader": loader,
            "datapath": datapath,
            "training": training,
            "side_by_side": side_by_side,
            "organ_dice": organ_dice,
            "int8_recipes": int8_recipes,
            "tensorrt": tensorrt,
        }
    )
