"""Tiny end-to-end run through `python -m monai.bundle run` with the real MSA2Net on CPU:
train (2 iterations) → checkpoints → resume → evaluate → inference (NIfTI shape/affine = input's); gloo DDP.
Inference at scale (tiny network): bad cases skipped and reported, non-axial input, RSS flat over 50 cases."""

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
from conftest import ROOT, inference_workflow

TINY = [
    "--epochs",
    "1",
    "--batch_size",
    "2",
    "--slices_per_volume",
    "2",
    "--slices_per_epoch",
    "4",
    "--num_workers",
    "0",
    "--val_interval",
    "1",
    "--show_progress",
    "False",
    "--cache_rate",
    "1.0",
]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    return env


def _bundle(args, launcher=(sys.executable, "-m")):
    cmd = [*launcher, "monai.bundle", "run", *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout + proc.stderr


@pytest.mark.slow
def test_train_resume_evaluate_infer(ct_dataset, tmp_path):
    out, ckpt = tmp_path / "run", tmp_path / "run" / "model.pt"
    common = ["--dataset_dir", str(ct_dataset), "--output_dir", str(out), "--ckpt_path", str(ckpt)]
    log = _bundle(["training", "--config_file", "configs/train.yaml", *common, *TINY])
    assert "Epoch: 1/1, Iter: 2/2" in log
    # a completed run keeps its final checkpoint only (the interval ones hold nothing more)
    assert ckpt.exists() and sorted(os.listdir(out / "checkpoints")) == ["checkpoint_final.pt"]
    state = torch.load(out / "checkpoints" / "checkpoint_final.pt", map_location="cpu", weights_only=False)
    assert {"model", "optimizer", "lr_scheduler", "trainer"} <= set(state)
    assert state["trainer"]["iteration"] == 2

    # resume: 1 more epoch continues from iteration 2, not from scratch
    log = _bundle(
        ["training", "--config_file", "configs/train.yaml", *common, *TINY, "--epochs", "2", "--resume", "True"]
    )
    assert "Restored all variables" in log and "Epoch: 2/2, Iter: 2/2" in log and "Epoch: 1/2" not in log
    state = torch.load(out / "checkpoints" / "checkpoint_final.pt", map_location="cpu", weights_only=False)
    assert state["trainer"]["iteration"] == 4 and state["lr_scheduler"]["last_epoch"] == 4

    log = _bundle(
        [
            "evaluating",
            "--config_file",
            "['configs/train.yaml','configs/evaluate.yaml']",
            *common,
            "--num_workers",
            "0",
            "--show_progress",
            "False",
        ]
    )
    assert (out / "eval" / "val_mean_dice_raw.csv").exists()

    src = ct_dataset / "images" / "vol1.nii.gz"
    infer = [
        "inference",
        "--config_file",
        "configs/inference.yaml",
        "--input",
        str(src),
        "--output_dir",
        str(tmp_path / "pred"),
        "--ckpt_path",
        str(ckpt),
        "--num_workers",
        "0",
        "--show_progress",
        "False",
        "--sw_batch_size",
        "2",
    ]
    _bundle(infer)
    written, original = nib.load(tmp_path / "pred" / "vol1_seg.nii.gz"), nib.load(src)
    assert written.shape == original.shape and written.get_data_dtype() == np.uint8
    assert np.allclose(written.affine, original.affine)
    assert np.asarray(written.dataobj).max() <= 8
    log = _bundle(infer)  # second call: output exists → skipped
    assert "nothing to do" in log


@pytest.mark.slow
def test_ddp_gloo_two_processes(ct_dataset, tmp_path):
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    out = tmp_path / "ddp"
    args = [
        "training",
        "--config_file",
        "['configs/train.yaml','configs/multi_gpu_train.yaml']",
        "--dataset_dir",
        str(ct_dataset),
        "--datalist",
        str(ct_dataset / "dataset_ddp.json"),
        "--output_dir",
        str(out),
        "--ckpt_path",
        str(out / "model.pt"),
        *TINY,
        "--slices_per_volume",
        "1",
    ]
    log = _bundle(args, launcher=(torchrun, "--standalone", "--nnodes=1", "--nproc_per_node=2", "-m"))
    assert "Epoch: 1/1, Iter: 2/2" in log
    assert (out / "model.pt").exists() and glob.glob(str(out / "checkpoints" / "checkpoint_final.pt"))
    state = torch.load(out / "model.pt", map_location="cpu", weights_only=False)
    assert not any(k.startswith("module.") for k in state)  # rank 0 saved the unwrapped network


# ------------------------------------------------------------------------------------------------ inference at scale
def _tiny_checkpoint(path):
    from conftest import TinySegNet

    torch.manual_seed(0)
    torch.save(TinySegNet().state_dict(), path)
    return path


def test_inference_folder_skips_bad_cases_and_fails_at_the_end(tmp_path):
    """2 good volumes, a truncated file, a 4D series and a 2D image: the good ones are written, the 3 bad ones are
    listed in failures.json with their reasons, and the run raises CasesFailed (non-zero exit) at the end."""
    from conftest import make_volume

    from bundle.errors import root_input_error

    src = tmp_path / "in"
    os.makedirs(src)
    for name in ("a", "c"):
        make_volume(str(src / f"{name}.nii.gz"), str(tmp_path / f"{name}_lab.nii.gz"), shape=(24, 20, 3))
    raw = open(src / "a.nii.gz", "rb").read()
    (src / "b_truncated.nii.gz").write_bytes(raw[: int(len(raw) * 0.9)])
    nib.save(nib.Nifti1Image(np.zeros((24, 20, 3, 2), np.float32), np.eye(4)), src / "d_series.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((24, 20), np.float32), np.eye(4)), src / "e_slice.nii.gz")
    out = tmp_path / "out"
    wf = inference_workflow(str(src), out, _tiny_checkpoint(tmp_path / "tiny.pt"))
    wf.initialize()
    with pytest.raises(Exception) as err:
        wf.run()
    assert re.search(r"^3 of 5 cases failed \(details in .*failures.json\)", root_input_error(err.value))
    assert sorted(os.listdir(out)) == [
        "a_seg.nii.gz",
        "c_seg.nii.gz",
        "failures.json",
        "provenance.json",
    ]  # no temporary files left
    failures = json.load(open(out / "failures.json"))
    assert [os.path.basename(f["file"]) for f in failures] == [
        "b_truncated.nii.gz",
        "d_series.nii.gz",
        "e_slice.nii.gz",
    ]
    assert "cannot be read" in failures[0]["reason"] and "truncated" in failures[0]["reason"]
    assert "2 channels/time points" in failures[1]["reason"] and "is 2D" in failures[2]["reason"]
    assert nib.load(out / "a_seg.nii.gz").shape == (24, 20, 3)
    # rerun: good outputs exist and are skipped; the bad cases are tried and reported again
    wf = inference_workflow(str(src), out, tmp_path / "tiny.pt")
    wf.initialize()
    with pytest.raises(Exception) as err:
        wf.run()
    assert root_input_error(err.value).startswith("3 of 3 cases failed")


def test_inference_non_axial_input_written_back_in_input_orientation(tmp_path):
    """A sagittally stored volume (S–I on the first array axis, y flipped) is segmented on axial slices and the mask
    comes back with the input's shape and affine."""
    from conftest import TinySegNet, make_volume

    img_path, _ = make_volume(str(tmp_path / "ax.nii.gz"), str(tmp_path / "ax_lab.nii.gz"), shape=(24, 20, 5))
    ax = nib.load(img_path)
    order = (2, 0, 1)
    affine = np.eye(4)
    affine[:3, :3] = ax.affine[:3, :3][:, list(order)]
    affine[1, :3] *= -1
    affine[:3, 3] = ax.affine[:3, 3]
    sag = tmp_path / "sag.nii.gz"
    nib.save(nib.Nifti1Image(np.transpose(np.asarray(ax.dataobj), order), affine), sag)
    seen = []

    class Spy(TinySegNet):
        def forward(self, x):
            seen.append(tuple(x.shape))
            return super().forward(x)

    import conftest

    conftest.Spy = Spy
    override = dict(network_def={"_target_": "conftest.Spy"}, roi_size=[32, 32])
    wf = inference_workflow(str(sag), tmp_path / "out", _tiny_checkpoint(tmp_path / "tiny.pt"), **override)
    wf.initialize()
    wf.run()
    assert seen and sum(s[0] for s in seen) == 5  # 5 axial slices, not 24 sagittal ones
    written = nib.load(tmp_path / "out" / "sag_seg.nii.gz")
    assert written.shape == (5, 24, 20) and np.allclose(written.affine, affine)
    assert json.load(open(tmp_path / "out" / "failures.json")) == []


def _rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.slow
def test_inference_memory_flat_over_many_cases(tmp_path):
    """50 small volumes through the inference config in one process: RSS after each case, sampled by a handler,
    does not keep growing (last 10 cases within 25 MB of cases 11–20, and no monotonic rise)."""
    from conftest import make_volume
    from ignite.engine import Events

    src = tmp_path / "in"
    os.makedirs(src)
    for i in range(50):
        make_volume(str(src / f"v{i:02d}.nii.gz"), str(tmp_path / f"l{i:02d}.nii.gz"), shape=(128, 128, 24), seed=i)
    wf = inference_workflow(str(src), tmp_path / "out", _tiny_checkpoint(tmp_path / "tiny.pt"), roi_size=[64, 64])
    wf.initialize()
    rss = []
    wf.parser.get_parsed_content("evaluator").add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: rss.append(_rss_mb())
    )
    wf.run()
    masks = [f for f in os.listdir(tmp_path / "out") if f.endswith("_seg.nii.gz")]
    assert len(rss) == 50 and len(masks) == 50
    settled, last = np.median(rss[10:20]), np.median(rss[40:])
    print(f"RSS per case (MB): first {rss[0]:.1f}, cases 11-20 median {settled:.1f}, last 10 median {last:.1f}")
    assert last - settled < 25.0, rss
    assert not all(b > a for a, b in zip(rss[20:], rss[21:])), rss


@pytest.mark.slow
def test_each_run_keeps_its_best_model_and_publishes_only_when_told(ct_dataset, tmp_path):
    """Two runs into two output folders keep two best models; models/model.pt (what inference.yaml reads) is written
    only by the run given --publish_model True, and holds that run's best model."""
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text("network_def:\n  _target_: conftest.TinySegNet\n")
    env = dict(_env(), PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]))

    def train(name, *extra):
        cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file",
               f"['configs/train.yaml','{tiny}']", "--bundle_root", str(tmp_path), "--dataset_dir", str(ct_dataset),
               "--output_dir", str(tmp_path / "runs" / name), "--roi_size", "[32,32]", *TINY, *extra]  # fmt: skip
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    train("a")
    assert (tmp_path / "runs" / "a" / "model.pt").is_file() and not (tmp_path / "models").exists()
    train("b", "--seed", "7", "--publish_model", "True")
    published = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    a, b = (torch.load(tmp_path / "runs" / n / "model.pt", map_location="cpu", weights_only=True) for n in "ab")
    assert set(published) == {"model", "geometry"}
    assert all(torch.equal(published["model"][k], v) for k, v in b["model"].items())
    assert not all(torch.equal(a["model"][k], v) for k, v in b["model"].items())  # run a's file was not replaced
