"""How far averaging several trained networks gets: the test joint accuracy of every ensemble of the given
best.pt files, by size. A research measure (what one network of the same size might still reach by
distillation), not a way to run the adder.

    python benchmarks/ensemble.py --data_dir data runs/default/seed_*/best.pt [--out ensembles.json]

Each model answers the 10,000 test images with each of the ten addends once (fp32, on the CPU, as `evaluate.py
--cpu` does); an ensemble averages its members' probabilities of each head, and a pair is right when both of the
ensemble's answers are (the joint accuracy). With one model this is its own evaluate.py number.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from adder.checkpoint import CheckpointError, load_model  # noqa: E402
from adder.data import DataError, DeviceMNIST, eval_batches, load_mnist  # noqa: E402
from adder.evaluation import EVAL_BATCH  # noqa: E402
from adder.model import NUM_ADDENDS  # noqa: E402


@torch.no_grad()
def probabilities(model, test_set: DeviceMNIST) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's digit probabilities (N, 10) and sum probabilities (N, 10 addends, 19)."""
    digits, sums = [], []
    for index in eval_batches(len(test_set), EVAL_BATCH, rank=0, world_size=1):
        images, addends, _ = test_set.eval_batch(index)
        digit_logits, sum_logits = model(images, addends)
        digits.append(digit_logits.float().softmax(-1))
        sums.append(sum_logits.float().softmax(-1))
    return torch.cat(digits), torch.cat(sums)


def joint_accuracy(members: list[tuple[torch.Tensor, torch.Tensor]], labels: torch.Tensor) -> float:
    digit = torch.stack([digit for digit, _ in members]).mean(0).argmax(-1)  # (N,)
    total = torch.stack([total for _, total in members]).mean(0).argmax(-1)  # (N, 10)
    right_sum = total == labels[:, None] + torch.arange(NUM_ADDENDS)
    return ((digit == labels)[:, None] & right_sum).float().mean().item()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="best.pt files of the same kind of run (e.g. its seeds)")
    p.add_argument("--data_dir", default="data", help="folder holding MNIST/raw/")
    p.add_argument("--out", type=Path, help="also write the accuracies as JSON here")
    args = p.parse_args(argv)
    try:
        test_set = DeviceMNIST(*load_mnist(args.data_dir, train=False))
        outputs = [probabilities(load_model(path)[0], test_set) for path in args.checkpoints]
    except (CheckpointError, DataError) as err:
        sys.exit(f"error: {err}")
    by_size = {}
    for size in range(1, len(outputs) + 1):
        accuracies = [joint_accuracy([outputs[i] for i in members], test_set.labels)
                      for members in itertools.combinations(range(len(outputs)), size)]
        by_size[size] = accuracies
        spread = f" ± {statistics.stdev(accuracies):.3%}" if len(accuracies) > 1 else ""
        print(f"{size} of {len(outputs)}: test joint {statistics.mean(accuracies):.3%}{spread} over "
              f"{len(accuracies)} ensemble(s), {min(accuracies):.3%} to {max(accuracies):.3%}")
    if args.out:
        args.out.write_text(json.dumps({"checkpoints": args.checkpoints, "test_joint_acc_by_size": by_size},
                                       indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
