"""An exponential moving average of the weights, as torchvision's classification reference has it.

``--model-ema`` keeps a copy of the model whose parameters and buffers (BatchNorm
statistics included) follow ``ema = decay * ema + (1 - decay) * weights``, updated
every ``--model-ema-steps`` optimizer steps (torchvision's
``references/classification/utils.ExponentialMovingAverage`` and its use in
``train.py``). The decay is adjusted so that the average spans about the same
share of training whatever the batch, the update interval and the number of
epochs (pycls' adjustment): ``alpha = min(1, (1 - decay) * world_size *
batch_size * steps / epochs)``, and the average's decay is ``1 - alpha``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from .utils import warmup_steps

__all__ = ["ExponentialMovingAverage", "ModelEma", "ema_decay"]


def ema_decay(*, decay: float, steps: int, batch_size: int, world_size: int, epochs: int) -> float:
    """The decay per update that torchvision's reference gives ``--model-ema-decay``.

    Args:
        decay: ``--model-ema-decay`` (torchvision's default 0.99998).
        steps: ``--model-ema-steps``, optimizer steps between updates.
        batch_size: images per step and rank; world_size: ranks; epochs: of the schedule.

    Example: decay 0.99998, 32 steps, 8 ranks of 128, 600 epochs:
    ``adjust = 8 * 128 * 32 / 600 = 54.6``, ``alpha = 2e-5 * 54.6``, decay 0.998908.
    """
    adjust = world_size * batch_size * steps / epochs
    alpha = 1.0 - decay
    alpha = min(1.0, alpha * adjust)
    return 1.0 - alpha


class ExponentialMovingAverage(AveragedModel):
    """torchvision's: ``AveragedModel`` of the parameters and buffers with a fixed ``decay``.

    The first update copies the model (``n_averaged == 0``); later ones average.
    """

    def __init__(self, model: nn.Module, decay: float, device: torch.device | str = "cpu") -> None:
        def ema_avg(
            avg_model_param: torch.Tensor, model_param: torch.Tensor, num_averaged: torch.Tensor
        ) -> torch.Tensor:
            return decay * avg_model_param + (1 - decay) * model_param

        super().__init__(model, device, ema_avg, use_buffers=True)


class ModelEma:
    """The average and torchvision's rule for when to update it.

    After the optimizer step with index ``i`` of an epoch (0-based, as torchvision's
    ``enumerate`` of the loader), the average is updated when ``i % every == 0``;
    during the warmup its count is reset after each update, so that it keeps copying
    the weights until the warmup is over: the learning rate's warmup steps
    (:func:`train.utils.warmup_steps`) where ``steps_per_epoch`` is given,
    else the whole epochs ``epoch < warmup_epochs`` (torchvision's rule, the same for a
    whole number of warmup epochs; with 0.4 it copied for all of the first epoch).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        decay: float,
        every: int,
        warmup_epochs: float,
        steps_per_epoch: int | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.average = ExponentialMovingAverage(_plain(model), decay, device)
        self.decay, self.every, self.warmup_epochs = decay, every, warmup_epochs
        self.steps_per_epoch = steps_per_epoch

    @property
    def module(self) -> nn.Module:
        """The averaged model, to evaluate."""
        return self.average.module

    def after_step(self, model: nn.Module, *, epoch: int, step: int) -> bool:
        """Call after each optimizer step; ``step`` counts this epoch's steps done (from 1).

        Returns:
            Whether the average was updated.
        """
        if (step - 1) % self.every:
            return False
        self.average.update_parameters(_plain(model))
        if self._in_warmup(epoch, step):
            self.average.n_averaged.fill_(0)
        return True

    def _in_warmup(self, epoch: int, step: int) -> bool:
        """Whether the step ``step`` (from 1) of ``epoch`` (from 0) is one of the warmup's."""
        if self.steps_per_epoch is None:
            return epoch < self.warmup_epochs
        warmup = warmup_steps(self.warmup_epochs, self.steps_per_epoch)
        return epoch * self.steps_per_epoch + step <= warmup

    def state_dict(self) -> dict[str, Any]:
        """The averaged weights and ``n_averaged`` (``AveragedModel``'s state, as torchvision)."""
        return self.average.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.average.load_state_dict(state)


def _plain(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel: its parameters without the wrapper's names."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
