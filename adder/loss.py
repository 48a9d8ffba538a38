"""The training objective: cross-entropy on both heads.

Both outputs are categorical (the digit is one of 10 classes, the sum one of 19, a one-hot target), so
cross-entropy, the negative log-likelihood of the right class, is the natural loss: it is what a softmax
classifier is fit with and it keeps pushing on examples that are right but not yet confident.
The sum term is weighted by `sum_weight`; with the default 1 the two tasks count alike.
Label smoothing puts a small share of each target's probability on the other classes, so the network is
never pushed to make its logits arbitrarily confident. The training loss is this objective; validation and
test report plain cross-entropy (adder/evaluation.py), so that runs trained with other settings score alike.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class AdderLoss(nn.Module):
    def __init__(self, sum_weight: float = 1.0, label_smoothing: float = 0.0):
        super().__init__()
        self.sum_weight = sum_weight
        self.label_smoothing = label_smoothing

    def forward(self, digit_logits, sum_logits, digits, sums, reduction: str = "mean") -> torch.Tensor:
        def ce(logits, target):
            return F.cross_entropy(logits.float(), target, label_smoothing=self.label_smoothing, reduction=reduction)

        return ce(digit_logits, digits) + self.sum_weight * ce(sum_logits, sums)
