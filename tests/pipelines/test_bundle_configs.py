"""Every config parses through ConfigWorkflow and passes check_properties(), as the model zoo's CI does."""

import json
import os
import re

import pytest
import torch
from conftest import ROOT
from monai.bundle import ConfigWorkflow

CFG = os.path.join(ROOT, "configs")


def _workflow(files, workflow_type, **override):
    files = [os.path.join(CFG, f) for f in files]
    return ConfigWorkflow(
        config_file=files if len(files) > 1 else files[0],
        meta_file=os.path.join(CFG, "metadata.json"),
        logging_file=os.path.join(CFG, "logging.conf"),
        workflow_type=workflow_type,
        **override,
    )


@pytest.mark.parametrize(
    "files, workflow_type, run_id",
    [
        (["train.yaml"], "train", "training"),
        (["train.yaml", "evaluate.yaml"], "train", "evaluating"),
        (["train.yaml", "multi_gpu_train.yaml"], "train", "training"),
        (["inference.yaml"], "infer", "inference"),
    ],
)
def test_config_properties(files, workflow_type, run_id, ct_dataset, tmp_path, monkeypatch):
    if "multi_gpu_train.yaml" in files:  # a 1-process gloo group, as torchrun would set it up
        for key, value in dict(
            RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="29533"
        ).items():
            monkeypatch.setenv(key, value)
    wf = _workflow(
        files,
        workflow_type,
        bundle_root=ROOT,
        dataset_dir=str(ct_dataset),
        datalist=str(ct_dataset / "dataset.json"),
        output_dir=str(tmp_path),
    )
    wf.initialize()
    assert wf.check_properties() in ([], None)
    assert run_id in wf.parser.config
    for key in ("bundle_root", "dataset_dir", "output_dir", "ckpt_path", "device", "amp"):
        assert key in wf.parser.config, f"{files}: missing top-level id {key}"
    wf.finalize()


def test_train_ids_and_recipe_defaults():
    wf = _workflow(["train.yaml"], "train")
    cfg = wf.parser
    for key in (
        "datalist",
        "epochs",
        "batch_size",
        "num_workers",
        "network_def",
        "network",
        "initialize",
        "run",
        "finalize",
        "train#trainer",
        "validate#evaluator",
    ):
        assert key in cfg, key
    assert cfg["epochs"] == 700 and cfg["batch_size"] == 20 and cfg["loss_name"] == "bdou"
    assert cfg["learning_rate"] == 0.05 and cfg["momentum"] == 0.9 and cfg["weight_decay"] == 1.0e-4
    assert cfg["training"] == "@run" and cfg["poly_power"] == 0.9
    assert not any("bundle" in str(x) for x in cfg["initialize"])  # no custom imports before sys.path is set


class _AutocastProbe(torch.nn.Module):
    """A 1x1 convolution that records the autocast dtype each forward runs under (None: autocast off)."""

    def __init__(self, in_channels=1, out_channels=9, **_):
        super().__init__()
        self.conv = torch.nn.Conv2d(in_channels, out_channels, 1)
        self.seen = []

    def forward(self, x):
        self.seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return self.conv(x)


@pytest.fixture
def cuda_autocast_on_cpu(monkeypatch):
    """MONAI's engines call ``torch.autocast("cuda", **amp_kwargs)``: here that autocast runs on the CPU, which
    takes bf16 and fp16 as well, so the dtype the network computes in can be read on a machine without a GPU."""
    real = torch.autocast

    def autocast(device_type, *args, **kwargs):
        if device_type == "cuda" and not args:
            kwargs.setdefault("dtype", torch.get_autocast_dtype("cuda"))  # CUDA's default (float16), not the CPU's
            device_type = "cpu"
        return real(device_type, *args, **kwargs)

    monkeypatch.setattr(torch, "autocast", autocast)


@pytest.mark.parametrize("amp_dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize(
    "files, evaluator",
    [(["train.yaml"], "validate#evaluator"), (["train.yaml", "evaluate.yaml"], "validate#evaluator"),
     (["inference.yaml"], "evaluator")],
)  # fmt: skip
def test_evaluators_autocast_in_amp_dtype(files, evaluator, amp_dtype, ct_dataset, tmp_path, cuda_autocast_on_cpu):
    """amp: validation, `run evaluating` and `run inference` compute in the trainer's amp_dtype (MONAI's evaluators
    default to float16). Checkpoint loaders and reports are left out (handlers []): autocast is the engine's."""
    probe = _AutocastProbe()
    override = dict(bundle_root=ROOT, dataset_dir=str(ct_dataset), output_dir=str(tmp_path), amp=True)
    override.update(amp_dtype=amp_dtype, network_def=probe, show_progress=False, num_workers=0)
    override["geometry"] = {"_target_": "bundle.transforms.geometry.Geometry"}  # no checkpoint to read it from
    if files == ["inference.yaml"]:
        override.update(input=str(ct_dataset / "images" / "vol0.nii.gz"), handlers=[])
    else:
        override.update({"validate#handlers": [], "ckpt_path": str(tmp_path / "model.pt")})
    wf = _workflow(files, "infer" if evaluator == "evaluator" else "train", **override)
    wf.initialize()
    wf.parser.get_parsed_content(evaluator).run()
    assert probe.seen and set(probe.seen) == {getattr(torch, amp_dtype)}
    wf.finalize()


def test_checkpoint_interval_is_a_config_id():
    """``ckpt_interval`` sets how often a resumable training checkpoint is written (the demo: every 10 of its
    5-iteration epochs instead of 40 saves of 614 MB)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(os.path.join(CFG, "train.yaml"))
    assert parser["train"]["checkpoint_saver"]["save_interval"] == "@ckpt_interval"
    assert parser["ckpt_interval"] == 1
    demo = open(os.path.join(ROOT, "scripts", "demo", "run_demo.py")).read()
    assert '"--ckpt_interval"' in demo


def test_inference_and_evaluation_apply_a_checkpoint_alike():
    """inference.yaml and the evaluate.yaml overlay each wire the checkpoint the same way: MONAI bundles have no
    include resolved against the bundle root (a ``%file#id`` macro is read from the current directory, so
    MONAI Label or a run from another folder would miss it), so the two copies are held identical here."""
    from monai.bundle import ConfigParser

    inference, evaluate = ConfigParser(), ConfigParser()
    inference.read_config(os.path.join(CFG, "inference.yaml"))
    evaluate.read_config([os.path.join(CFG, "train.yaml"), os.path.join(CFG, "evaluate.yaml")])
    shared = ["axcodes", "pixel_size", "crop_body", "slice_window", "geometry", "ckpt_paths", "ensemble", "tta", "lcc"]
    for key in shared:
        assert inference[key] == evaluate[key], key
    loader = inference["handlers"][0]
    assert loader["_target_"] == "bundle.io.checkpoint.CheckedCheckpointLoader"
    assert evaluate["validate#handlers"][0] == loader
    assert evaluate["validate#inferer#networks"] == inference["inferer#networks"] == "@ensemble"
    for key in ("pixel_size", "slice_window"):  # evaluation runs train.yaml's validation inferer with them
        assert evaluate[f"validate#inferer#{key}"] == inference[f"inferer#{key}"] == f"$@geometry.{key}"


@pytest.mark.parametrize(
    "base, overlay",
    [("inference.yaml", "isic2018/inference.yaml"), ("train.yaml", "isic2018/train.yaml"),
     ("inference.yaml", "inference_trt.yaml")],
)  # fmt: skip
def test_unused_options_name_ids_of_the_base_the_overlay_never_reads(base, overlay):
    """An overlay's ``unused_options`` (refused on the command line) must name real ids of its base config, so a
    renamed base id cannot leave a stale entry that refuses nothing, and the overlay itself must not read them."""
    from monai.bundle import ConfigParser

    base_ids = set(ConfigParser.load_config_file(os.path.join(CFG, base)))
    config = ConfigParser.load_config_file(os.path.join(CFG, overlay))
    unused = config["unused_options"]
    assert unused and set(unused) <= base_ids, set(unused) - base_ids
    text = json.dumps({k: v for k, v in config.items() if k != "unused_options"})
    assert not [u for u in unused if re.search(rf"@{u}\b", text)]
