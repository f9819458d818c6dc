"""EpochSeed keeps the cuDNN flags the config chose; with `compile` the trainer sees one batch shape (one graph)."""

import os
from types import SimpleNamespace

import pytest
import torch
from conftest import ROOT, TINY_NET
from monai.bundle import ConfigWorkflow

from bundle.training.engine import EpochSeed


@pytest.fixture
def cudnn_flags():
    """Restores torch.backends.cudnn's flags after the test (they are process-wide)."""
    saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    yield
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved


def _epoch(seed, epoch):
    seed(SimpleNamespace(state=SimpleNamespace(epoch=epoch), data_loader=None))
    return torch.rand(4)


@pytest.mark.parametrize("flags", [(False, True), (True, False)])
def test_epoch_seed_reseeds_and_keeps_the_cudnn_flags(flags, cudnn_flags):
    """MONAI's set_determinism forces deterministic cuDNN without autotuning; EpochSeed puts the flags back."""
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = flags
    first = _epoch(EpochSeed(7), 2)
    assert (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) == flags
    assert torch.equal(_epoch(EpochSeed(7), 2), first)  # a function of (seed, epoch, rank)
    assert not torch.equal(_epoch(EpochSeed(7), 3), first)
    assert not torch.equal(_epoch(EpochSeed(7, rank=1), 2), first)


def _train_workflow(ct_dataset, tmp_path, **override):
    wf = ConfigWorkflow(
        config_file=os.path.join(ROOT, "configs", "train.yaml"),
        meta_file=os.path.join(ROOT, "configs", "metadata.json"),
        logging_file=False,
        workflow_type="train",
        bundle_root=ROOT,
        dataset_dir=str(ct_dataset),
        output_dir=str(tmp_path),
        ckpt_path=str(tmp_path / "model.pt"),
        network_def=TINY_NET,
        num_workers=0,
        show_progress=False,
        roi_size=[32, 32],
        val_interval=100,
        loss_name="dice_ce",
        **override,
    )
    wf.initialize()
    return wf


@pytest.mark.parametrize("benchmark", [True, False])
def test_train_yaml_sets_the_cudnn_flags_and_an_epoch_keeps_them(benchmark, ct_dataset, tmp_path, cudnn_flags):
    wf = _train_workflow(ct_dataset, tmp_path, cudnn_benchmark=benchmark, epochs=1, batch_size=2, slices_per_epoch=2)
    assert (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic) == (benchmark, not benchmark)
    wf.run()
    assert wf.parser.get_parsed_content("train#trainer").state.epoch == 1
    assert (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic) == (benchmark, not benchmark)
    wf.finalize()


@pytest.mark.parametrize("drop_last", [None, False])
def test_compile_sees_one_batch_shape(drop_last, ct_dataset, tmp_path):
    """6 slices per epoch at batch 4, 2 epochs, compiled: with compile the epoch drops its short last batch, so
    dynamo compiles one graph; keeping the short batch (the control) compiles a second one for it."""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    counter = CompileCounter()
    override = {"train#trainer#compile_kwargs": {"backend": counter}}
    if drop_last is not None:
        override["train#batches#drop_last"] = drop_last
    wf = _train_workflow(
        ct_dataset, tmp_path, compile=True, epochs=2, batch_size=4, slices_per_epoch=6, **override
    )  # fmt: skip
    wf.run()
    trainer = wf.parser.get_parsed_content("train#trainer")
    assert trainer.state.epoch == 2
    if drop_last is None:  # train.yaml: drop_last follows compile
        assert trainer.state.iteration == 2 and counter.frame_count == 1
    else:
        assert trainer.state.iteration == 4 and counter.frame_count == 2
    wf.finalize()
    torch._dynamo.reset()
