"""Ours against the official network in one process, implementations alternated per round (``side_by_side``)."""

from __future__ import annotations

from typing import Callable, Dict

import torch
from bench_common import (
    alternate,
    build_network,
    command_line,
    environment,
    network_slices,
    setup,
    split_list,
    write_record,
)

from bundle.inferers.backends import optimize_for_inference
from bundle.networks.convert_msa2net import convert_official_state_dict
from bundle.networks.official import official_msa2net


def side_by_side(
    variant: str = "paper",
    threads: int = 2,
    batch: int = 1,
    rounds: int = 10,
    optimised: str = "onnx,eager",
    official_repo: str = "",
    seed: int = 0,
    name: str = "",
    ckpt: str = "",
    inputs: str = "",
    calibration: str = "",
) -> None:
    """Time implementations alternately in one process (order reversed every round); report ratios.

    Baseline ``ours_eager_fp32``: ``net.eval()`` under ``torch.no_grad()``, contiguous NCHW, nothing else.
    With ``official_repo`` (an extracted checkout) the official network is built by ``bundle.networks.official`` and
    its weights converted into ours, so every implementation computes the same function (max |Δ| to the baseline is
    reported).

    ``ckpt``: a trained checkpoint of ours; every implementation, the official network included (its weights put
    back under the official names), computes it. ``inputs``: CT volumes (comma-separated files or DICOM folders)
    whose slices, prepared as ``configs/inference.yaml`` prepares them for ``ckpt``, are the inputs: the max |Δ|
    and argmax agreement are taken over all of them, the timing on the first ``batch``. ``calibration``: volumes
    for INT8 backends (same preparation). ``optimised`` takes any ``optimize_for_inference`` backend, and
    ``eager_bf16`` (bf16 autocast). Ratios are given against ours eager fp32, the official code and ours ONNX.
    """

    device = setup(threads, "cpu")
    impls: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
    if official_repo:
        official = official_msa2net(official_repo, variant, seed).eval()
        official_state = official.state_dict()
        state, _ = convert_official_state_dict(official_state, variant=variant)
    else:
        state = build_network(variant, seed).state_dict()
    if ckpt:
        trained = torch.load(ckpt, map_location="cpu", weights_only=True)
        trained = trained.get("model", trained)
        if official_repo:  # the conversion renames tensors; map each official name to ours through the same objects
            ours_name = {id(v): k for k, v in state.items()}
            official.load_state_dict(
                {k: trained[ours_name[id(v)]] if id(v) in ours_name else v for k, v in official_state.items()}
            )
        state = trained
    base = build_network(variant)
    base.load_state_dict(state)
    slices = network_slices(inputs, ckpt) if inputs else None
    calib = network_slices(calibration, ckpt) if calibration else None

    def baseline(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return base(x)

    impls["ours_eager_fp32"] = baseline
    for backend in split_list(optimised):
        net = build_network(variant)
        net.load_state_dict(state)
        if backend == "eager_bf16":
            impls["ours_eager_bf16"] = optimize_for_inference(net, backend="eager", dtype=torch.bfloat16)
            continue
        impls[f"ours_{backend}"] = optimize_for_inference(net, backend=backend, calibration=calib)
    if official_repo:

        def official_fn(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return official(x)

        impls["official"] = official_fn
    if slices is None:
        gen = torch.Generator().manual_seed(seed + 1)
        x = torch.randn(batch, 1, 224, 224, generator=gen)
        checked = [x]
    else:
        x = slices[torch.arange(batch) % len(slices)].contiguous()
        checked = [slices[i : i + batch] for i in range(0, len(slices), batch)]
    refs = [baseline(c) for c in checked]
    diffs, agree = {}, {}
    for k, f in impls.items():
        outs = [f(c) for c in checked]
        diffs[k] = max(float((o - r).abs().max()) for o, r in zip(outs, refs))
        same = torch.cat([(o.argmax(1) == r.argmax(1)).flatten() for o, r in zip(outs, refs)])
        agree[k] = float(same.float().mean())
    rows = alternate(impls, x, rounds, ("ours_eager_fp32", "official", "ours_onnx"))
    for row in rows:
        row.update(max_abs_diff_vs_baseline=diffs[row["impl"]], argmax_agreement=agree[row["impl"]])
    notes = [
        "Implementations alternate within each round (order reversed every other round); only ratios from one run"
        " are comparable, absolute times depend on the shared machine's load.",
        "Warm-up: the equality check runs each implementation once before timing (ONNX export happens at build).",
    ]
    if slices is not None:
        notes.append(
            f"Inputs: {len(slices)} real CT slices of {inputs} as configs/inference.yaml prepares them for {ckpt}; "
            f"max |Δ| and argmax agreement over all of them (224², against ours eager fp32), timing on {batch}."
        )
    if calib is not None:
        notes.append(f"INT8 calibration: {len(calib)} slices of {calibration} (not among the inputs).")
    record = {"env": environment(device, threads), "variant": variant, "batch": batch, "rounds": rounds}
    record.update(ckpt=ckpt, rows=rows, notes=notes)
    write_record(name or f"side_by_side_cpu_{variant}_b{batch}", record, command_line())
