"""A real training run killed with SIGKILL mid-epoch resumes exactly: the resumed run's losses equal those of an
uninterrupted run with the same seed, iteration by iteration (engines, checkpoints, EpochSeed; tiny network)."""

import glob
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import ROOT

TESTS = os.path.join(ROOT, "tests")
# 3 epochs × 4 iterations (1 volume × 2 slices per iteration), augmentation on, no validation
ARGS = ["--epochs", "3", "--batch_size", "2", "--slices_per_volume", "2", "--slices_per_epoch", "8"]
ARGS += ["--num_workers", "0", "--val_interval", "100", "--show_progress", "False", "--roi_size", "[32,32]"]
OVERLAY = """network_def:
  _target_: conftest.TinySegNet
  in_channels: "@in_channels"
  out_channels: "@num_classes"
"""


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([ROOT, TESTS]))


def _cmd(configs, ct_dataset, out, *extra):
    files = "[" + ",".join(f"'{c}'" for c in configs) + "]"
    common = ["--dataset_dir", str(ct_dataset), "--output_dir", str(out), "--ckpt_path", str(out / "model.pt")]
    return [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", files, *common, *ARGS, *extra]


def _run(cmd):
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout + proc.stderr


def _losses(event_file):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(event_file))
    acc.Reload()
    return {e.step: e.value for e in acc.Scalars("train_loss")}


def _newest_events(folder):
    return max(glob.glob(os.path.join(folder, "events.out.tfevents.*")), key=os.path.getmtime)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(ct_dataset, tmp_path):
    overlay = tmp_path / "tiny.yaml"
    overlay.write_text(OVERLAY)
    stall = tmp_path / "stall.yaml"
    marker = tmp_path / "stalled"
    stall.write_text(OVERLAY + f"+train#handlers:\n- _target_: conftest.StallAt\n  iteration: 6\n  marker: {marker}\n")

    reference = tmp_path / "reference"
    _run(_cmd(["configs/train.yaml", str(overlay)], ct_dataset, reference))
    ref = _losses(_newest_events(reference))
    assert sorted(ref) == list(range(1, 13))

    # killed in epoch 2 at iteration 6: the last complete checkpoint is epoch 1 (iteration 4)
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        _cmd(["configs/train.yaml", str(stall)], ct_dataset, out),
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 600
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert marker.exists(), "the run did not reach iteration 6"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    ckpts = sorted(os.listdir(out / "checkpoints"))
    assert ckpts == ["checkpoint_epoch=1.pt"], ckpts  # no final checkpoint, no temporary file left behind
    state = torch.load(out / "checkpoints" / ckpts[0], map_location="cpu", weights_only=True)
    assert state["trainer"]["iteration"] == 4 and state["trainer"]["epoch_length"] == 4
    killed = _losses(_newest_events(out))
    assert all(killed[i] == ref[i] for i in range(1, 7))  # same seed, same first 6 iterations

    log = _run(_cmd(["configs/train.yaml", str(overlay)], ct_dataset, out, "--resume", "True"))
    assert "Restored all variables" in log and "Epoch: 2/3, Iter: 1/4" in log and "Epoch: 1/3" not in log
    resumed = _losses(_newest_events(out))
    assert sorted(resumed) == list(range(5, 13))
    # Same ops in the same order on one CPU thread: bit-identical in practice; 1e-6 only absorbs float32 storage.
    np.testing.assert_allclose([resumed[i] for i in range(5, 13)], [ref[i] for i in range(5, 13)], rtol=0, atol=1e-6)
    final = torch.load(out / "checkpoints" / "checkpoint_final.pt", map_location="cpu", weights_only=True)
    reference_final = torch.load(
        reference / "checkpoints" / "checkpoint_final.pt", map_location="cpu", weights_only=True
    )
    assert final["trainer"]["iteration"] == 12 and final["lr_scheduler"]["last_epoch"] == 12
    for key, value in reference_final["model"].items():
        torch.testing.assert_close(final["model"][key], value, rtol=0, atol=1e-6)


def test_atomic_checkpoint_saver_never_leaves_a_truncated_or_missing_file(tmp_path, monkeypatch):
    """A save that dies half-way (disk full, kill) leaves the previous complete file under the final name and no
    temporary file; MONAI's own CheckpointSaver (atomic=False) leaves a truncated file."""
    from ignite.engine import Engine, Events
    from monai.handlers import CheckpointSaver

    from bundle.training.engine import AtomicCheckpointSaver

    net = torch.nn.Linear(2, 2)
    engine = Engine(lambda e, b: None)
    engine.state.metrics = {"dice": 0.5}
    best = AtomicCheckpointSaver(
        str(tmp_path), {"model": net}, save_key_metric=True, key_metric_name="dice", key_metric_filename="model.pt"
    )
    best.attach(engine)
    engine.fire_event(Events.EPOCH_COMPLETED)  # first best model
    files = os.listdir(tmp_path)
    assert files == ["model.pt"]
    good = torch.load(tmp_path / files[0], weights_only=True)
    real_save = torch.save

    def dying_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.truncate(10) if hasattr(f, "truncate") else open(f, "r+b").truncate(10)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", dying_save)
    with torch.no_grad():
        net.weight += 1
    engine.state.metrics = {"dice": 0.9}
    with pytest.raises(OSError):
        engine.fire_event(Events.EPOCH_COMPLETED)  # a better model, but the save dies
    assert os.listdir(tmp_path) == files  # old file kept, no temporary left
    torch.testing.assert_close(torch.load(tmp_path / files[0], weights_only=True)["weight"], good["weight"])

    plain = tmp_path / "monai"
    saver = CheckpointSaver(str(plain), {"model": net}, save_interval=1)
    saver.attach(engine)
    with pytest.raises(OSError):
        engine.fire_event(Events.EPOCH_COMPLETED)
    (name,) = [f for f in os.listdir(plain)]
    with pytest.raises(Exception):  # the truncated file under the final name that the atomic saver avoids
        torch.load(plain / name, weights_only=True)


def _poly_run(total_iters, steps, state=None):
    """SGD + RunLengthPolynomialLR over ``total_iters``, optionally restored from ``state``, stepped ``steps`` times;
    returns (lr before each step, optimizer, scheduler)."""
    from bundle.training.engine import RunLengthPolynomialLR

    net = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    sched = RunLengthPolynomialLR(opt, total_iters=total_iters, power=0.9)
    if state is not None:  # the configs' load_dict order: optimizer, then scheduler
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["lr_scheduler"])
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs, opt, sched


def test_extending_a_finished_run_stretches_the_poly_schedule():
    """A run planned for 8 iterations ends at lr 0; resumed with a 12-iteration plan it trains on with the lr a
    12-iteration run has at iterations 9..12 (torch's PolynomialLR would restore total_iters 8 and stay at 0)."""
    lrs, opt, sched = _poly_run(8, 8)
    assert opt.param_groups[0]["lr"] == 0.0
    state = {"optimizer": opt.state_dict(), "lr_scheduler": sched.state_dict()}
    extended, _, stretched = _poly_run(12, 4, state)
    planned, _, _ = _poly_run(12, 12)
    assert stretched.total_iters == 12
    assert extended[0] == pytest.approx(0.05 * (1 - 8 / 12) ** 0.9, rel=1e-12) and extended[0] > 0.01
    np.testing.assert_allclose(extended, planned[8:], rtol=1e-12)
    # the same length (a plain resume) restores the schedule untouched
    _, opt_same, sched_same = _poly_run(8, 0, state)
    assert sched_same.total_iters == 8 and opt_same.param_groups[0]["lr"] == 0.0


@pytest.mark.slow
def test_resume_with_more_epochs_trains_the_extra_epochs(ct_dataset, tmp_path):
    """`--resume True --epochs 3` after a finished 2-epoch run: epoch 3 runs at lr > 0 and moves the weights."""
    overlay = tmp_path / "tiny.yaml"
    overlay.write_text(OVERLAY)
    out = tmp_path / "run"
    configs = ["configs/train.yaml", str(overlay)]
    _run(_cmd(configs, ct_dataset, out, "--epochs", "2"))
    final = out / "checkpoints" / "checkpoint_final.pt"
    first = torch.load(final, map_location="cpu", weights_only=True)
    assert first["optimizer"]["param_groups"][0]["lr"] == 0.0  # the 2-epoch schedule ran to its end

    log = _run(_cmd(configs, ct_dataset, out, "--epochs", "3", "--resume", "True"))
    assert "Epoch: 3/3, Iter: 1/4" in log and "Epoch: 2/3" not in log
    second = torch.load(final, map_location="cpu", weights_only=True)
    moved = max((second["model"][k] - v).abs().max().item() for k, v in first["model"].items())
    assert moved > 1e-4, moved  # at lr 0 (torch's restored schedule) every weight stays exactly where it was
    assert second["trainer"]["iteration"] == 12
    assert second["lr_scheduler"]["total_iters"] == 12 and second["lr_scheduler"]["last_epoch"] == 12


def test_a_completed_run_keeps_one_training_checkpoint(tmp_path):
    """Interval checkpoints (n_saved 2) + the final one: 3 files of weights + optimizer state (614 MB each for
    MSA²Net) after a finished run; the final one holds the same state, so the interval files go once it is written.
    A run that ends by an exception keeps them."""
    from ignite.engine import Engine

    from bundle.training.engine import AtomicCheckpointSaver

    net = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)

    def run(folder, fail_at=None):
        def step(engine, batch):
            if engine.state.epoch == fail_at:
                raise RuntimeError("killed")

        engine = Engine(step)
        saver = AtomicCheckpointSaver(str(folder), {"model": net, "optimizer": opt}, save_interval=1, n_saved=2,
                                      epoch_level=True, save_final=True, final_filename="checkpoint_final.pt")  # fmt: skip
        saver.attach(engine)
        engine.run([0, 1], max_epochs=3)
        return sorted(os.listdir(folder))

    assert run(tmp_path / "done") == ["checkpoint_final.pt"]
    final = torch.load(tmp_path / "done" / "checkpoint_final.pt", weights_only=True)
    assert set(final) == {"model", "optimizer"}
    with pytest.raises(RuntimeError, match="killed"):
        run(tmp_path / "failed", fail_at=3)
    assert sorted(os.listdir(tmp_path / "failed")) == [
        "checkpoint_epoch=1.pt",
        "checkpoint_epoch=2.pt",
        "checkpoint_final.pt",
    ]
