"""The exponential moving average (EMA) of the weights: with --ema_decay, the model validated, saved and tested.

torch.optim.swa_utils.AveragedModel keeps the average (of the parameters and of BatchNorm's running
statistics); this module only gives it its update rule, which is `get_ema_multi_avg_fn`'s plus a warm-up.
AveragedModel keeps its update counter in host memory and copies it to the device at every update; CUDA
documents such a copy from pageable memory as waiting for the stream first, so on a GPU the host waits for
the device once a step. train.py therefore builds it only with --ema_decay > 0.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


def ema_update_with_warmup(decay: float):
    """AveragedModel's multi_avg_fn: average <- lerp(average, current, 1 - decay_n).

    decay_n = min(decay, (1 + n) / (10 + n)) after n updates, as in TensorFlow's ExponentialMovingAverage.
    A fixed 0.999 would still hold 12 % of the random initial weights after the 2,160 steps of a default
    run; the warm-up forgets them within the first few hundred steps. It reaches 0.999 only after 8,990
    updates: a default run ends at 0.9958 (an average over about its last 240 steps) and a 60-epoch run at
    0.9986, whatever larger `decay` is given.
    """

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        weight = 1 - torch.clamp((1 + num_averaged) / (10 + num_averaged), max=decay)
        if torch.is_floating_point(averaged[0]):
            # One weight tensor per tensor: given alone, a tensor weight is read back to the host (.item()).
            torch._foreach_lerp_(averaged, current, [weight] * len(averaged))
        else:  # BatchNorm's batch counters: nothing to average
            torch._foreach_copy_(averaged, current)

    return update


def moving_average(model: nn.Module, decay: float) -> AveragedModel:
    """A copy of `model` whose update_parameters(model) folds in the current weights and BN statistics."""
    return AveragedModel(model, multi_avg_fn=ema_update_with_warmup(decay), use_buffers=True)
