"""The slice table and its epochs (bundle/training/slice_table.py), and the caches of every config that caches."""

import os

import numpy as np
import pytest
import torch
from conftest import ROOT
from monai.bundle import ConfigWorkflow

from bundle.data.synthetic import write_synthetic_case
from bundle.errors import InputError
from bundle.training.slice_table import SliceBatches, SliceTable
from bundle.transforms.ct import NetworkGridd, ct_volume_transforms

CFG = os.path.join(ROOT, "configs")


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    root = tmp_path_factory.mktemp("table")
    out = []
    for i, depth in enumerate((5, 3, 4)):
        img, lab = write_synthetic_case(str(root / f"c{i}.nii.gz"), str(root / f"c{i}_l.nii.gz"), (50, 44, depth), i)
        out.append({"image": img, "label": lab})
    return out


def test_table_rows_equal_the_per_sample_slice_path(cases):
    table = SliceTable(cases, ct_volume_transforms(), size=224)
    assert len(table) == 12 and table.image.shape == (12, 1, 224, 224) and table.label.shape == (12, 224, 224)
    assert table.image.dtype == torch.float16 and table.label.dtype == torch.uint8
    assert table.case.tolist() == [0] * 5 + [1] * 3 + [2] * 4
    assert table.nbytes == 12 * (224 * 224 * 3 + 4)
    vol = ct_volume_transforms()(cases[1])
    grid = NetworkGridd(size=224)
    for z in range(3):
        one = grid({"image": vol["image"][..., z], "label": vol["label"][..., z]})
        np.testing.assert_allclose(table.image[5 + z, 0].float(), one["image"][0], atol=1e-3)  # float16
        assert torch.equal(table.label[5 + z], torch.as_tensor(one["label"][0]).to(torch.uint8))


def test_table_with_a_physical_pixel_size(cases):
    table = SliceTable(cases[:1], ct_volume_transforms(), size=64, pixel_size=1.0)
    vol = ct_volume_transforms()(cases[0])
    one = NetworkGridd(size=64, pixel_size=1.0)({"image": vol["image"][..., 2], "label": vol["label"][..., 2]})
    np.testing.assert_allclose(table.image[2, 0].float(), one["image"][0], atol=1e-3)
    assert torch.equal(table.label[2], torch.as_tensor(one["label"][0]).to(torch.uint8))


def test_options_a_user_sets_are_refused_in_one_line(cases):
    """An empty training list and a batch too small for the processes are the user's to fix: InputError naming the
    option (printed as one line), not a ValueError traceback."""
    with pytest.raises(InputError, match="holds no slice"):
        SliceTable([], ct_volume_transforms(), size=64)
    table = SliceTable(cases[:1], ct_volume_transforms(), size=64)
    with pytest.raises(
        InputError, match=r"--batch_size gives each process 0 slices.*at least the number of processes, 4"
    ):
        SliceBatches(table, batch_size=0, seed=0, world_size=4)


def test_epochs_cover_every_slice_once_and_depend_only_on_seed_and_epoch(cases):
    table = SliceTable(cases, ct_volume_transforms(), size=32)
    batches = SliceBatches(table, batch_size=5, seed=3, augment=False)
    assert len(batches) == 3  # 12 slices per epoch by default
    batches.set_epoch(1)
    first = batches.epoch_indices()
    assert sorted(first.tolist()) == list(range(12))  # the official epoch
    batches.set_epoch(2)
    assert sorted(batches.epoch_indices().tolist()) == list(range(12)) and not torch.equal(
        batches.epoch_indices(), first
    )
    again = SliceBatches(table, batch_size=5, seed=3, augment=False)  # a resumed run at epoch 2
    again.set_epoch(2)
    assert torch.equal(again.epoch_indices(), batches.epoch_indices())
    got = list(again)
    assert [b["image"].shape[0] for b in got] == [5, 5, 2]
    assert torch.equal(torch.cat([b["label"] for b in got])[:, 0].to(torch.uint8), table.label[again.epoch_indices()])
    rows = table.image[again.epoch_indices()].float()
    assert torch.equal(torch.cat([b["image"] for b in got]), (rows - 0.5) / 0.5)  # normalised as the official loader
    assert type(got[0]["image"]) is torch.Tensor  # plain tensors: no metadata to carry per batch
    # shorter epochs walk through the same stream of permutations: 3 epochs of 4 = one pass
    short = SliceBatches(table, batch_size=2, slices_per_epoch=4, seed=3, augment=False)
    seen = []
    for e in (1, 2, 3):
        short.set_epoch(e)
        seen += short.epoch_indices().tolist()
    assert sorted(seen) == list(range(12)) and seen == first.tolist()


def test_ddp_ranks_split_each_epoch(cases):
    table = SliceTable(cases, ct_volume_transforms(), size=32)
    ranks = [SliceBatches(table, batch_size=2, seed=1, rank=r, world_size=2, augment=False) for r in (0, 1)]
    for b in ranks:
        b.set_epoch(4)
    shares = [b.epoch_indices() for b in ranks]
    assert len(shares[0]) == len(shares[1]) == 6 and len(ranks[0]) == 3
    assert sorted(torch.cat(shares).tolist()) == list(range(12))
    single = SliceBatches(table, batch_size=2, seed=1, augment=False)
    single.set_epoch(4)
    assert sorted(single.epoch_indices().tolist()) == sorted(torch.cat(shares).tolist())


def test_augmented_batches_are_reproducible(cases):
    table = SliceTable(cases, ct_volume_transforms(), size=224)
    runs = []
    for _ in range(2):
        b = SliceBatches(table, batch_size=6, seed=0)
        b.set_epoch(3)
        runs.append([x["image"] for x in b])
    assert all(torch.equal(x, y) for x, y in zip(*runs))


# ------------------------------------------------------------------------------------------------ caches
def _parsed(files, ids, **override):
    wf = ConfigWorkflow(
        config_file=[os.path.join(CFG, f) for f in files] if len(files) > 1 else os.path.join(CFG, files[0]),
        meta_file=os.path.join(CFG, "metadata.json"),
        logging_file=False,
        workflow_type="train",
        bundle_root=ROOT,
        num_workers=0,
        show_progress=False,
        **override,
    )
    wf.initialize()
    return [wf.parser.get_parsed_content(i) for i in ids]


def _cached_arrays(dataset):
    """What a CacheDataset holds for its first item: each value's type (an image array, not a file path)."""
    item = dataset._cache[0]
    item = item[0] if isinstance(item, list) else item
    return {k: type(v).__name__ for k, v in item.items()}, item


@pytest.mark.parametrize("backend", ["monai"])
def test_ct_training_and_validation_caches_hold_arrays(ct_dataset, tmp_path, backend):
    """train.yaml (monai backend), validation, and the multi-GPU overlay: the cached item is the windowed volume
    (before the fix, train#dataset cached the file path strings and re-read the volume on every visit)."""
    common = dict(dataset_dir=str(ct_dataset), output_dir=str(tmp_path), augment_backend=backend)
    train, val = _parsed(["train.yaml"], ["train#dataset", "validate#dataset"], **common)
    for ds in (train, val):
        kinds, item = _cached_arrays(ds)
        assert kinds["image"] == "MetaTensor" and item["image"].ndim == 4, kinds
        assert kinds["label"] == "MetaTensor"
    # a visit leaves the cached volume as it was (copy_cache false is safe: the random stage makes new tensors)
    before = train._cache[0]["image"].clone()
    ops = len(train._cache[0]["image"].applied_operations)
    for i in range(3):
        train[0]
    assert torch.equal(train._cache[0]["image"], before) and len(train._cache[0]["image"].applied_operations) == ops


def test_multi_gpu_overlay_caches_and_splits(ct_dataset, tmp_path, monkeypatch):
    for key, value in dict(
        RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="29541"
    ).items():
        monkeypatch.setenv(key, value)
    (ds,) = _parsed(
        ["train.yaml", "multi_gpu_train.yaml"], ["train#dataset"], dataset_dir=str(ct_dataset),
        output_dir=str(tmp_path), augment_backend="monai",
    )  # fmt: skip
    kinds, _ = _cached_arrays(ds)
    assert kinds["image"] == "MetaTensor"
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def test_batched_backend_builds_a_table_not_a_cache(ct_dataset, tmp_path):
    loader, dataset = _parsed(
        ["train.yaml"], ["train#dataloader", "train#dataset"], dataset_dir=str(ct_dataset), output_dir=str(tmp_path)
    )
    assert isinstance(loader, SliceBatches) and dataset is None  # the volumes were read once, into the table
    assert len(loader.table) == 6 and loader.table.image.shape[-1] == 224


def test_drop_last_keeps_one_batch_shape(cases):
    """compile's epochs (train.yaml: drop_last follows compile): full batches only, other slices left out each epoch."""
    table = SliceTable(cases, ct_volume_transforms(), size=32)
    batches = SliceBatches(table, batch_size=5, seed=3, augment=False, drop_last=True)
    seen = []
    for epoch in (1, 2):
        batches.set_epoch(epoch)
        shapes = [b["image"].shape[0] for b in batches]
        assert len(batches) == 2 and shapes == [5, 5]
        seen.append(set(batches.epoch_indices()[:10].tolist()))
    assert seen[0] != seen[1]  # a different pair of slices is left out
    ranks = [
        SliceBatches(table, batch_size=4, seed=1, rank=r, world_size=2, augment=False, drop_last=True) for r in (0, 1)
    ]
    assert [[b["image"].shape[0] for b in r] for r in ranks] == [[4], [4]]  # 6 per rank: one full batch each
    small = SliceBatches(table, batch_size=20, seed=1, augment=False, drop_last=True)
    assert [b["image"].shape[0] for b in small] == [12]  # a share smaller than a batch stays one batch
