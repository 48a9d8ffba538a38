"""The adder network: a small CNN reads the digit; a learned head adds the addend to what the CNN read.

    image (B,1,28,28) ─► CNN ─► features (B,F) ─► digit head ─► digit logits (B,10)
                                                                     │ softmax p (B,10)
    addend (B,) ─► one-hot e (B,10) ─────────────────────────────────┤
                                                                     ▼
                                  outer product p ⊗ e (B,100) ─► linear ─► sum logits (B,19)

How the two inputs meet is `sum_head`:
    outer           (default) the outer product of the digit probabilities and the one-hot addend: a
                    distribution over the 100 (digit, addend) combinations, which one linear layer maps
                    to the 19 sums; it learns the addition table, one weight column per combination.
    concat_probs    digit probabilities concatenated with the one-hot addend, then an MLP.
    concat_features CNN features concatenated with the one-hot addend, then an MLP.
Reading the digit probabilities makes the sum depend on the image only through the digit the network
believes it sees, so the two answers agree; docs/experiments.md has the ablation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

NUM_DIGITS, NUM_ADDENDS, NUM_SUMS = 10, 10, 19
SUM_HEADS = ("outer", "concat_probs", "concat_features")
OUTER_GAIN = 10.0


@dataclass
class ModelConfig:
    # channels of the 3x3 convs at 28x28, at 14x14 (after a 2x2 max-pool) and at 7x7 (after another)
    widths: list[list[int]] = field(default_factory=lambda: [[12, 16], [24, 32], [32, 32, 48]])
    sum_head: str = "outer"  # how digit and addend meet: outer | concat_probs | concat_features
    sum_hidden: int = 64  # hidden units of the MLP of the concat_* sum heads

    def __post_init__(self):
        try:
            self.widths = [[int(w) for w in stage] for stage in self.widths]
        except (TypeError, ValueError):
            raise ValueError(f"widths must be three lists of channel counts, got {self.widths!r}") from None
        if len(self.widths) != 3 or not all(stage and min(stage) >= 1 for stage in self.widths):
            raise ValueError(f"widths must be three non-empty lists of positive channel counts (at 28x28, 14x14 "
                             f"and 7x7), got {self.widths}")
        if self.sum_head not in SUM_HEADS:
            raise ValueError(f"sum_head must be one of {SUM_HEADS}, got {self.sum_head!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class AdderNet(nn.Module):
    def __init__(self, config: ModelConfig | None = None):
        super().__init__()
        self.config = config or ModelConfig()
        layers, channels = [], 1
        for resolution, stage in enumerate(self.config.widths):
            if resolution:
                layers.append(nn.MaxPool2d(2))  # 28 -> 14 -> 7
            for width in stage:
                layers.append(conv_block(channels, width))
                channels = width
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.digit_head = nn.Linear(channels, NUM_DIGITS)
        if self.config.sum_head == "outer":
            self.sum_head = nn.Linear(NUM_DIGITS * NUM_ADDENDS, NUM_SUMS)
        else:
            read_size = NUM_DIGITS if self.config.sum_head == "concat_probs" else channels
            self.sum_head = nn.Sequential(
                nn.Linear(read_size + NUM_ADDENDS, self.config.sum_hidden),
                nn.ReLU(inplace=True),
                nn.Linear(self.config.sum_hidden, NUM_SUMS),
            )

    def forward(self, image: torch.Tensor, addend: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Digit logits (B, 10) and sum logits (B, 19).

        `addend` may also be (B, K): K addends per image give sum logits (B, K, 19) while the CNN runs once
        per image; evaluation scores all ten addends this way.
        """
        self.check_inputs(image, addend)
        return self.heads(self.features(image), addend)

    def check_inputs(self, image: torch.Tensor, addend: torch.Tensor) -> None:
        if image.dim() != 4 or image.shape[1:] != (1, 28, 28):
            raise ValueError(f"image must be (B, 1, 28, 28), got {tuple(image.shape)}")
        if addend.dtype not in (torch.int64, torch.int32) or addend.shape[0] != image.shape[0] or addend.dim() > 2:
            raise ValueError(f"addend must be integer (B,) or (B, K) with B={image.shape[0]}, got "
                             f"{addend.dtype} {tuple(addend.shape)}")
        if not self.training and len(addend) and not 0 <= int(addend.min()) <= int(addend.max()) <= 9:
            # Checked outside training only: it costs a host sync, and training addends are 0..9 by construction.
            raise ValueError(f"addend must be between 0 and 9, got values {addend.min()}..{addend.max()}")

    def heads(self, features: torch.Tensor, addend: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Digit and sum logits from the CNN's pooled features (B, F)."""
        digit_logits = self.digit_head(features)
        read = features if self.config.sum_head == "concat_features" else digit_logits.softmax(-1)
        if addend.dim() == 2:
            read = read.unsqueeze(1).expand(-1, addend.shape[1], -1)
        addend_one_hot = F.one_hot(addend.long(), NUM_ADDENDS).to(read.dtype)
        if self.config.sum_head == "outer":
            # The entries of p_digit x e_addend lie in [0, 1] and sum to 1: each sum logit is a weighted mean of
            # the weights of the combinations, and each weight's gradient is scaled by its combination's share.
            # Without a gain, confident logits (about 10) need weights of about 10, many steps away at the
            # learning rates used; the gain brings them within the first epoch. Chosen in AdamW runs; SGD trains
            # well with it too (docs/experiments.md).
            combined = OUTER_GAIN * (read.unsqueeze(-1) * addend_one_hot.unsqueeze(-2)).flatten(-2)
        else:
            combined = torch.cat([read, addend_one_hot], dim=-1)
        return digit_logits, self.sum_head(combined)


class ShiftAveraged(nn.Module):
    """Test-time augmentation: `model` reads the image and its four one-pixel shifts (five CNN passes), and
    its heads see the average of the five feature vectors.

    Averaging the features, not the two heads' outputs, keeps the sum head reading one digit distribution,
    so the two answers stay as consistent as without the shifts; the digit head is linear, so its logits are
    the mean of the five copies' logits. Rolling is enough for the shifts: MNIST digits sit inside a blank
    border, so only background wraps around the edge.
    """

    SHIFTS = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))  # (rows, columns)

    def __init__(self, model: AdderNet):
        super().__init__()
        self.model = model
        # The model's mode: evaluate() puts back the wrapper's mode when done, and train() passes it down.
        self.train(model.training)

    def forward(self, image: torch.Tensor, addend: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.model.check_inputs(image, addend)
        shifted = torch.cat([image.roll(shift, dims=(2, 3)) for shift in self.SHIFTS])
        features = self.model.features(shifted).unflatten(0, (len(self.SHIFTS), -1)).mean(0)
        return self.model.heads(features, addend)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
