"""Several seeds of one training command, each timed from launch to exit: the table a recipe is chosen by.

    python benchmarks/seeds.py --seeds 42 1 2 --out runs/default --data_dir data
    python benchmarks/seeds.py --seeds 1 2 3 4 5 --out runs/long --data_dir data -- --epochs 60 --rotate 15
    python benchmarks/seeds.py --seeds 1 2 3 4 5 --jobs 5 --out runs/long --data_dir data -- --epochs 60

Each seed runs README's quick start, `accelerate launch --config_file accelerate_config.yaml train.py`, in
its own process, with --seed S --output_dir OUT/seed_S --report_to none and the train.py flags after `--`.
OUT/seeds.json then holds, per seed, the best epoch and its validation joint accuracy (the number that
chose the model), that model's test accuracies, the wall seconds from launch to exit, the steady epoch's
training seconds, the time to accuracy (seconds from launch until validation joint accuracy first reached 99.0 % and
99.5 %; None if it never did) and the seconds outside the epochs: before the first (imports, device, data,
model) and after the last validation (the test report, the figures, the exit). Over the seeds: the mean and
sample standard deviation of the accuracies and the wall time, and of a time to accuracy if every seed
reached it. Choose a recipe by its validation mean; its test mean is the confirmation (docs/experiments.md).
A seed whose run fails is tabled as failed and the others still run; the exit status is then 1.

--jobs N runs N seeds at once, each printing to OUT/seed_S.log instead of the console. It is meant for a GPU,
which one run of this small network leaves idle most of the time: the runs share the card, so each run's
accuracies are its own (the same as alone) but its wall time is not a run's time alone; seeds.json records
"jobs" beside the times. On a CPU each run takes every core, so N at once are slower than N in a row.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT)]
from run_tables import ACCURACIES, MILESTONES, run_facts, seconds_to_column, spread  # noqa: E402


TIMES = [*map(seconds_to_column, MILESTONES), "seconds_before_first_epoch", "seconds_after_last_validation"]


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def print_table(rows: list[dict], over: dict, jobs: int) -> None:
    """The seeds as a Markdown table, then their mean and spread."""
    print("\n| seed | best epoch | val joint | test digit | test sum | test joint | consistency | wall s | "
          + " | ".join(f"s to val joint {milestone:.1%}" for milestone in MILESTONES)
          + " | s before the first epoch | s after the last validation |")
    print("|---" * (8 + len(TIMES)) + "|")
    for row in rows:
        accuracies = [row["val_joint_acc"]] + [row[f"test_{name}"] for name in ACCURACIES]
        times = ["-" if row[column] is None else f"{row[column]:.1f}" for column in TIMES]
        print(f"| {row['seed']} | {row['best_epoch']} | {' | '.join(map(percent, accuracies))} | "
              f"{row['wall_s']:.1f} | {' | '.join(times)} |")
    if not over:
        return

    def mean_std(column: str) -> str:
        std = over[column]["std"]
        return f"{over[column]['mean']:.2%}" + ("" if std is None else f" ± {std:.2%}")

    print(f"\nover seeds {over['seeds']}: val joint {mean_std('val_joint_acc')}, "
          f"test joint {mean_std('test_joint_acc')}, wall {over['wall_s']['mean']:.1f} s"
          + ("" if jobs == 1 else f" ({jobs} runs at once)"))
    for milestone in MILESTONES:
        reached = over[seconds_to_column(milestone)]
        print(f"  val joint {milestone:.1%} reached by {reached['reached']} of {len(over['seeds'])} seeds"
              + ("" if reached["mean"] is None else f", after {reached['mean']:.1f} s on average"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)  # --seed is train.py's, not short for --seeds
    p.add_argument("--seeds", type=int, nargs="+", required=True)
    p.add_argument("--out", type=Path, required=True, help="a new folder: one run folder per seed, and seeds.json")
    p.add_argument("--data_dir", default="data", help="folder holding MNIST/raw/")
    p.add_argument("--config_file", default=str(ROOT / "accelerate_config.yaml"), help="accelerate's config")
    p.add_argument("--jobs", type=int, default=1, help="seeds run at once (on one GPU: they share it)")
    args, train_flags = p.parse_known_args()
    train_flags = [flag for flag in train_flags if flag != "--"]
    taken = sorted({flag.split("=")[0] for flag in train_flags} & {"--seed", "--output_dir", "--report_to"})
    if taken:
        p.error(f"{', '.join(taken)}: set by seeds.py for each run (--seeds, --out)")
    if len(set(args.seeds)) < len(args.seeds):
        p.error("--seeds: each seed once (a seed's run goes into OUT/seed_S)")
    if args.jobs < 1:
        p.error("--jobs: at least 1")
    if args.out.exists() and any(args.out.iterdir()):
        p.error(f"{args.out} is not empty: the runs go into a new folder")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.jobs > 1:  # torchvision extracts the archives in place: once, here, rather than by N runs at once
        from adder.data import DataError, load_mnist  # torch's imports, only here

        try:
            for train in (True, False):
                load_mnist(args.data_dir, train)
        except DataError as err:
            p.error(str(err))

    def launch(seed: int | str) -> list[str]:
        return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", args.config_file,
                str(ROOT / "train.py"), "--data_dir", args.data_dir, "--output_dir", str(args.out / f"seed_{seed}"),
                "--report_to", "none", "--seed", str(seed), *train_flags]

    def train(seed: int) -> dict:
        log_file = None if args.jobs == 1 else args.out / f"seed_{seed}.log"
        with open(log_file, "w") if log_file else contextlib.nullcontext() as output:  # None: the console
            launched_at, start = time.time(), time.perf_counter()
            status = subprocess.run(launch(seed), stdout=output,
                                    stderr=subprocess.STDOUT if output else None).returncode
        wall_s = time.perf_counter() - start
        return {"seed": seed, "outcome": "ok" if status == 0 else f"failed (exit {status})",
                "wall_s": round(wall_s, 3)} | run_facts(args.out / f"seed_{seed}", launched_at,
                                                        exited_at=launched_at + wall_s)

    rows, over = [], {}
    pool = ThreadPoolExecutor(args.jobs)
    try:
        for finished in as_completed([pool.submit(train, seed) for seed in args.seeds]):
            row = finished.result()
            print(f"seed {row['seed']}: {row['outcome']}, {row['wall_s']:.1f} s, best epoch {row['best_epoch']}, "
                  f"val joint {percent(row['val_joint_acc'])}, test joint {percent(row['test_joint_acc'])}",
                  flush=True)
            rows = sorted([*rows, row], key=lambda done: args.seeds.index(done["seed"]))
            over = spread([done for done in rows if done["outcome"] == "ok"])
            table = {"command": shlex.join(launch("S")), "train_flags": train_flags, "jobs": args.jobs,
                     "runs": rows, "over_seeds": over}
            (args.out / "seeds.json").write_text(json.dumps(table, indent=2))  # after each seed: a cut run keeps them
    finally:
        pool.shutdown(cancel_futures=True)  # after Ctrl-C or an error, no further seed starts

    print_table(rows, over, args.jobs)
    print(f"table: {args.out / 'seeds.json'}")
    return int(any(row["outcome"] != "ok" for row in rows))


if __name__ == "__main__":
    sys.exit(main())
