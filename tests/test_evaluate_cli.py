"""evaluate.py's errors about checkpoints and data; the LR-finder module on tiny data.
(evaluate.py on your own pictures: test_digit_image.py.)"""

import math

import pytest
import torch

from adder.checkpoint import save_checkpoint
from adder.config import TrainConfig
from adder import lr_find
from adder.lr_find import lr_range_test, suggest
from adder.data import DeviceMNIST, load_mnist
import evaluate
from conftest import CreatesFileWhenUnpickled, run_cli, tiny_net


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    torch.manual_seed(0)
    model = tiny_net()
    save_checkpoint(path, model, train_config={"sum_weight": 1.0, "label_smoothing": 0.0}, epoch=1,
                    val_metrics={"joint_acc": 0.1})
    return path


@pytest.mark.parametrize("write, message", [
    (lambda p: None, "no such checkpoint file"),
    (lambda p: p.write_text("just text"), "not a readable PyTorch checkpoint"),
])
def test_bad_checkpoints_end_evaluate_with_one_error(tmp_path, capsys, write, message):
    # evaluate.main in this process; the CLI case below shows the user's view of the same exit.
    path = tmp_path / "best.pt"
    write(path)
    with pytest.raises(SystemExit) as exit_:
        evaluate.main(["--ckpt", str(path)])
    (line,) = capsys.readouterr().err.splitlines()
    assert exit_.value.code == 1 and line.startswith("error: ") and message in line


def test_a_checkpoint_that_would_run_code_gets_one_clear_error(tmp_path):
    path, marker = tmp_path / "best.pt", tmp_path / "pwned"
    torch.save({"model_state": CreatesFileWhenUnpickled(str(marker))}, path)
    result = run_cli(["evaluate.py", "--ckpt", str(path)], check=False)
    assert result.returncode != 0 and "refused to load: it would call" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "weights_only" not in result.stderr and not marker.exists()
    assert result.stderr.strip().splitlines() == [line for line in result.stderr.strip().splitlines()
                                                  if line.startswith("error: ")]


@pytest.mark.parametrize("processes", [1, 2])
def test_missing_data_gets_one_clear_error(ckpt, tmp_path, processes):
    # A proxy on a closed local port: the download fails at once, with or without a real network.
    dead_proxy = "http://127.0.0.1:9"
    result = run_cli(["evaluate.py", "--ckpt", str(ckpt), "--data_dir", str(tmp_path), "--cpu"], check=False,
                     processes=processes, env={"http_proxy": dead_proxy, "https_proxy": dead_proxy,
                                               "HTTP_PROXY": dead_proxy, "HTTPS_PROXY": dead_proxy, "no_proxy": "",
                                               "NO_PROXY": ""})
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode != 0 and error.startswith("error: MNIST is not in") and "downloading it failed" in error
    # Every process stopped, none waiting for another; (with 2, the launcher adds its own traceback)
    assert 'evaluate.py", line' not in result.stderr


def test_lr_range_test_sweeps_and_suggests(tiny_mnist):
    images, labels = load_mnist(tiny_mnist, train=True, download=False)
    torch.manual_seed(0)
    lrs, losses = lr_range_test(tiny_net(), DeviceMNIST(images, labels),
                                TrainConfig(batch_size=64), steps=40, end_lr=100.0)
    assert len(lrs) == len(losses) and lrs[0] == pytest.approx(1e-5)
    lowest = losses.index(min(losses))
    assert losses[lowest] < 0.95 * losses[0]  # the model learned at moderate rates
    # ... and diverged at the high end, which stopped the sweep before its 40 steps
    assert len(lrs) < 40 and losses[-1] > 4 * losses[lowest]
    assert lrs[0] < suggest(lrs, losses) < lrs[lowest]  # where the loss falls, not where it is lowest


def test_the_suggested_rate_is_where_the_loss_falls_fastest():
    lrs = [1e-5 * 10 ** (6 * i / 99) for i in range(100)]  # 1e-5 to 10, 15 % apart
    losses = [2 - math.tanh(2 * (math.log10(lr) + 2)) for lr in lrs]  # falls fastest at 1e-2
    assert suggest(lrs, losses) == pytest.approx(1e-2, rel=0.15)


def test_lr_range_test_refuses_too_few_steps_with_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        lr_find.main(["--steps", "1"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith("error: --steps: at least 10, got 1")
