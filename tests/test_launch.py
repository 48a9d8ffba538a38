"""Wherever a run is launched: the CPU fallback's choices, two nodes without a shared disk, resuming with
other settings, and a disk that fails mid-run."""

import dataclasses
import json
import re
import shutil
import subprocess
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DynamoBackend

from adder.checkpoint import load_model, save_checkpoint
from adder.config import TrainConfig
from adder.data import DeviceMNIST
from adder.evaluation import evaluate, one_addend_predictions, reproducible_convolutions
from adder.distributed import all_or_none
from adder.hardware import PlacementError, choose_placement, cpu_has_native_bf16
from adder.model import AdderNet, ModelConfig
from adder.training_state import (EMA_FILE, MUST_MATCH, PROGRESS_FILE, ResumeError, check_settings,
                                  load_training_state, resolve_state)
from conftest import (FAST, NO_GPU, CreatesFileWhenUnpickled, epochs_trained, free_port, needs_dev_full,
                      run_cli, tiny_net, train)


@pytest.mark.parametrize("force_cpu, requested, gpu, native_bf16, expected, warns", [
    (False, None, True, False, (False, None), False),  # a GPU: the accelerate config decides
    (False, "bf16", True, False, (False, "bf16"), False),
    (True, None, True, True, (True, "bf16"), False),  # --cpu on a GPU box whose CPU has bf16
    (False, None, False, True, (True, "bf16"), False),  # no GPU: bf16 where the CPU has it natively...
    (False, None, False, False, (True, "no"), False),  # ...fp32 where it would be emulated
    (False, "bf16", False, False, (True, "bf16"), True),  # an explicit choice is obeyed, with a warning
    (False, "no", False, True, (True, "no"), False),
])
def test_the_cpu_fallback_chooses_what_is_fast_there(force_cpu, requested, gpu, native_bf16, expected, warns):
    placement = choose_placement(force_cpu, requested, gpu=gpu, native_bf16=native_bf16, cores=8, local_processes=2)
    assert (placement.cpu, placement.mixed_precision) == expected
    assert bool(placement.warning) == warns
    if placement.cpu:
        assert placement.threads == 4 and placement.note.startswith("CPU (")  # every core, shared by 2 processes
    else:
        assert placement.threads is None  # the GPU's processes keep the launcher's setting


@pytest.mark.parametrize("force_cpu, gpu", [(True, True), (False, False)])
def test_fp16_on_the_cpu_is_refused_not_run_in_fp32(force_cpu, gpu):
    # accelerate has no fp16 autocast on the CPU: the run would train in fp32 while saying fp16.
    with pytest.raises(PlacementError, match=r"^--mixed_precision fp16 needs a CUDA GPU, and this run is on the CPU"):
        choose_placement(force_cpu, "fp16", gpu=gpu, native_bf16=True, cores=8, local_processes=1)
    on_the_gpu = choose_placement(False, "fp16", gpu=True, native_bf16=False, cores=8, local_processes=1)
    assert on_the_gpu.mixed_precision == "fp16"


def test_native_bf16_is_read_from_the_cpu_flags():
    assert cpu_has_native_bf16("flags\t: fpu sse avx2 avx512f avx512_bf16 amx_tile")
    assert cpu_has_native_bf16("Features\t: fp asimd bf16 i8mm")  # Arm
    assert not cpu_has_native_bf16("flags\t: fpu sse avx2 avx512f avx512_vnni")


def test_reports_use_cudnns_deterministic_fp32_convolutions_then_restore_the_settings():
    cudnn = torch.backends.cudnn
    before = cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32
    with reproducible_convolutions():
        assert (cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32) == (False, True, False)
    assert (cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32) == before


@pytest.mark.parametrize("score", [evaluate, one_addend_predictions])
def test_scoring_leaves_the_model_in_the_mode_it_found(score):
    data = DeviceMNIST(torch.randint(0, 255, (6, 28, 28), dtype=torch.uint8), torch.arange(6))
    model = AdderNet(ModelConfig(widths=[[4], [4], [4]]))
    for training in (True, False):
        model.train(training)
        score(model, data)
        assert model.training == training and all(m.training == training for m in model.modules())


@pytest.fixture(scope="module")
def trained_run(tiny_mnist, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    train(tiny_mnist, out, "--epochs", "2")
    return out


def test_resume_refuses_a_changed_setting_with_one_line_naming_it(trained_run, tiny_mnist):
    result = train(tiny_mnist, trained_run, "--epochs", "2", "--resume_from_checkpoint", "latest",
                   "--batch_size", "16", check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "error: cannot resume: the saved run used --batch_size 32, this command 16" in result.stderr


# Settings a resumed run may change: where things are, how the run is launched and reported, none of what it
# computes. A new TrainConfig field must be put here or in MUST_MATCH.
MAY_CHANGE = {"data_dir", "output_dir", "resume_from_checkpoint", "keep_states", "log_every", "report_to", "run_name",
              "no_log_model", "cpu", "mixed_precision", "no_cuda_graph", "no_cudnn_benchmark"}


def test_every_setting_is_either_checked_on_resume_or_free_to_change():
    assert {field.name for field in dataclasses.fields(TrainConfig)} == set(MUST_MATCH) | MAY_CHANGE


def another(name, value):
    """A valid value of setting `name` that differs from `value`."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, str):
        field = next(field for field in dataclasses.fields(TrainConfig) if field.name == name)
        return next(choice for choice in field.metadata["choices"] if choice != value)
    if isinstance(value, float):
        return value / 2 if value else 0.05
    return value + ([[4]] if isinstance(value, list) else 1)


@pytest.mark.parametrize("name", MUST_MATCH)
def test_every_setting_that_shapes_the_state_must_match(trained_run, name):
    state = resolve_state("latest", trained_run / "checkpoints")
    progress = json.loads((state / PROGRESS_FILE).read_text())
    saved = TrainConfig(**progress["settings"])
    same = {"processes": 1, "precision": progress["mixed_precision"], "compiled": False}
    check_settings(progress, saved, **same)  # the same settings resume
    check_settings(progress, dataclasses.replace(saved, log_every=1, keep_states=5, report_to="none"), **same)
    old, new = getattr(saved, name), another(name, getattr(saved, name))
    with pytest.raises(ResumeError, match=re.escape(f"the saved run used --{name} {old}, this command {new}.")):
        check_settings(progress, dataclasses.replace(saved, **{name: new}), **same)


def test_an_uncompiled_state_does_not_resume_compiled(trained_run):
    progress = json.loads((resolve_state("latest", trained_run / "checkpoints") / PROGRESS_FILE).read_text())
    with pytest.raises(ResumeError, match=re.escape("the saved run did not compile the model, this command does")):
        check_settings(progress, TrainConfig(**progress["settings"]), processes=1,
                       precision=progress["mixed_precision"], compiled=True)


def test_a_state_resumed_away_from_its_best_pt_is_refused(trained_run, tiny_mnist, tmp_path):
    # A new folder has no best.pt: the run could never end with its test report, so it does not start.
    state = trained_run / "checkpoints" / "epoch_002"
    result = train(tiny_mnist, tmp_path, "--epochs", "2", "--resume_from_checkpoint", str(state), check=False)
    assert result.returncode != 0 and f"is not in {tmp_path / 'best.pt'}" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_best_pt_of_other_settings_is_not_taken_for_the_runs_own(trained_run, tiny_mnist, tmp_path):
    # Resumed beside another run's best.pt, the run would keep that model as its best and report it as its own.
    model = tiny_net()
    defaults = TrainConfig().to_dict()  # 20 epochs: the saved run had 2
    save_checkpoint(tmp_path / "best.pt", model, train_config=defaults, epoch=1, val_metrics={"joint_acc": 0.99})
    state = trained_run / "checkpoints" / "epoch_002"
    result = train(tiny_mnist, tmp_path, "--epochs", "2", "--resume_from_checkpoint", str(state), check=False)
    assert result.returncode != 0 and "was trained with another --epochs" in result.stderr


def test_a_training_state_that_would_run_code_is_refused_and_runs_nothing(trained_run, tiny_mnist, tmp_path):
    # Every file of a state is read as tensors only: the moving average's too (the runs here use --ema_decay).
    run, marker = tmp_path / "run", tmp_path / "pwned"
    shutil.copytree(trained_run, run)
    torch.save({"n_averaged": CreatesFileWhenUnpickled(str(marker))}, run / "checkpoints" / "epoch_002" / EMA_FILE)
    result = train(tiny_mnist, run, "--epochs", "2", "--resume_from_checkpoint", "latest", check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert error.startswith("error: cannot load the training state") and "would call io.open" in error
    assert "weights_only" not in result.stderr  # torch's advice to load with weights_only=False, wrong here
    assert not marker.exists()


@pytest.mark.parametrize("damaged, content, message", [
    ("progress.json", '{"settings": null}', "progress.json: not the progress file train.py writes"),
    ("optimizer.bin", b"\x80\x04garbage", "(UnpicklingError: not a readable PyTorch file"),
])
def test_a_damaged_training_state_is_one_error_line(trained_run, tiny_mnist, tmp_path, damaged, content, message):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    path = run / "checkpoints" / "epoch_002" / damaged
    path.write_text(content) if isinstance(content, str) else path.write_bytes(content)
    result = train(tiny_mnist, run, "--epochs", "2", "--resume_from_checkpoint", "latest", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert message in error and "weights_only" not in error, error


def test_all_or_none_raises_what_it_catches_as_one_kind_even_without_a_message():
    one_process = SimpleNamespace(process_index=0)
    with all_or_none(one_process, ValueError, raise_as=RuntimeError):
        pass  # nothing failed: nothing raised
    with pytest.raises(RuntimeError, match="^bad flag$"):
        with all_or_none(one_process, ValueError, raise_as=RuntimeError):
            raise ValueError("bad flag")
    with pytest.raises(RuntimeError, match="^ValueError$"):  # an empty message still stops the run
        with all_or_none(one_process, ValueError, raise_as=RuntimeError):
            raise ValueError()
    with pytest.raises(KeyError):  # not caught: passes through as it is
        with all_or_none(one_process, ValueError, raise_as=RuntimeError):
            raise KeyError("other")


def test_resume_refuses_another_number_of_processes(trained_run):
    # load_training_state passes accelerator.num_processes; the refusal reaches the user as the changed setting's
    # does (above).
    progress = json.loads((resolve_state("latest", trained_run / "checkpoints") / PROGRESS_FILE).read_text())
    with pytest.raises(ResumeError, match=re.escape("the saved run used the number of processes 1, this command 2")):
        check_settings(progress, TrainConfig(**progress["settings"]), processes=2,
                       precision=progress["mixed_precision"], compiled=False)


def test_a_state_resumes_only_in_the_precision_it_was_saved_in(trained_run):
    # An Accelerator in fp16 (a GPU's), as load_training_state sees one: refused before anything is loaded,
    # whatever precision the CPU chose for the saved run.
    in_fp16 = SimpleNamespace(num_processes=1, mixed_precision="fp16",
                              state=SimpleNamespace(dynamo_plugin=SimpleNamespace(backend=DynamoBackend.NO)))
    state = resolve_state("latest", trained_run / "checkpoints")
    progress = json.loads((state / PROGRESS_FILE).read_text())
    with pytest.raises(ResumeError, match=re.escape(f"the saved run used --mixed_precision "
                                                    f"{progress['mixed_precision']}, this command fp16")):
        load_training_state(in_fp16, state, TrainConfig(**progress["settings"]))


def test_a_compiled_run_writes_a_plain_best_pt_and_resumes_only_compiled(tiny_mnist, tmp_path):
    # torch.compile through accelerate's launcher; the "eager" backend traces the model as inductor would,
    # without the minute of code generation.
    def compiled(out, *extra):
        return ["-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1", "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "eager", "train.py", "--data_dir", str(tiny_mnist),
                "--output_dir", str(out), *FAST, "--epochs", "2", *extra]

    straight = tmp_path / "straight"
    run_cli(compiled(straight))
    assert "torch.compile: backend eager, mode default" in (straight / "logs" / "console.log").read_text()
    load_model(straight / "best.pt")  # the module's own names, as evaluate.py needs them: no error
    assert json.loads((straight / "logs" / "test_metrics.json").read_text())["pairs"] == 510

    # Resumed from its first epoch's state: uncompiled is refused (load_training_state passes whether the
    # model is compiled); compiled ends as the straight run did.
    progress = json.loads((straight / "checkpoints" / "epoch_001" / PROGRESS_FILE).read_text())
    with pytest.raises(ResumeError, match=re.escape("the saved run compiled the model (--dynamo_backend), this "
                                                    "command does not")):
        check_settings(progress, TrainConfig(**progress["settings"]), processes=1,
                       precision=progress["mixed_precision"], compiled=False)
    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "checkpoints" / "epoch_002")
    assert epochs_trained(run_cli(compiled(resumed, "--resume_from_checkpoint", "latest")).stdout) == [2]
    assert ((resumed / "logs" / "test_metrics.json").read_text()
            == (straight / "logs" / "test_metrics.json").read_text())


@needs_dev_full
def test_a_full_disk_ends_the_run_with_one_line_and_a_resumable_state(tiny_mnist, tmp_path):
    # The report's temporary file is a link to /dev/full: writing it fails with "No space left on device".
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / ".test_metrics.json.tmp").symlink_to("/dev/full")
    result = train(tiny_mnist, tmp_path, "--epochs", "2", check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1, result.stderr
    assert error[0].startswith(f"error: could not write {tmp_path / 'logs' / 'test_metrics.json'} (No space left "
                               f"on device). Still safe: best.pt from epoch ")
    assert error[0].endswith(" and the training state of epoch 2.")
    assert error[0] in (tmp_path / "logs" / "console.log").read_text()
    # The failed temporary file is gone (here: the link), so there is room again: the run finishes from where
    # it stopped.
    assert not (tmp_path / "logs" / ".test_metrics.json.tmp").exists()
    train(tiny_mnist, tmp_path, "--epochs", "2", "--resume_from_checkpoint", "latest")
    assert json.loads((tmp_path / "logs" / "test_metrics.json").read_text())["pairs"] == 510


@needs_dev_full
def test_a_write_that_fails_on_the_main_process_stops_both_processes_with_one_line(tiny_mnist, tmp_path):
    # Only the main process writes metrics.jsonl: its failure must stop the other process too, at once and
    # with the same line, not leave it waiting at the next barrier or killed by the launcher.
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / ".metrics.jsonl.tmp").symlink_to("/dev/full")
    result = train(tiny_mnist, tmp_path, "--epochs", "2", processes=2, env=NO_GPU, check=False, timeout=120)
    output = result.stdout + result.stderr  # the launcher's own report of the failed ranks follows
    assert result.returncode != 0 and 'train.py", line' not in output, output  # the other rank: no traceback
    error = [line for line in output.splitlines() if line.startswith("error:")]
    assert error == [f"error: could not write {tmp_path / 'logs' / 'metrics.jsonl'} (No space left on device). "
                     f"Still safe: nothing yet."], output
    assert epochs_trained(result.stdout) == [1] and not (tmp_path / "checkpoints").exists()


def two_nodes(tiny_mnist, tmp_path, *flags, second_data_dir=None) -> list[subprocess.CompletedProcess]:
    """Two launches on this machine as two nodes of one process each, each with its own output folder (and,
    with second_data_dir, the second node its own data)."""
    port = free_port()
    nodes = []
    for rank in (0, 1):
        machine = ["--num_machines", "2", "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1",
                   "--main_process_port", str(port)]
        data = second_data_dir if rank and second_data_dir else tiny_mnist
        nodes.append(run_cli(["train.py", "--data_dir", str(data), "--output_dir", str(tmp_path / f"node{rank}"),
                              *FAST, "--epochs", "2", *flags], processes=2, machines=machine, env=NO_GPU, popen=True))
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    return [subprocess.CompletedProcess(node.args, node.returncode, output) for node, output in zip(nodes, outputs)]


def test_two_nodes_without_a_shared_disk(tiny_mnist, tmp_path):
    nodes = two_nodes(tiny_mnist, tmp_path)
    assert [node.returncode for node in nodes] == [0, 0], [node.stdout for node in nodes]
    main, other = tmp_path / "node0", tmp_path / "node1"
    # The final report needed best.pt on every rank: it came from the main node's memory, not from disk.
    assert json.loads((main / "logs" / "test_metrics.json").read_text())["pairs"] == 510
    assert not (other / "best.pt").exists() and not (other / "logs").exists()
    # Each node names its own part of the training state; resuming with the second node's part alone is
    # refused on both nodes, and the main process says which process found what missing.
    assert sorted(p.name for p in (other / "checkpoints").iterdir()) == ["epoch_001", "epoch_002"]
    nodes = two_nodes(tiny_mnist, tmp_path, "--resume_from_checkpoint", "latest")
    # (The launcher adds its own traceback for a process that exits non-zero; train.py adds none.)
    assert all(node.returncode != 0 and 'train.py", line' not in node.stdout for node in nodes)
    assert "error: process 1: --resume_from_checkpoint latest: no saved training state" in nodes[0].stdout
    assert "this node holds only part of one" in nodes[0].stdout
    # A copy of the whole state with a file missing on the second node: its process cannot load what the
    # other loaded, and both stop, the main process saying why.
    shutil.rmtree(other / "checkpoints")
    shutil.copytree(main / "checkpoints", other / "checkpoints")
    (other / "checkpoints" / "epoch_002" / "optimizer.bin").unlink()
    nodes = two_nodes(tiny_mnist, tmp_path, "--resume_from_checkpoint", "latest")
    assert all(node.returncode != 0 and 'train.py", line' not in node.stdout for node in nodes)
    assert "error: process 1: cannot load the training state" in nodes[0].stdout


def test_bad_data_on_another_node_stops_both_with_its_message(tiny_mnist, tmp_path):
    damaged = tmp_path / "damaged"
    (damaged / "MNIST" / "raw").mkdir(parents=True)
    (damaged / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").write_bytes(b"garbage")
    nodes = two_nodes(tiny_mnist, tmp_path, second_data_dir=damaged)
    assert all(node.returncode != 0 and 'train.py", line' not in node.stdout for node in nodes)
    assert "error: process 1: " in nodes[0].stdout and "is damaged (md5 mismatch)" in nodes[0].stdout
