"""What a Weights & Biases run of train.py holds, read from its offline run folder, without network.

Offline, wandb writes a run's summary, config and artifacts only into the run's .wandb file, a LevelDB-format
log of protobuf records (wandb_internal_pb2.Record); wandb ships no reader for it, so `records` below is one.
Logged tables (and the table behind a chart) are also written as files/media/table/**/*.table.json.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from wandb.proto import wandb_internal_pb2

from adder.config import OPTIMIZER_DEFAULTS
from adder.hardware import cpu_has_native_bf16
from conftest import FAST, NO_GPU, free_port, run_cli

# The tiny runs' flags with tracking on: FAST turns it off.
TRACKED = FAST[:FAST.index("--report_to")] + FAST[FAST.index("--report_to") + 2:]
TABLE_COLUMNS = ["test image", "image", "addend", "digit", "predicted digit", "digit probability", "sum",
                 "predicted sum", "sum probability", "right"]

# LevelDB's log format: a 7-byte file header (":W&B", magic, version), then 32 KiB blocks of chunks, each
# with a 7-byte header (checksum, length, type); a record is one FULL chunk or FIRST, MIDDLE..., LAST.
BLOCK, HEADER, FULL, LAST = 32 * 1024, 7, 1, 4


def records(run_folder: Path) -> list:
    (log_file,) = run_folder.glob("*.wandb")
    data = log_file.read_bytes()
    found, pieces, pos = [], [], HEADER
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:  # a block's tail too short for a chunk header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        pieces.append(data[pos + HEADER:pos + HEADER + length])
        pos += HEADER + length
        if kind in (FULL, LAST):
            found.append(wandb_internal_pb2.Record.FromString(b"".join(pieces)))
            pieces = []
    return found


def updates(items) -> dict:
    """Summary or config updates as {"a/b": value}: a key is either `key` or the path `nested_key`."""
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}


def logged_name(path: Path) -> str:
    """The name a media file was logged under: wandb names it <name>_<step>_<hash>.<extension>."""
    return path.name.split(".")[0].rsplit("_", 2)[0]


def read_run(out_dir: Path, result: subprocess.CompletedProcess) -> SimpleNamespace:
    (folder,) = (out_dir / "logs" / "wandb").glob("offline-run-*")
    found = records(folder)
    summary, config = {}, {}
    for record in found:
        if record.HasField("summary"):
            summary |= updates(record.summary.update)
        elif record.HasField("config"):
            config |= updates(record.config.update)
    return SimpleNamespace(
        out=out_dir, folder=folder, stdout=result.stdout, stderr=result.stderr, returncode=result.returncode,
        summary=summary, config=config,
        steps=[record.history.step.num for record in found if record.HasField("history")],
        exit_codes=[record.exit.exit_code for record in found if record.HasField("exit")],
        artifacts=[record.artifact for record in found if record.HasField("artifact")],
        tables={logged_name(path): json.loads(path.read_text())
                for path in (folder / "files" / "media" / "table" / "test").glob("*.table.json")},
    )


def train_tracked(tmp_path_factory, data_dir, *extra, processes: int = 1, env: dict | None = None,
                  check: bool = True) -> SimpleNamespace:
    """A 1-epoch tiny run with wandb on, on the CPU even where a GPU is; wandb's own folders (staged artifacts, logs, settings) stay beside it."""
    root = tmp_path_factory.mktemp("wandb_run")
    wandb_dirs = {f"WANDB_{name}_DIR": str(root / name.lower()) for name in ("DATA", "CACHE", "CONFIG")}
    console = {"WANDB_SILENT": "false"}  # wandb's console as a user sees it (run_cli silences it elsewhere)
    result = run_cli(["train.py", "--data_dir", str(data_dir), "--output_dir", str(root / "out"), *TRACKED,
                      "--epochs", "1", *extra], processes=processes,
                     env=NO_GPU | wandb_dirs | console | (env or {}), check=check)
    return read_run(root / "out", result)


@pytest.fixture(scope="module")
def offline_run(tiny_mnist, tmp_path_factory):
    return train_tracked(tmp_path_factory, tiny_mnist)  # run_cli sets WANDB_MODE=offline


@pytest.fixture(scope="module")
def cluster_run(tiny_mnist, tmp_path_factory):
    """As on a cluster's compute nodes: two processes, logged in (an API key is set) but with no server to
    reach. WANDB_MODE=online is wandb's default, as if it were unset. And --no_log_model."""
    env = {"WANDB_MODE": "online", "WANDB_API_KEY": "0123456789abcdef" * 2 + "01234567",
           "WANDB_BASE_URL": f"http://127.0.0.1:{free_port()}",  # a port nothing listens on
           "no_proxy": "127.0.0.1", "NO_PROXY": "127.0.0.1"}  # asked directly even where a proxy is set
    return train_tracked(tmp_path_factory, tiny_mnist, "--no_log_model", processes=2, env=env)


def test_summary_holds_the_best_validation_and_the_test_metrics(offline_run):
    best = torch.load(offline_run.out / "best.pt", weights_only=True)
    test = json.loads((offline_run.out / "logs" / "test_metrics.json").read_text())
    epochs = [json.loads(line) for line in (offline_run.out / "logs" / "metrics.jsonl").read_text().splitlines()]
    summary = offline_run.summary
    assert summary["val/joint_acc"] == {"max": max(epoch["val_joint_acc"] for epoch in epochs)}
    assert summary["best_val/epoch"] == best["epoch"]
    for name in ("digit_acc", "sum_acc", "joint_acc", "consistency", "loss"):
        assert summary[f"best_val/{name}"] == pytest.approx(best["val_metrics"][name]), name
        assert summary[f"test/{name}"] == pytest.approx(test[name]), name
        assert summary[f"test_tta/{name}"] == pytest.approx(test["tta"][name]), name


def test_prediction_table_lists_the_mistakes_first(offline_run):
    table = offline_run.tables["predictions"]
    assert table["columns"] == TABLE_COLUMNS
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    # 51 test images: every mistake and up to 100 right answers, so all of them.
    assert sorted(row["test image"] for row in rows) == list(range(51))
    assert [row["right"] for row in rows] == sorted(row["right"] for row in rows)  # False (mistakes) first
    for row in rows:
        assert row["sum"] == row["digit"] + row["addend"]
        assert row["right"] == (row["predicted digit"] == row["digit"] and row["predicted sum"] == row["sum"])
        assert 0 < row["digit probability"] <= 1 and 0 < row["sum probability"] <= 1


def test_digit_confusion_chart_counts_each_test_image_once(offline_run):
    table = offline_run.tables["digit_confusion_table"]
    assert table["columns"] == ["Actual", "Predicted", "nPredictions"]
    assert sum(row[2] for row in table["data"]) == 51
    chart = offline_run.config["_wandb/visualize/test/digit_confusion"]
    assert chart["panel_config"]["panelDefId"] == "wandb/confusion_matrix/v1"


def test_run_figures_are_logged_as_images(offline_run):
    images = offline_run.folder / "files" / "media" / "images" / "figures"
    assert sorted(map(logged_name, images.glob("*.png"))) == ["confusion", "curves", "test_predictions"]
    for image in images.glob("*.png"):  # the files the run saved, not a second drawing
        assert image.read_bytes() == (offline_run.out / "logs" / f"{logged_name(image)}.png").read_bytes()


def test_best_pt_is_logged_as_a_model_artifact(offline_run):
    (artifact,) = [artifact for artifact in offline_run.artifacts if artifact.type == "model"]
    best_pt = offline_run.out / "best.pt"
    best = torch.load(best_pt, weights_only=True)
    metadata = json.loads(artifact.metadata)
    assert metadata["epoch"] == best["epoch"] and metadata["val_metrics"] == pytest.approx(best["val_metrics"])
    (entry,) = artifact.manifest.contents
    assert entry.path == "best.pt"
    assert entry.digest == base64.b64encode(hashlib.md5(best_pt.read_bytes()).digest()).decode()


def test_config_holds_the_resolved_settings_and_the_environment(offline_run):
    config = offline_run.config
    assert config["optimizer"] == "adamw" and config["lr"] == 0.03
    assert config["weight_decay"] == OPTIMIZER_DEFAULTS["adamw"]["weight_decay"]  # filled in for the optimiser
    environment = config["environment"]
    assert environment["torch"] == torch.__version__ and environment["device"] == "cpu"
    # The launch leaves --mixed_precision out: the CPU's own choice, bf16 only where this CPU has it natively.
    assert environment["num_processes"] == 1
    assert environment["mixed_precision"] == ("bf16" if cpu_has_native_bf16() else "no")
    assert {"python", "accelerate", "wandb"} <= set(environment)


def test_history_steps_only_increase(offline_run):
    steps = offline_run.steps
    assert len(steps) > 1 and steps == sorted(set(steps))


def wandb_lines(run) -> list[str]:
    """The console's lines from wandb or about it: the run's own line alone, so a new wandb warning fails the
    tests that count them, to be read and then silenced or allowed."""
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("wandb:")]


def test_offline_run_says_once_how_to_upload_it(offline_run):
    (line,) = wandb_lines(offline_run)  # wandb's own (where the run is, how to sync it) would repeat it
    assert line.endswith(f"wandb sync {offline_run.folder}")


def test_unreachable_server_records_the_run_offline(cluster_run):
    (line,) = wandb_lines(cluster_run)
    assert "did not answer" in line and line.endswith(f"wandb sync {cluster_run.folder}")
    assert (cluster_run.out / "logs" / "test_metrics.json").exists()  # it trained and tested
    assert cluster_run.summary["best_val/epoch"] == 1


def test_two_processes_write_one_run(cluster_run):
    # read_run found exactly one run folder; in it each thing is logged once, by the main process.
    assert cluster_run.config["environment"]["num_processes"] == 2
    assert len(list((cluster_run.folder / "files" / "media" / "table" / "test").glob("predictions_*"))) == 1
    assert [artifact.type for artifact in cluster_run.artifacts] == ["run_table", "run_table"]  # predictions, chart
    assert cluster_run.steps == sorted(set(cluster_run.steps))


def test_no_log_model_keeps_best_pt_out_of_the_run(cluster_run):
    assert "model" not in {artifact.type for artifact in cluster_run.artifacts}
    assert cluster_run.artifacts  # the tables' artifacts are there


def test_a_finished_run_exits_0_and_a_run_stopped_by_an_error_1(offline_run, tiny_mnist, tmp_path_factory):
    assert offline_run.exit_codes == [0]
    stopped = train_tracked(tmp_path_factory, tiny_mnist, "--lr", "1e30", check=False)  # a non-finite loss
    assert stopped.exit_codes == [1]
    # What the user sees: one error line, also in the run's console.log, and no test report of a broken model.
    assert stopped.returncode != 0 and "Traceback" not in stopped.stderr
    error = next(line for line in stopped.stderr.splitlines() if line.startswith("error: training loss is"))
    assert error.split("is ")[1].startswith(("nan", "inf"))
    assert error in (stopped.out / "logs" / "console.log").read_text()
    assert not (stopped.out / "logs" / "test_metrics.json").exists()
