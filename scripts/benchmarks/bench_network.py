"""Network speed: forward / train step per dtype and batch (``forward``), TensorRT engines (``tensorrt``, CUDA)."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Optional

import torch
from bench_common import DTYPES, build_network, command_line, environment, setup, split_list, time_calls, write_record
from bench_volume import bundle_volume_inference

from bundle.data.synthetic import write_body_ct
from bundle.inferers.backends import cpu_supports_bf16, optimize_for_inference
from bundle.training.losses import BoundaryDoULoss


# ----------------------------------------------------------------------------------------------- forward
def forward(
    variant: str = "paper",
    device: str = "auto",
    threads: int = 2,
    backends: str = "eager,onnx",
    dtypes: str = "fp32,bf16",
    batches: Optional[str] = None,
    reps: int = 5,
    warmup: int = 2,
    train: bool = True,
    train_batch: int = 2,
    name: str = "",
) -> None:
    """Forward latency (batch 1) / throughput (larger batches) per backend and dtype, and the train step.

    Args:
        variant: MSA²Net variant.
        device: "auto", "cpu" or "cuda".
        threads: torch (and ORT) intra-op threads.
        backends: comma list of ``bundle.inferers.backends`` backends; "onnx" is skipped on CUDA and for non-fp32.
        dtypes: comma list of fp32/bf16/fp16; fp16 is skipped on CPU.
        batches: comma list; default "1" on CPU and "1,8,32,128" on CUDA.
        reps: timed repetitions (median reported).
        warmup: untimed calls first.
        train: also time forward + loss + backward + SGD step.
        train_batch: batch of the train step.
        name: record name (default ``forward_<device>_<variant>``).
    """
    device = setup(threads, device)
    batch_list = [int(b) for b in split_list(batches or ("1,8,32,128" if device == "cuda" else "1"))]
    rows, notes = [], []
    record = {"env": environment(device, threads), "variant": variant, "rows": rows, "notes": notes}
    name = name or f"forward_{device}_{variant}"
    for backend in split_list(backends):
        for dname in split_list(dtypes):
            if (backend == "onnx" and (dname != "fp32" or device != "cpu")) or (dname == "fp16" and device == "cpu"):
                continue
            net = build_network(variant).to(device)
            fast = optimize_for_inference(net, backend=backend, dtype=DTYPES[dname])
            for b in batch_list:
                x = torch.randn(b, 1, 224, 224, device=device)
                try:
                    first = time_calls(lambda: fast(x), device, 0, 1)[0]  # compile / autotune happen here
                    t = time_calls(lambda: fast(x), device, max(0, warmup - 1), reps)
                except RuntimeError as err:  # e.g. CUDA out of memory at batch 128
                    notes.append(f"{backend}/{dname}/batch {b}: {err}".splitlines()[0])
                    continue
                med = statistics.median(t)
                row = {"what": "forward", "backend": backend, "dtype": dname, "batch": b, "median_s": med}
                row.update(min_s=min(t), ms_per_slice=1000 * med / b, slices_per_s=b / med, first_call_s=first)
                if device.startswith("cuda"):
                    row["max_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
                    torch.cuda.reset_peak_memory_stats()
                rows.append(row)
                write_record(name, record, command_line(), final=False)
            net = fast = None  # free before the next build (a `del` confuses pyflakes: the lambda above)
    if "bf16" in split_list(dtypes) and device == "cpu" and not cpu_supports_bf16():
        notes.append("This CPU has no AVX512-BF16/AMX: CPU bf16 is emulated, expected slower than fp32.")
    if train:
        loss_fn, loss_name = BoundaryDoULoss(), "bundle.training.losses.BoundaryDoULoss"
        notes.append(f"train step loss: {loss_name}")
        for dname in split_list(dtypes):
            if device == "cpu" and (dname == "fp16" or (dname == "bf16" and not cpu_supports_bf16())):
                continue  # emulated CPU bf16 training ran > 10 min per step here: not worth timing
            net = build_network(variant).to(device).train()
            opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
            x = torch.randn(train_batch, 1, 224, 224, device=device)
            y = torch.randint(0, 9, (train_batch, 224, 224), device=device)
            scaler = torch.amp.GradScaler(device, enabled=dname == "fp16")

            def step() -> None:
                opt.zero_grad(set_to_none=True)
                with torch.autocast(device_type=device, dtype=DTYPES[dname], enabled=dname != "fp32"):
                    loss = loss_fn(net(x), y)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()

            t = time_calls(step, device, 1, max(2, reps // 2))
            med = statistics.median(t)
            row = {"what": "train_step", "backend": "eager", "dtype": dname, "batch": train_batch, "median_s": med}
            row.update(min_s=min(t), ms_per_slice=1000 * med / train_batch, slices_per_s=train_batch / med)
            rows.append(row)
            write_record(name, record, command_line(), final=False)
            del net, opt
    write_record(name, record, command_line())


# ----------------------------------------------------------------------------------------------- tensorrt
def tensorrt(
    variant: str = "paper",
    precisions: str = "fp32,tf32",
    batches: str = "1,16,32",
    opt_level: int = 3,
    reps: int = 20,
    warmup: int = 3,
    slices: int = 200,
    name: str = "tensorrt_cuda",
    device: str = "cuda",
) -> None:
    """TensorRT engines as configs/inference_trt.yaml builds them, against eager PyTorch on CUDA: parity and speed.

    Per precision, one engine for batches 1..max(batches) (``bundle.inferers.tensorrt.trt_network``, built once:
    ``build_s``); on one random MSA²Net and input: max |Δ logit|, relative L2 and argmax agreement (all pixels, and
    pixels whose fp32 top-1/top-2 margin exceeds 0.05) against eager fp32 with TF32 off; forward slices/s per batch
    for the engine and for eager fp32 (torch defaults) / bf16 autocast in the same process; one whole-volume run
    (a synthetic 512×512×``slices`` CT through bundle.inference.AxialSliceInferer, as the inference config runs it).
    Without CUDA or TensorRT the record says why (no rows) instead of failing.
    """
    import copy

    from bundle.errors import InputError
    from bundle.inferers.tensorrt import check_tensorrt, trt_network

    batch_list = [int(b) for b in split_list(batches)]
    rows, notes = [], []
    env = environment(device if torch.cuda.is_available() else "cpu", torch.get_num_threads())
    try:
        env["tensorrt"] = check_tensorrt(device, "fp32")
    except InputError as err:
        notes.append(f"skipped: {err}")
        write_record(name, {"env": env, "variant": variant, "rows": rows, "notes": notes}, command_line())
        return
    tmp = Path(tempfile.mkdtemp(prefix="msa2net_trt_"))
    net = build_network(variant).to(device)
    ckpt = tmp / "model.pt"  # names the engines (trt_network hashes it), as models/model.pt does in the config
    torch.save({"model": net.state_dict()}, ckpt)
    x = torch.randn(4, 1, 224, 224, device=device, generator=torch.Generator(device).manual_seed(1))
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, False
    with torch.inference_mode():
        ref = net(x).float()
    torch.backends.cudnn.allow_tf32 = True  # torch's default again for the eager timings
    top2 = ref.topk(2, dim=1).values
    confident = (top2[:, 0] - top2[:, 1]) > 0.05
    image = tmp / "ct.nii.gz"
    write_body_ct(image, (512, 512, slices))
    for dname in ("fp32", "bf16"):  # eager baselines, same process
        fast = optimize_for_inference(copy.deepcopy(net), backend="eager", dtype=DTYPES[dname])
        for b in batch_list:
            xb = torch.randn(b, 1, 224, 224, device=device)
            med = statistics.median(time_calls(lambda: fast(xb), device, warmup, reps))
            rows.append({"what": "forward", "backend": "eager", "dtype": dname, "batch": b, "slices_per_s": b / med})
    for precision in split_list(precisions):
        try:
            check_tensorrt(device, precision)
        except InputError as err:
            notes.append(f"{precision} skipped: {err}")
            continue
        engine = trt_network(copy.deepcopy(net), str(ckpt), device, precision, max(batch_list), opt_level, str(tmp))
        t0 = time.perf_counter()
        with torch.no_grad():  # as AxialSliceInferer calls it (the ONNX export traces; inference_mode is not needed)
            engine(x[:1])  # exports to ONNX and builds the engine (saved under tmp)
        build_s = time.perf_counter() - t0
        with torch.no_grad():
            out = engine(x).float().clone()  # the engine reuses its output buffer: keep a copy
        diff = out - ref
        agree = out.argmax(1) == ref.argmax(1)
        row = {"what": "parity_vs_eager_fp32", "backend": "tensorrt", "dtype": precision, "batch": int(x.shape[0])}
        row.update(max_abs_diff=diff.abs().max().item(), rel_l2=(diff.norm() / ref.norm()).item())
        row.update(
            argmax_agreement=agree.float().mean().item(),
            argmax_agreement_confident=agree[confident].float().mean().item(),
        )
        row.update(build_s=build_s)
        rows.append(row)
        for b in batch_list:
            xb = torch.randn(b, 1, 224, 224, device=device)
            med = statistics.median(time_calls(lambda: engine(xb), device, warmup, reps))
            rows.append(
                {"what": "forward", "backend": "tensorrt", "dtype": precision, "batch": b, "slices_per_s": b / med}
            )
        t0 = time.perf_counter()
        depth = bundle_volume_inference(lambda v: engine(v).float(), image, tmp / "out", max(batch_list), device)
        wall = time.perf_counter() - t0
        rows.append(
            {
                "what": "volume",
                "backend": "tensorrt",
                "dtype": precision,
                "batch": max(batch_list),
                "slices_per_s": depth / wall,
            }
        )
        engine = None
    notes.append(
        f"engines: MONAI trt_compile (ONNX → TensorRT), batch 1-{max(batch_list)}, builder level {opt_level}; parity "
        "reference: eager fp32 with TF32 off; eager timings with torch defaults (cuDNN TF32 on); volume: synthetic "
        f"512x512x{slices} CT read to mask, volume and resampling on the device (inference.yaml's path), reading and "
        "HU window on the CPU included"
    )
    write_record(name, {"env": env, "variant": variant, "rows": rows, "notes": notes}, command_line())
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
