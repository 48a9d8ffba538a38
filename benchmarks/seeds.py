"""Several seeds of one training command, each timed from launch to exit: the table a recipe is chosen by.

    python benchmarks/seeds.py --seeds 42 1 2 --out runs/default --data_dir data
    python benchmarks/seeds.py --seeds 1 2 3 4 5 --out runs/long --data_dir data -- --epochs 60 --rotate 15

Each seed runs README's quick start, `accelerate launch --config_file accelerate_config.yaml train.py`, in
its own process, with --seed S --output_dir OUT/seed_S --report_to none and the train.py flags after `--`.
OUT/seeds.json then holds, per seed, the best epoch and its validation joint accuracy (the number that
chose the model), that model's test accuracies, the wall seconds from launch to exit, the steady epoch
seconds and the time to accuracy: seconds from launch until validation joint accuracy first reached 99.0 %
and 99.5 % (None if it never did). Over the seeds: the mean and sample standard deviation of each (of a
time to accuracy only if every seed reached it). Choose a recipe by its validation mean; its test mean is
the confirmation (docs/experiments.md). A seed whose run fails is tabled as failed and the others still
run; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_tables import MILESTONES, run_facts, spread, to_accuracy_column  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)  # --seed is train.py's, not short for --seeds
    p.add_argument("--seeds", type=int, nargs="+", required=True)
    p.add_argument("--out", type=Path, required=True, help="a new folder: one run folder per seed, and seeds.json")
    p.add_argument("--data_dir", default="data", help="folder holding MNIST/raw/")
    p.add_argument("--config_file", default=str(ROOT / "accelerate_config.yaml"), help="accelerate's config")
    args, train_flags = p.parse_known_args()
    train_flags = [flag for flag in train_flags if flag != "--"]
    taken = sorted({flag.split("=")[0] for flag in train_flags} & {"--seed", "--output_dir", "--report_to"})
    if taken:
        p.error(f"{', '.join(taken)}: set by seeds.py for each run (--seeds, --out)")
    if args.out.exists() and any(args.out.iterdir()):
        p.error(f"{args.out} is not empty: the runs go into a new folder")
    args.out.mkdir(parents=True, exist_ok=True)

    rows = []
    for seed in args.seeds:
        run = args.out / f"seed_{seed}"
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", args.config_file,
                   str(ROOT / "train.py"), "--data_dir", args.data_dir, "--output_dir", str(run),
                   "--report_to", "none", "--seed", str(seed), *train_flags]
        launched_at, start = time.time(), time.perf_counter()
        status = subprocess.run(command).returncode
        row = {"seed": seed, "outcome": "ok" if status == 0 else f"failed (exit {status})",
               "wall_s": round(time.perf_counter() - start, 3)} | run_facts(run, launched_at)
        rows.append(row)
        print(f"seed {seed}: {row['outcome']}, {row['wall_s']:.1f} s, best epoch {row['best_epoch']}, "
              f"val joint {percent(row['val_joint_acc'])}, test joint {percent(row['test_joint_acc'])}", flush=True)
        table = {"command": f"accelerate launch --config_file {args.config_file} train.py --data_dir {args.data_dir} "
                            f"--output_dir {args.out}/seed_S --report_to none --seed S {' '.join(train_flags)}".strip(),
                 "train_flags": train_flags, "runs": rows,
                 "over_seeds": spread([row for row in rows if row["outcome"] == "ok"])}
        (args.out / "seeds.json").write_text(json.dumps(table, indent=2))  # after each seed: a cut run keeps them

    milestones = [to_accuracy_column(milestone) for milestone in MILESTONES]
    print("\n| seed | best epoch | val joint | test digit | test sum | test joint | consistency | wall s | "
          + " | ".join(f"s to val joint {milestone:.1%}" for milestone in MILESTONES) + " |")
    print("|---" * (8 + len(MILESTONES)) + "|")
    for row in rows:
        cells = [row["val_joint_acc"]] + [row[f"test_{name}"] for name in ("digit_acc", "sum_acc", "joint_acc",
                                                                           "consistency")]
        shown = " | ".join(percent(value) for value in cells)
        times = " | ".join("-" if row[column] is None else f"{row[column]:.1f}" for column in milestones)
        print(f"| {row['seed']} | {row['best_epoch']} | {shown} | {row['wall_s']:.1f} | {times} |")
    over = table["over_seeds"]
    if over:
        def mean_std(column: str) -> str:
            std = over[column]["std"]
            return f"{over[column]['mean']:.2%}" + ("" if std is None else f" ± {std:.2%}")

        print(f"\nover seeds {over['seeds']}: val joint {mean_std('val_joint_acc')}, "
              f"test joint {mean_std('test_joint_acc')}, wall {over['wall_s']['mean']:.1f} s")
        for milestone, column in zip(MILESTONES, milestones):
            mean = over[column]["mean"]
            print(f"  val joint {milestone:.1%} reached by {over[column]['reached']} of {len(over['seeds'])} seeds"
                  + ("" if mean is None else f", after {mean:.1f} s on average"))
    print(f"table: {args.out / 'seeds.json'}")
    return int(any(row["outcome"] != "ok" for row in rows))


if __name__ == "__main__":
    sys.exit(main())
