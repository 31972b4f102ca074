"""``python -m train``: a torchvision ResNet trained with CutMix mixed inside a DALI pipeline.

Run ``python -m train --help`` for the flags. ``torchrun --nproc_per_node N -m
train ...`` runs the same on N processes with DDP.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import torch
import torchvision
from torch import nn

from train.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from train.config import Device, Precision, Schedule, TrainConfig, parse_config
from train.data import Loader, build_criterion, build_loaders, images_are_nhwc, prepare_dataset
from train.engine import EpochResult, StepOptions, evaluate, train_one_epoch
from train.utils import (
    DistInfo,
    MetricsFile,
    cleanup_distributed,
    init_distributed,
    plot_curves,
    stop_on_signals,
)

logger = logging.getLogger("train")

_AUTOCAST = {Precision.FP32: None, Precision.BF16: torch.bfloat16, Precision.FP16: torch.float16}


def lr_factor(step: int, *, config: TrainConfig, steps_per_epoch: int) -> float:
    """Multiplier of the peak learning rate after ``step`` optimizer steps.

    Linear warmup from 1 % over ``warmup_epochs``, then cosine decay to 0 over the
    remaining epochs, or ``gamma ** (epoch // step_size)`` for the step schedule.
    """
    optim = config.optim
    warmup = round(optim.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return 0.01 + 0.99 * step / warmup
    if optim.schedule is Schedule.STEP:
        return optim.gamma ** (step // steps_per_epoch // optim.step_size)
    total = config.epochs * steps_per_epoch
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


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


def _unwrapped(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _gather(obj: Any, info: DistInfo) -> list[Any]:
    if not info.distributed:
        return [obj]
    gathered: list[Any] = [None] * info.world_size
    torch.distributed.all_gather_object(gathered, obj)
    return gathered


class Trainer:
    """Holds the objects of one run; the loops themselves live in ``train.engine``."""

    def __init__(self, config: TrainConfig, info: DistInfo) -> None:
        self.config, self.info = config, info
        root = prepare_dataset(config, info)
        self.train_loader: Loader
        self.val_loader: Loader
        self.train_loader, self.val_loader = build_loaders(config, root, info)
        self.model = build_model(config, info)
        self.criterion = build_criterion(config).to(info.device)
        self.optimizer = torch.optim.SGD(
            self.model.parameters(),
            lr=config.optim.lr,
            momentum=config.optim.momentum,
            nesterov=config.optim.nesterov,
            weight_decay=config.optim.weight_decay,
        )
        steps = len(self.train_loader)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, config=config, steps_per_epoch=steps)
        )
        fp16 = config.precision is Precision.FP16
        self.scaler = torch.amp.GradScaler(info.device.type) if fp16 else None
        self.options = StepOptions(
            device=info.device,
            autocast_dtype=_AUTOCAST[config.precision],
            channels_last=config.channels_last,
            nhwc_input=images_are_nhwc(config),
        )
        self.metrics = MetricsFile(config.output_dir / "metrics.jsonl", info.is_main)
        self.epoch, self.step, self.meter_state = 0, 0, None

    def restore(self) -> None:
        """Continues from ``config.resume``: same epoch, same step, same next batch."""
        state = load_checkpoint(self.config.resume)
        _unwrapped(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step, self.meter_state = state["epoch"], state["step"], state["meter"]
        loaders = state["loader"]
        if len(loaders) == self.info.world_size:
            self.train_loader.load_state_dict(loaders[self.info.rank])
        elif self.step:
            raise ValueError(
                f"{self.config.resume} stopped mid-epoch with {len(loaders)} ranks; "
                f"resume it with the same number, not {self.info.world_size}"
            )
        if self.info.is_main:
            logger.info(
                "resumed from %s at epoch %d, step %d",
                self.config.resume,
                self.epoch + 1,
                self.step,
            )

    def save(self) -> None:
        """Checkpoint at the current position; every rank takes part, rank 0 writes."""
        loaders = _gather(self.train_loader.state_dict(), self.info)
        if not self.info.is_main:
            return
        state = {
            "model": _unwrapped(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "epoch": self.epoch,
            "step": self.step,
            "meter": self.meter_state,
            "loader": loaders,
            "config": self.config.to_dict(),
        }
        save_checkpoint(state, self.config.output_dir / CHECKPOINT_NAME)

    def run_epoch(self, stop, budget: int | None) -> EpochResult:
        """Trains the rest of the current epoch; evaluates and logs it if it completed."""
        result = train_one_epoch(
            self.model,
            self.criterion,
            self.optimizer,
            self.scheduler,
            self.train_loader,
            epoch=self.epoch,
            start_step=self.step,
            num_steps=len(self.train_loader),
            options=self.options,
            scaler=self.scaler,
            info=self.info,
            stop=stop,
            print_freq=self.config.print_freq,
            meter_state=self.meter_state,
            step_budget=budget,
        )
        if result.steps_done < len(self.train_loader):
            self.step, self.meter_state = result.steps_done, result.meter
            return result
        val = evaluate(
            self.model, self.val_loader, options=self.options, info=self.info, epoch=self.epoch
        )
        loss_sum, count, correct1, _ = self._reduced(result.meter)
        record = {
            "epoch": self.epoch,
            "train_loss": loss_sum / count,
            "train_acc1": 100 * correct1 / count,
            "train_images": int(count),
            "val_loss": val["loss"],
            "val_acc1": val["acc1"],
            "val_acc5": val["acc5"],
            "val_images": int(val["samples"]),
            "lr": self.optimizer.param_groups[0]["lr"],
            "epoch_seconds": result.seconds,
            "train_images_per_s": result.images * self.info.world_size / result.seconds,
            "time": time.time(),
        }
        self.metrics.write(record)
        if self.info.is_main:
            logger.info(
                "epoch %d: train loss %.3f, val top-1 %.2f %%, top-5 %.2f %%",
                self.epoch + 1,
                record["train_loss"],
                val["acc1"],
                val["acc5"],
            )
        self.epoch, self.step, self.meter_state = self.epoch + 1, 0, None
        return result

    def _reduced(self, meter: list[float]) -> list[float]:
        values = torch.tensor(meter, dtype=torch.float64, device=self.info.device)
        if self.info.distributed:
            torch.distributed.all_reduce(values)
        values[1] = values[1].clamp(min=1.0)
        return values.tolist()

    def fit(self) -> list[dict[str, Any]]:
        """Trains until ``config.epochs``, a Ctrl-C or the step budget; returns the records."""
        budget = self.config.stop_after_steps
        with stop_on_signals() as stop:
            while self.epoch < self.config.epochs:
                start_step = self.step
                result = self.run_epoch(stop, budget)
                if budget is not None:
                    budget -= result.steps_done - start_step
                self.save()
                if result.stopped:
                    if self.info.is_main:
                        logger.info(
                            "stopped at epoch %d, step %d; continue with --resume %s",
                            self.epoch + 1,
                            self.step,
                            self.config.output_dir / CHECKPOINT_NAME,
                        )
                    break
        records = self.metrics.read()
        if self.info.is_main:
            plot_curves(records, self.config.output_dir / "curves.png")
        return records


def _set_up(config: TrainConfig, info: DistInfo) -> None:
    if config.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif config.device is Device.GPU:
        torch.backends.cudnn.benchmark = True
    if info.distributed and config.device is Device.CPU:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // info.world_size))
    if info.is_main:
        config.output_dir.mkdir(parents=True, exist_ok=True)
        (config.output_dir / "config.json").write_text(config.to_json() + "\n")


def run(config: TrainConfig) -> list[dict[str, Any]]:
    """Trains as ``config`` says; returns one metrics record per completed epoch."""
    info = init_distributed(config.device is Device.GPU)
    try:
        _set_up(config, info)
        trainer = Trainer(config, info)
        if config.resume is not None:
            trainer.restore()
        start = time.perf_counter()
        records = trainer.fit()
        if info.is_main and records:
            last = records[-1]
            logger.info(
                "finished %d epochs in %.0f s: val top-1 %.2f %% (chance %.1f %%), outputs in %s",
                len(records),
                time.perf_counter() - start,
                last["val_acc1"],
                100 / config.data.num_classes,
                config.output_dir,
            )
        return records
    finally:
        cleanup_distributed(info)


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    run(parse_config(argv))


if __name__ == "__main__":
    main()
