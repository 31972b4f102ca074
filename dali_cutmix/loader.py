"""A DALI pipeline as a drop-in for ``torch.utils.data.DataLoader``.

``for images, targets in loader`` yields torch tensors on the pipeline's device;
``len(loader)`` is the number of batches; each ``iter(loader)`` is one epoch;
``state_dict()`` / ``load_state_dict()`` carry DALI's own pipeline checkpoint,
so a run resumed mid-epoch yields bit-identical next batches.
"""

from __future__ import annotations

import ctypes
import enum
import functools
import gc
import json
import logging
import math
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from nvidia.dali.pipeline import Pipeline
from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

from dali_cutmix.config import flatten

__all__ = ["DaliLoader", "LastBatch"]

logger = logging.getLogger(__name__)

# 2: DALI's iterator runs PARTIAL (see LastBatch). A version-1 state of DROP over several
# shards carries DALI's DROP epoch size, which would bring its padded-batch leak back.
_STATE_VERSION = 2
# What load_state_dict reads of a state (version 1 has no "settings").
_STATE_KEYS = ("dali_checkpoint", "epoch", "batches_done", "num_batches", "batch_size")
# DALI's words when a checkpoint does not fit the pipeline's graph (executor and operators)
_FOREIGN_CHECKPOINT = (
    "might come from another pipeline",
    "operators in the checkpoint differs",
)
_OUTPUTS = ("images", "targets")


class LastBatch(str, enum.Enum):
    """What happens to a shard's last, incomplete batch in an epoch.

    The reader always pads a shard to whole batches by repeating its last
    sample (``pad_last_batch=True``); the policy says what the loader yields:

    * ``DROP``: only full batches are yielded, ``len(loader)`` of them on every
      shard: ``(epoch_size // num_shards) // batch_size``, which every shard
      can fill (what training wants: steady batch statistics, no
      recompilation, ranks in step). Each epoch skips at most ``batch_size``
      images per shard, different ones each epoch when shuffling; the rest of
      the reader's epoch is read and discarded, so that the next epoch starts
      at its own first batch.
    * ``PARTIAL``: the last batch is yielded short, padding removed. Over an
      epoch the shards together yield every image exactly once (what
      validation needs). All shards yield ``len(loader)`` batches; a shard
      whose part ends on a batch boundary may yield an empty last batch.

    DALI's iterator always runs with its ``PARTIAL`` policy: with ``DROP`` it
    ends an epoch after ``epoch_size // num_shards`` samples, and where that is
    a whole number of batches while a larger shard's padded part is one batch
    longer, the unread padded batch stayed queued and became the next epoch's
    first batch (one image repeated), shifting every later epoch.
    """

    DROP = "drop"
    PARTIAL = "partial"


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to do
        return None


def _return_freed_memory() -> None:
    """Hands the C heap's free pages back to the system (glibc's ``malloc_trim``).

    A released DALI pipeline frees many buffers that glibc keeps for reuse but
    cannot reuse in full for the next pipeline: over 20 resumes in one process
    the RSS grew by about 130 MiB, and stays flat with this
    (``python -m pipelines.soak``).
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


class DaliLoader:
    """Iterates a DALI pipeline as ``(images, targets)`` torch tensors, one epoch per ``iter``.

    Args:
        build: returns a new, unbuilt pipeline; called with a DALI checkpoint
            (a string) to restore, or ``None``. The pipeline must have
            ``enable_checkpointing=True``, a reader named ``reader_name`` with
            ``pad_last_batch=True``, and two outputs: images and targets.
        reader_name: the ``name`` of the pipeline's reader.
        last_batch: see :class:`LastBatch`.
        classes: class names; ``num_classes == len(classes)``.
        explain: turns a pipeline error into the exception to raise (e.g. a
            :class:`dali_cutmix.files.BadImageError` naming the file); ``None``
            re-raises DALI's error.
        settings: JSON-able values that fix the data stream besides the
            checkpoint (seed, sharding, dataset size); saved in
            :meth:`state_dict` and required to match in :meth:`load_state_dict`.
        recipe: JSON-able values of what the pipeline computes that a state may be
            restored under when they differ (crop size, mixing strength): saved in
            :meth:`state_dict`; :meth:`load_state_dict` warns of each one that differs.

    Raises:
        ValueError: the pipeline lacks ``enable_checkpointing=True``, ``pad_last_batch``
            on its reader, or has not two outputs.

    Attributes:
        batch_size: samples per full batch.
        num_classes, classes: as given.
        device: where the tensors are (``cuda:N`` or ``cpu``).
        dataset_size: images this loader yields per epoch (this shard).
    """

    def __init__(
        self,
        *,
        build: Callable[[str | None], Pipeline],
        reader_name: str,
        last_batch: LastBatch = LastBatch.PARTIAL,
        classes: list[str],
        explain: Callable[[Exception], Exception] | None = None,
        settings: dict[str, Any] | None = None,
        recipe: dict[str, Any] | None = None,
    ) -> None:
        self._build = build
        self._reader_name = reader_name
        self.last_batch = LastBatch(last_batch)
        self.classes = list(classes)
        self.num_classes = len(self.classes)
        self._explain = explain
        self._settings = dict(settings or {})
        self._recipe = dict(recipe or {})
        self._failure: Exception | None = None
        self._pipe: Pipeline | None = None
        self._iterator = self._guard(lambda: self._new_iterator(None))
        self.batch_size: int = self._iterator.batch_size
        self._length = self._count_batches()
        self.dataset_size = self._count_images()
        device_id = self._pipe.device_id
        self.device = torch.device("cpu" if device_id is None else f"cuda:{device_id}")
        self._at_start()
        self._iterators = 0  # iter() calls and state loads: only the latest iterator may run

    def _at_start(self) -> None:
        """The counters of a loader whose (new) pipeline has not yielded a batch."""
        self._epoch = 0  # epochs started
        self._done = 0  # batches yielded in the current epoch
        self._finished = True  # DALI's iterator is reset and at an epoch start
        self._resuming = False

    def _new_iterator(self, checkpoint: str | None) -> DALIGenericIterator:
        self._release()
        self._pipe = self._build(checkpoint)
        self._pipe.build()
        self._check_pipeline(self._pipe)
        return DALIGenericIterator(
            self._pipe,
            list(_OUTPUTS),
            reader_name=self._reader_name,
            last_batch_policy=LastBatchPolicy.PARTIAL,  # see LastBatch
            auto_reset=False,
        )

    def _check_pipeline(self, pipe: Pipeline) -> None:
        """What the loader needs of ``build``'s pipeline, refused at once: without it an
        epoch repeated some images and left out others (no ``pad_last_batch``), the first
        ``state_dict()``, hours in, failed (no checkpointing), or a batch failed with an
        ``IndexError`` (other outputs)."""
        wanted = []
        if not getattr(pipe, "_enable_checkpointing", True):  # DALI keeps it private
            wanted.append("enable_checkpointing=True (for state_dict)")
        if not pipe.reader_meta(self._reader_name).get("pad_last_batch", 1):
            wanted.append(f"pad_last_batch=True on its reader {self._reader_name!r}")
        if pipe.num_outputs != len(_OUTPUTS):
            wanted.append(f"two outputs, images and targets (it has {pipe.num_outputs})")
        if wanted:
            raise ValueError(f"a DaliLoader's pipeline needs {'; '.join(wanted)}")

    def _release(self) -> None:
        """Shuts the current pipeline down before another one is built.

        On the GPU a pipeline holds its decoder's buffers and prefetched
        batches; released first, its memory goes back to DALI's pools for the
        next pipeline instead of two pipelines' worth being held at once. DALI
        shuts a pipeline down when its last reference goes: the loader holds
        one, the DALI iterator the other.
        """
        if self._pipe is None:
            return
        pipe = weakref.ref(self._pipe)
        self._iterator = None
        self._pipe = None
        if pipe() is not None:  # kept alive by a reference cycle: collect it now
            gc.collect()
        _return_freed_memory()

    def _count_batches(self) -> int:
        if self.last_batch is LastBatch.PARTIAL:
            return len(self._iterator)
        meta = self._pipe.reader_meta(self._reader_name)
        # The smallest shard holds epoch_size // number_of_shards images (DALI's split).
        return meta["epoch_size"] // meta["number_of_shards"] // self.batch_size

    def _count_images(self) -> int:
        meta = self._pipe.reader_meta(self._reader_name)
        if self.last_batch is LastBatch.DROP:
            return self._length * self.batch_size
        total, shards, shard = meta["epoch_size"], meta["number_of_shards"], meta["shard_id"]
        # DALI's split of `total` samples into `shards` contiguous parts.
        return math.floor((shard + 1) * total / shards) - math.floor(shard * total / shards)

    def _guard(self, step: Callable[[], Any]) -> Any:
        """Runs a DALI call; after any pipeline error, every later call raises it again.

        DALI marks a pipeline invalid after an error but may still hand out
        stale batches; refusing further use is what keeps a caller from hanging
        or training on garbage.
        """
        if self._failure is not None:
            raise self._failure
        try:
            return step()
        except StopIteration:
            raise
        except RuntimeError as err:
            self._failure = self._explain(err) if self._explain else err
            if self._failure is err:
                raise
            raise self._failure from err

    def __len__(self) -> int:
        """Batches per epoch for this shard."""
        return self._length

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self._resuming:
            self._resuming = False
        else:
            self._start_epoch()
        self._iterators += 1
        return self._batches(self._iterators)

    def _start_epoch(self) -> None:
        if self._done or not self._finished:
            self._finish_epoch()
        self._epoch += 1
        self._done = 0

    def _finish_epoch(self) -> None:
        """Consumes what is left of DALI's epoch (a loop broke off early) and resets it."""
        if self._finished:
            return
        if self._failure is not None:  # nothing can be read: no warning that it will be
            raise self._failure
        left = self._length - self._done
        if left:  # decoded in full: on ImageNet up to an epoch's work before the next batch
            logger.warning(
                "reading and discarding the %d of %d batches left of epoch %d (a loop broke "
                "off early; DALI's reader cannot skip them) before the next epoch starts",
                left,
                self._length,
                self._epoch,
            )
        while True:
            try:
                self._guard(lambda: next(self._iterator))
            except StopIteration:
                break
        self._guard(self._iterator.reset)
        self._done = self._length
        self._finished = True

    def _batches(self, mine: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while self._done < self._length:
            if mine != self._iterators:  # the loader's one stream now serves a later iter()
                raise RuntimeError(
                    "this iterator of a DaliLoader was superseded by a later iter(loader) (or "
                    "load_state_dict): the loader runs one epoch at a time, so two iterators "
                    "would share and cut short one epoch; finish or drop the first one"
                )
            self._finished = False
            try:
                batch = self._guard(lambda: next(self._iterator))[0]
            except StopIteration:
                raise RuntimeError(
                    f"DALI ended the epoch after {self._done} of {self._length} batches"
                ) from None
            self._done += 1
            targets = batch["targets"]
            # soft targets, [B, K]; not [B, 1] labels, integer or float (a regression's)
            soft = targets.ndim == 2 and targets.is_floating_point() and targets.shape[1] > 1
            if soft and targets.shape[1] != self.num_classes:
                raise ValueError(
                    f"the pipeline's targets have {targets.shape[1]} columns but the loader "
                    f"was given {self.num_classes} classes; give the classes of the "
                    "pipeline's mixing (num_classes)"
                )
            yield batch["images"], targets
        self._finish_epoch()

    def state_dict(self) -> dict[str, Any]:
        """Position in the data stream: DALI's pipeline checkpoint and the epoch counters.

        An epoch whose batches were all yielded is closed first, so the
        checkpoint sits at a clean epoch start.
        """
        if self._done >= self._length:
            self._finish_epoch()
        checkpoint = self._guard(lambda: self._iterator.checkpoints()[0])
        return {
            "version": _STATE_VERSION,
            "dali_checkpoint": checkpoint,
            "epoch": self._epoch,
            "batches_done": self._done,
            "num_batches": self._length,
            "batch_size": self.batch_size,
            "settings": self._settings,
            "recipe": self._recipe,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores a :meth:`state_dict`; the next ``iter()`` continues that epoch.

        Raises:
            ValueError: the state is no dict, lacks keys, is from another version, or
                from a loader with a different batch size, number of batches or ``settings``.
        """
        if not isinstance(state, Mapping):  # None was an AttributeError
            raise ValueError(
                f"a loader state is the dict state_dict() returns, got {type(state).__name__}"
            )
        version = state.get("version")
        if version not in (1, _STATE_VERSION):
            raise ValueError(f"unsupported loader state version {version!r}")
        missing = [key for key in _STATE_KEYS if key not in state]
        if missing:  # a KeyError before
            raise ValueError(f"the loader state lacks {', '.join(missing)}: it is damaged")
        sharded = state.get("settings", {}).get("num_shards", 1) > 1
        if version == 1 and sharded and self.last_batch is LastBatch.DROP:
            raise ValueError(
                "a loader state of version 1 with DROP over several shards holds DALI's old "
                "epoch size, which repeated a padded batch in later epochs; it is not restored"
            )
        saved = {"batch_size": state["batch_size"], "num_batches": state["num_batches"]}
        saved |= state.get("settings", {})
        mine = {"batch_size": self.batch_size, "num_batches": self._length} | self._settings
        for key in sorted(saved.keys() | mine.keys()):
            if saved.get(key) != mine.get(key):
                raise ValueError(
                    f"loader state has {key}={saved.get(key)!r} but this loader has "
                    f"{mine.get(key)!r}; "
                    f"build the loader with the settings of the saved run"
                )
        self._failure = None
        try:
            self._iterator = self._new_iterator(state["dali_checkpoint"])
        except RuntimeError as error:
            if not any(words in str(error) for words in _FOREIGN_CHECKPOINT):
                # The restored pipeline's own first batches failed (a bad file at the saved
                # position, memory): that error, not a refusal. The old pipeline is released
                # already, so every later call raises it again, as after any failure.
                self._failure = self._explain(error) if self._explain else error
                if self._failure is error:
                    raise
                raise self._failure from error
            # Another graph than the saved one (other mixing or augmentation): a fresh stream
            # instead of a loader broken for good, and the refusal a caller expects.
            self._iterator = self._guard(lambda: self._new_iterator(None))
            self._at_start()
            self._iterators += 1
            first = str(error).strip().splitlines()[0]
            raise ValueError(
                "the loader state is of another pipeline (other mixing or augmentation?), which "
                f"DALI cannot restore ({first}); build the loader with the settings of the "
                "saved run"
            ) from None
        self._tell_of_other_recipe(state.get("recipe"))
        self._epoch = int(state["epoch"])
        self._done = int(state["batches_done"])
        # Epoch 0: saved before the first iter(), at the start of the stream, whose next
        # iter() starts epoch 1 as it would have for the loader that saved it.
        self._finished = self._epoch == 0 or self._done >= self._length
        # A state saved at an epoch's end: the next iter() is the next epoch, as it is for
        # the loader that saved it (it yielded the empty rest of the saved epoch first).
        self._resuming = not self._finished
        self._iterators += 1  # an iterator from before the load reads another stream now

    def _tell_of_other_recipe(self, saved: Any) -> None:
        """Warns of each recipe value (crop size, mixing strength) that the state was saved
        under and this loader does not have: DALI restores the reader's position and random
        streams into the same graph, and the batches follow this loader's values, as a
        change on purpose wants; by mistake, it would go unseen."""
        if not isinstance(saved, Mapping) or not self._recipe:  # a state from before recipes
            return
        was, now = flatten(saved), flatten(self._recipe)
        differ = [
            f"{key}={was.get(key)!r} (this loader: {now.get(key)!r})"
            for key in sorted(was.keys() | now.keys())
            if was.get(key) != now.get(key)
        ]
        if differ:
            logger.warning(
                "the loader state was saved with %s; the batches from here follow this "
                "loader's settings",
                ", ".join(differ),
            )

    def __repr__(self) -> str:
        info = {
            "batches": self._length,
            "batch_size": self.batch_size,
            "images": self.dataset_size,
            "classes": self.num_classes,
            "device": str(self.device),
            "last_batch": self.last_batch.value,
        }
        return f"DaliLoader({json.dumps(info)[1:-1]})"
