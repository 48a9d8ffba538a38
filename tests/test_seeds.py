"""benchmarks/seeds.py: several seeds of the quick-start command, each tabled from its own run folder."""

import json
import os
import statistics
import subprocess
import sys

import pytest
import torch

from adder.checkpoint import load_model
from adder.data import DeviceMNIST, load_mnist
from adder.evaluation import evaluate
from conftest import NO_GPU, ROOT, TINY_MODEL

sys.path.insert(0, str(ROOT / "benchmarks"))
from run_tables import ACCURACIES, outside_the_epochs, seconds_to, spread  # noqa: E402


@pytest.fixture(scope="module")
def two_seeds(tiny_mnist, tmp_path_factory):
    out = tmp_path_factory.mktemp("seeds") / "seeds"
    # Two runs at once, as on a GPU: the table keeps the order of --seeds whichever run ends first.
    result = subprocess.run([sys.executable, "benchmarks/seeds.py", "--seeds", "4", "3", "--jobs", "2",
                             "--out", str(out), "--data_dir", str(tiny_mnist), "--", "--epochs", "2",
                             "--val_size", "100", "--batch_size", "100", *TINY_MODEL],
                            cwd=ROOT, capture_output=True, text=True, timeout=300, env=os.environ | NO_GPU)
    assert result.returncode == 0, result.stdout + result.stderr
    return out, result


def test_each_seed_is_tabled_from_its_run_and_summarised(two_seeds):
    out, result = two_seeds
    table = json.loads((out / "seeds.json").read_text())
    assert [row["seed"] for row in table["runs"]] == [4, 3] and table["jobs"] == 2
    for row in table["runs"]:
        run = out / f"seed_{row['seed']}"
        report = json.loads((run / "logs" / "test_metrics.json").read_text())
        epochs = [json.loads(line) for line in (run / "logs" / "metrics.jsonl").read_text().splitlines()]
        assert row["outcome"] == "ok" and row["wall_s"] > 0 and row["epochs"] == 2
        assert row["best_epoch"] == report["epoch"] and row["test_joint_acc"] == report["joint_acc"]
        # The validation number is the one that chose best.pt: the best epoch's, the highest of the run.
        assert row["val_joint_acc"] == max(epoch["val_joint_acc"] for epoch in epochs)
        assert f"--seed {row['seed']}" in (run / "logs" / "console.log").read_text()
        assert "training done" in (out / f"seed_{row['seed']}.log").read_text()  # its console, in a file
        assert row["seconds_to_val_joint_99_0"] is None  # the tiny task never gets there
        # The time-to-accuracy clock: the run's epochs end after its launch and before its exit.
        assert all(0 < epoch["validated_at"] - row["launched_at"] < row["wall_s"] for epoch in epochs)
        # Start-up and the final report, and the epochs between them, add up to no more than the wall time.
        assert row["seconds_before_first_epoch"] > 0 and row["seconds_after_last_validation"] > 0
        assert row["seconds_before_first_epoch"] + sum(epoch["train_seconds"] for epoch in epochs) \
            + row["seconds_after_last_validation"] < row["wall_s"]
    over = table["over_seeds"]
    joint = [row["test_joint_acc"] for row in table["runs"]]
    assert over["test_joint_acc"] == {"mean": statistics.mean(joint), "std": statistics.stdev(joint)}
    assert "over seeds [4, 3]: val joint" in result.stdout and "(2 runs at once)" in result.stdout
    assert over["seconds_to_val_joint_99_5"] == {"mean": None, "std": None, "reached": 0}


def test_an_ensemble_of_one_scores_as_its_model_and_every_ensemble_is_tabled(two_seeds, tiny_mnist, tmp_path):
    out, _ = two_seeds
    checkpoints = [str(out / f"seed_{seed}" / "best.pt") for seed in (4, 3)]
    result = subprocess.run([sys.executable, "benchmarks/ensemble.py", *checkpoints, "--data_dir", str(tiny_mnist),
                             "--out", str(tmp_path / "ensembles.json")], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    by_size = json.loads((tmp_path / "ensembles.json").read_text())["test_joint_acc_by_size"]
    alone = [json.loads((out / f"seed_{seed}" / "logs" / "test_metrics.json").read_text())["joint_acc"]
             for seed in (4, 3)]
    assert by_size["1"] == pytest.approx(alone, abs=1e-6)  # each model's own test report (510 pairs)
    # The pair, scored by the project's own evaluation of a module that averages the two models' probabilities.
    class MeanProbabilities(torch.nn.Module):
        def __init__(self, paths):
            super().__init__()
            self.members = torch.nn.ModuleList(load_model(path)[0] for path in paths)

        def forward(self, images, addends):
            answers = [member(images, addends) for member in self.members]
            return tuple(torch.stack([head.softmax(-1) for head in heads]).mean(0).log() for heads in zip(*answers))

    test_set = DeviceMNIST(*load_mnist(tiny_mnist, train=False))
    pair = evaluate(MeanProbabilities(checkpoints), test_set)["joint_acc"]
    assert by_size["2"] == pytest.approx([pair], abs=1e-6)


def test_time_to_accuracy_counts_from_the_launch_to_the_first_epoch_at_the_milestone():
    epochs = [{"val_joint_acc": 0.98, "validated_at": 110.0}, {"val_joint_acc": 0.992, "validated_at": 112.5},
              {"val_joint_acc": 0.991, "validated_at": 115.0}, {"val_joint_acc": 0.996, "validated_at": 117.25}]
    assert seconds_to(epochs, 0.99, launched_at=100.0) == 12.5
    assert seconds_to(epochs, 0.995, launched_at=100.0) == 17.25
    assert seconds_to(epochs, 0.999, launched_at=100.0) is None  # never reached
    assert seconds_to(epochs, 0.99, launched_at=None) is None  # launch time unknown
    assert seconds_to(epochs, 0.99, launched_at=113.0) is None  # reached before a resumed run's launch


def test_the_time_outside_the_epochs_is_counted_from_the_launch_and_to_the_exit():
    epochs = [{"started_at": 104.0, "validated_at": 110.0}, {"started_at": 110.5, "validated_at": 117.25}]
    assert outside_the_epochs(epochs, launched_at=100.0, exited_at=120.0) == {
        "seconds_before_first_epoch": 4.0, "seconds_after_last_validation": 2.75}
    unknown = {"seconds_before_first_epoch": None, "seconds_after_last_validation": None}
    assert outside_the_epochs(epochs, launched_at=None, exited_at=120.0) == unknown
    assert outside_the_epochs(epochs, launched_at=105.0, exited_at=120.0) == unknown  # a resumed run
    assert outside_the_epochs([{"validated_at": 110.0}], launched_at=100.0, exited_at=120.0) == unknown  # older rows
    assert outside_the_epochs([], launched_at=100.0, exited_at=120.0) == unknown


def test_a_mean_time_to_accuracy_needs_every_seed_to_get_there():
    def row(seed, seconds):
        return {"seed": seed, "wall_s": 20.0, "val_joint_acc": 0.995, **{f"test_{name}": 0.99 for name in ACCURACIES},
                "seconds_to_val_joint_99_0": seconds, "seconds_to_val_joint_99_5": None}
    over = spread([row(1, 10.0), row(2, 14.0)])
    assert over["seconds_to_val_joint_99_0"] == {"mean": 12.0, "std": statistics.stdev([10.0, 14.0]), "reached": 2}
    over = spread([row(1, 10.0), row(2, None)])  # the slow seed is not left out of a mean: there is none
    assert over["seconds_to_val_joint_99_0"] == {"mean": None, "std": None, "reached": 1}


def test_a_folder_that_holds_runs_is_refused(tmp_path):
    (tmp_path / "seed_1").mkdir()
    result = subprocess.run([sys.executable, "benchmarks/seeds.py", "--seeds", "1", "--out", str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "is not empty" in result.stderr.splitlines()[-1]


def test_a_seed_given_twice_is_refused(tmp_path):
    result = subprocess.run([sys.executable, "benchmarks/seeds.py", "--seeds", "1", "2", "1", "--out", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--seeds: each seed once" in result.stderr.splitlines()[-1]
