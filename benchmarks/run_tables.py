"""What a finished train.py run folder says of itself, and the mean and spread of several runs: the rows of
the seed tables that benchmarks/gpu_check_summary.py and benchmarks/seeds.py write."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

ACCURACIES = ("digit_acc", "sum_acc", "joint_acc", "consistency")
# Validation joint accuracies a run is timed to, from its launch: the time-to-accuracy columns.
MILESTONES = (0.99, 0.995)


def seconds_to_column(milestone: float) -> str:
    return f"seconds_to_val_joint_{milestone * 100:.1f}".replace(".", "_")  # seconds_to_val_joint_99_5


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def counts(report: dict | None) -> dict | None:
    """The whole numbers of a report: the pairs, the correct and consistent counts, the epoch and the
    parameters of the model. evaluate.py must reproduce train.py's exactly."""
    if report is None:
        return None
    return {key: value for key, value in report.items() if isinstance(value, int) and not isinstance(value, bool)}


def device_line(console_log: Path) -> str | None:
    """What train.py said it ran on, e.g. "cuda:0 (NVIDIA H100 80GB HBM3), 1 process(es), mixed precision: bf16"."""
    lines = console_log.read_text().splitlines() if console_log.exists() else []
    return next((line.removeprefix("device: ") for line in lines if line.startswith("device: ")), None)


def seconds_to(epochs: list[dict], milestone: float, launched_at: float | None) -> float | None:
    """Seconds from the launch to the end of the first validation at or above the milestone; None if the run
    never reached it, if the launch time or the epoch's time is unknown, or if the epoch was validated
    before this launch (a resumed run keeps the rows of the epochs it did not redo)."""
    reached = next((row for row in epochs if row["val_joint_acc"] >= milestone), None)
    if launched_at is None or reached is None or reached.get("validated_at", -1) < launched_at:
        return None
    return round(reached["validated_at"] - launched_at, 3)


def outside_the_epochs(epochs: list[dict], launched_at: float | None, exited_at: float | None) -> dict:
    """Seconds from the launch to the first epoch (imports, device, data, model) and from the last validation
    to the exit (the last saved state, the test report, the figures), for a run with all its epochs in this
    launch; None where that is unknown. The rest of the wall time is the epochs and their validation."""
    if launched_at is None or exited_at is None or not epochs or epochs[0].get("started_at", -1) < launched_at:
        return {"seconds_before_first_epoch": None, "seconds_after_last_validation": None}
    return {"seconds_before_first_epoch": round(epochs[0]["started_at"] - launched_at, 3),
            "seconds_after_last_validation": round(exited_at - epochs[-1]["validated_at"], 3)}


def run_facts(run: Path, launched_at: float | None = None, exited_at: float | None = None) -> dict:
    """What a finished train.py run folder says of itself: the best epoch and its validation joint accuracy
    (what chose the model), the test report of that model, the pace of its epochs, the card it ran on and,
    given the Unix times it was launched and exited at, the seconds it took to reach each milestone and the
    seconds it spent before and after its epochs."""
    report = read_json(run / "logs" / "test_metrics.json")
    epochs = [json.loads(line) for line in (run / "logs" / "metrics.jsonl").read_text().splitlines()] \
        if (run / "logs" / "metrics.jsonl").exists() else []
    best = next((row for row in epochs if report and row["epoch"] == report["epoch"]), None)
    device = device_line(run / "logs" / "console.log")
    card = re.match(r"cuda\S* \((.+?)\),", device or "")
    return {
        # The first epoch also pays for start-up (CUDA context, kernel selection): the steady pace is the rest.
        "steady_epoch_s": statistics.mean(row["train_seconds"] for row in epochs[1:]) if len(epochs) > 1 else None,
        "epochs": len(epochs),
        "best_epoch": report["epoch"] if report else None,
        "val_joint_acc": best["val_joint_acc"] if best else None,
        "gpu": card.group(1) if card else None,
        "device": device,
        **{f"test_{name}": report[name] if report else None for name in ACCURACIES},
        "test_counts": counts(report),
        "launched_at": launched_at,
        **{seconds_to_column(milestone): seconds_to(epochs, milestone, launched_at) for milestone in MILESTONES},
        **outside_the_epochs(epochs, launched_at, exited_at),
    }


def mean_std(values: list[float]) -> dict:
    return {"mean": statistics.mean(values) if values else None,
            "std": statistics.stdev(values) if len(values) > 1 else None}


def spread(rows: list[dict]) -> dict:
    """Mean and sample standard deviation over the seeds that finished: of each test accuracy, of the
    validation joint accuracy that chose each model and of the wall time; and of the time to each milestone
    if every seed reached it, with the number that did."""
    done = [row for row in rows if row["test_joint_acc"] is not None]
    if not done:
        return {}
    summary = {"seeds": [row["seed"] for row in done]}
    for column in [f"test_{name}" for name in ACCURACIES] + ["val_joint_acc", "wall_s"]:
        summary[column] = mean_std([row[column] for row in done])
    for column in map(seconds_to_column, MILESTONES):
        # Over every seed or none: a mean over the seeds that got there would leave out the slow ones.
        times = [row[column] for row in done if row[column] is not None]
        summary[column] = (mean_std(times) if len(times) == len(done) else mean_std([])) | {"reached": len(times)}
    return summary
