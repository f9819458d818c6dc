"""Checkpoint ensembles: one eval-mode copy of the network per checkpoint (folds, seeds).

:func:`load_checkpoints` gives the copies to :class:`bundle.inferers.axial.AxialSliceInferer` (which averages
probabilities slice by slice); :class:`ProbabilityEnsemble` wraps them as one module that returns the mean
probability, for the 2D pipelines whose inferer is MONAI's ``SimpleInferer``.
"""

from __future__ import annotations

import copy
import os
from typing import List, Optional, Sequence, Union

import torch
from torch import nn

from bundle.errors import InputError
from bundle.io.checkpoint import TrainedSettings, check_checkpoint, require_checkpoint


def load_checkpoints(
    network: torch.nn.Module,
    ckpt_paths: Optional[Sequence[str]],
    map_location: Union[str, torch.device, None] = None,
    settings: Optional[TrainedSettings] = None,
) -> List[torch.nn.Module]:
    """One eval-mode copy of ``network`` per checkpoint (folds/seeds), for :class:`AxialSliceInferer` ``networks``.

    Accepts what this bundle writes: the best-model file (a bare ``state_dict``) and full training checkpoints
    (``{"model": state_dict, "optimizer": ...}``). Each copy holds all weights (MSA²Net ``paper``: ~0.3 GB in fp32).

    Args:
        network: the instantiated network (architecture and device are copied from it; its weights are unchanged).
        ckpt_paths: checkpoint files; ``None`` or empty returns ``[]`` (the engine's own network is used).
        map_location: ``torch.load`` map location (the config's ``@device``).
        settings: the run's :class:`~bundle.io.checkpoint.TrainedSettings`; each checkpoint that saved its own is
            refused when they differ, before its weights are compared.

    Returns:
        The loaded copies, in ``ckpt_paths`` order.

    Raises:
        InputError: a missing file, other settings, or weights of another network.
    """
    if isinstance(ckpt_paths, str):
        ckpt_paths = [ckpt_paths]
    members = []
    for path in ckpt_paths or []:
        require_checkpoint(str(path), "--ckpt_paths")

        if settings is not None:
            settings.check(str(path))
        # bare or training checkpoint; refused (InputError) if for another network, variant or class count
        state = check_checkpoint(str(path), {"model": network}, map_location, option="--ckpt_paths")["model"]
        member = copy.deepcopy(network)
        member.load_state_dict(state)
        member.eval()
        for p in member.parameters():
            p.requires_grad_(False)
        members.append(member)
    return members


class ProbabilityEnsemble(nn.Module):
    """Mean of the members' probabilities: sigmoid for one output channel, softmax over channels otherwise.

    The official fold ensemble (``test_model_*_Ensemble.py``) averages the five folds' sigmoid maps and thresholds
    the mean at 0.5; with one member this is just that member's probability. Output: probabilities, not logits.

    Args:
        members: networks returning raw logits in eval mode.
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(members) == 0:
            raise InputError("a probability ensemble needs at least one checkpoint.")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total: Optional[torch.Tensor] = None
        for member in self.members:
            logits = member(x)
            if isinstance(logits, (list, tuple)):  # a member left in training mode: keep the main head
                logits = logits[0]
            prob = torch.sigmoid(logits.float()) if logits.shape[1] == 1 else torch.softmax(logits.float(), dim=1)
            total = prob if total is None else total + prob
        assert total is not None
        return total / len(self.members)


def load_ensemble(
    network_def: nn.Module, ckpt_paths, device=None, settings: Optional[TrainedSettings] = None
) -> ProbabilityEnsemble:
    """:func:`load_checkpoints` wrapped as one :class:`ProbabilityEnsemble` module (the 2D pipelines' network).

    Args:
        network_def: the (untrained) network of the config.
        ckpt_paths: a checkpoint path or a list of them (e.g. the five folds' ``model.pt``).
        device: where to put the ensemble.
        settings: the run's settings, checked against each checkpoint's (see :func:`load_checkpoints`).
    """
    paths = [ckpt_paths] if isinstance(ckpt_paths, (str, os.PathLike)) else list(ckpt_paths or [])
    if not paths:
        raise InputError(
            "no checkpoint given; set ckpt_paths to a model.pt or a list of fold models "
            "(e.g. --ckpt_paths \"\\$sorted(glob.glob('runs/microscopy/fold*/model.pt'))\")."
        )
    ensemble = ProbabilityEnsemble(load_checkpoints(network_def, [str(p) for p in paths], "cpu", settings)).eval()
    return ensemble.to(device) if device is not None else ensemble
