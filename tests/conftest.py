"""Shared fixtures: tiny synthetic CT volumes (NIfTI, HU-like, 8-organ labels) and a decathlon datalist."""

import json
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # the bundle root, as the zoo CI does for bundles with custom code
# inference.yaml's default backend exports each new network to ONNX once: with a random network per test that is
# only cost; the ONNX path is checked by tests/test_perf_equivalence.py (subprocesses inherit this)
os.environ.setdefault("MSA2NET_INFERENCE_BACKEND", "eager")


def make_volume(path_img, path_lab, shape=(40, 36, 3), seed=0, affine=None):
    """Writes a synthetic CT (HU) and its label map (two organs) on a non-trivial affine."""
    from bundle.data.synthetic import write_synthetic_case

    return write_synthetic_case(path_img, path_lab, shape=shape, seed=seed, affine=affine)


class TinySegNet(torch.nn.Module):
    """A 2-layer stand-in for MSA2Net in tests of the engines (resume, DDP, inference loops), not of the network.

    ``unused`` is a module that never runs, as some MSA2Net variants hold: DDP must cope with it
    (``find_unused_parameters``). Configs name it ``conftest.TinySegNet`` (``tests/`` on ``PYTHONPATH``).
    """

    def __init__(self, in_channels=1, out_channels=9, width=8, **_):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(in_channels, width, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(width, width, 3, padding=1),
        )
        self.head = torch.nn.Conv2d(width, out_channels, 1)
        self.unused = torch.nn.Linear(3, 3)

    def forward(self, x):
        return self.head(torch.relu(self.body(x)))


class StallAt:
    """Test handler: at ``iteration`` writes ``marker`` and sleeps, so a test can SIGKILL the run mid-epoch."""

    def __init__(self, iteration, marker, seconds=600):
        self.iteration, self.marker, self.seconds = int(iteration), str(marker), seconds

    def attach(self, engine):
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_COMPLETED(once=self.iteration), self)

    def __call__(self, engine):
        import time

        with open(self.marker, "w") as f:
            f.write(str(engine.state.iteration))
        time.sleep(self.seconds)


TINY_NET = {"_target_": "conftest.TinySegNet", "in_channels": "@in_channels", "out_channels": "@num_classes"}


@pytest.fixture(scope="session")
def ct_dataset(tmp_path_factory):
    """Folder with 2 tiny volumes and ``dataset.json`` (training: both; validation/test: the first)."""
    root = tmp_path_factory.mktemp("ct")
    os.makedirs(root / "images")
    items = []
    for i in range(2):
        make_volume(str(root / "images" / f"vol{i}.nii.gz"), str(root / "images" / f"vol{i}_label.nii.gz"), seed=i)
        items.append({"image": f"images/vol{i}.nii.gz", "label": f"images/vol{i}_label.nii.gz"})
    with open(root / "dataset.json", "w") as f:
        json.dump({"training": items, "validation": items[:1], "test": items[:1]}, f)
    with open(root / "dataset_ddp.json", "w") as f:  # DistributedSampler needs ≥ 1 validation case per rank
        json.dump({"training": items, "validation": items, "test": items}, f)
    return root
