import pytest
import torch

from adder.data import DeviceMNIST
from adder.evaluation import evaluate
from adder.model import NUM_DIGITS, NUM_SUMS, SUM_HEADS, AdderNet, ModelConfig, ShiftAveraged, count_parameters
from conftest import tiny_net


@pytest.mark.parametrize("sum_head", SUM_HEADS)
def test_two_inputs_two_outputs(sum_head):
    model = AdderNet(ModelConfig(sum_head=sum_head)).eval()
    images, addends = torch.randn(5, 1, 28, 28), torch.randint(0, 10, (5,))
    digit_logits, sum_logits = model(images, addends)
    assert digit_logits.shape == (5, NUM_DIGITS) and sum_logits.shape == (5, NUM_SUMS)
    assert digit_logits.dtype == sum_logits.dtype == torch.float32


@pytest.mark.parametrize("sum_head", SUM_HEADS)
def test_all_addends_at_once_match_one_by_one(sum_head):
    model = AdderNet(ModelConfig(sum_head=sum_head)).eval()
    images = torch.randn(4, 1, 28, 28)
    digit_logits, all_sums = model(images, torch.arange(10).expand(4, 10))
    assert all_sums.shape == (4, 10, NUM_SUMS)
    for addend in range(10):
        digit_one, sum_one = model(images, torch.full((4,), addend))
        torch.testing.assert_close(sum_one, all_sums[:, addend])
        torch.testing.assert_close(digit_one, digit_logits)


def test_the_outer_head_holds_the_addition_table_in_one_linear_layer():
    # What the outer head is for: with one weight per (digit, addend) combination set to the table, digit
    # logits that name digit d give the sum d + a for every addend a; a head that lost either input could not.
    model = AdderNet().eval()
    digits, addends = torch.arange(10).repeat_interleave(10), torch.arange(10).repeat(10)  # all 100 pairs
    with torch.no_grad():
        model.digit_head.weight.zero_().diagonal().fill_(1.0)  # logit d = feature d
        model.digit_head.bias.zero_()
        table = (digits + addends).unsqueeze(0) == torch.arange(NUM_SUMS).unsqueeze(1)  # (19, 100)
        model.sum_head.weight.copy_(table.float())
        model.sum_head.bias.zero_()
    features = torch.zeros(100, model.digit_head.in_features)
    features[torch.arange(100), digits] = 5.0
    digit_logits, sum_logits = model.heads(features, addends)
    assert torch.equal(digit_logits.argmax(-1), digits)
    assert torch.equal(sum_logits.argmax(-1), digits + addends)


def test_default_model_fits_the_parameter_budget():
    parameters = count_parameters(AdderNet())
    assert parameters <= 50_000
    assert parameters == 47_261  # the count README.md and best.pt's log state


@pytest.mark.parametrize("images, addends, message", [
    (torch.randn(2, 28, 28), torch.zeros(2, dtype=torch.long), "image must be"),
    (torch.randn(2, 3, 28, 28), torch.zeros(2, dtype=torch.long), "image must be"),
    (torch.randn(2, 1, 28, 28), torch.zeros(2), "addend must be integer"),
    (torch.randn(2, 1, 28, 28), torch.zeros(3, dtype=torch.long), "addend must be integer"),
    (torch.randn(2, 1, 28, 28), torch.tensor([0, 10]), "addend must be between 0 and 9"),
    (torch.randn(2, 1, 28, 28), torch.tensor([-1, 3]), "addend must be between 0 and 9"),
])
def test_bad_inputs_get_clear_errors(images, addends, message):
    with pytest.raises(ValueError, match=message):
        AdderNet().eval()(images, addends)


@pytest.mark.parametrize("config, message", [
    ({"widths": [[8], [8]]}, "widths must be three"),
    ({"widths": [[8], [], [8]]}, "widths must be three"),
    ({"widths": [[8], [8, 0], [8]]}, "widths must be three"),
    ({"widths": [8, 8, 8, 8, 8]}, "widths must be three"),
    ({"sum_head": "magic"}, "sum_head must be one of"),
])
def test_bad_configs_get_clear_errors(config, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**config)


@pytest.mark.parametrize("sum_head", SUM_HEADS)
def test_shift_averaging_feeds_the_heads_the_mean_of_the_shifted_features(sum_head):
    model = AdderNet(ModelConfig(sum_head=sum_head)).eval()
    images, addends = torch.randn(3, 1, 28, 28), torch.arange(10).expand(3, 10)
    digit_logits, sum_logits = ShiftAveraged(model)(images, addends)
    assert digit_logits.shape == (3, NUM_DIGITS) and sum_logits.shape == (3, 10, NUM_SUMS)
    features = torch.stack([model.features(images.roll(shift, dims=(2, 3))) for shift in ShiftAveraged.SHIFTS])
    expected_digit, expected_sum = model.heads(features.mean(0), addends)
    torch.testing.assert_close(digit_logits, expected_digit)
    torch.testing.assert_close(sum_logits, expected_sum)
    assert not torch.allclose(digit_logits, model(images, addends)[0])  # the shifts do matter
    with pytest.raises(ValueError, match="addend must be between 0 and 9"):
        ShiftAveraged(model)(images, addends + 1)


def test_evaluating_the_shift_average_leaves_the_model_in_its_mode():
    # evaluate() puts back the mode it found; a wrapper in training mode would set the wrapped model training.
    model = tiny_net().eval()
    data = DeviceMNIST(torch.randint(0, 256, (7, 28, 28), dtype=torch.uint8), torch.randint(0, 10, (7,)))
    evaluate(ShiftAveraged(model), data)
    assert not model.training
