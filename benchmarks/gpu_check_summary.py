"""The tables of benchmarks/gpu_check.sh, made from what its steps left in its work folder.

    python3 benchmarks/gpu_check_summary.py WORK_DIR OUT_DIR SEED [SEED...]

WORK_DIR holds steps/NAME.json (each step's outcome, seconds, and launch in Unix time), steps/NAME.txt (what
it printed) and runs/RUN/ (each training run). Writes to OUT_DIR:
    seeds.json          per seed (the first is the record): the test report's accuracies, the best epoch and its
                        validation joint accuracy, the wall seconds from launch to exit, the steady epoch's
                        training seconds, the seconds from launch to 99.0 % and 99.5 % validation joint
                        accuracy, the seconds before the first epoch and after the last validation, the card,
                        and whether evaluate.py reproduced the test report's counts exactly; mean and std over
                        the seeds; and the same for the record's seed with the eager step (eager_step_run)
    two_processes.json  evaluate.py over two processes sharing the GPU against one process: the counts of each,
                        and whether they are identical
and adds each benchmark step's outcome to benchmark_gpu.json and benchmark_compile.json (written by the
benchmark; holding only the outcome where it wrote none). Prints each step's outcome.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from run_tables import counts, run_facts, spread


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


def seed_row(work: Path, seed: int, run: str | None = None) -> dict:
    """The run runs/RUN (default seed_S), trained by step train_RUN and checked by step evaluate_RUN."""
    run = run or f"seed_{seed}"
    train, evaluation = step(work, f"train_{run}"), step(work, f"evaluate_{run}")
    launched_at = train.get("launched_at")
    exited_at = launched_at + train["seconds"] if launched_at is not None else None
    facts = run_facts(work / "runs" / run, launched_at, exited_at)
    evaluated = printed_json(work, f"evaluate_{run}")
    return {
        "seed": seed,
        "outcome": train["outcome"],
        "wall_s": train["seconds"],
        **facts,
        "evaluate_outcome": evaluation["outcome"],
        "evaluate_counts": counts(evaluated),
        "evaluate_reproduced": (counts(evaluated) == facts["test_counts"]
                                if facts["test_counts"] and evaluated else None),
    }


def main() -> int:
    if len(sys.argv) < 4:
        sys.exit("usage: gpu_check_summary.py WORK_DIR OUT_DIR SEED [SEED...]")
    work, out, seeds = Path(sys.argv[1]), Path(sys.argv[2]), [int(seed) for seed in sys.argv[3:]]

    rows = [seed_row(work, seed) for seed in seeds]
    eager_row = seed_row(work, seeds[0], f"eager_seed_{seeds[0]}")
    (out / "seeds.json").write_text(json.dumps({"record_seed": seeds[0], "runs": rows, "over_seeds": spread(rows),
                                                "eager_step_run": eager_row}, indent=2))

    one, two = counts(printed_json(work, f"evaluate_seed_{seeds[0]}")), counts(printed_json(work, "two_processes"))
    (out / "two_processes.json").write_text(json.dumps({
        "outcome": step(work, "two_processes")["outcome"],
        "checkpoint": f"seed {seeds[0]}'s best.pt",
        "one_process": one,
        "two_processes": two,
        "identical": one == two if one and two else None,
    }, indent=2))

    # The benchmark rewrites its table after each pipeline: the step's outcome tells a whole table from a cut one.
    for name, table in (("benchmark", "benchmark_gpu.json"), ("benchmark_compile", "benchmark_compile.json")):
        measured = json.loads((out / table).read_text()) if (out / table).exists() else {}
        (out / table).write_text(json.dumps({"outcome": step(work, name)["outcome"]} | measured, indent=2))

    print("steps:")
    for path in sorted((work / "steps").glob("*.json"), key=lambda p: p.stat().st_mtime):
        result = json.loads(path.read_text())
        print(f"  {path.stem:<22} {result['outcome']} ({result['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
