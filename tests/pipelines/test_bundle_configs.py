"""Every config parses through ConfigWorkflow and passes check_properties(), as the model zoo's CI does."""

import os

import pytest
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
