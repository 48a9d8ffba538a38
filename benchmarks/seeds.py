"""Several seeds of one training command, each timed from launch to exit: the table a recipe is chosen by.

    python benchmarks/seeds.py --seeds 42 1 2 --out runs/default --data_dir data
    python benchmarks/seeds.py --seeds 1 2 3 4 5 --out runs/long --data_dir data -- --epochs 60 --rotate 15
    python benchmarks/seeds.py --seeds 1 2 3 4 5 --jobs 5 --out runs/long --data_dir data -- --epochs 60

Each seed runs README's quick start, `accelerate launch --config_file accelerate_config.yaml train.py`, in
its own process, with --seed S --output_dir OUT/seed_S --report_to none and the train.py flags after `--`.
OUT/seeds.json then holds, per seed, the best epoch and its validation joint accuracy (the number that
chose the model), that model's test accuracies, the wall seconds from launch to exit, the steady epoch
seconds, the time to accuracy (seconds from launch until validation joint accuracy first reached 99.0 % and
99.5 %; None if it never did) and the seconds outside the epochs: before the first (imports, device, data,
model) and after the last validation (the test report, the figures, the exit). Over the seeds: the mean and
sample standard deviation of the accuracies and the wall time, and of a time to accuracy if every seed
reached it. Choose a recipe by its validation mean; its test mean is the confirmation (docs/experiments.md).
A seed whose run fails is tabled as failed and the others still run; the exit status is then 1.

--jobs N runs N seeds at once, each printing to OUT/seed_S.log instead of the console. It is meant for a GPU,
which one run of this small network leaves idle most of the time: the runs share the card, so each run's
accuracies are its own (the same as alone) but its wall time is not a run's time alone; seeds.json records
"jobs" beside the times. On a CPU the runs share the cores, and nothing is gained.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT)]
from run_tables import MILESTONES, run_facts, spread, to_accuracy_column  # noqa: E402


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


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
    command = (f"accelerate launch --config_file {args.config_file} train.py --data_dir {args.data_dir} "
               f"--output_dir {args.out}/seed_S --report_to none --seed S {' '.join(train_flags)}").strip()

    def train(seed: int) -> dict:
        run = args.out / f"seed_{seed}"
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", args.config_file,
                  str(ROOT / "train.py"), "--data_dir", args.data_dir, "--output_dir", str(run),
                  "--report_to", "none", "--seed", str(seed), *train_flags]
        log = contextlib.nullcontext() if args.jobs == 1 else open(args.out / f"seed_{seed}.log", "w")
        with log as output:  # None: the console
            launched_at, start = time.time(), time.perf_counter()
            status = subprocess.run(launch, stdout=output, stderr=output and subprocess.STDOUT).returncode
        wall_s = time.perf_counter() - start
        return {"seed": seed, "outcome": "ok" if status == 0 else f"failed (exit {status})",
                "wall_s": round(wall_s, 3)} | run_facts(run, launched_at, exited_at=launched_at + wall_s)

    rows = []
    with ThreadPoolExecutor(args.jobs) as pool:
        for finished in as_completed([pool.submit(train, seed) for seed in args.seeds]):
            row = finished.result()
            rows.append(row)
            rows.sort(key=lambda row: args.seeds.index(row["seed"]))
            print(f"seed {row['seed']}: {row['outcome']}, {row['wall_s']:.1f} s, best epoch {row['best_epoch']}, "
                  f"val joint {percent(row['val_joint_acc'])}, test joint {percent(row['test_joint_acc'])}",
                  flush=True)
            table = {"command": command, "train_flags": train_flags, "jobs": args.jobs, "runs": rows,
                     "over_seeds": spread([row for row in rows if row["outcome"] == "ok"])}
            (args.out / "seeds.json").write_text(json.dumps(table, indent=2))  # after each seed: a cut run keeps them

    milestones = [to_accuracy_column(milestone) for milestone in MILESTONES]
    columns = milestones + ["seconds_before_training", "seconds_after_training"]
    print("\n| seed | best epoch | val joint | test digit | test sum | test joint | consistency | wall s | "
          + " | ".join(f"s to val joint {milestone:.1%}" for milestone in MILESTONES) + " | s before epochs | "
          "s after epochs |")
    print("|---" * (8 + len(columns)) + "|")
    for row in rows:
        cells = [row["val_joint_acc"]] + [row[f"test_{name}"] for name in ("digit_acc", "sum_acc", "joint_acc",
                                                                           "consistency")]
        shown = " | ".join(percent(value) for value in cells)
        times = " | ".join("-" if row[column] is None else f"{row[column]:.1f}" for column in columns)
        print(f"| {row['seed']} | {row['best_epoch']} | {shown} | {row['wall_s']:.1f} | {times} |")
    over = table["over_seeds"]
    if over:
        def mean_std(column: str) -> str:
            std = over[column]["std"]
            return f"{over[column]['mean']:.2%}" + ("" if std is None else f" ± {std:.2%}")

        print(f"\nover seeds {over['seeds']}: val joint {mean_std('val_joint_acc')}, "
              f"test joint {mean_std('test_joint_acc')}, wall {over['wall_s']['mean']:.1f} s"
              + ("" if args.jobs == 1 else f" ({args.jobs} runs at once)"))
        for milestone, column in zip(MILESTONES, milestones):
            mean = over[column]["mean"]
            print(f"  val joint {milestone:.1%} reached by {over[column]['reached']} of {len(over['seeds'])} seeds"
                  + ("" if mean is None else f", after {mean:.1f} s on average"))
    print(f"table: {args.out / 'seeds.json'}")
    return int(any(row["outcome"] != "ok" for row in rows))


if __name__ == "__main__":
    sys.exit(main())
