"""The batched augmentation (bundle/transforms/augment.py): SomeOf rates, parameter ranges, alignment, determinism, devices,
and the same distributions as the per-sample MONAI list (augment_backend: monai)."""

import math

import numpy as np
import pytest
import torch

from bundle.transforms.augment import GEOMETRIC, MEMBERS, BatchedAugment
from bundle.transforms.ct import augmentation


def _draws(n, seed=0, device="cpu"):
    aug = BatchedAugment(224)
    g = torch.Generator(device=device).manual_seed(seed)
    slots = torch.cat([aug._draw_members(500, torch.device(device), g) for _ in range(n // 500)])
    return slots.cpu()


def test_someof_rates_counts_and_no_repeats():
    """≥ 2000 samples: each member drawn at 0.2 (= E[k]/10 with k ~ U{0..4}) within 3σ; k uniform; no repeats."""
    slots = _draws(4000)
    n = slots.shape[0]
    for m in range(len(MEMBERS)):
        rate = float((slots == m).any(1).float().mean())
        assert abs(rate - 0.2) < 3 * math.sqrt(0.2 * 0.8 / n), (MEMBERS[m], rate)
    k = (slots >= 0).sum(1)
    for value in range(5):
        assert abs(float((k == value).float().mean()) - 0.2) < 3 * math.sqrt(0.2 * 0.8 / n)
    for row in slots.tolist():
        drawn = [x for x in row if x >= 0]
        assert len(drawn) == len(set(drawn)) and row[len(drawn) :] == [-1] * (4 - len(drawn))
    # random order: a member appears first as often as last among 4-member draws
    four = slots[k == 4]
    assert abs(float((four[:, 0] == 6).float().mean()) - float((four[:, 3] == 6).float().mean())) < 0.05


def test_parameter_ranges():
    aug = BatchedAugment(224)
    g = torch.Generator().manual_seed(1)
    mats = aug._matrices(20000, torch.device("cpu"), g)
    s = torch.cat([mats["scale"][:, 0, 0], mats["scale"][:, 1, 1]])
    assert 0.5 <= float(s.min()) < 0.52 and 1.98 < float(s.max()) <= 2.0
    angle = torch.atan2(mats["rotate"][:, 1, 0], mats["rotate"][:, 0, 0])
    assert math.radians(39) < float(angle.abs().max()) <= math.radians(40) + 1e-6
    h = mats["shear"][:, 0, 1]
    assert math.tan(math.radians(15.9)) < float(h.abs().max()) <= math.tan(math.radians(16)) + 1e-6
    assert torch.equal(mats["shear"][:, 1, 0], torch.zeros(20000))
    t = mats["translate"][:, :2, 2]
    assert 0.19 * 224 < float(t.abs().max()) <= 0.2 * 224 + 1e-4
    for name in ("flip_rows", "flip_cols"):
        axis = 0 if name == "flip_rows" else 1
        flipped = float((mats[name][:, axis, axis] < 0).float().mean())
        assert abs(flipped - 0.5) < 0.02
    field = aug._elastic_field(400, torch.device("cpu"), g)
    assert field.shape == (400, 2, 224, 224)
    per_sample = field.flatten(1).std(1)
    # offsets N(0, m²) with m in [0.008, 0.03]·224 = [1.8, 6.7] px, smoothed by the bicubic upsampling
    assert 0.8 < float(per_sample.min()) and float(per_sample.max()) < 8.0
    noisy = aug._intensity(torch.full((64, 1, 224, 224), 0.5), torch.tensor([[2, -1, -1, -1]] * 64), g)
    assert abs(float((noisy - 0.5).std()) - 0.005) < 2e-4
    contrast = aug._intensity(torch.ones(4000, 1, 2, 2), torch.tensor([[4, -1, -1, -1]] * 4000), g)[:, 0, 0, 0]
    assert 0.5 <= float(contrast.min()) < 0.51 and 1.49 < float(contrast.max()) <= 1.5


def test_image_and_label_stay_aligned():
    """An image equal to label × constant stays equal after every geometric member (nearest for both)."""
    aug = BatchedAugment(224, members=GEOMETRIC, image_mode="nearest")
    g = torch.Generator().manual_seed(2)
    label = torch.zeros(64, 1, 224, 224, dtype=torch.uint8)
    label[:, :, 40:150, 60:120] = 3
    label[:, :, 160:200, 30:200] = 5
    image, out = aug(label.float() * 0.1, label, g)
    assert torch.equal(image, out.float() * 0.1)
    assert out.dtype == torch.uint8 and set(out.unique().tolist()) <= {0, 3, 5}
    assert not torch.equal(out, label)  # something moved
    # bilinear image: the label lies where the image is brightest
    aug = BatchedAugment(224, members=GEOMETRIC)
    image, out = aug(label.float() * 0.1, label, torch.Generator().manual_seed(2))
    inside = image[out == 5]
    assert float(inside.mean()) > 0.45  # 0.5 at the label's own pixels, blended only at the borders


def test_deterministic_under_a_seed():
    img = torch.rand(16, 1, 224, 224)
    lab = (img > 0.5).to(torch.uint8)
    a = BatchedAugment(224)(img, lab, torch.Generator().manual_seed(5))
    b = BatchedAugment(224)(img, lab, torch.Generator().manual_seed(5))
    c = BatchedAugment(224)(img, lab, torch.Generator().manual_seed(6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def _stats(images, labels, base_label):
    """Per-sample statistics that every member moves: mean intensity, foreground kept, foreground centroid."""
    fg = (labels > 0).float().flatten(1)
    rows = torch.arange(224.0).view(1, 224, 1).expand(1, 224, 224).flatten()
    centroid = (fg * rows).sum(1) / fg.sum(1).clamp_min(1)
    return {
        "mean": images.flatten(1).mean(1),
        "fg": fg.sum(1) / float((base_label > 0).sum()),
        "centroid": centroid,
        "std": images.flatten(1).std(1),
    }


def test_batched_and_monai_lists_draw_from_the_same_distributions():
    """600 augmentations of one slice by each backend: the means of four statistics agree within 4 standard
    errors (the MONAI list applies the same members with the same ranges, one resampling per member)."""
    torch.manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(224.0), torch.arange(224.0), indexing="ij")
    image = (0.3 + 0.4 * torch.exp(-((yy - 90) ** 2 + (xx - 130) ** 2) / 2000.0))[None]
    label = (((yy - 90) ** 2 + (xx - 130) ** 2) < 1500).to(torch.float32)[None]
    n = 600
    batched_img, batched_lab = BatchedAugment(224)(
        image[None].expand(n, -1, -1, -1), label[None].expand(n, -1, -1, -1), torch.Generator().manual_seed(3)
    )
    monai_list = augmentation(224)
    monai_list.set_random_state(3)
    out = [monai_list({"image": image.clone(), "label": label.clone()}) for _ in range(n)]
    monai_img = torch.stack([torch.as_tensor(o["image"]) for o in out])
    monai_lab = torch.stack([torch.as_tensor(o["label"]) for o in out])
    a, b = _stats(batched_img, batched_lab, label), _stats(monai_img, monai_lab, label)
    for key in a:
        se = math.sqrt(float(a[key].var()) / n + float(b[key].var()) / n)
        assert abs(float(a[key].mean()) - float(b[key].mean())) < 4 * se + 1e-3, (key, a[key].mean(), b[key].mean())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_draws_the_same_distributions_as_cpu():
    cpu, cuda = _draws(4000, device="cpu"), _draws(4000, device="cuda")
    for m in range(len(MEMBERS)):
        assert abs(float((cpu == m).any(1).float().mean()) - float((cuda == m).any(1).float().mean())) < 0.04
    img = torch.rand(256, 1, 224, 224)
    lab = (img > 0.5).to(torch.uint8)
    out_cpu = BatchedAugment(224)(img, lab, torch.Generator().manual_seed(0))[0]
    out_gpu = BatchedAugment(224)(img.cuda(), lab.cuda(), torch.Generator(device="cuda").manual_seed(0))[0].cpu()
    for stat in (lambda x: x.mean(), lambda x: x.std()):
        assert abs(float(stat(out_cpu)) - float(stat(out_gpu))) < 0.02
    assert np.isfinite(out_gpu.numpy()).all()


def test_augmentation_options_are_refused_in_one_line_on_both_paths():
    """--augment_members and image_mode are command-line options: both data paths refuse a bad value with the same
    InputError (one line), not a ValueError with a traceback."""
    from bundle.errors import InputError
    from bundle.transforms.augment import BatchedAugment
    from bundle.transforms.ct import augmentation

    for bad in (["flip"], [], ["blur", "blur"]):
        for build in (lambda m: BatchedAugment(224, members=m), lambda m: augmentation(224, members=m)):
            with pytest.raises(InputError, match=r"--augment_members must be a non-empty list of distinct names"):
                build(bad)
    with pytest.raises(InputError, match=r"--image_mode 'cubic' is not one of \['bilinear', 'nearest'\]"):
        BatchedAugment(224, image_mode="cubic")
    assert BatchedAugment(224, members=["blur", "noise"]).members == ("blur", "noise")
