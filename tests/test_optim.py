"""The optimiser by name; the training settings' one home (adder.config) and the flags made from it."""

import argparse
import dataclasses

import pytest
import torch

from adder.config import OPTIMIZER_DEFAULTS, TrainConfig, add_flags, parse_config
from adder.optim import build_optimizer

SGD, ADAMW = OPTIMIZER_DEFAULTS["sgd"], OPTIMIZER_DEFAULTS["adamw"]


def test_each_optimizer_gets_its_settings():
    params = [torch.nn.Parameter(torch.zeros(3))]
    sgd = build_optimizer("sgd", params, 0.1, 5e-4)
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.defaults["lr"] == 0.1 and sgd.defaults["weight_decay"] == 5e-4
    assert sgd.defaults["nesterov"] and sgd.defaults["momentum"] == 0.9
    adamw = build_optimizer("adamw", params, 4e-3, 1e-4)
    assert isinstance(adamw, torch.optim.AdamW)
    assert adamw.defaults["lr"] == 4e-3 and adamw.defaults["weight_decay"] == 1e-4  # not torch's own 0.01
    with pytest.raises(ValueError, match="optimizer must be one of"):
        build_optimizer("adam", params, 1e-3, 0.0)


@pytest.mark.parametrize("argv, expected", [
    ([], ("sgd", SGD["lr"], SGD["weight_decay"])),
    (["--optimizer", "adamw"], ("adamw", ADAMW["lr"], ADAMW["weight_decay"])),
    (["--optimizer", "adamw", "--lr", "0.01"], ("adamw", 0.01, ADAMW["weight_decay"])),
    (["--weight_decay", "0"], ("sgd", SGD["lr"], 0.0)),
])
def test_learning_rate_and_weight_decay_follow_the_optimizer_unless_given(argv, expected):
    config = parse_config(argv)
    assert (config.optimizer, config.lr, config.weight_decay) == expected


def test_the_flags_are_the_config_and_their_defaults_are_its_defaults():
    assert parse_config([]) == TrainConfig()
    assert parse_config(["--widths", "4,4", "8", "8,16", "--no_augment"]).widths == [[4, 4], [8], [8, 16]]


def test_every_flag_shows_its_default_in_its_help():
    parser = argparse.ArgumentParser()
    add_flags(parser)
    flags = {action.dest: action.help for action in parser._actions if action.dest != "help"}
    assert set(flags) == {f.name for f in dataclasses.fields(TrainConfig)}
    for name, help_text in flags.items():
        assert "(default: " in help_text, name
