"""DaliLoader: epochs, len, last-batch policy, and exact resume from state_dict (CPU)."""

from __future__ import annotations

import logging
import weakref
from pathlib import Path
from typing import Any

import nvidia.dali.fn as fn
import nvidia.dali.types as types
import pytest
import torch
from conftest import Batch, build_image_folder, same_batches, small_loader
from nvidia.dali import pipeline_def

from dali_cutmix import MixConfig
from dali_cutmix.files import BadImageError
from dali_cutmix.loader import DaliLoader, LastBatch
from pipelines import imagenet


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 3 classes x 4 + 3 extras = 15 images: never a whole number of batches of 4.
    return build_image_folder(tmp_path_factory.mktemp("loader") / "train")


def _train_loader(root: Path, **overrides) -> DaliLoader:
    mix = MixConfig(num_classes=3, mixup_alpha=0.4, cutmix_alpha=1.0, prob=0.8)
    return small_loader(root, **({"crop_size": 16, "seed": 3, "mix": mix} | overrides))


def _run(loader: DaliLoader, *, epochs: int, stop_after: int | None = None) -> list[Batch]:
    """A training loop: ``epochs`` epochs, or stop (mid-epoch) after ``stop_after`` batches."""
    out: list[Batch] = []
    for _ in range(epochs):
        for images, targets in loader:
            out.append((images.clone(), targets.clone()))
            if stop_after is not None and len(out) == stop_after:
                return out
    return out


def test_len_and_epochs(folder: Path) -> None:
    loader = _train_loader(folder)
    assert len(loader) == 3 and loader.dataset_size == 12 and loader.batch_size == 4
    epochs = [_run(loader, epochs=1) for _ in range(3)]
    assert [len(e) for e in epochs] == [3, 3, 3]
    assert all(images.shape == (4, 3, 16, 16) for e in epochs for images, _ in e)
    # Each iter() is a new epoch: new crops and (global shuffle) a new order.
    assert not torch.equal(epochs[0][0][0], epochs[1][0][0])


@pytest.mark.parametrize("stop_after", [1, 2, 3, 4, 5])  # mid-epoch, epoch end, next epoch
def test_resume_gives_identical_next_batches(folder: Path, stop_after: int) -> None:
    reference = _run(_train_loader(folder), epochs=3)
    first = _train_loader(folder)
    head = _run(first, epochs=3, stop_after=stop_after)
    assert same_batches(head, reference[:stop_after])
    state = first.state_dict()
    del first

    resumed = _train_loader(folder)
    resumed.load_state_dict(state)
    # As the loader that saved it would go on: the rest of the epoch it stopped in, or
    # after an epoch's end (3: a state at its last batch) straight the next epoch. That
    # one first yielded the saved epoch's empty rest: a user's `for epoch in ...` lost one.
    tail = _run(resumed, epochs=3 - stop_after // 3)
    assert same_batches(tail, reference[stop_after:])


def test_resume_validation_mid_epoch(folder: Path) -> None:
    def val() -> DaliLoader:
        return small_loader(folder, train=False, crop_size=16, resize_size=20)

    reference = _run(val(), epochs=1)
    first = val()
    _run(first, epochs=1, stop_after=2)
    resumed = val()
    resumed.load_state_dict(first.state_dict())
    assert same_batches(_run(resumed, epochs=1), reference[2:])
    assert [len(t) for _, t in reference] == [4, 4, 4, 3]


def test_resume_releases_the_old_pipeline_before_building_the_new(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = _run(_train_loader(folder), epochs=2)
    built: list[weakref.ref] = []
    live_at_build: list[int] = []
    original = imagenet.imagenet_pipeline

    def recording(**kwargs):
        live_at_build.append(sum(ref() is not None for ref in built))
        pipe = original(**kwargs)
        built.append(weakref.ref(pipe))
        return pipe

    monkeypatch.setattr(imagenet, "imagenet_pipeline", recording)
    loader = _train_loader(folder)
    head = _run(loader, epochs=1, stop_after=2)
    loader.load_state_dict(loader.state_dict())
    tail = _run(loader, epochs=1) + _run(loader, epochs=1)
    # The first pipeline was shut down before the second was built (GPU memory is held once).
    assert live_at_build == [0, 0]
    assert [ref() is not None for ref in built] == [False, True]
    assert same_batches(head + tail, reference)  # and the stream goes on bit for bit


def test_state_before_iterating_restarts_the_stream(folder: Path) -> None:
    reference = _run(_train_loader(folder), epochs=2)
    fresh = _train_loader(folder)
    state = fresh.state_dict()
    assert (state["epoch"], state["batches_done"]) == (0, 0)
    resumed = _train_loader(folder)
    resumed.load_state_dict(state)
    assert same_batches(_run(resumed, epochs=2), reference)
    # counted as the loader that saved it counts: the restored one said epoch 1 (one behind)
    assert [loader.state_dict()["epoch"] for loader in (resumed, fresh)] == [2, 0]
    assert same_batches(_run(fresh, epochs=2), reference)
    assert fresh.state_dict()["epoch"] == 2


def test_breaking_off_then_iterating_starts_the_next_epoch(folder: Path, caplog) -> None:
    reference = _run(_train_loader(folder), epochs=2)
    loader = _train_loader(folder)
    for _ in loader:
        break
    with caplog.at_level("WARNING", logger="dali_cutmix.loader"):
        assert same_batches(_run(loader, epochs=1), reference[3:])
    # the rest is decoded, not skipped: said where a user sees it (an INFO line was not)
    said = [r for r in caplog.records if r.name == "dali_cutmix.loader"]  # python -m train's
    # tests, run first, set the other loggers to INFO
    assert [(r.levelname, r.getMessage()) for r in said] == [
        (
            "WARNING",
            "reading and discarding the 2 of 3 batches left of epoch 1 (a loop broke off "
            "early; DALI's reader cannot skip them) before the next epoch starts",
        )
    ]


def test_an_iterator_superseded_by_a_later_one_refuses_to_go_on(folder: Path) -> None:
    # zip(loader, loader) shared one epoch: 1 pair of batches where a DataLoader gives 3, and
    # an iterator left mid-epoch silently yielded nothing more.
    reference = _run(_train_loader(folder), epochs=2)
    loader = _train_loader(folder)
    first = iter(loader)
    next(first)
    second = iter(loader)  # the next epoch: the rest of the first is skipped
    assert same_batches([tuple(t.clone() for t in next(second))], reference[3:4])
    with pytest.raises(RuntimeError, match="superseded by a later iter"):
        next(first)
    assert same_batches([(i.clone(), t.clone()) for i, t in second], reference[4:6])
    loader.load_state_dict(_train_loader(folder).state_dict())
    third = iter(loader)
    loader.load_state_dict(_train_loader(folder).state_dict())
    with pytest.raises(RuntimeError, match="or load_state_dict"):
        next(third)


def test_state_of_another_graph_is_refused_and_the_loader_still_works(folder: Path) -> None:
    # DALI's C++ assert ("doesn't recognize __BatchPermutation_4") left the loader broken
    # for good: every later iter() raised it again.
    mixed = _train_loader(folder)
    next(iter(mixed))
    plain = _train_loader(folder, mix=None)
    with pytest.raises(ValueError, match="the loader state is of another pipeline"):
        plain.load_state_dict(mixed.state_dict())
    assert same_batches(_run(plain, epochs=1), _run(_train_loader(folder, mix=None), epochs=1))


def test_a_bad_file_at_the_saved_position_is_named_not_taken_for_another_pipeline(
    tmp_path: Path,
) -> None:
    # Restoring reads the next batches: a bad file there was reported as "the loader state is
    # of another pipeline (Critical error in pipeline:)", and the trainer went on in a new
    # stream that met the file later, at another step.
    root = build_image_folder(tmp_path / "train", classes=13, per_class=1, extras=False)
    first = small_loader(root, train=False, batch_size=4)
    next(iter(first))
    state = first.state_dict()
    bad = sorted(root.glob("*/*.JPEG"))[5]  # in the second batch
    # Replaced, not truncated: ``first``'s reader may hold it mapped (DALI reads files by
    # mmap), and reading a truncated mapping is a SIGBUS ("Fatal Python error: Bus error").
    bad.with_suffix(".tmp").write_bytes(b"not a jpeg")
    bad.with_suffix(".tmp").replace(bad)
    resumed = small_loader(root, train=False, batch_size=4)
    with pytest.raises(BadImageError) as info:
        resumed.load_state_dict(state)
    assert info.value.path == str(bad)
    assert str(info.value).startswith(f"{str(bad)!r} is not a decodable image")
    # its old pipeline is released: later calls raise the same error, not a bare TypeError
    with pytest.raises(BadImageError, match="is not a decodable image"):
        next(iter(resumed))
    with pytest.raises(BadImageError, match="is not a decodable image"):
        resumed.state_dict()


def test_state_from_another_setting_is_refused(folder: Path) -> None:
    state = _train_loader(folder).state_dict()
    with pytest.raises(ValueError, match="batch_size=4 but this loader has 2"):
        _train_loader(folder, batch_size=2).load_state_dict(state)
    # The epoch shuffle follows the seed, so resuming with another seed is refused.
    with pytest.raises(ValueError, match="seed=3 but this loader has 99"):
        _train_loader(folder, seed=99).load_state_dict(state)
    with pytest.raises(ValueError, match="version"):
        _train_loader(folder).load_state_dict(state | {"version": 0})
    # not a state at all, or one that lost keys: a ValueError, not AttributeError or KeyError
    with pytest.raises(
        ValueError, match="^a loader state is the dict state_dict\\(\\) returns, got NoneType$"
    ):
        _train_loader(folder).load_state_dict(None)
    damaged = {k: v for k, v in state.items() if k not in ("epoch", "batch_size")}
    with pytest.raises(
        ValueError, match="^the loader state lacks epoch, batch_size: it is damaged$"
    ):
        _train_loader(folder).load_state_dict(damaged)


def test_a_state_of_another_recipe_loads_with_a_warning_naming_what_differs(
    folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Another crop size or mixing strength fits the same graph: DALI restored it without a
    # word, and a wrong recipe passed by mistake went unseen. A change on purpose (a larger
    # crop late in training) goes on, with the batches of the new recipe.
    first = _train_loader(folder)
    next(iter(first))
    state = first.state_dict()
    assert state["recipe"]["crop_size"] == 16 and state["recipe"]["mix"]["cutmix_alpha"] == 1.0
    mix = MixConfig(num_classes=3, mixup_alpha=0.4, cutmix_alpha=0.3, prob=0.8)
    other = _train_loader(folder, crop_size=24, mix=mix)
    caplog.set_level(logging.WARNING, logger="dali_cutmix.loader")
    other.load_state_dict(state)
    said = [r.getMessage() for r in caplog.records if r.name == "dali_cutmix.loader"]
    assert said == [
        "the loader state was saved with crop_size=16 (this loader: 24), mix.cutmix_alpha=1.0 "
        "(this loader: 0.3); the batches from here follow this loader's settings"
    ]
    assert next(iter(other))[0].shape == (4, 3, 24, 24)
    caplog.clear()
    _train_loader(folder).load_state_dict(state)  # the same recipe: not a word
    _train_loader(folder).load_state_dict({k: v for k, v in state.items() if k != "recipe"})
    assert [r for r in caplog.records if r.name == "dali_cutmix.loader"] == []


def _raw_loader(files: list[str], **pipeline: Any) -> DaliLoader:
    """A DaliLoader over a user's own pipeline: the reader's and pipeline's settings given."""
    reader = pipeline.pop("reader", {})
    outputs = pipeline.pop("outputs", 2)
    float_labels = pipeline.pop("float_labels", False)

    @pipeline_def(batch_size=4, num_threads=1, device_id=None, **pipeline)
    def build() -> Any:
        jpegs, labels = fn.readers.file(
            files=files, labels=list(range(len(files))), name="reader", **reader
        )
        images = fn.resize(fn.decoders.image(jpegs), size=[8, 8])
        if float_labels:  # [B, 1] float32: a regression's, no soft targets
            labels = fn.cast(labels, dtype=types.FLOAT)
        return (images, labels, labels)[:outputs]

    return DaliLoader(
        build=lambda checkpoint: build(checkpoint=checkpoint),
        reader_name="reader",
        classes=[str(i) for i in range(len(files))],
    )


def test_a_pipeline_without_what_the_loader_needs_is_refused_when_built(folder: Path) -> None:
    # Without pad_last_batch an epoch repeated some images and left out others, without
    # checkpointing the first state_dict() failed (hours in), another output count was an
    # IndexError or KeyError at the first batch.
    files = sorted(str(p) for p in folder.rglob("*.JPEG"))[:11]
    good = {"enable_checkpointing": True, "reader": {"pad_last_batch": True}}
    loader = _raw_loader(files, **good)
    assert [len(t) for _, t in loader] == [4, 4, 3]
    floats = [t for _, t in _raw_loader(files, float_labels=True, **good)]
    assert [tuple(t.shape) for t in floats] == [(4, 1), (4, 1), (3, 1)]
    assert floats[0].dtype == torch.float32  # not taken for soft targets of 1 class
    with pytest.raises(ValueError) as caught:
        _raw_loader(files, enable_checkpointing=False, outputs=3)
    assert str(caught.value) == (
        "a DaliLoader's pipeline needs enable_checkpointing=True (for state_dict); "
        "pad_last_batch=True on its reader 'reader'; two outputs, images and targets (it has 3)"
    )
    with pytest.raises(ValueError, match="needs two outputs, images and targets \\(it has 1\\)$"):
        _raw_loader(files, outputs=1, **good)


def test_targets_of_another_width_than_the_classes_are_refused(folder: Path) -> None:
    # A mix of 3 classes behind a loader given 2 class names: "classes: 2", without a word.
    mixed = _train_loader(folder)
    mixed.classes, mixed.num_classes = ["a", "b"], 2
    with pytest.raises(ValueError) as caught:
        next(iter(mixed))
    assert str(caught.value) == (
        "the pipeline's targets have 3 columns but the loader was given 2 classes; give "
        "the classes of the pipeline's mixing (num_classes)"
    )


def test_old_states_load_unless_they_carry_the_sharded_drop_leak(folder: Path) -> None:
    # Version 1 ran DALI's DROP policy; its saved epoch size brought the leak of a padded
    # batch back into a resumed run on several shards, so only those states are refused.
    single = _train_loader(folder).state_dict()
    _train_loader(folder).load_state_dict(single | {"version": 1})
    sharded = small_loader(folder, shard_id=1, num_shards=2).state_dict()
    assert sharded["version"] == 2
    with pytest.raises(ValueError, match="version 1 with DROP over several shards"):
        small_loader(folder, shard_id=1, num_shards=2).load_state_dict(sharded | {"version": 1})
    validation = small_loader(folder, train=False, shard_id=1, num_shards=2).state_dict()
    small_loader(folder, train=False, shard_id=1, num_shards=2).load_state_dict(
        validation | {"version": 1}
    )


@pytest.mark.parametrize(
    ("train", "policy", "sizes"),
    [
        (True, LastBatch.DROP, [4, 4, 4]),
        (True, LastBatch.PARTIAL, [4, 4, 4, 3]),
        (False, LastBatch.PARTIAL, [4, 4, 4, 3]),
        (False, LastBatch.DROP, [4, 4, 4]),
    ],
)
def test_last_batch_policy(folder: Path, train: bool, policy: LastBatch, sizes: list[int]) -> None:
    loader = small_loader(folder, train=train, last_batch=policy)
    assert loader.last_batch is policy
    assert len(loader) == len(sizes) and loader.dataset_size == sum(sizes)
    for _ in range(2):  # the same in every epoch (the padding does not leak into the next)
        assert [len(t) for _, t in loader] == sizes


def test_last_batch_may_be_empty_but_len_agrees_across_shards(folder: Path) -> None:
    # 15 images over 2 shards: 7 and 8 images; batches of 7 -> 2 batches on both shards,
    # so the first shard's second batch holds nothing (ranks stay in step).
    sizes = []
    for shard in range(2):
        loader = small_loader(folder, train=False, batch_size=7, shard_id=shard, num_shards=2)
        assert len(loader) == 2 and loader.dataset_size == 7 + shard
        sizes.append([(len(t), tuple(x.shape[1:])) for x, t in loader])
    assert sizes == [[(7, (3, 8, 8)), (0, (3, 8, 8))], [(7, (3, 8, 8)), (1, (3, 8, 8))]]


@pytest.mark.parametrize(("images", "shards", "batch_size"), [(10, 3, 3), (13, 2, 3)])
def test_drop_epochs_partition_the_shuffled_images_over_shards(
    tmp_path: Path, images: int, shards: int, batch_size: int
) -> None:
    # One image per class, so a label names an image. (10, 3, 3): shards of 3, 3 and 4,
    # padded to 2 batches each, 1 full batch on every shard; DALI's own DROP policy left
    # the padded batch queued, and every second epoch was one image repeated.
    root = build_image_folder(tmp_path / "train", classes=images, per_class=1, extras=False)
    loaders = [
        small_loader(root, batch_size=batch_size, shard_id=shard, num_shards=shards)
        for shard in range(shards)
    ]
    full = images // shards // batch_size
    assert [len(loader) for loader in loaders] == [full] * shards
    orders = set()
    for _ in range(4):
        labels = [[t.tolist() for _, t in loader] for loader in loaders]
        assert all(len(batch) == batch_size for shard in labels for batch in shard)
        seen = [label for shard in labels for batch in shard for label in batch]
        assert len(seen) == shards * full * batch_size and len(set(seen)) == len(seen)
        orders.add(tuple(seen))
    assert len(orders) == 4  # a new shuffle each epoch


def test_unknown_policy_is_refused(folder: Path) -> None:
    with pytest.raises(ValueError, match="last_batch must be one of 'drop', 'partial', got 'fill'"):
        small_loader(folder, train=False, last_batch="fill")
    # "" was taken for the default (``last_batch or ...``)
    with pytest.raises(ValueError, match="last_batch must be one of 'drop', 'partial', got ''"):
        small_loader(folder, train=False, last_batch="")
