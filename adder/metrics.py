"""Metrics of the adder, as torchmetrics so that they sync exactly across processes.

Every state is a count (or a sum of losses) reduced with "sum" across processes: as long as each process
scores a disjoint shard (see adder.data.eval_batches), the result is exact for any number of processes.
Accuracies are reported as exact counts of right answers and the fractions computed from them in Python,
so that a JSON report reads 0.9868, not a float32 artefact such as 0.9868000149726868. No NaN check: a
count cannot be NaN, and a NaN loss must show as NaN, not be dropped from the mean (torchmetrics' default
drops it with a warning, and checks with a host sync at every update).
"""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics import SumMetric
from torchmetrics.classification import MulticlassConfusionMatrix

from adder.model import NUM_DIGITS, NUM_SUMS

COUNTS = ("digit_correct", "sum_correct", "joint_correct", "consistent")
SCALARS = ("digit_acc", "sum_acc", "joint_acc", "consistency", "loss")


def exact_sum() -> SumMetric:
    """A sum in float64: exact for counts (every integer up to 2**53), and the losses' sum to ~16 digits."""
    metric = SumMetric(nan_strategy="disable")
    metric.set_dtype(torch.float64)
    return metric


class AdderMetrics(nn.Module):
    """Digit, sum and joint accuracy, consistency, mean loss, per-sum accuracy and confusion matrices."""

    def __init__(self):
        super().__init__()
        # The confusion matrices' diagonals are the right answers of each head, their totals the pairs.
        self.digit_confusion = MulticlassConfusionMatrix(NUM_DIGITS, validate_args=False)
        self.sum_confusion = MulticlassConfusionMatrix(NUM_SUMS, validate_args=False)
        self.joint_correct = exact_sum()  # both heads right on the same pair
        self.consistent = exact_sum()  # predicted sum == predicted digit + addend, right or wrong
        self.loss_sum = exact_sum()  # float64: a sum over 100,000 pairs, exact enough to compare runs

    @torch.no_grad()
    def update(self, digit_logits, sum_logits, addends, digits, sums, losses) -> None:
        """One row per (image, addend) pair; losses are the per-pair losses."""
        digit_pred, sum_pred = digit_logits.argmax(-1), sum_logits.argmax(-1)
        self.digit_confusion.update(digit_pred, digits)
        self.sum_confusion.update(sum_pred, sums)
        self.joint_correct.update(((digit_pred == digits) & (sum_pred == sums)).sum())
        self.consistent.update((sum_pred == digit_pred + addends).sum())
        self.loss_sum.update(losses)

    def compute(self) -> dict:
        """Exact counts and the fractions made from them, per-sum accuracy as a list, confusion matrices as
        (C, C) int tensors."""
        digit_confusion = self.digit_confusion.compute().long().cpu()
        sum_confusion = self.sum_confusion.compute().long().cpu()
        pairs = int(digit_confusion.sum())
        counts = {
            "digit_correct": int(digit_confusion.trace()),
            "sum_correct": int(sum_confusion.trace()),
            "joint_correct": int(self.joint_correct.compute()),
            "consistent": int(self.consistent.compute()),
        }
        per_sum_pairs = sum_confusion.sum(1).tolist()
        return {
            "pairs": pairs,
            **counts,
            "digit_acc": counts["digit_correct"] / pairs,
            "sum_acc": counts["sum_correct"] / pairs,
            "joint_acc": counts["joint_correct"] / pairs,
            "consistency": counts["consistent"] / pairs,
            "loss": self.loss_sum.compute().item() / pairs,
            # Sums that no pair has (possible only on tiny data) get None rather than a made-up 0 or 1.
            "per_sum_acc": [int(sum_confusion[s, s]) / n if n else None for s, n in enumerate(per_sum_pairs)],
            "digit_confusion": digit_confusion,
            "sum_confusion": sum_confusion,
        }


def scalars(results: dict) -> dict:
    """The scalar metrics of AdderMetrics.compute(), for logs and trackers."""
    return {name: results[name] for name in SCALARS}


def report(results: dict) -> dict:
    """What a JSON report holds: the exact counts, the fractions made from them, the mean loss, per-sum accuracy."""
    return {name: results[name] for name in ("pairs", *COUNTS, *SCALARS, "per_sum_acc")}
