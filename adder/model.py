"""The adder network: a small CNN reads the digit; an MLP adds the addend to what the CNN read.

    image (B,1,28,28) ─► CNN ─► features (B,F) ─► digit head ─► digit logits (B,10)
                                                                     │ softmax
    addend (B,) ─► one-hot (B,10) ──────────────────────────────────►┤ concat (B,20)
                                                                     ▼
                                                     sum MLP ─► sum logits (B,19)

The sum head reads the digit head's probabilities rather than the raw CNN features (`sum_input`): the sum
then depends on the image only through the digit the network believes it sees, which makes the two
answers agree (see the ablation in README.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

NUM_DIGITS, NUM_SUMS = 10, 19
SUM_INPUTS = ("digit_probs", "features")


@dataclass
class ModelConfig:
    widths: list[int] = field(default_factory=lambda: [16, 24, 32, 32, 48])  # channels of the five 3x3 convs
    sum_hidden: int = 64  # hidden units of the sum MLP
    sum_input: str = "digit_probs"  # what the sum head reads besides the addend: digit_probs | features

    def __post_init__(self):
        self.widths = [int(w) for w in self.widths]
        if len(self.widths) != 5 or min(self.widths) < 1:
            raise ValueError(f"widths must be five positive channel counts, got {self.widths}")
        if self.sum_input not in SUM_INPUTS:
            raise ValueError(f"sum_input must be one of {SUM_INPUTS}, got {self.sum_input!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class AdderNet(nn.Module):
    def __init__(self, config: ModelConfig | None = None):
        super().__init__()
        self.config = config or ModelConfig()
        w = self.config.widths
        self.features = nn.Sequential(
            conv_block(1, w[0]),
            conv_block(w[0], w[1]),
            nn.MaxPool2d(2),  # 28 -> 14
            conv_block(w[1], w[2]),
            conv_block(w[2], w[3]),
            nn.MaxPool2d(2),  # 14 -> 7
            conv_block(w[3], w[4]),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.digit_head = nn.Linear(w[4], NUM_DIGITS)
        sum_in = NUM_DIGITS if self.config.sum_input == "digit_probs" else w[4]
        self.sum_head = nn.Sequential(
            nn.Linear(sum_in + NUM_DIGITS, self.config.sum_hidden),
            nn.ReLU(inplace=True),
            nn.Linear(self.config.sum_hidden, NUM_SUMS),
        )

    def forward(self, image: torch.Tensor, addend: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Digit logits (B, 10) and sum logits (B, 19).

        `addend` may also be (B, K): K addends per image give sum logits (B, K, 19) while the CNN runs once
        per image; evaluation scores all ten addends this way.
        """
        if image.dim() != 4 or image.shape[1:] != (1, 28, 28):
            raise ValueError(f"image must be (B, 1, 28, 28), got {tuple(image.shape)}")
        if addend.dtype not in (torch.int64, torch.int32) or addend.shape[0] != image.shape[0] or addend.dim() > 2:
            raise ValueError(f"addend must be integer (B,) or (B, K) with B={image.shape[0]}, got "
                             f"{addend.dtype} {tuple(addend.shape)}")
        features = self.features(image)
        digit_logits = self.digit_head(features)
        read = digit_logits.softmax(-1) if self.config.sum_input == "digit_probs" else features
        if addend.dim() == 2:
            read = read.unsqueeze(1).expand(-1, addend.shape[1], -1)
        # one_hot checks the range itself, but only deep inside torch and with a device sync; this is the API's edge.
        addend_one_hot = F.one_hot(addend.long(), NUM_DIGITS).to(read.dtype)
        sum_logits = self.sum_head(torch.cat([read, addend_one_hot], dim=-1))
        return digit_logits, sum_logits


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
