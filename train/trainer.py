"""One training run's objects and its epochs: :class:`Trainer` and the learning-rate schedule.

The loops themselves live in :mod:`train.engine`; :func:`train.runner.run` builds a
trainer, restores a checkpoint into it and calls :meth:`Trainer.fit`.
"""

from __future__ import annotations

import enum
import logging
import math
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dali_cutmix.files import BadImageError, DatasetError, counted

from .checkpoint import CHECKPOINT_NAME, load_weights, save_checkpoint
from .config import CURVES_NAME, METRICS_NAME, Precision, Schedule, TrainConfig, check_ranks
from .data import (
    Loader,
    build_criterion,
    build_loaders,
    check_val_headers,
    continue_at,
    data_failure,
    prepare_dataset,
    restore_loader,
    seekable,
)
from .engine import (
    NONFINITE_SYNCS,
    EpochResult,
    LoaderError,
    PeerLoaderError,
    evaluate,
    finite_weights,
    settled,
    train_one_epoch,
)
from .model import build_model, build_model_ema, step_options, unwrapped
from .status import DataFailure, resume_command
from .utils import (
    DistInfo,
    EpochSums,
    MetricsFile,
    StopFlag,
    agreed,
    plot_curves,
    stop_on_signals,
    warmup_steps,
)

__all__ = ["Outcome", "Trainer", "accuracy_line", "lr_factor", "val_metrics"]

logger = logging.getLogger(__name__)


def lr_factor(step: int, *, config: TrainConfig, steps_per_epoch: int) -> float:
    """Multiplier of the peak learning rate after ``step`` optimizer steps.

    Linear warmup from 1 % over ``warmup_epochs``, then cosine decay to 0 over the
    remaining epochs, or ``gamma ** (epoch // step_size)`` for the step schedule.
    """
    optim = config.optim
    warmup = warmup_steps(optim.warmup_epochs, steps_per_epoch)
    if step < warmup:
        return 0.01 + 0.99 * step / warmup
    if optim.schedule is Schedule.STEP:
        return optim.gamma ** (step // steps_per_epoch // optim.step_size)
    total = config.epochs * steps_per_epoch
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


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


def _saved_meter(meter: Any, info: DistInfo) -> EpochSums | None:
    """This rank's sums of the interrupted epoch (older checkpoints saved rank 0's only)."""
    if isinstance(meter, list) and meter and isinstance(meter[0], (int, float)):
        return EpochSums.from_saved(meter)
    return EpochSums.from_saved(_of_rank(meter, info))


# torch's warning when the scheduler steps after an optimizer step that the loss scaler skipped
SCHEDULER_BEFORE_OPTIMIZER = r"Detected call of `lr_scheduler.step\(\)` before `optimizer.step\(\)`"


class Outcome(str, enum.Enum):
    """How a run ended; :data:`train.runner.EXIT_STATUS` maps it to an exit status."""

    FINISHED = "finished"
    NOTHING_TO_DO = "nothing to do"
    STOPPED = "stopped"
    TESTED = "tested"
    DIVERGED = "diverged"
    PEER_FAILED = "another rank's loader failed"  # that rank reports it, with its status


class Failed(enum.Enum):
    """Whose data loader failed, for :meth:`Trainer.save`."""

    HERE = "this rank's"
    PEER = "another rank's"


class _LoaderFailed(Exception):
    """The train or val loader raised ``error``; the checkpoint is written before it goes on."""

    def __init__(self, split: str, error: Exception) -> None:
        super().__init__(f"the {split} loader failed: {error}")
        self.split, self.error = split, error


def _agreed_loaders(config: TrainConfig, root: Path, info: DistInfo) -> tuple[Loader, Loader]:
    """:func:`build_loaders`, agreed over ranks, after :func:`check_val_headers`, agreed
    too: a DALI loader reads its first batches as it is built, so one rank may meet a bad
    file here while the others go on to wrap the model in DDP, a collective it never joins.
    The header check is agreed on before any loader is built, since another rank's loader
    (whose shard is not the share of files its check read) may hold the file it found.

    Raises:
        DataFailure: this rank's loader met a bad file, or its header check found one (it
            reports it).
        DatasetError: this rank's loader cannot be built (it reports it).
        PeerLoaderError: another rank's did either.
    """
    settled(lambda: check_val_headers(config, root, info), (DataFailure,), info)
    # a shard of no image (DatasetError) is one rank's too
    return settled(lambda: build_loaders(config, root, info), (DataFailure, DatasetError), info)


class Trainer:
    """Holds the objects of one run; the loops themselves live in ``train.engine``."""

    def __init__(self, config: TrainConfig, info: DistInfo) -> None:
        self.config, self.info = config, info
        self.root = prepare_dataset(config, info)
        self.train_loader: Loader
        self.val_loader: Loader
        self.train_loader, self.val_loader = _agreed_loaders(config, self.root, info)
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
        if fp16:  # a step the scaler skips still counts in the schedule, as it should
            warnings.filterwarnings("ignore", SCHEDULER_BEFORE_OPTIMIZER, UserWarning)
        self.options = step_options(config, info)
        self.ema = (
            build_model_ema(self.model, config, info, steps_per_epoch=steps)
            if config.model_ema
            else None
        )
        self.metrics = MetricsFile(config.output_dir / METRICS_NAME, info.is_main)
        self.checkpoint = config.output_dir / CHECKPOINT_NAME
        self.epoch, self.step = 0, 0
        self.saved_at: tuple[int, int] | None = None  # (epoch, step) of this command's checkpoint
        self.meter_state: EpochSums | None = None  # this rank's sums of the current epoch
        self.nonfinite_syncs = 0  # progress updates in a row whose loss was not finite
        # The rest of the current epoch when the loader could not restore its own state.
        self._stream: Iterable[Any] | None = None

    def restore(self, state: dict[str, Any]) -> None:
        """Continues the checkpoint ``state`` at its epoch and step.

        The next batch is the one the interrupted run would have read when the
        loader's saved state fits; otherwise the epoch goes on from the same step
        in a new data stream (:func:`train.data.continue_at`), which is logged.
        """
        check_ranks(state, self.config.resume, self.info.world_size)
        load_weights(unwrapped(self.model), state["model"], self.config.resume, "model")
        if self.ema is not None:
            load_weights(self.ema, state["model_ema"], self.config.resume, "--model-ema")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        steps = len(self.train_loader)
        self.epoch, self.step = state["epoch"], min(state["step"], steps)
        self.meter_state = _saved_meter(state.get("meter"), self.info)
        self.metrics.resume_at(state["epoch"])
        self._align_schedule(state.get("config", {}).get("epochs", self.config.epochs))
        # a DALI loader reads its first batches as it restores: this rank's alone
        saved = _of_rank(state["loader"], self.info)
        why = settled(lambda: self._restore_loader(saved), (DataFailure,), self.info)
        # An epoch whose training is done (its validation failed) has nothing left to read:
        # a DALI stream of it would have read and dropped a whole epoch, and been the next
        # one. The torchvision loader seeks there, and its next iter() is the next epoch.
        if why is not None and (self.step < steps or seekable(self.train_loader)):
            self._stream = continue_at(self.train_loader, epoch=self.epoch, step=self.step)
        if not self.info.is_main:
            return
        where = f"epoch {self.epoch + 1}, step {self.step} of {steps}"
        logger.info("resumed from %s at %s", self.config.resume, where)
        before = state.get("config", {}).get("data", {}).get("root")
        if before is not None and Path(before) != self.config.data.root:
            logger.info("the dataset's folder moved: %s, now %s", before, self.config.data.root)
        if why is not None:
            skipped = f" (its first {counted(self.step, 'batch')} skipped)" if self.step else ""
            goes_on = (  # at step 0 nothing is skipped ("its first 0 batches skipped")
                f"{where} goes on in a new data stream of the current files{skipped}"
                if self.step < steps
                else "the next epoch starts at its place in the seeded order"
                if seekable(self.train_loader)
                else "the next epoch starts a new data stream of the current files"
            )
            logger.warning("%s: %s; the model, optimizer and steps done are kept", why, goes_on)

    def _restore_loader(self, saved: dict[str, Any] | None) -> str | None:
        """Restores the train loader's saved state; says why not when it cannot."""
        if saved is None:
            return "the checkpoint holds no data-stream state for this rank"
        try:
            restore_loader(self.train_loader, saved)
        except BadImageError as error:  # a file at the saved position: scan, then resume
            failure = data_failure(
                error,
                "train",
                config=self.config,
                root=self.root,
                info=self.info,
                checkpoint=self.config.resume,
            )
            raise failure from error
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

    def save(self, *, failed: Failed | None = None) -> bool:
        """Checkpoint at the current position (epoch, step done, loader states): every rank
        takes part and rank 0 writes.

        Args:
            failed: after a loader failure that the ranks agreed on (every rank saves, the
                one that failed and the others, each with its sums): whose loader failed.
                A loader's state is saved where it still gives one (a failed DALI pipeline
                does not), except another rank's in the middle of an epoch's training: it
                had read the batch of the step that was not taken. The failing rank
                reports once the file is written. Weights that are no longer finite (a step
                broke them after the last loss read) are not saved: the checkpoint before
                stays (the same on every rank: DDP's weights are).

        Returns:
            Whether the checkpoint was written (``self.saved_at`` is then the position).
        """
        if failed is not None and agreed(not finite_weights(self.model), self.info):
            if self.info.is_main:
                logger.error(
                    "the weights are no longer finite (a step since the last progress update "
                    "broke them): they were not saved, and %s; a --resume continues from there "
                    "with the same learning rates, so start a new run with a lower --lr or a "
                    "longer --warmup-epochs if it diverges again",
                    self._kept(),
                )
            return False
        mine = self.meter_state.to_saved() if self.meter_state is not None else None
        if failed is None:
            loader = self.train_loader.state_dict()
        elif failed is Failed.HERE or self.step >= len(self.train_loader):
            loader = self._loader_state()
        else:
            loader = None
        loaders, meters = _gather(loader, self.info), _gather(mine, self.info)
        try:
            if self.info.is_main:
                self._write(loaders, meters)
        finally:
            if failed is not None:  # the failing rank reports once it is written (or failed)
                agreed(False, self.info)
        self.saved_at = (self.epoch, self.step)
        return True

    def _write(self, loaders: list[Any], meters: list[Any]) -> None:
        state = {
            "model": unwrapped(self.model).state_dict(),
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
            nonfinite_syncs=self.nonfinite_syncs,
        )

    def run_epoch(self, stop: StopFlag, budget: int | None) -> EpochResult:
        """Trains the rest of the current epoch; evaluates and logs it if it completed.

        The weights stopping being finite ends it at once (``result.diverged``), with
        ``self.epoch`` and ``self.step`` left where this epoch began.

        Raises:
            _LoaderFailed: a loader raised; ``self.step`` is the last step done.
        """
        steps = len(self.train_loader)
        began_at = self.step  # > 0: resumed inside the epoch
        if self.step < steps:
            result = self._train(stop, budget)
            self.nonfinite_syncs = result.nonfinite_syncs
            if result.diverged:
                return result
            if result.peer_failed:  # at the step the failing rank's loader reached
                self.step, self.meter_state = result.steps_done, result.meter
                raise PeerLoaderError()
        else:  # trained before, not evaluated: its validation failed
            meter = self.meter_state or EpochSums()
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
        self._log_epoch(result, val, began_at)
        self.epoch, self.step, self.meter_state = self.epoch + 1, 0, None
        return result

    def _evaluate(self, model: nn.Module) -> dict[str, float]:
        label = f"val {self.epoch + 1}"
        return evaluate(model, self.val_loader, options=self.options, info=self.info, label=label)

    def _last_step_lr(self) -> float:
        """The learning rate of the last step done, as ``LambdaLR`` set it for that step."""
        (base,), (factor,) = self.scheduler.base_lrs, self.scheduler.lr_lambdas
        return base * factor(self.scheduler.last_epoch - 1)

    def _log_epoch(self, result: EpochResult, val: dict[str, float], began_at: int) -> None:
        sums = result.meter.reduced(self.info)
        count = max(sums.count, 1.0)
        record = {
            "epoch": self.epoch + 1,  # 1-based, as the log and the plot number epochs
            "train_loss": sums.loss_sum / count,
            "train_acc1": 100 * sums.correct1 / count,
            "train_images": int(count),
            **val_metrics(val),
            # the epoch's last step's (the optimizer holds the next step's: it recorded the
            # next epoch's rate, and 0.0 for a cosine schedule's last epoch)
            "lr": result.lr if result.lr is not None else self._last_step_lr(),
            # the step this command began the epoch at (0 unless resumed inside it): the
            # time and pace below are of the steps from there on
            "resumed_at_step": began_at,
            # None where this command trained none of the epoch (resumed for its validation)
            "epoch_seconds": result.seconds if result.images else None,
            "train_images_per_s": (
                result.images * self.info.world_size / max(result.seconds, 1e-9)
                if result.images
                else None
            ),
            # after the first --print-freq steps (None when the epoch synchronised only once)
            "train_images_per_s_steady": (
                result.steady_images * self.info.world_size / result.steady_seconds
                if result.steady_images and result.steady_seconds > 0
                else None
            ),
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

    def fit(self) -> Outcome:
        """Trains until ``config.epochs``, a stop (Ctrl-C, SIGTERM, step budget) or a loader error.

        Raises:
            DataFailure: a file did not decode; the checkpoint holds every step done.
            Exception: any other loader error, after the same checkpoint.
        """
        budget = self.config.stop_after_steps
        diverged: EpochResult | None = None
        with stop_on_signals() as stop:
            while self.epoch < self.config.epochs:
                start_step = self.step
                try:
                    result = self._run_epoch_or_fail(stop, budget)
                except PeerLoaderError:  # the rank whose loader failed reports it
                    with stop.holding():
                        saved = self.save(failed=Failed.PEER)
                    logger.warning(
                        "rank %d stops: another rank's data loader failed; %s, and that rank "
                        "says how to go on",
                        self.info.rank,
                        "the checkpoint holds every step done" if saved else "nothing was saved",
                    )
                    return Outcome.PEER_FAILED
                if result.diverged:  # weights that are not finite are never saved
                    diverged = result
                    break
                if budget is not None:
                    budget -= result.steps_done - start_step
                with stop.holding():
                    self.save()
                # requested during validation, say: on every rank or none (one rank going on
                # alone into the next epoch died in its first collective, with a traceback)
                if result.stopped or agreed(stop.requested, self.info):
                    break
            if self.info.is_main:  # a Ctrl-C here (about 1 s) asks a stop that has come
                plot_curves(self.metrics.read(), self.config.output_dir / CURVES_NAME)
        if diverged is not None:
            if self.info.is_main:
                logger.error("%s", self._divergence(diverged))
            return Outcome.DIVERGED
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

    def _divergence(self, result: EpochResult) -> str:
        """What diverged, where it was found, which checkpoint is left and what to change."""
        where = f"epoch {self.epoch + 1}, step {result.steps_done} of {len(self.train_loader)}"
        if result.weights_finite:
            what = (
                f"the loss was not finite at {NONFINITE_SYNCS} progress updates in a row (last: "
                f"{result.last_loss}) while the weights stayed finite: float16's loss scaler "
                "skips such steps, so the model had stopped learning"
            )
        else:
            what = "the weights are no longer finite"
            if result.last_loss is not None:
                what += f" (the last loss read: {result.last_loss:.4g})"
        fp16 = self.config.precision is Precision.FP16
        return (
            f"training diverged (found at {where}, learning rate {result.lr:.4g}, peak --lr "
            f"{self.config.optim.lr:g}): {what}; nothing of this epoch was saved and "
            f"{self._kept()}. "
            "Start a new run with a lower --lr or a longer --warmup-epochs"
            f"{', or --amp bf16 where the GPU has it' if fp16 else ''} (a --resume keeps its "
            "learning rates)"
        )

    def _kept(self) -> str:
        """Which checkpoint holds the run after weights that were not saved."""
        if self.saved_at is not None:
            epoch, step = self.saved_at
            trained = f"{epoch} epoch{'s' * (epoch != 1)}"
            trained += f" and {step} step{'s' * (step != 1)}" if step else ""
            return f"the last checkpoint, {self.checkpoint}, holds {trained}"
        if self.config.resume is not None:
            return f"the checkpoint it resumed, {self.config.resume}, is unchanged"
        return "no checkpoint was written"

    def _resume_from(self) -> Path | None:
        """The checkpoint that continues this run, if there is one."""
        return self.checkpoint if self.saved_at is not None else self.config.resume

    def _run_epoch_or_fail(self, stop: StopFlag, budget: int | None) -> EpochResult:
        """:meth:`run_epoch`; after a loader error, checkpoints the steps done and raises."""
        try:
            return self.run_epoch(stop, budget)
        except _LoaderFailed as error:
            failed = error
        # Raised outside the handler: the loader's own error keeps its traceback and cause.
        with stop.holding():
            saved = self.save(failed=Failed.HERE)
        raise self._failure(failed, saved)

    def _failure(self, failed: _LoaderFailed, saved: bool) -> Exception:
        """The exception that ends the run after a loader error and its checkpoint
        (``saved``: written for it; not when the weights were no longer finite)."""
        error = failed.error
        if isinstance(error, DatasetError):
            failure = data_failure(
                error,
                failed.split,
                config=self.config,
                root=self.root,
                info=self.info,
                checkpoint=self._resume_from(),
            )
            failure.__cause__ = error
            return failure
        where = f"epoch {self.epoch + 1}, step {self.step} of {len(self.train_loader)}"
        checkpoint = self._resume_from()
        if checkpoint is None:
            then = "no checkpoint was written; once the cause is fixed, run the command again"
        else:
            then = "the checkpoint holds every step done" if saved else self._kept()
            then += "; once the cause is fixed, continue with: "
            then += resume_command(checkpoint, self.info.world_size)
        logger.error("the %s loader failed at %s; %s", failed.split, where, then)
        return error


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
