"""The network: a torchvision ResNet on its device, its weights' moving average, and how
batches reach it (device, autocast, memory format)."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from .config import Device, Precision, TrainConfig
from .data import images_are_nhwc
from .ema import ModelEma, ema_decay
from .engine import StepOptions
from .utils import DistInfo

__all__ = ["build_model", "build_model_ema", "step_options", "unwrapped"]

_AUTOCAST = {Precision.FP32: None, Precision.BF16: torch.bfloat16, Precision.FP16: torch.float16}


def build_model(config: TrainConfig, info: DistInfo) -> nn.Module:
    """The ResNet on its device (channels-last if asked), wrapped in DDP with several ranks."""
    with torch.random.fork_rng(devices=[]):  # the initialisation depends on the seed only
        torch.manual_seed(config.seed)
        model = torchvision.models.get_model(config.arch, num_classes=config.data.num_classes)
    model = model.to(info.device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if info.distributed:
        ids = [info.local_rank] if config.device is Device.GPU else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    return model


def unwrapped(model: nn.Module) -> nn.Module:
    """The model itself, out of its DDP wrapper if it has one."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def step_options(config: TrainConfig, info: DistInfo) -> StepOptions:
    """How batches reach the model: device, autocast, memory format."""
    return StepOptions(
        device=info.device,
        autocast_dtype=_AUTOCAST[config.precision],
        channels_last=config.channels_last,
        nhwc_input=images_are_nhwc(config),
    )


def build_model_ema(
    model: nn.Module, config: TrainConfig, info: DistInfo, *, steps_per_epoch: int | None = None
) -> ModelEma:
    """``--model-ema``'s average of ``model``, with torchvision's adjusted decay; its warmup
    is the learning rate's steps given ``steps_per_epoch`` (training), else whole epochs."""
    decay = ema_decay(
        decay=config.model_ema_decay,
        steps=config.model_ema_steps,
        batch_size=config.data.batch_size,
        world_size=info.world_size,
        epochs=config.epochs,
    )
    return ModelEma(
        model,
        decay=decay,
        every=config.model_ema_steps,
        warmup_epochs=config.optim.warmup_epochs,
        steps_per_epoch=steps_per_epoch,
        device=info.device,
    )
