import torch
from torch import nn

from adder.ema import moving_average


def net_with_weights(value: float) -> nn.Sequential:
    net = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    with torch.no_grad():
        for tensor in net.state_dict().values():
            if tensor.is_floating_point():
                tensor.fill_(value)
    return net


def test_first_update_copies_then_warm_up_decay_applies():
    net = net_with_weights(1.0)
    ema = moving_average(net_with_weights(-5.0), decay=0.999)
    ema.update_parameters(net)  # the first update copies
    assert torch.equal(ema.module[0].weight, net[0].weight)
    ema.update_parameters(net_with_weights(0.0))
    # After one update the decay is min(0.999, 2 / 11): the new weights get 9/11.
    for tensor in (ema.module[0].weight, ema.module[0].bias, ema.module[1].running_mean, ema.module[1].running_var):
        assert torch.allclose(tensor, torch.full_like(tensor, 2 / 11))


def test_decay_is_capped_once_warmed_up():
    ema = moving_average(net_with_weights(1.0), decay=0.5)
    ema.update_parameters(net_with_weights(1.0))
    ema.n_averaged.fill_(1000)  # (1 + n) / (10 + n) > 0.5: the cap rules
    ema.update_parameters(net_with_weights(0.0))
    assert torch.allclose(ema.module[0].weight, torch.full((2, 3), 0.5))


def test_batchnorm_counter_is_copied_not_averaged():
    net = net_with_weights(0.0)
    ema = moving_average(net, decay=0.9)
    net.train()
    for batches_seen in (3, 5):
        while int(net[1].num_batches_tracked) < batches_seen:
            net(torch.randn(8, 3))
        ema.update_parameters(net)
    assert int(ema.module[1].num_batches_tracked) == 5  # an average of 3 and 5 would not be
