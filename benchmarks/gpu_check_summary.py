"""The tables of benchmarks/gpu_check.sh, made from what its steps left in its work folder.

    python3 benchmarks/gpu_check_summary.py WORK_DIR OUT_DIR SEED [SEED...]

WORK_DIR holds steps/NAME.json (each step's outcome and seconds), steps/NAME.txt (what it printed) and
runs/seed_S/ (each training run). Writes to OUT_DIR:
    seeds.json          per seed (the first is the record): the test report's accuracies, the best epoch and its
                        validation joint accuracy, the wall seconds from launch to exit, the steady epoch
                        seconds, the card, and whether evaluate.py reproduced the test report's counts
                        exactly; mean and std over the seeds
    two_processes.json  evaluate.py over two processes sharing the GPU against one process: the counts of each
and benchmark_gpu.json and benchmark_compile.json with their step's outcome where the benchmark wrote none.
Prints each step's outcome.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

ACCURACIES = ("digit_acc", "sum_acc", "joint_acc", "consistency")


def step(work: Path, name: str) -> dict:
    """A step's outcome ("ok", "failed (exit N)", "timed out after N s", "skipped: ...") and seconds."""
    path = work / "steps" / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else {"outcome": "not run", "seconds": None}


def printed_json(work: Path, name: str) -> dict | None:
    """The last JSON object a step printed on a line of its own (evaluate.py --json prints one)."""
    path = work / "steps" / f"{name}.txt"
    for line in reversed(path.read_text().splitlines() if path.exists() else []):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue  # a line of a message, not the report
    return None


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


def run_facts(run: Path) -> dict:
    """What a finished train.py run folder says of itself: the best epoch and its validation joint accuracy
    (what chose the model), the test report of that model, the pace of its epochs and the card it ran on."""
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
    }


def seed_row(work: Path, seed: int) -> dict:
    train, evaluation = step(work, f"train_seed_{seed}"), step(work, f"evaluate_seed_{seed}")
    facts = run_facts(work / "runs" / f"seed_{seed}")
    evaluated = printed_json(work, f"evaluate_seed_{seed}")
    return {
        "seed": seed,
        "outcome": train["outcome"],
        "wall_s": train["seconds"],
        **facts,
        "evaluate_outcome": evaluation["outcome"],
        "evaluate_counts": counts(evaluated),
        "evaluate_reproduced": counts(evaluated) == facts["test_counts"] if facts["test_counts"] and evaluated else None,
    }


def spread(rows: list[dict]) -> dict:
    """Mean and sample standard deviation over the seeds that finished: of each test accuracy, of the
    validation joint accuracy that chose each model, and of the wall time."""
    done = [row for row in rows if row["test_joint_acc"] is not None]
    if not done:
        return {}
    summary = {"seeds": [row["seed"] for row in done]}
    for name in [f"test_{name}" for name in ACCURACIES] + ["val_joint_acc", "wall_s"]:
        values = [row[name] for row in done]
        summary[name] = {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else None}
    return summary


def main() -> int:
    if len(sys.argv) < 4:
        sys.exit("usage: gpu_check_summary.py WORK_DIR OUT_DIR SEED [SEED...]")
    work, out, seeds = Path(sys.argv[1]), Path(sys.argv[2]), [int(seed) for seed in sys.argv[3:]]

    rows = [seed_row(work, seed) for seed in seeds]
    (out / "seeds.json").write_text(json.dumps({"record_seed": seeds[0], "runs": rows, "over_seeds": spread(rows)},
                                               indent=2))

    one, two = counts(printed_json(work, f"evaluate_seed_{seeds[0]}")), counts(printed_json(work, "two_processes"))
    (out / "two_processes.json").write_text(json.dumps({
        "outcome": step(work, "two_processes")["outcome"],
        "checkpoint": f"seed {seeds[0]}'s best.pt",
        "one_process": one,
        "two_processes": two,
        "identical": one == two if one and two else None,
    }, indent=2))

    for name, table in (("benchmark", "benchmark_gpu.json"), ("benchmark_compile", "benchmark_compile.json")):
        if not (out / table).exists():
            (out / table).write_text(json.dumps({"outcome": step(work, name)["outcome"]}))

    print("steps:")
    for path in sorted((work / "steps").glob("*.json"), key=lambda p: p.stat().st_mtime):
        result = json.loads(path.read_text())
        print(f"  {path.stem:<22} {result['outcome']} ({result['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
