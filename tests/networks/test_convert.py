"""Official checkpoint converter: key mapping, dead keys, architecture checks, and the fire CLI.

Official state dicts are synthesised from the measured key/shape lists of the official code
(tests/fixtures/official_keys_*.json), since CI has no checkout of it; docs/fidelity.md records the real parity run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import FIXTURES
from conftest import ROOT as CONFTEST_ROOT

from bundle.io.checkpoint import read_state_dict as read_checkpoint
from bundle.networks import MSA2Net
from bundle.networks.convert_msa2net import convert_official_state_dict, official_variant_of

ROOT = Path(CONFTEST_ROOT)
DATA = Path(FIXTURES)

# Parameters the official code builds but never runs (measured: grad is None after a backward pass).
DEAD_PARAMS = {"released": 22_647_578, "paper": 36_161_315}


def official_state(variant: str, num_classes: int = 9, seed: int = 0) -> dict:
    entries = json.loads((DATA / f"official_keys_{variant}.json").read_text())["entries"]
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape, _ in entries:
        if key.startswith("decoder_0.last_layer."):
            shape = [num_classes] + shape[1:]
        state[key] = torch.randn(shape, generator=g) if "num_batches" not in key else torch.tensor(3)
    return state


def is_param(variant: str) -> dict:
    return {k: bool(p) for k, _, p in json.loads((DATA / f"official_keys_{variant}.json").read_text())["entries"]}


@pytest.mark.parametrize("variant", ["released", "paper"])
def test_conversion_loads_strictly_and_drops_exactly_the_dead_parameters(variant):
    state = official_state(variant)
    converted, report = convert_official_state_dict(state, variant=variant)
    net = MSA2Net(in_channels=1, out_channels=9, variant=variant)
    net.load_state_dict(converted, strict=True)
    params = is_param(variant)
    dead = sum(state[k].numel() for k in report.dropped if params[k])
    assert dead == DEAD_PARAMS[variant]
    assert report.converted + len(report.dropped) == len(state)
    # every kept tensor arrives unchanged under its new name
    assert torch.equal(net.head.weight, state["decoder_0.last_layer.weight"])
    assert torch.equal(net.encoder.model.stem.conv1.weight, state["backbone.backbone.stem.conv1.weight"])
    assert torch.equal(net.stages[2].gate.local_context[6].weight, state["decoder_0.ag_attn.multi.local.proj.0.weight"])


def test_class_count_is_read_from_the_checkpoint():
    converted, report = convert_official_state_dict(official_state("released", num_classes=2), variant="released")
    assert report.out_channels == 2
    MSA2Net(in_channels=3, out_channels=2, variant="released").load_state_dict(converted, strict=True)


def test_variant_detection_and_refusal_of_the_other_variant():
    assert official_variant_of(official_state("paper")) == "paper"
    assert official_variant_of(official_state("released")) == "released"
    with pytest.raises(ValueError, match="'paper' checkpoint, not 'released'"):
        convert_official_state_dict(official_state("paper"), variant="released")


def test_refuses_checkpoints_of_other_architectures():
    unet = {"model.0.conv.weight": torch.zeros(8, 1, 3, 3), "model.0.conv.bias": torch.zeros(8)}
    with pytest.raises(ValueError, match="Not an official MSA²Net checkpoint"):
        convert_official_state_dict(unet)
    state = official_state("released")
    del state["decoder_1.layer_lka_2.mlp.fc1.weight"]
    state["decoder_1.extra.weight"] = torch.zeros(1)
    state["decoder_0.x1_linear.weight"] = torch.zeros(5, 5)
    with pytest.raises(ValueError, match="1 missing.*1 unexpected.*1 with other shapes"):
        convert_official_state_dict(state, variant="released")
    with pytest.raises(ValueError, match="exist for variants 'released' and 'paper' only"):
        convert_official_state_dict(state, variant="ablation_lka")


def test_read_checkpoint_unwraps_and_rejects_non_checkpoints(tmp_path):
    state = {"module.a": torch.ones(2)}
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "wrapped.pth")
    assert set(read_checkpoint(tmp_path / "wrapped.pth")) == {"a"}
    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(ValueError, match="is not a PyTorch checkpoint"):
        read_checkpoint(tmp_path / "text.pth")


def test_convert_cli_writes_a_strictly_loadable_file(tmp_path):
    src, dst = tmp_path / "official.pth", tmp_path / "out" / "model.pt"
    torch.save({"model": {f"module.{k}": v for k, v in official_state("released").items()}}, src)
    run = subprocess.run(
        [sys.executable, "scripts/model/convert_official.py", "--src", str(src), "--dst", str(dst)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "variant=released" in run.stdout and "dropped" in run.stdout
    net = MSA2Net(in_channels=1, out_channels=9, variant="released")
    net.load_state_dict(torch.load(dst, weights_only=True), strict=True)
    assert not list(dst.parent.glob("*.tmp"))
