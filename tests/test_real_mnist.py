"""The real MNIST: the shipped model's report, and a short training (skipped where the data is absent: see
conftest.py's real_mnist)."""

import json

import pytest

from conftest import ROOT, run_cli

SHIPPED = ROOT / "training_logs" / "best.pt"


def evaluate_shipped(real_mnist, processes: int) -> dict:
    args = ["evaluate.py", "--ckpt", str(SHIPPED), "--data_dir", str(real_mnist), "--cpu", "--json"]
    return json.loads(run_cli(args, processes=processes).stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def shipped_report(real_mnist) -> dict:
    """training_logs/best.pt scored on the real test set by one process."""
    return evaluate_shipped(real_mnist, processes=1)


def test_real_test_set_evaluates_identically_with_one_and_two_processes(real_mnist, shipped_report):
    # A trained model, so that every count depends on each image meeting its own label and addend: an image
    # scored twice, skipped or paired with another's label in either process's share changes them.
    two = evaluate_shipped(real_mnist, processes=2)
    assert shipped_report["pairs"] == two["pairs"] == 100_000
    for name in ("digit_correct", "sum_correct", "joint_correct", "consistent", "per_sum_acc"):
        assert shipped_report[name] == two[name], name


def test_one_epoch_on_real_mnist_reaches_a_sane_accuracy(real_mnist, tmp_path):
    # The default model and recipe for one epoch, in fp32 wherever it runs (measured 2026-11-28 on 2 Intel Xeon
    # cores at commit 7009eaa: 98.60 % digit, 98.47 % joint, 99.78 % consistency; 44 s of training). The bar: a linear classifier
    # gets about 92 % digits and a pipeline that pairs images with the wrong labels or sums gets far less, so
    # >= 98 % digits needs a working CNN and input pipeline, and >= 97.5 % joint with >= 99.5 % consistency
    # needs a sum head that has learnt the addition.
    result = run_cli(["train.py", "--cpu", "--data_dir", str(real_mnist), "--output_dir", str(tmp_path),
                      "--epochs", "1", "--mixed_precision", "no", "--report_to", "none"], env={"OMP_NUM_THREADS": "2"},
                     timeout=900)
    report = json.loads((tmp_path / "logs" / "test_metrics.json").read_text())
    assert report["pairs"] == 100_000, result.stdout
    assert report["digit_acc"] >= 0.98, report
    assert report["joint_acc"] >= 0.975, report
    assert report["consistency"] >= 0.995, report


def test_the_shipped_model_reproduces_its_report(shipped_report):
    # training_logs/ ships the record run: its best.pt, scored again, must give the report the run wrote. The run
    # was trained and scored on a GPU, whose fp32 convolutions round differently (TF32 by default): scored on
    # this CPU, a pair whose two best answers are within rounding of each other may flip (measured on 2 Intel Xeon
    # cores, 2026-11-28: joint 99,520 against the run's 99,519, consistent 99,994 against 99,992). On the GPU, evaluate.py
    # reproduced every count of the weights of `git show d5e034f:training_logs/test_metrics.json`.
    evaluated = shipped_report
    shipped = json.loads((ROOT / "training_logs" / "test_metrics.json").read_text())
    for name in ("epoch", "parameters", "pairs"):
        assert evaluated[name] == shipped[name], name
    for name in ("digit_correct", "sum_correct", "joint_correct", "consistent"):
        assert abs(evaluated[name] - shipped[name]) <= 3, (name, evaluated[name], shipped[name])
    assert evaluated["pairs"] == 100_000
