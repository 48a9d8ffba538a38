"""The training settings: one dataclass, the one place that defines every default.

train.py's flags are made from it (each field's help is its flag's help), and the learning-rate finder, the
benchmark and best.pt (its "train_config") take their settings from it. The architecture's defaults live in
adder.model.ModelConfig, which the model fields here read.
"""

from __future__ import annotations

import argparse
import copy
import math
from dataclasses import MISSING, asdict, dataclass, field, fields

from adder.errors import ArgumentParser
from adder.model import SUM_HEADS, ModelConfig

OPTIMIZERS = ("sgd", "adamw")
# Peak learning rate and weight decay of each optimiser, the defaults of --lr and --weight_decay. SGD's are
# common values for small CNNs, not tuned here; AdamW's are those of the AdamW runs in docs/experiments.md
# (section 3).
OPTIMIZER_DEFAULTS = {"sgd": {"lr": 0.1, "weight_decay": 5e-4}, "adamw": {"lr": 4e-3, "weight_decay": 1e-4}}


def number(text: str, kind: type) -> int | float:
    """text as `kind` (int or float); else an error that says so (argparse's own names the parsing function)."""
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {'an integer' if kind is int else 'a number'}, got {text!r}") from None


def positive_int(text: str) -> int:
    value = number(text, int)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def non_negative_float(text: str) -> float:
    value = number(text, float)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    value = number(text, float)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def unit_fraction(text: str) -> float:
    value = number(text, float)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def seed_value(text: str) -> int:
    value = number(text, int)
    if not 0 <= value < 2**32:  # numpy's seeds, which accelerate's set_seed sets too
        raise argparse.ArgumentTypeError(f"must be in [0, 2**32), got {value}")
    return value


def state_name(text: str) -> str:
    # An empty value (an unset shell variable) would otherwise read as no flag: a new run over the old one.
    if not text:
        raise argparse.ArgumentTypeError("give 'latest' or a checkpoints/epoch_N folder")
    return text


def conv_stage(text: str) -> list[int]:
    """'16,24' -> [16, 24]: the channels of one resolution's convs."""
    return [positive_int(part) for part in text.split(",")]


def per_optimizer(name: str) -> str:
    """'(default: 0.1 for sgd, 0.004 for adamw)': the help of a setting whose default follows --optimizer."""
    return f"(default: {', '.join(f'{values[name]:g} for {opt}' for opt, values in OPTIMIZER_DEFAULTS.items())})"


def setting(default, help: str, **flag):
    """A field whose default and help text are also its command-line flag's; `flag` holds argparse options."""
    if isinstance(default, list):  # a mutable default: each config gets its own copy
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help, **flag})
    return field(default=default, metadata={"help": help, **flag})


@dataclass
class TrainConfig:
    # data
    data_dir: str = setting("data", "folder holding MNIST/raw/ (downloaded there if absent)")
    val_size: int = setting(5000, "training images held out to choose best.pt", type=positive_int)
    no_augment: bool = setting(False, "train on the images as they are")
    rotate: float = setting(10.0, "augmentation: max rotation, degrees", type=non_negative_float)
    shift: float = setting(0.1, "augmentation: max shift, fraction of the width (below 0.5)",
                          type=non_negative_float)
    zoom: float = setting(0.1, "augmentation: max zoom in or out, fraction (below 1)", type=non_negative_float)
    # model (defaults: adder.model.ModelConfig)
    widths: list = setting(ModelConfig().widths, "channels of the 3x3 convs at 28x28, 14x14 and 7x7",
                           type=conv_stage, nargs=3, metavar="C[,C...]")
    sum_head: str = setting(ModelConfig().sum_head, "how digit and addend meet (the ablation in docs/)",
                            choices=SUM_HEADS)
    sum_hidden: int = setting(ModelConfig().sum_hidden, "hidden units of the concat_* sum heads' MLP",
                              type=positive_int)
    # optimisation
    epochs: int = setting(20, "passes over the training images", type=positive_int)
    batch_size: int = setting(512, "images per step and process", type=positive_int)
    optimizer: str = setting("sgd", "SGD with Nesterov momentum, or AdamW", choices=OPTIMIZERS)
    lr: float | None = setting(None, f"peak learning rate of the one-cycle schedule {per_optimizer('lr')}",
                               type=positive_float)
    weight_decay: float | None = setting(None, f"weight decay {per_optimizer('weight_decay')}",
                                         type=non_negative_float)
    sum_weight: float = setting(1.0, "weight of the sum loss against the digit loss", type=non_negative_float)
    label_smoothing: float = setting(0.1, "cross-entropy label smoothing in [0, 1); 0 is plain cross-entropy",
                                     type=unit_fraction)
    ema_decay: float = setting(0.0, "validate and save a moving average of the weights, its decay warming up "
                                    "as (1+n)/(10+n) after n steps to at most this, e.g. 0.999 (0: off)",
                               type=unit_fraction)
    seed: int = setting(42, "seeds initialisation, shuffling, addends and augmentation", type=seed_value)
    # hardware
    cpu: bool = setting(False, "train on the CPU even if a GPU is present")
    mixed_precision: str | None = setting(None, "no, fp16 (GPU only) or bf16 (default: the accelerate config's on a "
                                                "GPU; on a CPU bf16 where it is native, else no)",
                                          choices=["no", "fp16", "bf16"])
    no_cuda_graph: bool = setting(False, "on a CUDA GPU, launch the training step's kernels one by one instead "
                                         "of replaying them from a CUDA graph (one process, no torch.compile)")
    no_cudnn_benchmark: bool = setting(False, "on a CUDA GPU, let cuDNN choose its convolution algorithms by "
                                              "heuristics instead of timing them at each new input shape")
    # bookkeeping
    output_dir: str = setting(".", "where best.pt, checkpoints/ and logs/ go")
    resume_from_checkpoint: str | None = setting(None, "continue a run: 'latest' or a checkpoints/epoch_N folder "
                                                       "(default: a new run)", type=state_name)
    keep_states: int = setting(2, "how many epochs' training states to keep", type=positive_int)
    log_every: int = setting(20, "steps between train-loss logs (each is a host sync)", type=positive_int)
    report_to: str = setting("wandb", "experiment tracker", choices=["wandb", "none"])
    run_name: str | None = setting(None, "name of the wandb run (default: wandb's)")
    no_log_model: bool = setting(False, "keep best.pt out of the wandb run (otherwise a model artifact)")

    def __post_init__(self):
        if not self.zoom < 1:
            raise ValueError(f"--zoom must be below 1, got {self.zoom}")
        if not self.shift < 0.5:  # half the width moves the digit's centre to the edge: mostly blank images
            raise ValueError(f"--shift must be below 0.5 (a fraction of the width), got {self.shift}")
        defaults = OPTIMIZER_DEFAULTS[self.optimizer]
        self.lr = defaults["lr"] if self.lr is None else self.lr
        self.weight_decay = defaults["weight_decay"] if self.weight_decay is None else self.weight_decay

    @property
    def model_config(self) -> ModelConfig:
        return ModelConfig(widths=self.widths, sum_head=self.sum_head, sum_hidden=self.sum_hidden)

    @property
    def augment(self) -> dict | None:
        """random_warp's arguments, or None without augmentation."""
        return None if self.no_augment else {"rotate": self.rotate, "shift": self.shift, "zoom": self.zoom}

    def to_dict(self) -> dict:
        return asdict(self)


def add_flags(parser: argparse.ArgumentParser) -> None:
    """One --flag per field of TrainConfig, with the field's default, help and argparse options."""
    for f in fields(TrainConfig):
        options = dict(f.metadata)
        default = f.default if f.default is not MISSING else f.default_factory()
        if isinstance(default, bool):
            parser.add_argument(f"--{f.name}", action="store_true", help=f"{options['help']} (default: off)")
            continue
        if default is not None:  # a None default's help says itself what it stands for
            shown = " ".join(",".join(map(str, x)) for x in default) if f.name == "widths" else default
            options["help"] = f"{options['help']} (default: {shown})"
        parser.add_argument(f"--{f.name}", default=default, **options)


def parse_config(argv=None, description: str | None = None) -> TrainConfig:
    parser = ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_flags(parser)
    args = parser.parse_args(argv)
    try:
        return TrainConfig(**vars(args))
    except ValueError as err:
        parser.error(str(err))
