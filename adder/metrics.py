"""Metrics of the adder, as torchmetrics so that they sync exactly across processes.

Every state is a sum over pairs, reduced with "sum" across processes: as long as each process scores a
disjoint shard (see adder.data.eval_batches), the result is exact for any number of processes.
"""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from adder.model import NUM_DIGITS, NUM_SUMS


class AdderMetrics(nn.Module):
    """Digit, sum and joint accuracy, consistency, mean loss, per-sum accuracy and confusion matrices."""

    def __init__(self):
        super().__init__()
        # "micro" is the plain fraction of right answers (torchmetrics' default is the macro average).
        self.digit_acc = MulticlassAccuracy(NUM_DIGITS, average="micro", validate_args=False)
        self.sum_acc = MulticlassAccuracy(NUM_SUMS, average="micro", validate_args=False)
        self.per_sum_acc = MulticlassAccuracy(NUM_SUMS, average=None, validate_args=False)
        self.joint_acc = MeanMetric()  # both heads right on the same pair
        self.consistency = MeanMetric()  # predicted sum == predicted digit + addend, right or wrong
        self.loss = MeanMetric()
        self.loss.set_dtype(torch.float64)  # a sum over 100,000 pairs: keep it exact enough to compare runs
        self.digit_confusion = MulticlassConfusionMatrix(NUM_DIGITS, validate_args=False)
        self.sum_confusion = MulticlassConfusionMatrix(NUM_SUMS, validate_args=False)

    @torch.no_grad()
    def update(self, digit_logits, sum_logits, addends, digits, sums, losses) -> None:
        """One row per (image, addend) pair; losses are the per-pair losses."""
        digit_pred, sum_pred = digit_logits.argmax(-1), sum_logits.argmax(-1)
        self.digit_acc.update(digit_pred, digits)
        self.sum_acc.update(sum_pred, sums)
        self.per_sum_acc.update(sum_pred, sums)
        self.joint_acc.update(((digit_pred == digits) & (sum_pred == sums)).float())
        self.consistency.update((sum_pred == digit_pred + addends).float())
        self.loss.update(losses)
        self.digit_confusion.update(digit_pred, digits)
        self.sum_confusion.update(sum_pred, sums)

    def compute(self) -> dict:
        """Scalars as floats, per-sum accuracy as a list, confusion matrices as (C, C) int tensors."""
        digit_confusion = self.digit_confusion.compute()
        return {
            "digit_acc": self.digit_acc.compute().item(),
            "sum_acc": self.sum_acc.compute().item(),
            "joint_acc": self.joint_acc.compute().item(),
            "consistency": self.consistency.compute().item(),
            "loss": self.loss.compute().item(),
            "pairs": int(digit_confusion.sum()),
            "per_sum_acc": self.per_sum_acc.compute().tolist(),
            "digit_confusion": digit_confusion.long().cpu(),
            "sum_confusion": self.sum_confusion.compute().long().cpu(),
        }

    def reset(self) -> None:
        for metric in self.children():
            metric.reset()


SCALARS = ("digit_acc", "sum_acc", "joint_acc", "consistency", "loss")


def scalars(results: dict) -> dict:
    """The scalar metrics of AdderMetrics.compute(), for logs and trackers."""
    return {name: results[name] for name in SCALARS}
