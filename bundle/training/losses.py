"""Losses for MSA²Net training: the Boundary Difference over Union loss (BDoU) and the recipe options.

BDoU follows the official ``utils.BoundaryDoULoss`` (see ``docs/official_code.md`` §4) exactly, without its
``.cuda()`` calls. For each class ``c``, with sums pooled over the **whole batch** (not per image)::

    I = Σ p·t,   z = Σ p²,   y = Σ t²
    C = #{target pixels whose zero-padded 3×3 cross-kernel sum is < 5}   (the boundary pixels)
    S = #{target pixels}
    α = min(2·(1 − (C + ε)/(S + ε)) − 1, 0.8)            (= 1 − 2C/S, capped)
    L_c = (z + y − 2I + ε) / (z + y − (1 + α)·I + ε),    ε = 1e-5

and the loss is the mean of ``L_c`` over all classes, background included.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bundle.errors import InputError

_SMOOTH = 1e-5


_ALPHA_CAP = 0.8


def _boundary_count(target: torch.Tensor) -> torch.Tensor:
    """Counts boundary pixels of a binary mask batch (B, H, W): target pixels whose 3×3 cross sum is < 5."""
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.0]], dtype=target.dtype)
    kernel = kernel.to(target.device).view(1, 1, 3, 3)
    neighbours = F.conv2d(target.unsqueeze(1), kernel, padding=1).squeeze(1)  # zero padding as official
    boundary = (neighbours < 5) & (target > 0)
    return boundary.sum().to(target.dtype)


def bdou_class_terms(probs: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    """Per-class BDoU terms ``L_c`` with batch-pooled sums.

    Args:
        probs: (B, K, H, W) probabilities (softmax for multi-class, sigmoid for binary).
        onehot: (B, K, H, W) binary targets of the same shape.

    Returns:
        (K,) tensor with one term per class.
    """
    if probs.shape != onehot.shape or probs.ndim != 4:
        raise InputError(
            f"BDoU needs 2D probabilities and one-hot targets of equal shape (B, K, H, W); "
            f"got {tuple(probs.shape)} and {tuple(onehot.shape)}."
        )
    terms = []
    for c in range(probs.shape[1]):
        p, t = probs[:, c], onehot[:, c]
        boundary = _boundary_count(t)
        size = t.sum()
        alpha = 2.0 * (1.0 - (boundary + _SMOOTH) / (size + _SMOOTH)) - 1.0
        alpha = torch.clamp(alpha, max=_ALPHA_CAP)
        inter, z_sum, y_sum = (p * t).sum(), (p * p).sum(), (t * t).sum()
        terms.append((z_sum + y_sum - 2 * inter + _SMOOTH) / (z_sum + y_sum - (1 + alpha) * inter + _SMOOTH))
    return torch.stack(terms)


class BoundaryDoULoss(nn.Module):
    """Boundary DoU loss (Sun et al., MICCAI 2023) as used by MSA²Net.

    Multi-class form (``sigmoid=False``): softmax over K ≥ 2 logits, label ids one-hot encoded, mean over all K
    classes including background. Binary form (``sigmoid=True``): one logit, sigmoid, the term of the foreground
    class only (the official code has no binary form; a background term would double-count the same boundary).

    Args:
        sigmoid: use the binary, single-logit form.
    """

    def __init__(self, sigmoid: bool = False) -> None:
        super().__init__()
        self.sigmoid = sigmoid

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Computes the loss.

        Args:
            logits: (B, K, H, W) raw network output (K = 1 for the binary form).
            target: (B, 1, H, W) or (B, H, W) label ids (multi-class) or {0, 1} mask (binary).

        Returns:
            Scalar loss.
        """
        logits = logits.float()  # sums over a whole batch overflow in fp16 under AMP
        if target.ndim == logits.ndim:
            target = target[:, 0]
        target = target.to(logits.device)
        if self.sigmoid:
            if logits.shape[1] != 1:
                raise InputError(f"binary BDoU needs 1 logit channel, got {logits.shape[1]}.")
            return bdou_class_terms(torch.sigmoid(logits), (target > 0).float().unsqueeze(1)).mean()
        num_classes = logits.shape[1]
        if num_classes < 2:
            raise InputError("multi-class BDoU needs ≥ 2 logit channels; use sigmoid=True.")
        onehot = F.one_hot(target.long(), num_classes).permute(0, 3, 1, 2).float()
        return bdou_class_terms(torch.softmax(logits, dim=1), onehot).mean()


def make_loss(name: str = "bdou", sigmoid: bool = False, lambda_dice: float = 1.0, lambda_ce: float = 1.0) -> nn.Module:
    """Builds the training loss by name (the config's ``loss_name``).

    Args:
        name: ``bdou`` (paper), ``dice_ce``, ``dice`` or ``ce`` (MONAI ``DiceCELoss`` / ``DiceLoss``).
        sigmoid: binary single-logit form instead of softmax.
        lambda_dice: Dice weight for ``dice_ce``.
        lambda_ce: cross-entropy weight for ``dice_ce``.

    Returns:
        A loss module taking (logits, label ids).
    """
    from monai.losses import DiceCELoss, DiceLoss

    name = name.lower()
    if name == "bdou":
        return BoundaryDoULoss(sigmoid=sigmoid)
    onehot = dict(sigmoid=True) if sigmoid else dict(softmax=True, to_onehot_y=True)
    if name == "dice_ce":
        return DiceCELoss(lambda_dice=lambda_dice, lambda_ce=lambda_ce, **onehot)
    if name == "dice":
        return DiceLoss(**onehot)
    if name == "ce":
        return DiceCELoss(lambda_dice=0.0, lambda_ce=1.0, **onehot)
    raise InputError(f"loss name must be one of bdou, dice_ce, dice, ce; got {name!r}.")


_SA2_SMOOTH = 1e-5


def sa2_dice_bce_terms(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dice and BCE terms of one head, as the official SA2-Net ``WeightedDiceBCE`` (``docs/official_code.md`` §8).

    With ``p = sigmoid(logits)``, ``t`` the {0, 1} mask and the official weights ``w = 0.5`` everywhere::

        dice = mean over images of 1 − (2·Σ(w·p)(w·t) + 1e-5) / (Σ(w·p)² + Σ(w·t)² + 1e-5)
        bce  = 0.5·mean(BCE over foreground pixels) + 0.5·mean(BCE over background pixels)   (whole batch)

    The squared-denominator soft Dice is per image; the class-balanced BCE pools the whole batch (a class with
    no pixel contributes 0). BCE is computed from the logits (stable): the official code applies
    ``binary_cross_entropy`` to sigmoid probabilities, which clamps ``log`` at −100 for saturated pixels.

    Args:
        logits: (B, 1, H, W) raw logits of one head.
        target: (B, 1, H, W) or (B, H, W) mask; values > 0.5 are foreground.

    Returns:
        ``(dice, bce)`` scalars.
    """
    if target.ndim == logits.ndim - 1:
        target = target.unsqueeze(1)
    if logits.shape != target.shape or logits.shape[1] != 1:
        raise InputError(
            f"the SA2-Net Dice+BCE loss needs one logit channel and a mask of the same shape "
            f"(B, 1, H, W); got {tuple(logits.shape)} and {tuple(target.shape)}. Use out_channels=1."
        )
    logits = logits.float()  # batch sums overflow in fp16 under AMP
    t = (target.to(logits.device) > 0.5).float()
    b = logits.shape[0]
    wp, wt = 0.5 * torch.sigmoid(logits).reshape(b, -1), 0.5 * t.reshape(b, -1)
    inter = (wp * wt).sum(-1)
    union = (wp * wp).sum(-1) + (wt * wt).sum(-1)
    dice = (1.0 - (2.0 * inter + _SA2_SMOOTH) / (union + _SA2_SMOOTH)).mean()
    bce = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
    pos, neg = t, 1.0 - t
    bce = (0.5 * pos * bce).sum() / (pos.sum() + 1e-12) + (0.5 * neg * bce).sum() / (neg.sum() + 1e-12)
    return dice, bce


class DeepSupervisionDiceBCELoss(nn.Module):
    """SA2-Net training loss: ``dice_weight·Dice + bce_weight·BCE`` per head, heads summed (official: 0.5, 0.5, 1).

    SA2-Net in training mode with ``deep_supervision=True`` returns four full-resolution logit maps (main head
    first); the official ``train_one_epoch`` adds the four ``WeightedDiceBCE`` losses with weight 1 each. A single
    tensor (e.g. MSA²Net, or SA2-Net in eval mode) is one head.

    Args:
        dice_weight: weight of the Dice term (official 0.5).
        bce_weight: weight of the class-balanced BCE term (official 0.5).
        head_weights: one weight per head (default 1 for every head, as the official code).
    """

    def __init__(self, dice_weight: float = 0.5, bce_weight: float = 0.5, head_weights=None) -> None:
        super().__init__()
        self.dice_weight, self.bce_weight = float(dice_weight), float(bce_weight)
        self.head_weights = None if head_weights is None else [float(w) for w in head_weights]

    def forward(self, outputs, target: torch.Tensor) -> torch.Tensor:
        """Sum over heads of the weighted Dice + BCE.

        Args:
            outputs: (B, 1, H, W) logits, or a list/tuple of them (deep-supervision heads).
            target: (B, 1, H, W) or (B, H, W) binary mask.

        Returns:
            Scalar loss.
        """
        heads = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
        weights = self.head_weights if self.head_weights is not None else [1.0] * len(heads)
        if len(weights) != len(heads):
            raise InputError(
                f"{len(weights)} head_weights for {len(heads)} network outputs; give one weight "
                f"per deep-supervision head (or leave head_weights unset for 1 each)."
            )
        total = heads[0].new_zeros((), dtype=torch.float32)
        for w, head in zip(weights, heads):
            dice, bce = sa2_dice_bce_terms(head, target)
            total = total + w * (self.dice_weight * dice + self.bce_weight * bce)
        return total
