"""End to end: train.py and evaluate.py run as users run them, on tiny MNIST-format files, on the CPU."""

import json
import re
import shutil
import signal
import time

import pytest
import torch

from adder import plots
from adder.config import parse_config
from adder.training_state import ResumeError, resolve_state
import evaluate
from conftest import FAST, NO_GPU, epochs_trained, needs_dev_full, run_cli, train


def evaluate_json(ckpt, data_dir, *extra, processes=1):
    result = run_cli(["evaluate.py", "--ckpt", str(ckpt), "--data_dir", str(data_dir), "--cpu", "--json", *extra],
                     processes=processes)
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def two_process_run(tiny_mnist, tmp_path_factory):
    """Two processes launched with --multi_gpu and without --cpu on a machine with no usable GPU."""
    out = tmp_path_factory.mktemp("ddp_run")
    result = run_cli(["train.py", "--data_dir", str(tiny_mnist), "--output_dir", str(out), *FAST, "--epochs", "3"],
                     processes=2, env=NO_GPU)
    return out, result


def test_two_processes_without_a_gpu_share_one_run_and_print_each_line_once(two_process_run):
    out, result = two_process_run
    assert "2 process(es)" in result.stdout and "CPU (no usable CUDA GPU)" in result.stdout
    logged = (out / "logs" / "console.log").read_text().splitlines()
    assert len(logged) == len(set(logged)), "a line logged twice"
    printed = [line.strip() for line in (result.stdout + result.stderr).replace("\r", "\n").splitlines()]
    for line in logged:
        assert printed.count(line) == 1, line
    assert any(line.startswith("epoch  3/3") for line in logged)
    assert "Traceback" not in result.stderr
    # How long the process took to get going (imports, Accelerator), from psutil: said once.
    started = [re.fullmatch(r"process started (\d+\.\d)s ago \(.*\)", line) for line in logged]
    seconds = [float(match.group(1)) for match in started if match]
    assert len(seconds) == 1 and seconds[0] > 0, logged[:6]


@pytest.fixture(scope="module")
def evaluations(two_process_run, tiny_mnist):
    """evaluate.py on the two-process run's best.pt: the JSON report of one process, and the output of two
    launched with --multi_gpu and without --cpu on a machine with no usable GPU."""
    out, _ = two_process_run
    one = evaluate_json(out / "best.pt", tiny_mnist, processes=1)
    two = run_cli(["evaluate.py", "--ckpt", str(out / "best.pt"), "--data_dir", str(tiny_mnist), "--json"],
                  processes=2, env=NO_GPU)
    return one, two


def test_evaluate_with_two_processes_and_no_gpu_gives_one_exact_report(two_process_run, evaluations):
    out, _ = two_process_run
    reports = [json.loads(line) for line in evaluations[1].stdout.splitlines() if line.startswith("{")]
    assert len(reports) == 1 and reports[0]["pairs"] == 510
    assert reports[0]["joint_correct"] == json.loads((out / "logs" / "test_metrics.json").read_text())["joint_correct"]


def test_two_process_training_writes_a_self_describing_best_pt(two_process_run):
    out, result = two_process_run
    ckpt = torch.load(out / "best.pt", weights_only=True)
    assert ckpt["model_config"]["widths"] == [[4, 4], [8, 8], [8]] and 1 <= ckpt["epoch"] <= 3
    assert set(ckpt["val_metrics"]) >= {"digit_acc", "sum_acc", "joint_acc", "consistency", "loss"}
    epochs = [json.loads(line) for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    # A row's rate is the one its epoch's last step trained with: for the last epoch, the one-cycle floor.
    assert epochs[-1]["lr"] == pytest.approx(ckpt["train_config"]["lr"] / 25 / 1e4)
    assert epochs[0]["validated_at"] < epochs[1]["validated_at"] < epochs[2]["validated_at"]  # the time-to-accuracy clock
    # best.pt is the epoch with the best validation accuracy (should epochs tie, the first of them).
    best = max(e["val_joint_acc"] for e in epochs)
    assert ckpt["epoch"] == next(e["epoch"] for e in epochs if e["val_joint_acc"] == best)
    assert ckpt["val_metrics"]["joint_acc"] == best
    assert [p.name for p in sorted((out / "checkpoints").iterdir())] == ["epoch_002", "epoch_003"]  # keep_states=2
    test = json.loads((out / "logs" / "test_metrics.json").read_text())
    assert test["pairs"] == 510  # 51 test images x 10 addends, none duplicated or dropped by the 2-way split
    # The tiny task is learnable: well above chance (10 % digits).
    assert test["digit_acc"] > 0.3


def test_evaluation_is_exact_and_identical_with_one_and_two_processes(two_process_run, evaluations):
    out, _ = two_process_run
    one, two = evaluations[0], json.loads(evaluations[1].stdout.strip().splitlines()[-1])
    assert one["pairs"] == two["pairs"] == 510
    for name in ("digit_acc", "sum_acc", "joint_acc", "consistency", "per_sum_acc"):
        assert one[name] == two[name], name
    # Counts are exact; the mean loss sums float32 per-pair losses that the two runs compute in different
    # batches (so with different kernels' rounding): it agrees to float32 precision.
    assert one["loss"] == pytest.approx(two["loss"], rel=1e-6)
    train_report = json.loads((out / "logs" / "test_metrics.json").read_text())
    assert one["joint_acc"] == train_report["joint_acc"]


def test_shift_averaged_evaluation_is_exact_with_two_processes(two_process_run, evaluations, tiny_mnist):
    out, _ = two_process_run
    plain = evaluations[0]
    one = evaluate_json(out / "best.pt", tiny_mnist, "--tta", processes=1)
    assert one["tta"] and not plain["tta"] and one["pairs"] == 510
    assert one["loss"] != plain["loss"]  # the shifted copies were read, not just the image
    # The same counts as the training run's own report, made by its two processes.
    two = json.loads((out / "logs" / "test_metrics.json").read_text())["tta"]
    for name in ("digit_acc", "sum_acc", "joint_acc", "consistency", "per_sum_acc"):
        assert one[name] == two[name], name


def test_evaluate_prints_the_results_table(two_process_run, tiny_mnist):
    out, _ = two_process_run
    table = run_cli(["evaluate.py", "--ckpt", str(out / "best.pt"), "--data_dir", str(tiny_mnist), "--cpu"]).stdout
    # The counts the run's own test report holds for the same best.pt.
    report = json.loads((out / "logs" / "test_metrics.json").read_text())
    for name, count in (("digit acc", "digit_correct"), ("sum acc", "sum_correct"), ("joint acc", "joint_correct"),
                        ("consistency", "consistent")):
        assert re.search(rf"^{name} +[\d.]+% +{report[count]:,} / 510$", table, re.MULTILINE), (name, table)
    assert "accuracy per sum" in table
    assert max(len(line) for line in table.splitlines()[1:]) <= 80  # the first line holds the user's path


@pytest.mark.parametrize("script_args, error", [
    (["train.py", "--epochs", "0"], "train.py: error: argument --epochs: must be a positive integer, got 0"),
    (["evaluate.py", "--ckpt", "no_such.pt"], "error: no_such.pt: no such checkpoint file"),
])
def test_an_error_every_process_meets_before_they_meet_is_said_once(script_args, error):
    result = run_cli(script_args, processes=2, env=NO_GPU, check=False)
    assert result.returncode != 0
    assert (result.stdout + result.stderr).splitlines().count(error) == 1, result.stderr


def test_a_launchs_other_processes_keep_such_errors_to_themselves(monkeypatch, capsys):
    # What rank 1 of each machine does with them, in this process: exits as rank 0 does, saying nothing.
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(SystemExit) as bad_flag:
        parse_config(["--epochs", "0"])
    with pytest.raises(SystemExit) as no_checkpoint:
        evaluate.main(["--ckpt", "no_such.pt"])
    assert (bad_flag.value.code, no_checkpoint.value.code) == (2, 1)
    assert capsys.readouterr().err == ""


def test_your_own_pictures_answered_under_two_processes_once(two_process_run):
    out, _ = two_process_run
    result = run_cli(["evaluate.py", "--ckpt", str(out / "best.pt"), "--image", "training_logs/example_digit.png",
                      "--addend", "4"], processes=2, env=NO_GPU)
    assert [line.split()[0] for line in result.stdout.splitlines() if line.startswith(("file", "training_logs"))] \
        == ["file", "training_logs/example_digit.png"]


def test_plots_module_redraws_the_figures_of_a_run(two_process_run, tiny_mnist, tmp_path):
    out, _ = two_process_run
    # In this process: `python -m adder.plots` runs the same main(), which makes no Accelerator.
    assert plots.main([str(out), "--data_dir", str(tiny_mnist), "--out", str(tmp_path)]) == 0
    for name in ("curves.png", "test_predictions.png", "confusion.png"):  # drawn from the same metrics and model
        assert (tmp_path / name).read_bytes() == (out / "logs" / name).read_bytes(), name


@needs_dev_full
def test_a_figure_that_cannot_be_saved_keeps_the_previous_one(tmp_path):
    (tmp_path / "curves.png").write_bytes(b"the previous picture")
    (tmp_path / ".curves.png.tmp").symlink_to("/dev/full")  # writing the new one fails: "No space left on device"
    with pytest.raises(OSError):
        plots.save_figures({"curves": plots.plt.figure()}, tmp_path)
    assert (tmp_path / "curves.png").read_bytes() == b"the previous picture"
    assert not (tmp_path / ".curves.png.tmp").exists()


def test_a_killed_run_resumes_to_the_same_result(tiny_mnist, tmp_path):
    # The default recipe, SGD (its momentum is part of the saved state) with label smoothing, without the
    # EMA; the 2-process resume below has the EMA on.
    args = ["--epochs", "4", "--ema_decay", "0", "--optimizer", "sgd", "--lr", "0.1", "--label_smoothing", "0.1"]
    train(tiny_mnist, tmp_path / "straight", *args)

    killed = tmp_path / "killed"
    proc = train(tiny_mnist, killed, *args, popen=True)
    deadline = time.time() + 120
    while not (killed / "checkpoints" / "epoch_001").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)  # mid-way through epoch 2: no clean-up code runs
    assert (killed / "checkpoints" / "epoch_001").exists(), f"no saved epoch to resume from:\n{proc.stdout.read()}"
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (killed / "checkpoints" / "epoch_004").exists()
    names = [path.name for path in (killed / "checkpoints").iterdir()]
    saved = max(int(m[1]) for name in names if (m := re.fullmatch(r"epoch_(\d+)", name)))  # the latest whole state

    # --no_cuda_graph may change on resume (the same step, launched otherwise); on the CPU the step is eager
    # anyway, and nothing is said about it.
    resumed = train(tiny_mnist, killed, *args, "--resume_from_checkpoint", "latest", "--no_cuda_graph")
    assert "resumed from" in resumed.stdout and "training step:" not in resumed.stdout
    assert epochs_trained(resumed.stdout) == list(range(saved + 1, 5))  # a resume, not a run from the start
    straight_ckpt = torch.load(tmp_path / "straight" / "best.pt", weights_only=True)
    resumed_ckpt = torch.load(killed / "best.pt", weights_only=True)
    assert straight_ckpt["epoch"] == resumed_ckpt["epoch"]
    for name, tensor in straight_ckpt["model_state"].items():
        assert torch.equal(tensor, resumed_ckpt["model_state"][name]), name
    straight_report, resumed_report = (json.loads((tmp_path / name / "logs" / "test_metrics.json").read_text())
                                       for name in ("straight", "killed"))
    assert resumed_report == straight_report
    rows = [json.loads(line) for line in (killed / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2, 3, 4]  # the redone epoch is not logged twice


def test_ctrl_c_says_what_is_saved_and_how_to_go_on(tiny_mnist, tmp_path):
    proc = train(tiny_mnist, tmp_path, "--epochs", "20", popen=True)
    deadline = time.time() + 120
    while not (tmp_path / "checkpoints" / "epoch_001").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=60)  # stdout and stderr
    assert proc.returncode == 130, f"not interrupted mid-run:\n{output}"
    assert "Traceback" not in output
    (error,) = [line for line in output.splitlines() if line.startswith("error:")]
    assert re.fullmatch(r"error: interrupted; \S+epoch_0\d\d is saved: continue with --resume_from_checkpoint latest",
                        error), error
    assert error in (tmp_path / "logs" / "console.log").read_text()
    resumed = train(tiny_mnist, tmp_path, "--epochs", "20", "--resume_from_checkpoint", "latest")
    assert epochs_trained(resumed.stdout)[-1] == 20


@needs_dev_full
def test_resume_from_an_explicit_state_folder(two_process_run, tiny_mnist, tmp_path):
    out, _ = two_process_run
    shutil.copytree(out, tmp_path / "run")
    checkpoints = tmp_path / "run" / "checkpoints"
    state = checkpoints / "epoch_002"
    resume = ["--epochs", "3", "--resume_from_checkpoint", str(state)]
    # First the second process cannot save its part of epoch 3's state (its random states): the folder being
    # written is a link, which the clean-up of a half-written folder leaves, to one where that file is /dev/full.
    shutil.rmtree(checkpoints / "epoch_003")
    (tmp_path / "disk").mkdir()
    (tmp_path / "disk" / "random_states_1.pkl").symlink_to("/dev/full")
    (checkpoints / "epoch_003.partial").symlink_to(tmp_path / "disk")
    failed = train(tiny_mnist, tmp_path / "run", *resume, processes=2, check=False, timeout=120)
    output = failed.stdout + failed.stderr  # the launcher's own report of the failed ranks follows
    assert failed.returncode != 0 and 'train.py", line' not in output, output  # no traceback, no hang
    (error,) = [line for line in output.splitlines() if line.startswith("error:")]
    assert error.startswith(f"error: could not write {checkpoints / 'epoch_003'} (process 1: ")
    assert error.endswith(" and the training state of epoch 2."), error
    # Room again: the same command resumes from the same state. --log_every is not part of the saved state:
    # it may change. A state after the one resumed from, of the run left behind, goes once epoch 3 is saved.
    (checkpoints / "epoch_003.partial").unlink()
    shutil.copytree(state, checkpoints / "epoch_004")
    result = train(tiny_mnist, tmp_path / "run", *resume, "--log_every", "3", processes=2)
    assert sorted(path.name for path in checkpoints.iterdir()) == ["epoch_002", "epoch_003"]
    assert f"resumed from {state}" in result.stdout and epochs_trained(result.stdout) == [3]
    # The bar the redone epoch must beat is best.pt's, which may be newer than the state it resumes.
    best_epoch = json.loads((out / "logs" / "test_metrics.json").read_text())["epoch"]
    assert re.search(rf"best val joint [\d.]+% at epoch {best_epoch}\)", result.stdout), result.stdout
    assert (tmp_path / "run" / "logs" / "test_metrics.json").read_text() == (out / "logs" / "test_metrics.json").read_text()
    resumed, original = ([{k: v for k, v in json.loads(line).items() if k not in ("train_seconds", "started_at", "validated_at")}
                          for line in (run / "logs" / "metrics.jsonl").read_text().splitlines()]
                         for run in (tmp_path / "run", out))
    assert resumed == original


def test_a_finished_runs_last_state_resumed_elsewhere_only_reports_again(two_process_run, tiny_mnist, tmp_path):
    # What the error for a best.pt missing beside a state advises: copy best.pt into the new --output_dir. The
    # state is the run's last, so no epoch runs and the new folder has no metrics.jsonl of its own.
    out, _ = two_process_run
    (tmp_path / "new").mkdir()
    shutil.copyfile(out / "best.pt", tmp_path / "new" / "best.pt")
    result = train(tiny_mnist, tmp_path / "new", "--epochs", "3", "--resume_from_checkpoint",
                   str(out / "checkpoints" / "epoch_003"), processes=2)
    assert "only the test report runs again" in result.stdout and epochs_trained(result.stdout) == []
    logs = tmp_path / "new" / "logs"
    assert (logs / "test_metrics.json").read_text() == (out / "logs" / "test_metrics.json").read_text()
    assert {"curves.png", "confusion.png", "test_predictions.png"} <= {path.name for path in logs.iterdir()}


def test_a_damaged_best_pt_beside_a_state_stops_both_processes_with_one_line(two_process_run, tiny_mnist, tmp_path):
    # Only the main process reads best.pt; what it finds must reach the other process, not leave it waiting.
    out, _ = two_process_run
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "best.pt").write_text("just text")
    result = train(tiny_mnist, tmp_path / "new", "--epochs", "3", "--resume_from_checkpoint",
                   str(out / "checkpoints" / "epoch_003"), processes=2, check=False, timeout=120)
    output = result.stdout + result.stderr  # the launcher's own report of the failed ranks follows
    assert result.returncode != 0 and 'train.py", line' not in output, output
    (error,) = [line for line in output.splitlines() if line.startswith("error:")]
    assert "best.pt: not a readable PyTorch checkpoint" in error


def test_a_new_run_never_overwrites_an_existing_best_pt(two_process_run, tiny_mnist):
    out, _ = two_process_run
    before = (out / "best.pt").read_bytes()
    log_before = (out / "logs" / "console.log").read_text()
    # Both processes find the run and stop together, with one line from the main process.
    stopped = train(tiny_mnist, out, "--epochs", "1", processes=2, check=False, timeout=120)
    output = stopped.stdout + stopped.stderr  # the launcher's own report of the failed ranks follows
    assert stopped.returncode != 0 and 'train.py", line' not in output, output  # no traceback, no hang
    (error,) = [line for line in output.splitlines() if line.startswith("error:")]
    assert error.startswith(f"error: {out.resolve()} already holds a run")
    assert (out / "best.pt").read_bytes() == before
    assert (out / "logs" / "console.log").read_text() == log_before  # the refused run wrote nothing there


def test_a_folder_with_only_training_states_is_refused_too(tiny_mnist, tmp_path):
    (tmp_path / "checkpoints").mkdir()  # a run killed before its first best.pt
    stopped = train(tiny_mnist, tmp_path, check=False)
    assert stopped.returncode == 1 and stopped.stderr.startswith(f"error: {tmp_path.resolve()} already holds a run")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["checkpoints"]


@pytest.mark.parametrize("args, message", [
    (["--batch_size", "-4"], "--batch_size: must be a positive integer"),
    (["--epochs", "two"], "--epochs: must be an integer, got 'two'"),
    (["--lr", "fast"], "--lr: must be a number, got 'fast'"),
    (["--mixed_precision", "fp12"], "--mixed_precision: invalid choice"),
    (["--sum_head", "magic"], "--sum_head: invalid choice"),
    (["--optimizer", "adam"], "--optimizer: invalid choice"),
    (["--widths", "8,0", "8", "8"], "--widths: must be a positive integer"),
    (["--widths", "8,8", "8"], "--widths: expected 3 arguments"),
    (["--lr", "nan"], "--lr: must be a finite number > 0"),
    (["--lr", "0"], "--lr: must be a finite number > 0"),
    (["--lr", "inf"], "--lr: must be a finite number > 0"),
    (["--ema_decay", "1"], "--ema_decay: must be in [0, 1)"),
    (["--label_smoothing", "1"], "--label_smoothing: must be in [0, 1)"),
    (["--seed", "-1"], "--seed: must be in [0, 2**32)"),
    (["--resume_from_checkpoint", ""], "--resume_from_checkpoint: give 'latest'"),  # not a new run over the old
])
def test_bad_flags_are_refused_by_the_parser_with_one_line(capsys, args, message):
    # train.py's own parser, in this process: the CLI cases below show what the user sees of it.
    with pytest.raises(SystemExit) as exit_:
        parse_config(args)
    assert exit_.value.code == 2
    usage_and_error = capsys.readouterr().err.strip().splitlines()
    assert usage_and_error[0].startswith("usage: ") and ": error: argument " in usage_and_error[-1]
    assert message in usage_and_error[-1]


@pytest.mark.parametrize("args, message", [
    (["--zoom", "1"], "--zoom must be below 1"),
    (["--shift", "0.5"], "--shift must be below 0.5"),  # not pixels: a fraction of the width
])
def test_augmentation_that_would_leave_no_digit_is_refused(capsys, args, message):
    with pytest.raises(SystemExit) as exit_:
        parse_config(args)
    assert exit_.value.code == 2 and message in capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize("args, message", [
    (["--epochs", "0"], "--epochs: must be a positive integer"),
    (["--mixed_precision", "fp16"], "error: --mixed_precision fp16 needs a CUDA GPU, and this run is on the CPU"),
    (["--resume_from_checkpoint", "latest"], "no saved training state"),
    (["--output_dir", "/dev/null/run"], "cannot create /dev/null/run/logs"),
])
def test_bad_training_arguments_get_one_clear_error(tiny_mnist, tmp_path, args, message):
    result = train(tiny_mnist, tmp_path, *args, check=False)
    assert result.returncode != 0 and message in result.stderr
    assert "Traceback" not in result.stderr


def test_weights_that_diverge_in_an_epochs_last_step_are_never_saved(tiny_mnist, tmp_path):
    # One step an epoch: the step's loss is finite (it is read before the update), the weights after it are not.
    result = train(tiny_mnist, tmp_path, "--batch_size", "500", "--lr", "1e30", "--epochs", "2", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "error: validation loss is nan after epoch 1: the weights diverged; stopping. Still safe: nothing yet." \
        in result.stderr.splitlines()
    assert not (tmp_path / "best.pt").exists() and not (tmp_path / "checkpoints").exists()


def test_a_state_folder_that_is_not_one_is_refused(tmp_path):
    # The same refusal as "latest" with nothing saved, above: train.py prints the ResumeError's message.
    (tmp_path / "epoch_001").mkdir()  # a folder, but no saved state in it
    with pytest.raises(ResumeError, match="not a complete training state folder"):
        resolve_state(str(tmp_path / "epoch_001"), tmp_path)
    with pytest.raises(ResumeError, match="no such folder"):
        resolve_state(str(tmp_path / "no" / "such" / "folder"), tmp_path)
