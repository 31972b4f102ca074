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

This module only parses and runs: the run is :func:`train.runner.run`, the epochs
:class:`train.trainer.Trainer`.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from dali_cutmix.cli import aborted, report_user_error

from .cli import get_args_parser
from .config import (
    CHECKPOINT_NAME,
    TrainConfig,
    claims_run_dir,
    drop_unused_run_dir,
    parse_config,
)
from .status import DataFailure, ExitStatus

# the project's top-level packages, in a clone and installed (dali_cutmix.train, ...)
_OUR_LOGGERS = ("train", "pipelines", "dali_cutmix")


def log_level(rank: int) -> int:
    """Rank 0 logs the run; under torchrun the other ranks only warnings and errors."""
    return logging.INFO if rank == 0 else logging.WARNING


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m train``; returns its exit status (see :mod:`train.status`).

    Errors caused by the input (flags, folders, file lists, checkpoints, an
    undecodable image) end with one line on stderr
    (:func:`dali_cutmix.cli.report_user_error`); any other error keeps its traceback.
    """
    rank = int(os.environ.get("RANK", "0"))
    # The project's loggers at the rank's level; other libraries' at WARNING (torch logged
    # its FakeTensor cache statistics at exit after a Ctrl-C in its import).
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    for name in _OUR_LOGGERS:
        logging.getLogger(name).setLevel(log_level(rank))
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        # a bad flag ends the process here, status 2; rank 0 makes the default output folder
        config = parse_config(argv, claim=rank == 0)
    except KeyboardInterrupt:  # --resume reads the checkpoint (and loads torch) here
        return aborted(get_args_parser(), "nothing was started")
    claimed = rank == 0 and claims_run_dir(argv)
    try:
        status = _train(config, argv, rank)
    except KeyboardInterrupt as interrupt:  # a second Ctrl-C (the first stops at the next
        # step), or one while the run was starting (generating or listing data, building the
        # loaders); the run's folder: rank 0's under torchrun (train.runner.RunInterrupted)
        folder = getattr(interrupt, "output_dir", config.output_dir)
        checkpoint = folder / CHECKPOINT_NAME
        if checkpoint.exists():
            what = f"the last checkpoint written is intact: {checkpoint}"
        elif config.resume is not None:
            what = f"this run wrote no checkpoint; the one it resumed is intact: {config.resume}"
        else:
            what = "no checkpoint was written"
        return aborted(get_args_parser(), what)
    finally:
        if claimed:  # a run that failed before its first epoch leaves no folder behind
            drop_unused_run_dir(config.output_dir)
    if status in _ALONE:
        from .utils import outlive_siblings

        outlive_siblings()  # torchrun would kill the ranks that exit 0 a moment later
    return status


# The statuses a rank may exit with while the others exit 0 (rank 0's stop or divergence,
# the rank whose data failed or whose shard could not be read); not a second Ctrl-C,
# which every rank gets and which should end the run at once.
_ALONE = (ExitStatus.USAGE, ExitStatus.STOPPED, ExitStatus.DIVERGED, ExitStatus.DATA)


def _train(config: TrainConfig, argv: list[str], rank: int) -> int:
    # Imported once the flags are good: torch and DALI take seconds to load, and --help
    # or a bad flag answers without them.
    from dali_cutmix.files import DatasetError

    from .checkpoint import CheckpointError
    from .engine import PeerLoaderError
    from .runner import EXIT_STATUS, run

    try:
        status = EXIT_STATUS[run(config).outcome]
    except DataFailure as failure:  # a bad file: the scan to run, then how to go on
        return report_user_error(get_args_parser(), failure.message(argv), status=ExitStatus.DATA)
    except (DatasetError, CheckpointError) as error:
        return report_user_error(get_args_parser(), error, status=ExitStatus.USAGE)
    except PeerLoaderError:  # while building the loaders, or --test-only's evaluation
        logging.getLogger("train").warning(
            "rank %d stops: another rank's data loader failed; that rank says how to go on", rank
        )
        return ExitStatus.FINISHED
    # torchrun stops every rank as soon as one exits with a non-zero status: only rank 0,
    # which writes the checkpoint and says how to continue, reports a stop.
    return status if rank == 0 else ExitStatus.FINISHED


if __name__ == "__main__":
    sys.exit(main())
