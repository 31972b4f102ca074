"""``--model-ema``: torchvision's exponential moving average, against a hand computation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from train.ema import ModelEma, ema_decay


def _tiny_model() -> nn.Module:
    """A linear layer and a BatchNorm: parameters, float buffers and an integer buffer."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))


def _set(model: nn.Module, value: float) -> None:
    """Every parameter and float buffer filled with ``value``, the batch count with 10 * value."""
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.fill_(value if tensor.is_floating_point() else int(10 * value))


def _state(ema: ModelEma) -> dict[str, torch.Tensor]:
    return {k: v for k, v in ema.module.state_dict().items()}


def test_the_average_follows_torchvisions_formula_every_n_steps() -> None:
    model, decay = _tiny_model(), 0.75
    ema = ModelEma(model, decay=decay, every=3, warmup_epochs=0)
    _set(model, 2.0)
    assert ema.after_step(model, epoch=0, step=1)  # the first update copies the weights
    assert all(
        torch.equal(v, torch.full_like(v, 2.0 if v.is_floating_point() else 20))
        for v in _state(ema).values()
    )
    assert int(ema.average.n_averaged) == 1
    _set(model, 6.0)
    assert not ema.after_step(model, epoch=0, step=2)  # steps 2 and 3: no update
    assert not ema.after_step(model, epoch=0, step=3)
    assert torch.equal(ema.module[0].weight, torch.full((2, 3), 2.0))
    assert ema.after_step(model, epoch=0, step=4)  # index 3 of the epoch: 3 % 3 == 0
    # ema * decay + (1 - decay) * weights = 0.75 * 2 + 0.25 * 6 = 3, in every parameter
    # and float buffer (use_buffers=True: the BatchNorm statistics are averaged too).
    state = _state(ema)
    for name in ("0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var"):
        assert torch.equal(state[name], torch.full_like(state[name], 3.0)), name
    assert int(state["1.num_batches_tracked"]) == 30  # 0.75 * 20 + 0.25 * 60
    assert int(ema.average.n_averaged) == 2
    _set(model, 10.0)
    ema.after_step(model, epoch=1, step=1)  # a new epoch starts its count at step 1
    assert torch.equal(ema.module[0].bias, torch.full((2,), 0.75 * 3.0 + 0.25 * 10.0))


def test_an_inexact_decay_is_applied_as_torchvision_computes_it() -> None:
    model = _tiny_model()
    decay = ema_decay(decay=0.99998, steps=32, batch_size=64, world_size=1, epochs=6)
    ema = ModelEma(model, decay=decay, every=1, warmup_epochs=0)
    first = model[0].weight.detach().clone()
    ema.after_step(model, epoch=0, step=1)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ema.after_step(model, epoch=0, step=2)
    expected = decay * first + (1 - decay) * model[0].weight.detach()
    assert torch.equal(ema.module[0].weight, expected)
    assert decay == pytest.approx(1 - 2e-5 * 64 * 32 / 6, abs=1e-12)
    expected64 = decay * first.double() + (1 - decay) * model[0].weight.detach().double()
    assert torch.allclose(ema.module[0].weight.double(), expected64, atol=1e-6, rtol=0)


def test_during_warmup_the_average_keeps_copying_the_weights() -> None:
    model = _tiny_model()
    ema = ModelEma(model, decay=0.5, every=1, warmup_epochs=2)
    for epoch, value in ((0, 1.0), (1, 4.0)):  # warmup: each update copies
        _set(model, value)
        ema.after_step(model, epoch=epoch, step=1)
        assert int(ema.average.n_averaged) == 0
        assert torch.equal(ema.module[0].weight, torch.full((2, 3), value))
    _set(model, 8.0)
    ema.after_step(model, epoch=2, step=1)  # warmup over, but the count was reset: a copy
    _set(model, 0.0)
    ema.after_step(model, epoch=2, step=2)
    assert torch.equal(ema.module[0].weight, torch.full((2, 3), 4.0))  # 0.5 * 8 + 0.5 * 0
    assert int(ema.average.n_averaged) == 2


def test_the_state_round_trips_exactly() -> None:
    model = _tiny_model()
    ema = ModelEma(model, decay=0.9, every=1, warmup_epochs=0)
    for step in (1, 2):
        _set(model, float(step))
        ema.after_step(model, epoch=0, step=step)
    restored = ModelEma(_tiny_model(), decay=0.9, every=1, warmup_epochs=0)
    restored.load_state_dict(ema.state_dict())
    assert int(restored.average.n_averaged) == 2
    _set(model, 5.0)
    for average in (ema, restored):
        average.after_step(model, epoch=0, step=3)
    assert all(torch.equal(a, b) for a, b in zip(_state(ema).values(), _state(restored).values()))
    assert "n_averaged" in ema.state_dict()  # torchvision's checkpoint key layout


def test_a_fractional_warmup_ends_with_the_learning_rates_warmup_steps() -> None:
    # --epochs 2 on the embedded set: a warmup of 0.4 epochs; the average copied the weights
    # for all of the first epoch (epoch 0 < 0.4), not its first 4 steps of 10
    model = _tiny_model()
    ema = ModelEma(model, decay=0.5, every=1, warmup_epochs=0.4, steps_per_epoch=10)
    for step in range(1, 5):  # round(0.4 * 10) = 4 warmup steps: each update copies
        _set(model, float(step))
        ema.after_step(model, epoch=0, step=step)
        assert int(ema.average.n_averaged) == 0
    _set(model, 8.0)
    ema.after_step(model, epoch=0, step=5)  # the first update after it: the count was reset
    _set(model, 0.0)
    ema.after_step(model, epoch=0, step=6)
    assert torch.equal(ema.module[0].weight, torch.full((2, 3), 4.0))  # 0.5 * 8 + 0.5 * 0
    assert int(ema.average.n_averaged) == 2
    # a whole number of warmup epochs: torchvision's rule, epoch < warmup_epochs, exactly
    whole = ModelEma(model, decay=0.5, every=1, warmup_epochs=2, steps_per_epoch=10)
    assert [whole._in_warmup(e, s) for e, s in ((1, 10), (2, 1))] == [True, False]
