"""``run(config)``: one whole training run (or ``--test-only`` evaluation) from its configuration.

Sets the process up (distributed group, determinism, the output folder and its
``config.json``), continues ``config.resume`` if given and says how the run ended
(:class:`train.trainer.Outcome`, mapped to ``python -m train``'s exit status by
:data:`EXIT_STATUS`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from dali_cutmix.cli import write_json
from dali_cutmix.files import DatasetError, counted

from .checkpoint import load_checkpoint, load_weights, remove_partial_checkpoints
from .config import CURVES_NAME, METRICS_NAME, Device, TrainConfig
from .data import build_val_loader, data_failure, prepare_dataset
from .engine import LoaderError, evaluate, settled
from .model import build_model, build_model_ema, step_options, unwrapped
from .status import DataFailure, ExitStatus, resume_command
from .trainer import Outcome, Trainer, accuracy_line, val_metrics
from .utils import (
    DistInfo,
    MetricsFile,
    cleanup_distributed,
    folder_lock,
    init_distributed,
    plot_curves,
    rank_0s,
)

__all__ = ["EXIT_STATUS", "TEST_NAME", "RunInterrupted", "RunResult", "evaluate_checkpoint", "run"]

logger = logging.getLogger(__name__)

EXIT_STATUS = {
    Outcome.FINISHED: ExitStatus.FINISHED,
    Outcome.NOTHING_TO_DO: ExitStatus.FINISHED,
    Outcome.STOPPED: ExitStatus.STOPPED,
    Outcome.TESTED: ExitStatus.FINISHED,
    Outcome.DIVERGED: ExitStatus.DIVERGED,
    # the rank that met the file exits with DATA and prints the line; torchrun names it
    Outcome.PEER_FAILED: ExitStatus.FINISHED,
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


def _write_config(config: TrainConfig, info: DistInfo) -> None:
    """``config.json``, by a command that trains: ``--test-only`` and a ``--resume`` with
    nothing left to do leave the run's own configuration as it trained."""
    if info.is_main:
        config_json = config.to_json(world_size=info.world_size)
        (config.output_dir / "config.json").write_text(config_json + "\n")


def _evaluate_models(
    config: TrainConfig, state: dict[str, Any], root: Path, info: DistInfo
) -> dict[str, float]:
    """The validation sums of the checkpoint's model and, when saved, of its average."""
    # agreed: one rank's first batches may fail while the others wrap the model in DDP
    val_loader = settled(
        lambda: build_val_loader(config, root, info), (DataFailure, DatasetError), info
    )
    model = build_model(config, info)
    load_weights(unwrapped(model), state["model"], config.resume, "model")
    models = {"": model}
    if state.get("model_ema"):
        ema = build_model_ema(model, config, info)
        load_weights(ema, state["model_ema"], config.resume, "--model-ema")
        models["ema_"] = ema.module
    options, val = step_options(config, info), {}
    for prefix, evaluated in models.items():
        try:
            sums = evaluate(evaluated, val_loader, options=options, info=info, label="test")
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
    checkpoint's position (``epochs_done``, and ``steps_done`` of the next); the line
    printed on stdout gives the accuracies. Nothing is trained and the checkpoint,
    metrics and configuration are left as they are.
    """
    root = prepare_dataset(config, info)
    val = _evaluate_models(config, state, root, info)
    epoch, step = state["epoch"], state["step"]
    # what the checkpoint has trained, counted: "epoch" read as metrics.jsonl's (numbered
    # from 1), where 0 meant the first epoch, 3 of its steps done
    position = {"epochs_done": epoch, "steps_done": step}
    record = {"checkpoint": str(config.resume), **position, **val_metrics(val)}
    if info.is_main:
        write_json(config.output_dir / TEST_NAME, record)
        # "1 epoch", "2 epochs and 1 step", "1 step" (not "0 epochs and 1 steps")
        done = [counted(n, noun) for n, noun in ((epoch, "epoch"), (step, "step")) if n]
        trained = " and ".join(done) or "0 epochs"
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
    records = MetricsFile(config.output_dir / METRICS_NAME, info.is_main).read()
    curves = config.output_dir / CURVES_NAME
    if info.is_main and records and not curves.exists():  # a run aborted as it plotted them
        plot_curves(records, curves)
    return RunResult(records, Outcome.NOTHING_TO_DO)


class RunInterrupted(KeyboardInterrupt):
    """A second Ctrl-C (or one while the run started), with the run's output folder: under
    torchrun rank 0's (:func:`train.utils.rank_0s`), which this rank's flags may not name."""

    def __init__(self, output_dir: Path) -> None:
        super().__init__()
        self.output_dir = output_dir


def run(config: TrainConfig) -> RunResult:
    """Trains as ``config`` says (continuing ``config.resume`` if given), or tests it.

    Raises:
        DataFailure: a file of the dataset did not decode (a checkpoint holds
            every step done, when training had started).
        DatasetError: a folder or file list cannot be read.
        RunInterrupted: a KeyboardInterrupt, once the ranks agreed on the output folder.
    """
    info = init_distributed(config.device is Device.GPU)
    try:
        config = dataclasses.replace(config, output_dir=rank_0s(config.output_dir, info))
        try:
            with _locked(config, info):
                return _run(config, info)
        except KeyboardInterrupt as interrupt:
            raise RunInterrupted(config.output_dir) from interrupt
    finally:
        cleanup_distributed(info)


@contextlib.contextmanager
def _locked(config: TrainConfig, info: DistInfo) -> Iterator[None]:
    """Rank 0's lock on the output folder while it trains (:func:`train.utils.folder_lock`);
    ``--test-only`` writes its test.json alone and takes none. Held, no other run writes
    there: every partial checkpoint file there is a killed run's, removed."""
    if not info.is_main or config.test_only:
        yield
        return
    with folder_lock(config.output_dir) as locked:
        if locked:
            remove_partial_checkpoints(config.output_dir)
        yield


def _run(config: TrainConfig, info: DistInfo) -> RunResult:
    _set_up(config, info)
    state = load_checkpoint(config.resume) if config.resume is not None else None
    if state is not None and config.test_only:
        return evaluate_checkpoint(config, state, info)
    if state is not None and state["epoch"] >= config.epochs:
        return _nothing_to_do(config, state, info)
    trainer = Trainer(config, info)
    if state is not None:
        trainer.restore(state)
    # once the loaders took the data: a run they refused (a batch larger than the data, an
    # empty --train-list) left a resumed run's config.json holding the refused settings
    _write_config(config, info)
    start = time.perf_counter()
    try:
        outcome = trainer.fit()
    except BaseException:
        # A run that wrote no checkpoint (a full disk at the first one, a second Ctrl-C)
        # leaves no records either: they made "run again" fail on "already holds a run".
        if trainer.saved_at is None:
            trainer.metrics.discard()
        raise
    records = trainer.metrics.read()
    if info.is_main and outcome is Outcome.FINISHED and records:
        logger.info(
            # the training and validation alone: "(6 s in this command)" read as the whole
            # command, which its imports and the loaders' start made 20 s
            "finished %d epoch%s (training and validation took %.0f s in this command): val "
            "top-1 %.2f %% (chance %.1f %%), "
            "outputs in %s",
            trainer.epoch,  # the model's, not this folder's records (a resume elsewhere)
            "s" * (trainer.epoch != 1),
            time.perf_counter() - start,
            records[-1]["val_acc1"],
            100 / config.data.num_classes,
            config.output_dir,
        )
    return RunResult(records, outcome)
