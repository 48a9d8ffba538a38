"""Exhaustive evaluation: every image of a split paired with each of the ten addends."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from adder.data import DeviceMNIST, eval_batches
from adder.loss import AdderLoss
from adder.metrics import AdderMetrics
from adder.model import NUM_ADDENDS

# The loss evaluation reports: plain cross-entropy of both heads, whatever the training objective was
# (label smoothing, sum weight), so that runs trained differently are scored alike and evaluate.py needs
# nothing from a checkpoint but the model.
EVAL_LOSS = AdderLoss()
EVAL_BATCH = 1000  # images per forward pass when scoring (x10 pairs in the exhaustive evaluation)


def reproducible_convolutions():
    """A context in which cuDNN makes its deterministic choice of convolution algorithms, not the one it times
    per shape (cudnn.benchmark, train.py's default on a GPU), whose winners may differ between processes: so
    train.py's test report and evaluate.py's of the same best.pt give the same counts on the same GPU. The
    choice is cached apart from the timed ones. Convolutions in fp32 proper, not TF32 (cuDNN's default on
    Ampere and later, with a 10-bit mantissa): the reports' "fp32" means it. Nothing changes on a CPU."""
    return torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True, allow_tf32=False)


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """`model` in eval mode (batch norm on its running statistics) inside, in the mode it was found in after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@torch.no_grad()
def evaluate(model: nn.Module, data: DeviceMNIST, *, batch_size: int = EVAL_BATCH, rank: int = 0,
             world_size: int = 1) -> dict:
    """AdderMetrics over all len(data) * 10 pairs, exact for any number of processes.

    Each process scores its own disjoint shard of images; torchmetrics sums the counts across processes
    in compute(). (With a DataLoader prepared by accelerate, gather_for_metrics would drop the padding it
    adds; here nothing is padded, so there is nothing to gather or drop.) `model` must be the unwrapped
    module: the shards may differ by one batch, and a DDP forward would then wait for a peer that has none
    left. It runs in the model's own precision: the model train.py validates computes in the run's mixed
    precision (accelerate wraps its forward in autocast, and unwrap_model keeps that wrapper), a model rebuilt
    from best.pt in fp32. The model is left in the mode it was found in.
    """
    metrics = AdderMetrics().to(data.device)
    with eval_mode(model):
        for index in eval_batches(len(data), batch_size, rank, world_size):
            images, addends, digits = data.eval_batch(index.to(data.device))
            images = images.contiguous(memory_format=torch.channels_last)
            digit_logits, sum_logits = model(images, addends)  # (B, 10), (B, 10 addends, 19)
            # One row per pair: the digit answer is shared by an image's ten pairs.
            pair_digit_logits = digit_logits.float().repeat_interleave(NUM_ADDENDS, 0)
            pair_digits = digits.repeat_interleave(NUM_ADDENDS)
            pair_addends = addends.reshape(-1)
            pair_sums = pair_digits + pair_addends
            pair_sum_logits = sum_logits.float().reshape(-1, sum_logits.shape[-1])
            losses = EVAL_LOSS(pair_digit_logits, pair_sum_logits, pair_digits, pair_sums, reduction="none")
            metrics.update(pair_digit_logits, pair_sum_logits, pair_addends, pair_digits, pair_sums, losses)
    return metrics.compute()


@torch.no_grad()
def one_addend_predictions(model: nn.Module, test_set: DeviceMNIST, seed: int = 0) -> dict[str, torch.Tensor]:
    """Each test image with one random addend, scored by `model` (on the images' device): CPU tensors by
    column name. The probabilities are the model's softmax probabilities of the answers it gives. The
    model is left in the mode it was found in."""
    addends = torch.randint(0, NUM_ADDENDS, (len(test_set),), generator=torch.Generator().manual_seed(seed))
    digit_probs, sum_probs = [], []
    with eval_mode(model):
        for index in torch.arange(len(test_set)).split(EVAL_BATCH):
            images, _, _ = test_set.eval_batch(index.to(test_set.device))
            digit_logits, sum_logits = model(images, addends[index].to(test_set.device))
            digit_probs.append(digit_logits.float().softmax(-1).cpu())
            sum_probs.append(sum_logits.float().softmax(-1).cpu())
    digit_probability, predicted_digit = torch.cat(digit_probs).max(-1)
    sum_probability, predicted_sum = torch.cat(sum_probs).max(-1)
    digits = test_set.labels.cpu()
    return {
        "addend": addends,
        "digit": digits,
        "predicted digit": predicted_digit,
        "digit probability": digit_probability,
        "sum": digits + addends,
        "predicted sum": predicted_sum,
        "sum probability": sum_probability,
    }
