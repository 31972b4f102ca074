"""``python -m train``: a torchvision ResNet trained with CutMix mixed inside a DALI pipeline.

Run ``python -m train --help`` for the flags, the resume rules and the exit
statuses (:mod:`train.status`). ``torchrun --nproc_per_node N -m train ...``
runs the same on N processes with DDP. ``--model-ema`` keeps torchvision's moving
average of the weights (:mod:`train.ema`), evaluated after every epoch beside the
model; ``--resume CHECKPOINT --test-only`` evaluates a checkpoint and trains nothing.

Nothing done is lost: a stop (Ctrl-C, SIGTERM, ``--stop-after-steps``) and an
error of the data loader both write a checkpoint at the last step done first.
Resuming from a checkpoint whose loader state cannot be used (one written after
a loader error, or with other training files, e.g. a scan's clean list) keeps
the model, optimizer and steps done and continues the epoch at the same step:
the torchvision loader seeks there in its seeded order; the DALI loader starts
its reader's first shuffle of the current files and drops as many batches as
the epoch had done, so the epoch keeps its number of steps.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from dali_cutmix.files import DatasetError
from train.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from train.config import Device, Precision, Schedule, TrainConfig, check_ranks, parse_config
from train.data import (
    Loader,
    build_criterion,
    build_loaders,
    build_val_loader,
    continue_at,
    data_failure,
    images_are_nhwc,
    prepare_dataset,
    restore_loader,
)
from train.ema import ModelEma, ema_decay
from train.engine import EpochResult, LoaderError, StepOptions, evaluate, train_one_epoch
from train.status import DataFailure, ExitStatus, resume_command
from train.utils import (
    DistInfo,
    MetricsFile,
    StopFlag,
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


def _of_rank(entries: Any, info: DistInfo) -> Any:
    """This rank's entry of a per-rank list saved by :meth:`Trainer.save`, or ``None``."""
    if isinstance(entries, list) and len(entries) == info.world_size:
        return entries[info.rank]
    return None


def _saved_meter(meter: Any, info: DistInfo) -> list[float] | None:
    """This rank's sums of the interrupted epoch (older checkpoints saved rank 0's only)."""
    if isinstance(meter, list) and meter and isinstance(meter[0], (int, float)):
        return meter
    return _of_rank(meter, info)


class Outcome(str, enum.Enum):
    """How :func:`run` ended; :data:`EXIT_STATUS` maps it to ``python -m train``'s status."""

    FINISHED = "finished"
    NOTHING_TO_DO = "nothing to do"
    STOPPED = "stopped"
    TESTED = "tested"


EXIT_STATUS = {
    Outcome.FINISHED: ExitStatus.FINISHED,
    Outcome.NOTHING_TO_DO: ExitStatus.FINISHED,
    Outcome.STOPPED: ExitStatus.STOPPED,
    Outcome.TESTED: ExitStatus.FINISHED,
}
TEST_NAME = "test.json"


@dataclasses.dataclass(frozen=True)
class RunResult:
    """What :func:`run` did: one metrics record per completed epoch (earlier runs' too).

    ``evaluation``: with ``--test-only``, what was written to ``test.json``.
    """

    records: list[dict[str, Any]]
    outcome: Outcome
    evaluation: dict[str, Any] | None = None


class _LoaderFailed(Exception):
    """The train or val loader raised ``error``; the checkpoint is written before it goes on."""

    def __init__(self, split: str, error: Exception) -> None:
        super().__init__(f"the {split} loader failed: {error}")
        self.split, self.error = split, error


class Trainer:
    """Holds the objects of one run; the loops themselves live in ``train.engine``."""

    def __init__(self, config: TrainConfig, info: DistInfo) -> None:
        self.config, self.info = config, info
        self.root = prepare_dataset(config, info)
        self.train_loader: Loader
        self.val_loader: Loader
        self.train_loader, self.val_loader = build_loaders(config, self.root, info)
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
        self.options = step_options(config, info)
        self.ema = build_model_ema(self.model, config, info) if config.model_ema else None
        self.metrics = MetricsFile(config.output_dir / "metrics.jsonl", info.is_main)
        self.checkpoint = config.output_dir / CHECKPOINT_NAME
        self.epoch, self.step, self.meter_state = 0, 0, None
        # The rest of the current epoch when the loader could not restore its own state.
        self._stream: Iterable[Any] | None = None

    def restore(self, state: dict[str, Any]) -> None:
        """Continues the checkpoint ``state`` at its epoch and step.

        The next batch is the one the interrupted run would have read when the
        loader's saved state fits; otherwise the epoch goes on from the same step
        in a new data stream (:func:`train.data.continue_at`), which is logged.
        """
        check_ranks(state, self.config.resume, self.info.world_size)
        _unwrapped(self.model).load_state_dict(state["model"])
        if self.ema is not None:
            self.ema.load_state_dict(state["model_ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        steps = len(self.train_loader)
        self.epoch, self.step = state["epoch"], min(state["step"], steps)
        self.meter_state = _saved_meter(state.get("meter"), self.info)
        self._align_schedule(state.get("config", {}).get("epochs", self.config.epochs))
        why = self._restore_loader(_of_rank(state["loader"], self.info))
        if why is not None:
            self._stream = continue_at(self.train_loader, epoch=self.epoch, step=self.step)
        if not self.info.is_main:
            return
        where = f"epoch {self.epoch + 1}, step {self.step} of {steps}"
        logger.info("resumed from %s at %s", self.config.resume, where)
        if why is not None:
            logger.warning(
                "%s: %s goes on in a new data stream of the current files (its first %d batches "
                "skipped); the model, optimizer and steps done are kept",
                why,
                where,
                self.step,
            )

    def _restore_loader(self, saved: dict[str, Any] | None) -> str | None:
        """Restores the train loader's saved state; says why not when it cannot."""
        if saved is None:
            return "the checkpoint holds no data-stream state for this rank"
        try:
            restore_loader(self.train_loader, saved)
        except ValueError as error:  # other files (a new --train-list), batch count, ...
            return f"the saved data-stream state does not fit ({error})"
        return None

    def _align_schedule(self, saved_epochs: int) -> None:
        """Puts the schedule at (epoch, step) of this run's schedule.

        It is there already unless the number of steps per epoch (other files,
        other ranks) or of epochs changed; then the learning rate follows the new
        schedule from the current position on.
        """
        position = self.epoch * len(self.train_loader) + self.step
        if self.scheduler.last_epoch == position and saved_epochs == self.config.epochs:
            return
        self.scheduler.last_epoch = position - 1
        with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()"
            warnings.simplefilter("ignore", UserWarning)
            self.scheduler.step()

    def save(self, *, alone: bool = False) -> None:
        """Checkpoint at the current position (epoch, step done, loader state).

        Every rank takes part and rank 0 writes; with ``alone`` (after a loader
        error, while other ranks may wait in a collective) this rank writes
        without them, saving the loader's state only in a 1-rank run and only if
        the loader still gives one (a failed DALI pipeline does not).
        """
        if alone:
            world, rank = self.info.world_size, self.info.rank
            loaders = [self._loader_state() if world == 1 else None] * world
            meters = [self.meter_state if r == rank else None for r in range(world)]
        else:
            loaders = _gather(self.train_loader.state_dict(), self.info)
            meters = _gather(self.meter_state, self.info)
            if not self.info.is_main:
                return
        state = {
            "model": _unwrapped(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "epoch": self.epoch,
            "step": self.step,
            "meter": meters,
            "loader": loaders,
            "world_size": self.info.world_size,
            "config": self.config.to_dict(),
        }
        if self.ema is not None:
            state["model_ema"] = self.ema.state_dict()
        save_checkpoint(state, self.checkpoint)

    def _loader_state(self) -> dict[str, Any] | None:
        try:
            return self.train_loader.state_dict()
        except Exception:  # the loader's pipeline failed: only the position remains
            return None

    def _train(self, stop: StopFlag, budget: int | None) -> EpochResult:
        stream, self._stream = self._stream or self.train_loader, None
        return train_one_epoch(
            self.model,
            self.criterion,
            self.optimizer,
            self.scheduler,
            stream,
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
            ema=self.ema,
        )

    def run_epoch(self, stop: StopFlag, budget: int | None) -> EpochResult:
        """Trains the rest of the current epoch; evaluates and logs it if it completed.

        Raises:
            _LoaderFailed: a loader raised; ``self.step`` is the last step done.
        """
        steps = len(self.train_loader)
        if self.step < steps:
            result = self._train(stop, budget)
        else:  # trained before, not evaluated: its validation failed
            meter = self.meter_state or [0.0] * 4
            result = EpochResult(self.step, stopped=False, meter=meter, seconds=0.0, images=0)
        self.step, self.meter_state = result.steps_done, result.meter
        if result.error is not None:
            raise _LoaderFailed("train", result.error)
        if result.steps_done < steps:
            return result
        try:
            val = self._evaluate(self.model)
            if self.ema is not None:
                val |= {f"ema_{k}": v for k, v in self._evaluate(self.ema.module).items()}
        except LoaderError as failed:
            raise _LoaderFailed("val", failed.__cause__) from failed
        self._log_epoch(result, val)
        self.epoch, self.step, self.meter_state = self.epoch + 1, 0, None
        return result

    def _evaluate(self, model: nn.Module) -> dict[str, float]:
        return evaluate(
            model, self.val_loader, options=self.options, info=self.info, epoch=self.epoch
        )

    def _log_epoch(self, result: EpochResult, val: dict[str, float]) -> None:
        loss_sum, count, correct1, _ = self._reduced(result.meter)
        record = {
            "epoch": self.epoch,
            "train_loss": loss_sum / count,
            "train_acc1": 100 * correct1 / count,
            "train_images": int(count),
            **val_metrics(val),
            "lr": self.optimizer.param_groups[0]["lr"],
            "epoch_seconds": result.seconds,
            "train_images_per_s": result.images * self.info.world_size / max(result.seconds, 1e-9),
            "time": time.time(),
        }
        self.metrics.write(record)
        if self.info.is_main:
            logger.info(
                "epoch %d: train loss %.3f, %s",
                self.epoch + 1,
                record["train_loss"],
                accuracy_line(record),
            )

    def _reduced(self, meter: list[float]) -> list[float]:
        values = torch.tensor(meter, dtype=torch.float64, device=self.info.device)
        if self.info.distributed:
            torch.distributed.all_reduce(values)
        values[1] = values[1].clamp(min=1.0)
        return values.tolist()

    def fit(self) -> Outcome:
        """Trains until ``config.epochs``, a stop (Ctrl-C, SIGTERM, step budget) or a loader error.

        Raises:
            DataFailure: a file did not decode; the checkpoint holds every step done.
            Exception: any other loader error, after the same checkpoint.
        """
        budget = self.config.stop_after_steps
        with stop_on_signals() as stop:
            while self.epoch < self.config.epochs:
                start_step = self.step
                result = self._run_epoch_or_fail(stop, budget)
                if budget is not None:
                    budget -= result.steps_done - start_step
                self.save()
                if result.stopped:
                    break
        if self.info.is_main:
            plot_curves(self.metrics.read(), self.config.output_dir / "curves.png")
        if self.epoch >= self.config.epochs:
            return Outcome.FINISHED
        if self.info.is_main:
            logger.info(
                "stopped at epoch %d, step %d of %d; continue with: %s",
                self.epoch + 1,
                self.step,
                len(self.train_loader),
                resume_command(self.checkpoint, self.info.world_size),
            )
        return Outcome.STOPPED

    def _run_epoch_or_fail(self, stop: StopFlag, budget: int | None) -> EpochResult:
        """:meth:`run_epoch`; after a loader error, checkpoints the steps done and raises."""
        try:
            return self.run_epoch(stop, budget)
        except _LoaderFailed as error:
            failed = error
        # Raised outside the handler: the loader's own error keeps its traceback and cause.
        self.save(alone=True)
        raise self._failure(failed)

    def _failure(self, failed: _LoaderFailed) -> Exception:
        """The exception that ends the run after a loader error and its checkpoint."""
        error = failed.error
        if isinstance(error, DatasetError):
            failure = data_failure(
                error,
                failed.split,
                config=self.config,
                root=self.root,
                info=self.info,
                checkpoint=self.checkpoint,
            )
            failure.__cause__ = error
            return failure
        logger.error(
            "the %s loader failed at epoch %d, step %d of %d; the checkpoint holds every step "
            "done; once the cause is fixed, continue with: %s",
            failed.split,
            self.epoch + 1,
            self.step,
            len(self.train_loader),
            resume_command(self.checkpoint, self.info.world_size),
        )
        return error


def step_options(config: TrainConfig, info: DistInfo) -> StepOptions:
    """How batches reach the model: device, autocast, memory format."""
    return StepOptions(
        device=info.device,
        autocast_dtype=_AUTOCAST[config.precision],
        channels_last=config.channels_last,
        nhwc_input=images_are_nhwc(config),
    )


def build_model_ema(model: nn.Module, config: TrainConfig, info: DistInfo) -> ModelEma:
    """``--model-ema``'s average of ``model``, with torchvision's adjusted decay."""
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
        device=info.device,
    )


def val_metrics(val: dict[str, float]) -> dict[str, float]:
    """:func:`train.engine.evaluate`'s sums as metrics: ``val_acc1``, ``ema_val_acc1``, ..."""
    record = {}
    for prefix in ("", "ema_"):
        if f"{prefix}acc1" in val:
            record |= {
                f"{prefix}val_loss": val[f"{prefix}loss"],
                f"{prefix}val_acc1": val[f"{prefix}acc1"],
                f"{prefix}val_acc5": val[f"{prefix}acc5"],
                f"{prefix}val_images": int(val[f"{prefix}samples"]),
            }
    return record


def accuracy_line(record: dict[str, Any]) -> str:
    """``val top-1 71.20 %, top-5 90.10 %`` (and the average's, when there is one)."""
    line = f"val top-1 {record['val_acc1']:.2f} %, top-5 {record['val_acc5']:.2f} %"
    if "ema_val_acc1" in record:
        line += f"; EMA top-1 {record['ema_val_acc1']:.2f} %, top-5 {record['ema_val_acc5']:.2f} %"
    return line


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
        if not config.test_only:  # the run's own configuration stays as it trained
            (config.output_dir / "config.json").write_text(config.to_json() + "\n")


def _evaluate_models(
    config: TrainConfig, state: dict[str, Any], root: Path, info: DistInfo
) -> dict[str, float]:
    """The validation sums of the checkpoint's model and, when saved, of its average."""
    val_loader = build_val_loader(config, root, info)
    model = build_model(config, info)
    _unwrapped(model).load_state_dict(state["model"])
    models = {"": model}
    if state.get("model_ema"):
        ema = build_model_ema(model, config, info)
        ema.load_state_dict(state["model_ema"])
        models["ema_"] = ema.module
    options, val = step_options(config, info), {}
    for prefix, evaluated in models.items():
        try:
            sums = evaluate(evaluated, val_loader, options=options, info=info, epoch=state["epoch"])
        except LoaderError as failed:
            error = failed.__cause__
            if not isinstance(error, DatasetError):
                raise error from None
            raise data_failure(
                error, "val", config=config, root=root, info=info, checkpoint=None
            ) from error
        val |= {prefix + key: value for key, value in sums.items()}
    return val


def evaluate_checkpoint(config: TrainConfig, state: dict[str, Any], info: DistInfo) -> RunResult:
    """``--test-only``: evaluates the checkpoint ``state`` and writes ``OUTPUT_DIR/test.json``.

    The record has the metrics' names (``val_acc1``, ``ema_val_acc1``, ...) and the
    checkpoint's position; the line printed on stdout gives the accuracies. Nothing
    is trained and the checkpoint, metrics and configuration are left as they are.
    """
    root = prepare_dataset(config, info)
    val = _evaluate_models(config, state, root, info)
    epoch, step = state["epoch"], state["step"]
    record = {"checkpoint": str(config.resume), "epoch": epoch, "step": step, **val_metrics(val)}
    if info.is_main:
        (config.output_dir / TEST_NAME).write_text(json.dumps(record, indent=2) + "\n")
        trained = f"{epoch} epochs" + (f" and {step} steps" if step else "")
        print(f"{config.resume} (trained {trained}): {accuracy_line(record)}", flush=True)
    return RunResult([], Outcome.TESTED, evaluation=record)


def _nothing_to_do(config: TrainConfig, state: dict[str, Any], info: DistInfo) -> RunResult:
    if info.is_main:
        logger.info(
            "%s already trained %d of %d epochs; nothing to do; give --epochs M > %d to train on "
            "(%s)",
            config.resume,
            state["epoch"],
            config.epochs,
            config.epochs,
            resume_command(config.resume, info.world_size, "--epochs", "M"),
        )
    records = MetricsFile(config.output_dir / "metrics.jsonl", info.is_main).read()
    return RunResult(records, Outcome.NOTHING_TO_DO)


def run(config: TrainConfig) -> RunResult:
    """Trains as ``config`` says (continuing ``config.resume`` if given), or tests it.

    Raises:
        DataFailure: a file of the dataset did not decode (a checkpoint holds
            every step done, when training had started).
        DatasetError: a folder or file list cannot be read.
    """
    info = init_distributed(config.device is Device.GPU)
    try:
        _set_up(config, info)
        state = load_checkpoint(config.resume) if config.resume is not None else None
        if state is not None and config.test_only:
            return evaluate_checkpoint(config, state, info)
        if state is not None and state["epoch"] >= config.epochs:
            return _nothing_to_do(config, state, info)
        trainer = Trainer(config, info)
        if state is not None:
            trainer.restore(state)
        start = time.perf_counter()
        outcome = trainer.fit()
        records = trainer.metrics.read()
        if info.is_main and outcome is Outcome.FINISHED and records:
            logger.info(
                "finished %d epochs in %.0f s: val top-1 %.2f %% (chance %.1f %%), outputs in %s",
                len(records),
                time.perf_counter() - start,
                records[-1]["val_acc1"],
                100 / config.data.num_classes,
                config.output_dir,
            )
        return RunResult(records, outcome)
    finally:
        cleanup_distributed(info)


def _error_line(message: str) -> None:
    print(f"python -m train: error: {' '.join(message.split())}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m train``; returns its exit status (see :mod:`train.status`).

    Errors caused by the input (flags, folders, file lists, checkpoints, an
    undecodable image) end with one line on stderr; any other error keeps its
    traceback.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else list(argv)
    config = parse_config(argv)  # a bad flag ends the process here, status 2
    try:
        status = EXIT_STATUS[run(config).outcome]
    except DataFailure as failure:
        _error_line(failure.message(argv))
        return ExitStatus.DATA
    except DatasetError as error:
        _error_line(str(error))
        return ExitStatus.USAGE
    # torchrun stops every rank as soon as one exits with a non-zero status: only rank 0,
    # which writes the checkpoint and says how to continue, reports a stop.
    return status if int(os.environ.get("RANK", "0")) == 0 else ExitStatus.FINISHED


if __name__ == "__main__":
    sys.exit(main())
