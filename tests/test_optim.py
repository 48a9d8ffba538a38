"""The optimiser by name, and the defaults of --lr and --weight_decay that follow it."""

import importlib.util

import pytest
import torch

from adder.optim import DEFAULTS, build_optimizer
from conftest import ROOT


def load_train_script():
    spec = importlib.util.spec_from_file_location("train_script", ROOT / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_each_optimizer_gets_its_settings():
    params = [torch.nn.Parameter(torch.zeros(3))]
    sgd = build_optimizer("sgd", params, 0.1, 5e-4)
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.defaults["nesterov"] and sgd.defaults["momentum"] == 0.9 and sgd.defaults["weight_decay"] == 5e-4
    adamw = build_optimizer("adamw", params, 4e-3, 1e-4)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["lr"] == 4e-3
    with pytest.raises(ValueError, match="optimizer must be one of"):
        build_optimizer("adam", params, 1e-3, 0.0)


@pytest.mark.parametrize("argv, expected", [
    ([], ("sgd", *DEFAULTS["sgd"])),
    (["--optimizer", "adamw"], ("adamw", *DEFAULTS["adamw"])),
    (["--optimizer", "adamw", "--lr", "0.01"], ("adamw", 0.01, DEFAULTS["adamw"][1])),
    (["--weight_decay", "0"], ("sgd", DEFAULTS["sgd"][0], 0.0)),
])
def test_learning_rate_and_weight_decay_follow_the_optimizer_unless_given(argv, expected):
    args = load_train_script().parse_args(argv)
    assert (args.optimizer, args.lr, args.weight_decay) == expected
