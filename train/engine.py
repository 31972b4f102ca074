"""The training and evaluation loops, with every input passed explicitly.

The step is the plain PyTorch one: ``loss = criterion(model(images), targets)``
with soft or integer targets. Loss and accuracy are summed on the device;
the host waits for the GPU only every ``print_freq`` steps, where the
progress bar is updated (and, with several ranks, a Ctrl-C is agreed on).

An error raised by the data loader is told apart from one of the step: the
training loop returns how far it got with the loader's error, so that the
caller can checkpoint every step done; evaluation raises :class:`LoaderError`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from dali_cutmix.cli import progress_bar as log_friendly_bar

from .ema import ModelEma
from .utils import (
    DistInfo,
    EpochSums,
    StopFlag,
    SumMeter,
    agreed,
    correct_topk,
    lowest_rank_with,
)

__all__ = [
    "StepOptions",
    "EpochResult",
    "LoaderError",
    "PeerLoaderError",
    "settled",
    "train_one_epoch",
    "evaluate",
]


@dataclasses.dataclass(frozen=True)
class StepOptions:
    """How a batch reaches the model.

    Attributes:
        device: where the model is.
        autocast_dtype: ``torch.bfloat16`` / ``torch.float16``, or ``None`` for float32.
        channels_last: feed the model channels-last tensors.
        nhwc_input: batches arrive as ``[B, H, W, 3]`` (DALI's NHWC output).
    """

    device: torch.device
    autocast_dtype: torch.dtype | None = None
    channels_last: bool = False
    nhwc_input: bool = False

    def prepare(
        self, images: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        images = images.to(self.device, non_blocking=True)
        if self.nhwc_input:
            images = images.permute(0, 3, 1, 2)  # a channels-last view, no copy
        elif self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, targets.to(self.device, non_blocking=True)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)


@dataclasses.dataclass(frozen=True)
class EpochResult:
    """What one (possibly interrupted) pass over the training loader did."""

    steps_done: int  # batches consumed in this epoch so far, including earlier runs
    stopped: bool  # a stop was requested (the epoch is complete if steps_done == len)
    meter: EpochSums  # this rank's sums over the epoch so far
    seconds: float
    images: int  # images processed by this run on this rank
    error: Exception | None = None  # what the loader raised, ending the epoch early
    # From the first ``print_freq`` steps' end to the last step: the pace without start-up
    # (cuDNN's autotuning, the loader's first batches), which a short epoch's average hides.
    steady_seconds: float = 0.0
    steady_images: int = 0
    # Training diverged (on any rank): the weights stopped being finite, or the loss was not
    # finite at NONFINITE_SYNCS synchronisations in a row (float16's loss scaler then skips
    # every step: the weights stay finite and frozen). The epoch ends there, unsaved.
    diverged: bool = False
    last_loss: float | None = None  # this rank's, at the last synchronisation
    weights_finite: bool = True  # this rank's, when it diverged
    lr: float | None = None  # the learning rate of the last step done
    # synchronisations in a row, up to the last, whose loss was not finite; the next
    # epoch continues the count, so that epochs shorter than NONFINITE_SYNCS updates count
    nonfinite_syncs: int = 0
    peer_failed: bool = False  # another rank's loader failed (it reports it): leave quietly


class LoaderError(Exception):
    """The data loader failed (its own exception is the ``__cause__``), not the model."""


class PeerLoaderError(Exception):
    """Another rank's data loader failed: that rank writes the checkpoint and reports it.

    The ranks agree on a loader failure before each training step and at the end of an
    evaluation, so that the others leave too instead of waiting in a collective for the
    rank that left (a traceback on gloo, a hang on NCCL).
    """

    def __init__(self) -> None:
        super().__init__("another rank's data loader failed; that rank reports it")


# The attribute :func:`settle` sets on the failure it raises: the lowest rank that failed
# there, which says the error once for all (``python -m train``'s usage errors).
FIRST_FAILED = "first_failed_rank"


def settle(failure: Exception | None, info: DistInfo) -> None:
    """Raises ``failure`` (this rank's), or :class:`PeerLoaderError` where another rank has
    one; returns where none has. Every rank calls it at the same point
    (:func:`train.utils.lowest_rank_with`). The failure raised holds the lowest rank that
    failed, as its ``first_failed_rank`` (:data:`FIRST_FAILED`)."""
    first = lowest_rank_with(failure is not None, info)
    if first is None:
        return
    if failure is None:
        raise PeerLoaderError()
    setattr(failure, FIRST_FAILED, first)
    raise failure


_T = TypeVar("_T")


def settled(call: Callable[[], _T], errors: tuple[type[Exception], ...], info: DistInfo) -> _T:
    """``call()``, its ``errors`` agreed over ranks (:func:`settle`): where one rank's call
    raises one, that rank raises it and every other rank :class:`PeerLoaderError`."""
    try:
        result = call()
    except errors as error:
        settle(error, info)
        raise  # settle raised it already
    settle(None, info)
    return result


def _next_or_failure(batches: Iterator[Any]) -> tuple[Any, LoaderError | None]:
    """``(batch, None)``, ``(None, the loader's error)``; StopIteration at the end."""
    try:
        return next(batches), None
    except LoaderError as failed:
        return None, failed


def _guarded(loader: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> Iterator[Any]:
    """The loader's batches; its errors come out as :class:`LoaderError`."""
    try:
        yield from loader
    except Exception as error:
        raise LoaderError(f"the data loader failed: {error}") from error


def progress_bar(info: DistInfo, **kwargs: Any) -> tqdm:
    """:func:`dali_cutmix.cli.progress_bar` in batches, shown by rank 0 only."""
    return log_friendly_bar(unit="batch", disable=not info.is_main, **kwargs)


def _stop_now(
    stop: StopFlag,
    steps_this_run: int,
    limit: int | None,
    sync: bool,
    info: DistInfo,
    device: torch.device,
    diverged: bool = False,
) -> tuple[bool, bool]:
    """``(stop, diverged)``, the same on every rank: a step limit is the same everywhere;
    a stop request is agreed after every step, on the host (:func:`agreed`), and a
    divergence where the loss is read (``sync``).

    A stop agreed only at ``--print-freq`` steps came too late under torchrun, which
    forwards a Ctrl-C to every rank and kills them 30 s later: ten slow steps and the
    checkpoint took longer, and the run ended with neither a checkpoint nor its line.
    """
    requested = agreed(stop.requested, info)
    if info.distributed and sync:
        flag = torch.tensor([float(diverged)], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        diverged = bool(flag.item())
    reached = limit is not None and steps_this_run >= limit
    return requested or reached or diverged, diverged


# Synchronisations in a row whose loss is not finite, weights finite, that make a divergence:
# one is a step float16's scaler skipped; several, a forward pass that always overflows.
NONFINITE_SYNCS = 3


def finite_weights(model: nn.Module) -> bool:
    """Whether every parameter of ``model`` is finite (synchronises; read only after a loss
    that is not finite: float16's loss scaler skips such a step and the weights stay finite)."""
    checks = [torch.isfinite(p).all() for p in model.parameters()]
    return bool(torch.stack(checks).all()) if checks else True


def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    epoch: int,
    start_step: int,
    num_steps: int,
    options: StepOptions,
    scaler: torch.amp.GradScaler | None,
    info: DistInfo,
    stop: StopFlag,
    print_freq: int,
    meter_state: EpochSums | None = None,
    step_budget: int | None = None,
    ema: ModelEma | None = None,
    nonfinite_syncs: int = 0,
) -> EpochResult:
    """Trains until the loader's epoch ends or a stop is requested.

    Args:
        loader: yields the rest of the epoch, ``num_steps - start_step`` batches.
        start_step: batches of this epoch already done before (after a resume).
        scheduler: stepped once per batch (per-iteration warmup and decay).
        scaler: for float16 autocast; ``None`` otherwise.
        meter_state: sums of the interrupted part of this epoch, to continue them.
        step_budget: stop after this many steps in this call (``--stop-after-steps``).
        ema: the weights' moving average, offered every step (``--model-ema``).
        nonfinite_syncs: the previous epoch's ``EpochResult.nonfinite_syncs``, continued.
    """
    model.train()
    meter = SumMeter(options.device, meter_state)
    bar = progress_bar(info, total=num_steps, initial=start_step, desc=f"epoch {epoch + 1}")
    start, step, images_seen, stopped, error = time.perf_counter(), start_step, 0, False, None
    first_sync: tuple[float, int] | None = None  # (time, images) at the first synchronisation
    last_sync = (start, 0)
    diverged, last_loss, weights_finite, nonfinite, lr = False, None, True, nonfinite_syncs, None
    batches, peer_failed = _guarded(loader), False
    try:
        while True:
            try:
                batch, failed = _next_or_failure(batches)
            except StopIteration:  # every rank has the same number of steps, but another may
                # fail here: a DALI loader reads the tail that DROP leaves out after its last
                peer_failed = agreed(False, info)
                break
            if agreed(failed is not None, info):  # before the step's collectives
                if failed is None:
                    peer_failed = True
                    break
                raise failed
            images, targets = batch
            loss, output = _step(model, criterion, optimizer, scaler, options, images, targets)
            lr = optimizer.param_groups[0]["lr"]  # this step's; the scheduler sets the next
            scheduler.step()
            meter.update(loss, targets.shape[0], correct_topk(output.detach(), targets, (1, 5)))
            step, images_seen = step + 1, images_seen + targets.shape[0]
            if ema is not None:
                ema.after_step(model, epoch=epoch, step=step)
            bar.update(1)
            sync = step % print_freq == 0 or step == num_steps
            if sync:  # the only host synchronisation of the step
                last_loss = loss.item()  # waits for the GPU: the clock is read after
                nonfinite = 0 if math.isfinite(last_loss) else nonfinite + 1
                weights_finite = nonfinite == 0 or finite_weights(model)
                diverged = not weights_finite or nonfinite >= NONFINITE_SYNCS
                now = time.perf_counter()
                # the pace since the last synchronisation, not since the epoch began
                rate = (
                    (images_seen - last_sync[1]) * info.world_size / max(now - last_sync[0], 1e-9)
                )
                last_sync = (now, images_seen)
                first_sync = first_sync or last_sync
                bar.set_postfix(  # shown at the bar's next refresh, at most every mininterval
                    loss=f"{last_loss:.3f}",
                    lr=f"{lr:.4g}",  # the step's own, as the loss and a divergence name it
                    img_s=f"{rate:.0f}",
                    refresh=False,
                )
            halt, diverged = _stop_now(
                stop, step - start_step, step_budget, sync, info, options.device, diverged
            )
            if halt:
                stopped = not diverged
                break
    except LoaderError as failed:
        error = failed.__cause__
    except BaseException:  # a second Ctrl-C: the bar's last line now, not under the abort line
        bar.close()
        raise
    if error is None and not diverged and (stopped or step == num_steps) and step > start_step:
        # What is saved or validated next: the loss read last came before its step's update,
        # which may have broken the weights. (Under DDP every rank holds the same weights.)
        weights_finite = finite_weights(model)
        diverged, stopped = not weights_finite, stopped and weights_finite
    bar.close()
    steady_from = first_sync or last_sync
    return EpochResult(
        steps_done=step,
        stopped=stopped,
        meter=meter.sums(),
        seconds=time.perf_counter() - start,
        images=images_seen,
        error=error,
        steady_seconds=last_sync[0] - steady_from[0],
        steady_images=last_sync[1] - steady_from[1],
        diverged=diverged,
        last_loss=last_loss,
        weights_finite=weights_finite,
        lr=lr,
        nonfinite_syncs=nonfinite,
        peer_failed=peer_failed,
    )


def _step(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    options: StepOptions,
    images: torch.Tensor,
    targets: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on a batch; returns the loss and the logits (on the device)."""
    images, targets = options.prepare(images, targets)
    with options.autocast():
        output = model(images)
        loss = criterion(output, targets)
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return loss, output


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    options: StepOptions,
    info: DistInfo,
    label: str,
) -> dict[str, float]:
    """Top-1 / top-5 accuracy (%) and cross-entropy over the whole validation set.

    ``label`` names the progress bar (``"val 3"`` after epoch 3, ``"test"``).

    Sums are reduced over ranks, so every image counts once however it was sharded.

    Raises:
        LoaderError: the loader failed (its error is the ``__cause__``).
        PeerLoaderError: another rank's loader failed; the ranks agree on it before the
            reduction, which the rank that left would never join.
    """
    model.eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    meter = SumMeter(options.device)
    bar = progress_bar(
        info,
        iterable=_guarded(loader),
        total=len(loader) if hasattr(loader, "__len__") else None,
        desc=label,
        leave=False,
    )
    with bar:  # closed at once on a second Ctrl-C too, not under the abort line
        batches = iter(bar)
        # Agreed before the first forward too: a DDP model's forward may broadcast its
        # buffers, a collective that a rank whose first batch failed would never join.
        try:
            first, failed = _next_or_failure(batches)
        except StopIteration:
            first, failed = None, None
        settle(failed, info)
        try:
            for images, targets in itertools.chain([first] if first is not None else [], batches):
                if images.shape[0] == 0:
                    continue  # a shard's empty last batch
                images, targets = options.prepare(images, targets)
                with options.autocast():
                    output = model(images)
                loss = criterion(output.float(), targets) / images.shape[0]
                meter.update(loss, images.shape[0], correct_topk(output, targets, (1, 5)))
        except LoaderError as error:
            failed = error
    settle(failed, info)
    return meter.summary(info)
