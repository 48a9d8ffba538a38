"""The optimiser, by name, so that train.py and the learning-rate finder build the same one."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from adder.config import OPTIMIZERS


def build_optimizer(name: str, params: Iterable[torch.nn.Parameter], lr: float,
                    weight_decay: float) -> torch.optim.Optimizer:
    if name == "sgd":
        # The one-cycle schedule cycles the momentum between 0.85 and 0.95; 0.9 only matters without it.
        return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
