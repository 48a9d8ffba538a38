import math

import torch

from adder.metrics import AdderMetrics


def one_hot_logits(classes, num_classes):
    return torch.nn.functional.one_hot(torch.tensor(classes), num_classes).float()


def test_joint_and_consistency_differ_from_the_head_accuracies():
    digits = torch.tensor([3, 3, 5, 7])
    addends = torch.tensor([1, 2, 0, 9])
    sums = digits + addends  # 4, 5, 5, 16
    digit_pred = [3, 8, 5, 1]  # right, wrong, right, wrong
    sum_pred = [2, 5, 5, 10]  # wrong, right, right, wrong
    metrics = AdderMetrics()
    metrics.update(one_hot_logits(digit_pred, 10), one_hot_logits(sum_pred, 19), addends, digits, sums,
                   losses=torch.tensor([1.0, 2.0, 3.0, 4.0]))
    out = metrics.compute()
    assert out["digit_acc"] == 0.5 and out["sum_acc"] == 0.5
    assert out["joint_acc"] == 0.25  # only the third pair has both right, not 0.5 * 0.5 by chance
    # consistent: 5+0=5 and 1+9=10 (a wrong but self-consistent answer counts as consistent)
    assert out["consistency"] == 0.5
    assert out["loss"] == 2.5 and out["pairs"] == 4
    assert out["per_sum_acc"][5] == 1.0 and out["per_sum_acc"][4] == 0.0 and out["per_sum_acc"][16] == 0.0
    assert out["digit_confusion"][3, 8] == 1 and out["sum_confusion"].sum() == 4


def test_micro_not_macro_accuracy():
    # 9 right answers in class 0 and 1 wrong in class 1: micro 0.9, macro would be 0.5.
    digits = torch.tensor([0] * 9 + [1])
    metrics = AdderMetrics()
    zeros = torch.zeros(10, dtype=torch.long)
    metrics.update(one_hot_logits([0] * 10, 10), one_hot_logits([0] * 10, 19), zeros, digits, digits,
                   losses=torch.zeros(10))
    assert abs(metrics.compute()["digit_acc"] - 0.9) < 1e-6


def test_a_nan_loss_shows_in_the_mean_instead_of_being_dropped():
    digits = torch.tensor([1, 2])
    metrics = AdderMetrics()
    metrics.update(one_hot_logits([1, 2], 10), one_hot_logits([1, 2], 19), torch.zeros(2, dtype=torch.long), digits,
                   digits, losses=torch.tensor([1.0, float("nan")]))
    out = metrics.compute()
    assert math.isnan(out["loss"]) and out["digit_acc"] == 1.0
