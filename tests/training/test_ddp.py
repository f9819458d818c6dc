"""DDP over configs/multi_gpu_train.yaml: 2 gloo processes on CPU follow the 1-process loss curve at the same global
batch, shard the data with a DistributedSampler, write logs/checkpoints from rank 0 only; every MSA2Net variant
gives every parameter a gradient (so ``find_unused_parameters`` can stay off)."""

import glob
import json
import os
import re
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import ROOT

TESTS = os.path.join(ROOT, "tests")
# global batch 4 slices; 2 epochs × 4 iterations; no augmentation (ranks would draw different augmentations)
ARGS = ["--epochs", "2", "--batch_size", "4", "--slices_per_volume", "1", "--slices_per_epoch", "16"]
ARGS += ["--num_workers", "0", "--val_interval", "100", "--show_progress", "False", "--roi_size", "[32,32]"]
ARGS += ["--augment", "False", "--learning_rate", "2", "--loss_name", "dice_ce"]


@pytest.mark.parametrize("variant", ["paper", "released", "ablation_lka", "ablation_dae", "ablation_hybrid"])
def test_every_msa2net_variant_gives_every_parameter_a_gradient(variant):
    """On the meta device (shapes only, ~2 s a variant): a training-mode forward/backward reaches every parameter,
    so DDP needs no unused-parameter search (multi_gpu_train.yaml: find_unused_parameters false)."""
    from bundle.networks import MSA2Net

    with torch.device("meta"):
        net = MSA2Net(in_channels=1, out_channels=9, variant=variant, encoder_weights=None)
        net.train()
        net(torch.randn(2, 1, 224, 224)).float().sum().backward()
    params = dict(net.named_parameters())
    assert len(params) > 100
    assert [n for n, p in params.items() if p.requires_grad and p.grad is None] == []


def _uniform_dataset(root):
    """2 identical volumes whose 4 slices are identical: every drawn sample is the same, on any rank, so the
    1-process and the 2-process runs see the same batches and must follow the same loss curve."""
    rng = np.random.default_rng(0)
    img2d = rng.normal(-50, 60, (40, 36)).astype(np.float32)
    lab2d = np.zeros((40, 36), np.uint8)
    lab2d[10:20, 9:18], lab2d[20:30, 18:27] = 5, 1
    img2d[lab2d > 0] += 150
    os.makedirs(root / "images", exist_ok=True)
    items = []
    for i in range(2):
        img, lab = root / "images" / f"u{i}.nii.gz", root / "images" / f"u{i}_label.nii.gz"
        nib.save(nib.Nifti1Image(np.repeat(img2d[..., None], 4, -1), np.diag([0.8, 0.7, 3.0, 1.0])), img)
        nib.save(nib.Nifti1Image(np.repeat(lab2d[..., None], 4, -1), np.diag([0.8, 0.7, 3.0, 1.0])), lab)
        items.append({"image": str(img), "label": str(lab)})
    with open(root / "dataset.json", "w") as f:
        json.dump({"training": items, "validation": items, "test": items}, f)
    return root


def _run(cmd):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([ROOT, TESTS]))
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout + proc.stderr


def _losses(folder):
    """train_loss per iteration, and the number of event files (train + validation writers of rank 0 only)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = glob.glob(os.path.join(folder, "events.out.tfevents.*"))
    for events in files:
        acc = EventAccumulator(events)
        acc.Reload()
        if "train_loss" in acc.Tags()["scalars"]:
            return [e.value for e in sorted(acc.Scalars("train_loss"), key=lambda e: e.step)], len(files)
    raise AssertionError(f"no train_loss in {files}")


@pytest.mark.slow
def test_two_gloo_processes_follow_the_single_process_loss_curve(tmp_path):
    data = _uniform_dataset(tmp_path / "data")
    overlay = tmp_path / "tiny.yaml"
    overlay.write_text(
        'network_def:\n  _target_: conftest.TinySegNet\n  in_channels: "@in_channels"\n  out_channels: "@num_classes"\n'
    )

    def cmd(configs, out):
        files = "[" + ",".join(f"'{c}'" for c in configs) + "]"
        common = ["--dataset_dir", str(data), "--output_dir", str(out), "--ckpt_path", str(out / "model.pt")]
        return ["-m", "monai.bundle", "run", "training", "--config_file", files, *common, *ARGS]

    single = tmp_path / "single"
    log1 = _run([sys.executable, *cmd(["configs/train.yaml", str(overlay)], single)])
    ddp = tmp_path / "ddp"
    torchrun = [os.path.join(os.path.dirname(sys.executable), "torchrun"), "--standalone", "--nproc_per_node=2"]
    # TinySegNet holds a module that never runs: DDP must be told to look for unused parameters
    configs = ["configs/train.yaml", "configs/multi_gpu_train.yaml", str(overlay)]
    log2 = _run([*torchrun, *cmd(configs, ddp), "--find_unused_parameters", "True"])
    assert "Epoch: 2/2, Iter: 4/4" in log1 and "Epoch: 2/2, Iter: 4/4" in log2
    (a, files1), (b, files2) = _losses(single), _losses(ddp)
    assert files1 == files2 == 2  # rank 1 writes no TensorBoard file
    print("single:", np.round(a, 5).tolist(), "ddp:", np.round(b, 5).tolist())
    assert len(a) == len(b) == 8 and a[-1] < a[0] - 0.1  # it learns: the curve moves far more than the tolerance
    # identical samples, gradients all-reduced (mean of 2 equal halves): equal up to float32 summation order, which
    # measured ≤ 3e-6 relative (4e-5 on a loss of 15 at a 5× higher learning rate)
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
    # rank 0 alone writes checkpoints: one set of files (the completed run keeps its final one), un-prefixed keys,
    # complete (weights_only load)
    assert sorted(os.listdir(ddp / "checkpoints")) == ["checkpoint_final.pt"]
    state = torch.load(ddp / "checkpoints" / "checkpoint_final.pt", map_location="cpu", weights_only=True)
    assert state["trainer"]["iteration"] == 8 and not any(k.startswith("module.") for k in state["model"])
    ref = torch.load(single / "checkpoints" / "checkpoint_final.pt", map_location="cpu", weights_only=True)
    for key, value in ref["model"].items():
        torch.testing.assert_close(state["model"][key], value, rtol=1e-4, atol=1e-5)


def _merged():
    from monai.bundle import ConfigParser

    return ConfigParser.load_config_files(
        [os.path.join(ROOT, "configs", f) for f in ("train.yaml", "multi_gpu_train.yaml")]
    )


def test_overlay_shards_training_and_validation_with_distributed_samplers():
    from monai.data import DistributedWeightedRandomSampler
    from torch.utils.data import DistributedSampler

    cfg = _merged()
    assert cfg["train"]["sampler"]["_target_"] == "DistributedWeightedRandomSampler"
    assert issubclass(DistributedWeightedRandomSampler, DistributedSampler)
    assert cfg["validate"]["sampler"]["_target_"] == "DistributedSampler"
    assert cfg["validate"]["dataloader"]["sampler"] == "@validate#sampler"
    assert cfg["train"]["batches"]["rank"] == "@rank" and cfg["train"]["batches"]["world_size"] == "@world_size"
    assert not [k for k in cfg if re.search(r"#\d+(#|$)", k)]  # overrides by id, never by list position
    # what rank > 0 builds: train.yaml's own handlers, with @rank resolved to 1
    kept = [h["_target_"] for h in cfg["train"]["handlers"] if h.get("_disabled_", "$False") != "$@rank > 0"]
    assert kept == ["bundle.training.engine.EpochSeed", "LrScheduleHandler", "ValidationHandler"]
    logging = [h for h in cfg["train"]["handlers"] + cfg["validate"]["handlers"] if isinstance(h, dict)]
    assert all(h["_disabled_"] == "$@rank > 0" for h in logging if "TensorBoard" in h["_target_"])


def test_overlay_adds_to_train_yaml_instead_of_restating_it():
    """train.yaml's run list (its checks, rank-0 saving) and initialize (seeding, cuDNN flags) stay as they are."""
    from monai.bundle import ConfigParser

    train = ConfigParser.load_config_file(os.path.join(ROOT, "configs", "train.yaml"))
    cfg = _merged()
    assert cfg["run"] == train["run"] and cfg["initialize"][: len(train["initialize"])] == train["initialize"]
    assert "init_process_group" in cfg["initialize"][-1] and "destroy_process_group" in cfg["finalize"][-1]
    assert cfg["network"]["module"]["network"] == "@network_local"  # channels_last comes from train.yaml


@pytest.fixture
def one_process_group(monkeypatch):
    """The environment torchrun gives a 1-process job (the overlay's initialize builds a gloo group from it)."""
    env = dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="29547")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    yield
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def _ddp_workflow(ct_dataset, tmp_path, **override):
    from conftest import TINY_NET
    from monai.bundle import ConfigWorkflow

    override = {
        "bundle_root": ROOT,
        "dataset_dir": str(ct_dataset),
        "datalist": str(ct_dataset / "dataset_ddp.json"),
        "output_dir": str(tmp_path / "out"),
        "ckpt_path": str(tmp_path / "out" / "model.pt"),
        "network_def": TINY_NET,
        "num_workers": 0,
        "show_progress": False,
        **override,
    }
    wf = ConfigWorkflow(
        config_file=[os.path.join(ROOT, "configs", f) for f in ("train.yaml", "multi_gpu_train.yaml")],
        meta_file=os.path.join(ROOT, "configs", "metadata.json"),
        logging_file=False,
        workflow_type="train",
        **override,
    )
    wf.initialize()
    return wf


def test_overlay_keeps_channels_last(ct_dataset, tmp_path, one_process_group):
    wf = _ddp_workflow(ct_dataset, tmp_path, channels_last=True)
    net = wf.parser.get_parsed_content("network")
    assert isinstance(net, torch.nn.parallel.DistributedDataParallel)
    conv = net.module.body[2].weight  # (8, 8, 3, 3): the two layouts differ
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    wf.finalize()


@pytest.mark.parametrize("bad", ["augment_backend", "ckpt_path"])
def test_overlay_runs_train_yaml_checks(bad, ct_dataset, tmp_path, one_process_group):
    """A typo'd augment_backend and an unwritable ckpt_path are refused before training, as with train.yaml."""
    from bundle.errors import root_input_error

    (tmp_path / "a_file").write_text("")
    value = {"augment_backend": "bached", "ckpt_path": str(tmp_path / "a_file" / "model.pt")}[bad]
    wf = _ddp_workflow(ct_dataset, tmp_path, **{bad: value})
    with pytest.raises(Exception) as err:
        wf.run()
    wf.finalize()
    message = root_input_error(err.value)
    assert message is not None and message.startswith(
        {"augment_backend": "augment_backend 'bached'", "ckpt_path": "ckpt_path"}[bad]
    )
    assert not os.path.exists(tmp_path / "out" / "checkpoints" / "checkpoint_final.pt")  # nothing trained


def test_ranks_of_the_monai_backend_draw_different_slices(tmp_path):
    """Two ranks of the overlay (built apart: the sampler is told its rank) on two identical volumes: with
    EpochSeed's per-rank stream they draw different slices; with one stream for both (as before) the same."""
    from types import SimpleNamespace

    from monai.bundle import ConfigParser

    from bundle.data.synthetic import write_synthetic_case

    items = []
    for i in range(2):  # the same volume twice: what a rank draws depends on its random stream only
        img, lab = write_synthetic_case(str(tmp_path / f"v{i}.nii.gz"), str(tmp_path / f"v{i}_l.nii.gz"), (40, 36, 8))
        items.append({"image": img, "label": lab})
    (tmp_path / "dataset.json").write_text(json.dumps({"training": items, "validation": items}))

    def draws(rank, stream_rank):
        parser = ConfigParser(_merged())
        parser.update({"bundle_root": ROOT, "dataset_dir": str(tmp_path), "augment_backend": "monai", "rank": rank})
        parser.update({"world_size": 2, "batch_size": 4, "slices_per_volume": 2, "slices_per_epoch": 16})
        parser.update({"num_workers": 0, "augment": False, "roi_size": [32, 32], "show_progress": False})
        parser.parse()
        loader = parser.get_parsed_content("train#dataloader")
        seed = parser.get_parsed_content("train#handlers#0")
        seed.rank = stream_rank
        seed(SimpleNamespace(state=SimpleNamespace(epoch=3), data_loader=loader))
        return torch.cat([b["image"] for b in loader])

    rank0, rank1 = draws(0, 0), draws(1, 1)
    assert rank0.shape == rank1.shape == (8, 1, 32, 32)  # 4 volumes x 2 slices per rank
    assert not torch.equal(rank0, rank1)
    assert torch.equal(draws(1, 0), rank0)  # one stream for both ranks: the same slices
    assert torch.equal(draws(0, 0), rank0)  # reproducible


def test_global_batch_rule_scales_the_learning_rate(caplog):
    """8 ranks at batch_size 20: 2 slices each, global batch 16, lr 0.05 x 16 / 20, and rank 0 says so."""
    import logging

    from monai.bundle import ConfigParser

    from bundle.training.distributed import rank_batch

    parser = ConfigParser(_merged())
    parser.update({"world_size": 8, "rank": 0})
    parser.parse()
    with caplog.at_level(logging.INFO, logger="bundle.training.distributed"):
        assert parser.get_parsed_content("rank_batch") == 2
        assert parser.get_parsed_content("optimizer#lr") == pytest.approx(0.04)
    assert "8 rank(s) x 2 slices = global batch 16 (batch_size 20)" in caplog.text and "WARNING" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="bundle.training.distributed"):
        assert rank_batch(20, 2) == 10 and rank_batch(20, 4, unit=4) == 4 and rank_batch(20, 8, unit=4) == 4
        assert rank_batch(20, 2, rank=1) == 10
    assert [r.levelname for r in caplog.records] == ["INFO", "WARNING", "WARNING"]  # rank 1 logs nothing
    assert "global batch 32" in caplog.records[-1].message  # monai backend: one volume of 4 per rank


def test_sync_batchnorm_option():
    from bundle.errors import InputError
    from bundle.training.distributed import sync_batchnorm

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Conv2d(4, 2, 1))
    weight = net[1].weight
    synced = sync_batchnorm(net, True, "cuda:1")  # converting needs no GPU; training with it does
    assert type(synced[1]) is torch.nn.SyncBatchNorm and synced[1].weight is weight
    assert sync_batchnorm(net, False, "cpu") is net
    with pytest.raises(InputError, match="sync_bn True needs CUDA"):
        sync_batchnorm(net, True, "cpu")
    with pytest.raises(InputError, match="write --sync_bn True or --sync_bn False"):
        sync_batchnorm(net, "false", "cuda")
    parser = __import__("monai").bundle.ConfigParser(_merged())
    assert parser.get_parsed_content("sync_bn") is torch.cuda.is_available()  # default: on with CUDA


def test_evaluate_refuses_torchrun(monkeypatch):
    from bundle.errors import InputError
    from bundle.training.distributed import single_process_only

    single_process_only()
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(InputError, match="run evaluating is single-process: do not combine it with"):
        single_process_only("run evaluating")
    from monai.bundle import ConfigParser

    for order in (("multi_gpu_train.yaml", "evaluate.yaml"), ("evaluate.yaml", "multi_gpu_train.yaml")):
        cfg = ConfigParser.load_config_files([os.path.join(ROOT, "configs", f) for f in ("train.yaml", *order)])
        assert cfg["run"][1]["_target_"] == "bundle.training.distributed.single_process_only"  # before the evaluator


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_overlay_on_cuda_synchronises_batchnorm_and_trains(ct_dataset, tmp_path, one_process_group):
    """MSA2Net under the overlay on one GPU (NCCL, 1 process): SyncBatchNorm layers, channels_last, a training step."""
    wf = _ddp_workflow(ct_dataset, tmp_path, network_def={"_target_": "bundle.networks.MSA2Net", "in_channels": 1,
                       "out_channels": 9, "variant": "paper"}, channels_last=True, amp=True)  # fmt: skip
    net = wf.parser.get_parsed_content("network")
    kinds = {type(m).__name__ for m in net.modules()}
    assert "SyncBatchNorm" in kinds and "BatchNorm2d" not in kinds
    x = torch.randn(2, 1, 224, 224, device="cuda").contiguous(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        net.train()(x).float().mean().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)
    wf.finalize()
