"""benchmarks/gpu_check.sh, the GPU check, in its CPU dry mode: every step runs and every output file is made,
within the limits on what the check may write, so that the script is known to work before GPU time is spent.
benchmarks/gpu_search.sh's parts are tried by hand (its --smoke); here, its refusals of bad arguments."""

import json
import re
import subprocess
import tarfile

import pytest

from conftest import ROOT

OUTPUTS = {"gpu.txt", "cuda_tests.txt", "benchmark_gpu.json", "record.tar", "seeds.json", "two_processes.json",
           "benchmark_compile.json", "check.log"}
RECORD = {"best.pt", "logs/console.log", "logs/metrics.jsonl", "logs/test_metrics.json", "logs/curves.png",
          "logs/confusion.png", "logs/test_predictions.png"}
STEPS = ["train_seed_42", "evaluate_seed_42", "train_seed_1", "evaluate_seed_1", "train_eager_seed_42",
         "evaluate_eager_seed_42", "benchmark", "cuda_tests", "two_processes", "profile", "benchmark_compile"]


def gpu_check(data, out, *flags, timeout=600):
    return subprocess.run(["bash", "benchmarks/gpu_check.sh", str(data), str(out), *flags], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def assert_within_limits(out):
    """At most 8 files, none over 16 MB, none more than two folders below OUT_DIR."""
    files = [path for path in out.rglob("*") if path.is_file()]
    assert len(files) <= 8
    assert all(path.stat().st_size <= 16 * 2**20 for path in files)
    assert all(len(path.relative_to(out).parts) <= 3 for path in out.rglob("*"))


@pytest.fixture(scope="module")
def smoke(tiny_mnist, tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "out"
    result = gpu_check(tiny_mnist, out, "--smoke", timeout=2000)  # --smoke's budget: 4 x 480 s
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def test_the_dry_run_writes_every_output_within_the_limits(smoke):
    assert {path.name for path in smoke.iterdir()} == OUTPUTS
    assert_within_limits(smoke)
    with tarfile.open(smoke / "record.tar") as record:
        assert RECORD <= {member.name for member in record.getmembers() if member.isfile()}
    # tests/test_cuda.py ran, and every test in it needs CUDA: all skipped, none passed or failed.
    assert re.search(r"^\d+ skipped in ", (smoke / "cuda_tests.txt").read_text(), re.MULTILINE)
    benchmark = json.loads((smoke / "benchmark_gpu.json").read_text())
    assert len(benchmark["rows"]) == 3 and benchmark["device"].startswith("CPU")
    compiled = json.loads((smoke / "benchmark_compile.json").read_text())
    assert [row["pipeline"] for row in compiled["rows"]] == [
        "project (train.py), bf16 autocast, eager step", "project (train.py), bf16, CUDA-graph step",
        "project (train.py), bf16, torch.compile", "project (train.py), bf16, torch.compile reduce-overhead"]
    assert all(row["steady_s"] > 0 for row in compiled["rows"]) and len(compiled["ratios"]) == 3
    log = (smoke / "check.log").read_text()
    assert "training step:" not in log  # which step runs is a line on a GPU only: the CPU's is always eager
    assert "profile: CPU" in log and "per step: wall" in log  # the profile's table is only in the log
    for mode in ("default", "reduce-overhead"):  # the compiled rows did go through torch.compile
        assert f"torch.compile: backend eager, mode {mode}" in log
    for step in STEPS:  # each step is stamped with the time and says how it ended
        assert re.search(rf"^\[\d\d:\d\d:\d\d \+\d+s\] {step}: ok, [\d.]+ s$", log, re.MULTILINE), step


def test_every_seed_is_tabled_and_reproduced_by_evaluate(smoke):
    table = json.loads((smoke / "seeds.json").read_text())
    assert [run["seed"] for run in table["runs"]] == [42, 1] and table["record_seed"] == 42
    for run in table["runs"]:
        assert run["outcome"] == "ok" and run["evaluate_outcome"] == "ok"
        assert run["evaluate_counts"] == run["test_counts"] and run["evaluate_counts"]["pairs"] == 510
        assert run["evaluate_reproduced"] is True
        assert run["best_epoch"] in (1, 2) and run["epochs"] == 2 and run["gpu"] is None
        assert run["wall_s"] > 0 and run["steady_epoch_s"] > 0
        assert all(0 <= run[f"test_{name}"] <= 1 for name in ("digit_acc", "sum_acc", "joint_acc", "consistency"))
    assert table["over_seeds"]["seeds"] == [42, 1] and table["over_seeds"]["test_joint_acc"]["std"] is not None
    # The time-to-accuracy clock: the record's epochs end after its launch and before its exit.
    record = table["runs"][0]
    with tarfile.open(smoke / "record.tar") as tar:
        epochs = [json.loads(line) for line in tar.extractfile("logs/metrics.jsonl").read().splitlines()]
    assert all(0 < epoch["validated_at"] - record["launched_at"] < record["wall_s"] for epoch in epochs)
    outside = record["seconds_before_first_epoch"] + record["seconds_after_last_validation"]
    assert 0 < outside < record["wall_s"] - sum(epoch["train_seconds"] for epoch in epochs)
    assert record["seconds_to_val_joint_99_0"] is None  # the tiny task never gets there
    eager = table["eager_step_run"]  # on the CPU the default step is eager too: the same run as the record's
    assert eager["outcome"] == "ok" and eager["evaluate_counts"] == eager["test_counts"]
    assert eager["test_counts"] == record["test_counts"]


def test_two_processes_give_the_counts_of_one(smoke):
    check = json.loads((smoke / "two_processes.json").read_text())
    assert check["outcome"] == "ok" and check["two_processes"]["pairs"] == 510
    assert check["two_processes"] == check["one_process"] and check["identical"] is True


def test_steps_the_budget_has_no_room_for_are_skipped_with_a_note(tiny_mnist, tmp_path):
    result = gpu_check(tiny_mnist, tmp_path / "out", "--smoke", "--budget", "25")
    assert result.returncode == 0, result.stdout + result.stderr
    assert {path.name for path in (tmp_path / "out").iterdir()} == OUTPUTS
    assert_within_limits(tmp_path / "out")
    table = json.loads((tmp_path / "out" / "seeds.json").read_text())
    assert all(run["outcome"].startswith("skipped: ") and run["test_joint_acc"] is None for run in table["runs"])
    assert json.loads((tmp_path / "out" / "two_processes.json").read_text())["identical"] is None


@pytest.mark.parametrize("script, arguments, message", [
    ("gpu_check.sh", ["{data}/nowhere", "{out}"], "MNIST/raw not found"),
    ("gpu_check.sh", ["{data}", "{full}"], "is not empty"),
    ("gpu_check.sh", ["{data}", "{out}", "--budget", "soon"], "--budget takes a number of seconds"),
    ("gpu_search.sh", ["sweep", "{data}", "{out}"], "the part is speed, levers, record or cuda_tests"),
    ("gpu_search.sh", ["record", "{data}/nowhere", "{out}"], "MNIST/raw not found"),
    ("gpu_search.sh", ["levers", "{data}", "{out}", "--budget", "soon"], "--budget takes a number of seconds"),
    ("gpu_search.sh", ["levers", "{data}", "{out}", "--recipes", "e40,e1000"],
     "no recipe e1000; the recipes are: e60_aug e60_ema e40"),
    ("gpu_search.sh", ["levers", "{data}", "{out}", "--recipes"], "--recipes takes names separated by commas"),
    ("gpu_search.sh", ["record", "{data}", "{out}", "--recipes", "e40"],
     "--recipes chooses among the levers part's recipes"),
])
def test_bad_arguments_get_one_error_line(tiny_mnist, tmp_path, script, arguments, message):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "old.txt").write_text("an earlier check")
    paths = {"data": tiny_mnist, "out": tmp_path / "out", "full": tmp_path / "full"}
    result = subprocess.run(["bash", f"benchmarks/{script}", *(a.format(**paths) for a in arguments)], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ") and message in result.stderr
