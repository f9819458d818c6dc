"""Output parity of our MSA²Net and SA2-Net with the official networks, through our checkpoint converters.

Needs an extracted checkout of the official repository (``--repo``); ``bundle/networks/official.py`` builds the
official network from it (this repository contains no official code). The official model is built under a seed, its
tensors are randomised (so that a misplaced normalisation or a wrong key cannot hide behind identity defaults), its
state dict goes through our converter into our network (``strict=True``) and both run the same seeded input, fp32 on
CPU. The command exits non-zero if any max |Δ| exceeds ``--tolerance``.

* ``--network msa2net`` (``docs/fidelity.md`` §1): every BatchNorm/LayerNorm affine, BN statistic and layer scale is
  drawn anew; logits for 1- and 3-channel input, in eval mode, per variant (``released``, ``paper`` or ``both``).
* ``--network sa2net`` (``docs/fidelity_sa2net.md`` §2): every tensor is perturbed; eval-mode logits against the
  official pre-sigmoid head (and probabilities when the official network applies a sigmoid), then train mode with
  deep supervision, head by head. ``--in_channels/--out_channels/--size`` pick the configuration.

Examples::

    python scripts/model/parity_official.py --repo /tmp/msa2net_src --variant both --out docs/parity_msa2net.json
    OMP_NUM_THREADS=1 python scripts/model/parity_official.py --network sa2net --repo /tmp/sa2net_src \\
        --out docs/parity_sa2net_monuseg.json
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

import torch

from bundle.errors import InputError, run_script
from bundle.networks import MSA2Net, SA2Net
from bundle.networks import convert_msa2net as msa2net_keys
from bundle.networks import convert_sa2net as sa2net_keys
from bundle.networks import official


def _compare(ref: torch.Tensor, ours: torch.Tensor) -> dict:
    diff = (ref - ours).abs()
    row = {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean())}
    row["official_abs_max"] = float(ref.abs().max())
    if ref.shape[1] > 1:
        row["argmax_agreement"] = float((ref.argmax(1) == ours.argmax(1)).float().mean())
    return row


def _parameters(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def _built(build, *args, **kwargs) -> torch.nn.Module:
    try:
        return build(*args, **kwargs).eval()
    except official.NotAnOfficialCheckout as err:
        raise InputError(str(err)) from None


# ----------------------------------------------------------------------------------------------- MSA²Net
def randomize_norms(model: torch.nn.Module, seed: int) -> None:
    """Draw every BN/LayerNorm affine, BN statistic and ``layer_scale`` anew from a generator seeded ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, (torch.nn.BatchNorm2d, torch.nn.LayerNorm)) and mod.weight is not None:
                mod.weight.copy_(0.5 + torch.rand(mod.weight.shape, generator=gen))
                mod.bias.copy_(0.3 * torch.randn(mod.bias.shape, generator=gen))
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.copy_(0.3 * torch.randn(mod.running_mean.shape, generator=gen))
                mod.running_var.copy_(0.5 + torch.rand(mod.running_var.shape, generator=gen))
        for name, param in model.named_parameters():
            if "layer_scale" in name:
                param.copy_(0.5 + torch.rand(param.shape, generator=gen))


def msa2net_parity(repo: str, variant: str, seed: int, batch: int, randomize: bool) -> dict:
    ref_net = _built(official.official_msa2net, repo, variant, seed)
    if randomize:
        randomize_norms(ref_net, seed + 2)
    state = {k: v.detach().clone() for k, v in ref_net.state_dict().items()}
    converted, report = msa2net_keys.convert_official_state_dict(state, variant=variant)
    gen = torch.Generator().manual_seed(seed + 1)
    results = {"official_file_blob": official.git_blob(Path(repo) / official.MSA2NET_FILE)}
    results["official_parameters_built"] = _parameters(ref_net)
    for in_ch in (1, 3):
        x = torch.randn(batch, in_ch, 224, 224, generator=gen)
        ours = MSA2Net(in_channels=in_ch, out_channels=report.out_channels, variant=variant).eval()
        ours.load_state_dict(converted, strict=True)
        with torch.no_grad():
            results[f"in_channels={in_ch}"] = _compare(ref_net(x), ours(x))
    results["our_parameters"] = _parameters(ours)
    return results


# ----------------------------------------------------------------------------------------------- SA2-Net
def perturb_tensors(model: torch.nn.Module, seed: int, scale: float = 0.1) -> None:
    """Perturb every floating tensor: BN statistics drawn anew, the rest plus noise of ``scale`` × its std."""
    gen = torch.Generator().manual_seed(seed + 12345)
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=gen))
            elif name.endswith("running_mean"):
                t.copy_(scale * torch.randn(t.shape, generator=gen))
            else:
                spread = t.std() if t.numel() > 1 and t.std() > 0 else 1.0
                t.add_(scale * torch.randn(t.shape, generator=gen) * spread)


def _run_with_heads(net: torch.nn.Module, x: torch.Tensor) -> tuple:
    """The official outputs and the raw outputs of its heads ``outc4, outc3, outc2, outc1`` (pre-sigmoid)."""
    heads: Dict[str, torch.Tensor] = {}
    hooks = [
        getattr(net, h).register_forward_hook(lambda _m, _i, out, h=h: heads.__setitem__(h, out))
        for h in ("outc4", "outc3", "outc2", "outc1")
    ]
    try:
        with torch.no_grad():
            out = net(x)
    finally:
        for hook in hooks:
            hook.remove()
    return out, [heads[h] for h in ("outc4", "outc3", "outc2", "outc1") if h in heads]


def sa2net_parity(repo: str, in_channels: int, out_channels: int, size: int, seed: int, batch: int, randomize: bool):
    ref_net = _built(official.official_sa2net, repo, in_channels, out_channels, seed)
    if randomize:
        perturb_tensors(ref_net, seed)
    state = {k: v.detach().clone() for k, v in ref_net.state_dict().items()}
    converted, report = sa2net_keys.convert_official_state_dict(state, deep_supervision=True)
    ours = SA2Net(report.in_channels, report.out_channels, report.base_channels, deep_supervision=True).eval()
    ours.load_state_dict(converted, strict=True)
    x = torch.rand(batch, in_channels, size, size, generator=torch.Generator().manual_seed(seed + 1))
    results = {"official_file_blob": official.git_blob(Path(repo) / official.SA2NET_FILE)}
    results["official_parameters_built"] = _parameters(ref_net)
    results["our_parameters"] = _parameters(ours)  # with the deep-supervision heads
    ref_out, (ref_logits,) = _run_with_heads(ref_net, x)
    with torch.no_grad():
        logits = ours(x)
    results["eval logits"] = _compare(ref_logits, logits)
    if out_channels == 1:  # the official network returns sigmoid probabilities
        results["eval probabilities"] = _compare(ref_out, torch.sigmoid(logits))
    ref_train, ref_heads = _run_with_heads(ref_net.train(), x)  # batch statistics; both update their BN buffers
    with torch.no_grad():
        train_logits = ours.train()(x)
    for name, a, b in zip(("main", "stride 2", "stride 4", "stride 8"), ref_heads, train_logits):
        results[f"train logits, head {name}"] = _compare(a, b)
    return results


# ----------------------------------------------------------------------------------------------- command line
def main(
    repo: str,
    network: str = "msa2net",
    variant: str = "both",
    in_channels: int = 3,
    out_channels: int = 1,
    size: int = 224,
    seed: int = 0,
    batch: int = 2,
    randomize: bool = True,
    tolerance: float = 1e-4,
    out: str = "",
) -> None:
    """Compare outputs; exit non-zero if any max |Δ| exceeds ``tolerance`` (fp32, CPU).

    Args:
        repo: root folder of the extracted official checkout (docs/fidelity.md §1, docs/fidelity_sa2net.md §2).
        network: ``msa2net`` or ``sa2net``.
        variant: MSA²Net only: ``released``, ``paper`` or ``both``.
        in_channels: SA2-Net only (MSA²Net runs 1 and 3).
        out_channels: SA2-Net only (MSA²Net: 9, Synapse).
        size: SA2-Net only, a multiple of 16 (MSA²Net: 224).
        seed: construction seed; the input uses ``seed + 1``.
        batch: batch size of the input.
        randomize: ``False`` keeps the official initialisation as built (a weaker check).
        tolerance: largest max |Δ| accepted.
        out: also write the JSON report here.
    """
    report = {"torch": torch.__version__, "network": network, "tolerance": tolerance, "seed": seed, "batch": batch}
    report["randomized"] = randomize
    if network == "msa2net":
        variants: List[str] = ["released", "paper"] if variant == "both" else [variant]
        for v in variants:
            report[v] = msa2net_parity(repo, v, seed, batch, randomize)
    elif network == "sa2net":
        name = f"{in_channels}->{out_channels}, {size}x{size}"
        report[name] = sa2net_parity(repo, in_channels, out_channels, size, seed, batch, randomize)
    else:
        raise InputError(f"--network {network!r}: give msa2net or sa2net.")
    text = json.dumps(report, indent=4)  # the zoo's JSON format (docs/parity_*.json)
    print(text)
    if out:
        Path(out).write_text(text + "\n")
    rows = [row for part in report.values() if isinstance(part, dict) for row in part.values() if isinstance(row, dict)]
    worst = max(row["max_abs_diff"] for row in rows)
    if worst > tolerance:
        raise SystemExit(f"parity FAILED: max |Δ| {worst:.3g} > {tolerance}")
    print(f"parity OK: max |Δ| {worst:.3g} <= {tolerance}")


if __name__ == "__main__":
    run_script(main)
