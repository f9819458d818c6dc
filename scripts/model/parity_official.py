"""Output parity of our MSA2Net with the official code, through our checkpoint converter.

Needs a checkout of github.com/xmindflow/MSA-2Net (``--repo``) and a harness script that builds the official
network from that checkout (``--harness``, or the ``MSA2NET_OFFICIAL_HARNESS`` environment variable; it is not part
of this repository, which contains no official code).
Two modes:

* live (default): build the official model with the harness, randomise every norm, BN statistic and layer
  scale (so a misplaced op cannot hide), convert its weights, and compare outputs for 1- and 3-channel input;
* ``--dump file.pt``: compare against a file written by ``harness forward --save-state-dict``.

Example::

    python scripts/model/parity_official.py --repo /tmp/msa2net_src --variant both --out docs/parity_msa2net.json
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bundle.errors import run_script  # noqa: E402
from bundle.networks import MSA2Net  # noqa: E402
from bundle.networks.convert import convert_official_state_dict  # noqa: E402

_OFFICIAL_NAME = {"released": "released", "paper": "dae_v1"}


def _load_harness(path: str):
    spec = importlib.util.spec_from_file_location("official_msa2net_harness", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _ours_from(state: dict, variant: str, in_channels: int) -> MSA2Net:
    converted, report = convert_official_state_dict(state, variant=variant)
    net = MSA2Net(in_channels=in_channels, out_channels=report.out_channels, variant=variant).eval()
    net.load_state_dict(converted, strict=True)
    return net


def _compare(ref: torch.Tensor, ours: torch.Tensor) -> dict:
    diff = (ref - ours).abs()
    return {
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "official_abs_max": float(ref.abs().max()),
        "argmax_agreement": float((ref.argmax(1) == ours.argmax(1)).float().mean()),
    }


def live(repo: str, harness: str, variant: str, seed: int, batch: int) -> dict:
    h = _load_harness(harness)
    official = h.build_model(repo, _OFFICIAL_NAME[variant], seed).eval()
    h._randomize_affine_and_stats(official, seed + 2)
    state = {k: v.detach().clone() for k, v in official.state_dict().items()}
    gen = torch.Generator().manual_seed(seed + 1)
    results = {}
    for in_ch in (1, 3):
        x = torch.randn(batch, in_ch, 224, 224, generator=gen)
        ours = _ours_from(state, variant, in_ch)
        with torch.no_grad():
            results[f"in_channels={in_ch}"] = _compare(official(x), ours(x))
    return results


def dump(path: str, variant: str) -> dict:
    # The harness stores torch.__version__ (a TorchVersion object) beside the tensors; allow just that class.
    with torch.serialization.safe_globals([torch.torch_version.TorchVersion]):
        blob = torch.load(path, map_location="cpu", weights_only=True)
    x, ref = blob["input"], blob["output"]
    ours = _ours_from(blob["state_dict"], variant, x.shape[1])
    with torch.no_grad():
        return {f"dump in_channels={x.shape[1]}": _compare(ref, ours(x))}


def main(
    repo: str = "",
    variant: str = "both",
    harness: str = os.environ.get("MSA2NET_OFFICIAL_HARNESS", ""),
    seed: int = 0,
    batch: int = 2,
    dump_file: str = "",
    tolerance: float = 1e-4,
    out: str = "",
) -> None:
    """Compare outputs; exit non-zero if any max |Δ logit| exceeds ``tolerance`` (fp32, CPU, eval mode)."""
    torch.set_num_threads(max(1, torch.get_num_threads()))
    variants = ["released", "paper"] if variant == "both" else [variant]
    report = {"torch": torch.__version__, "tolerance": tolerance, "seed": seed, "batch": batch}
    for v in variants:
        report[v] = dump(dump_file, v) if dump_file else live(repo, harness, v, seed, batch)
    text = json.dumps(report, indent=4)  # the zoo's JSON format (docs/parity_msa2net.json)
    print(text)
    if out:
        Path(out).write_text(text + "\n")
    worst = max(r["max_abs_diff"] for v in variants for r in report[v].values())
    if worst > tolerance:
        raise SystemExit(f"parity FAILED: max |Δ| {worst:.3g} > {tolerance}")
    print(f"parity OK: max |Δ| {worst:.3g} <= {tolerance}")


if __name__ == "__main__":
    run_script(main)
