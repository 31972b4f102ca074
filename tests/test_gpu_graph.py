"""The GPU graphs, defined on a machine without a GPU.

DALI checks a graph in two places. Defining it (running the graph function) checks in
Python every argument's name and type and every input's device: a CPU operator fed GPU
data fails there. Building it, which needs CUDA, checks in C++ that each operator has a
kernel on the device it was placed on: ``fn.peek_image_shape(device="gpu")`` defines
without a word and fails only on a GPU machine. The tests here define every GPU graph
the project builds (the loader's, in every recipe, and ``mix`` on GPU images) and check
each operator's device against DALI's registry of kernels, so that a slip in the GPU
branch fails on the CPU, not in the rare minutes of a GPU session.

They run DALI's graph definition and its operator list through two private members,
``Pipeline._build_graph`` and ``Pipeline._ops`` (DALI 2.x), the part of ``build()``
that precedes the CUDA checks.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
from nvidia.dali import backend, fn, pipeline_def, types
from nvidia.dali.pipeline import Pipeline

import pipelines.imagenet as imagenet
from dali_cutmix import MixConfig, cutout, mix
from dali_cutmix.augment import quiet_auto_aug
from dali_cutmix.config import AugmentConfig, AutoAugment, EraseMode, Interpolation
from pipelines.imagenet import DType, GpuDecoderOptions, Layout

K = 5

# DALI's kernels per device, internal operators (arithmetic, subscripts, shapes) included.
KERNELS = {
    "cpu": frozenset(backend.RegisteredCPUOps(True)),
    "gpu": frozenset(backend.RegisteredGPUOps(True)),
    "mixed": frozenset(backend.RegisteredMixedOps(True)),
}


def defined(pipe: Pipeline) -> tuple[list[Any], list[Any]]:
    """``(operators, outputs)`` of ``pipe``'s graph, defined but not built (no CUDA needed)."""
    with quiet_auto_aug():
        pipe._build_graph()
    return pipe._ops, pipe._graph_outputs


def placement(ops: list[Any]) -> list[tuple[str, str]]:
    """``(device, schema)`` of each operator, in graph order."""
    return [(op._op.device, op._op._schema.Name()) for op in ops]


def without_kernel(ops: list[Any]) -> list[tuple[str, str]]:
    """The operators placed on a device DALI has no kernel of theirs for."""
    return [(device, name) for device, name in placement(ops) if name not in KERNELS[device]]


def test_an_operator_without_a_kernel_on_its_device_is_found() -> None:
    """The check can fail: DALI defines a GPU ``peek_image_shape``; only a GPU build refuses it."""

    @pipeline_def(batch_size=2, num_threads=1, device_id=0)
    def pipe():
        jpegs, _ = fn.readers.file(files=["a.jpg"], labels=[0])
        return fn.peek_image_shape(jpegs.gpu())

    ops, outputs = defined(pipe())
    assert without_kernel(ops) == [("gpu", "PeekImageShape")]
    assert [node.device for node in outputs] == ["gpu"]


# ---- the loader's graph, as make_loader builds it ------------------------------------------

MIXES = {
    "off": None,
    "cutmix": MixConfig(num_classes=K),
    "mixup": MixConfig(num_classes=K, cutmix_alpha=0.0, mixup_alpha=0.2),
    "switch": MixConfig(num_classes=K, mixup_alpha=0.8, prob=0.5, label_smoothing=0.1),
    "pair-minmax": MixConfig(num_classes=K, cutmix_minmax=(0.2, 0.8), mode="pair"),
    "batch": MixConfig(num_classes=K, mixup_alpha=0.8, mode="batch", prob=0.5),
    "elem-area": MixConfig(num_classes=K, correct_lam=False),
}
AUGMENTS = {
    "none": None,
    **{policy.value: AugmentConfig(auto_augment=policy) for policy in AutoAugment},
    **{f"erase-{m.value}": AugmentConfig(random_erase=0.25, erase_mode=m) for m in EraseMode},
    "ra-erase": AugmentConfig(auto_augment=AutoAugment.RA, random_erase=0.25),
}
TRAIN_CASES = [
    *(dict(mix=m, augment=a) for m, a in itertools.product(MIXES, AUGMENTS)),
    *(
        dict(mix=m, augment=a, output_layout=layout, dtype=dtype)
        for m, a in [("switch", "none"), ("switch", "ra-erase")]
        for layout, dtype in itertools.product(Layout, DType)
    ),
    dict(mix="cutmix", augment="ta_wide", interpolation=Interpolation.NEAREST),
]
VAL_CASES = [
    *(
        dict(output_layout=layout, dtype=dtype)
        for layout, dtype in itertools.product(Layout, DType)
    ),
    dict(interpolation=Interpolation.BICUBIC),
    dict(resize_size=224),
]


def _case_id(case: dict[str, Any]) -> str:
    return "-".join(str(getattr(value, "value", value)) for value in case.values())


@pytest.fixture(scope="module")
def listed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A file list of K classes; the files only need to exist (nothing is decoded)."""
    folder = tmp_path_factory.mktemp("listed")
    lines = []
    for k in range(2 * K):
        (folder / f"{k}.jpg").write_bytes(b"\xff\xd8")
        lines.append(f"{k}.jpg {k % K}\n")
    (folder / "files.txt").write_text("".join(lines))
    return folder / "files.txt"


def loader_graph(
    monkeypatch: pytest.MonkeyPatch, file_list: Path, decoder: GpuDecoderOptions | None, **fields
) -> tuple[list[Any], list[Any]]:
    """The graph ``make_loader(device="gpu")`` builds, defined: its pipeline is captured
    before the loader builds it (which needs CUDA)."""
    builds = []
    monkeypatch.setattr(imagenet, "dali_device_id", lambda device, device_id: 0)
    monkeypatch.setattr(imagenet, "DaliLoader", lambda build, **_: builds.append(build))
    imagenet.make_loader(
        file_list=file_list, batch_size=4, device="gpu", num_threads=2, decoder=decoder, **fields
    )
    (build,) = builds
    return defined(build(None))


def assert_gpu_path(ops: list[Any], outputs: list[Any], decoder_schema: str) -> None:
    """Every operator has a kernel where it runs; the decoder is the one mixed operator, every
    operator on the decoded images' way runs on the GPU, and both outputs are on the GPU."""
    assert without_kernel(ops) == []
    assert [name for device, name in placement(ops) if device == "mixed"] == [decoder_schema]
    assert [node.device for node in outputs] == ["gpu", "gpu"]


@pytest.mark.parametrize("case", TRAIN_CASES, ids=_case_id)
def test_every_training_recipe_defines_on_the_gpu(case, listed, monkeypatch) -> None:
    fields = dict(case, mix=MIXES[case["mix"]], augment=AUGMENTS[case["augment"]])
    ops, outputs = loader_graph(monkeypatch, listed, None, train=True, **fields)
    assert_gpu_path(ops, outputs, "decoders__ImageRandomCrop")
    if fields["mix"] is not None:
        assert ("gpu", "OneHot") in placement(ops)  # the soft targets are built on the GPU


@pytest.mark.parametrize("case", VAL_CASES, ids=_case_id)
def test_every_validation_recipe_defines_on_the_gpu(case, listed, monkeypatch) -> None:
    ops, outputs = loader_graph(monkeypatch, listed, None, train=False, **case)
    assert_gpu_path(ops, outputs, "decoders__Image")


@pytest.mark.parametrize("train", [True, False], ids=["train", "val"])
def test_the_decoder_settings_reach_the_gpu_decoder(train, listed, monkeypatch) -> None:
    decoder = GpuDecoderOptions(hw_decoder_load=0.5)
    ops, _ = loader_graph(monkeypatch, listed, decoder, train=train)
    (op,) = [op for op in ops if op._op.device == "mixed"]
    given = imagenet.decoder_kwargs(decoder, train=train, gpu=True)
    assert given["hw_decoder_load"] == 0.5
    assert {key: op._op._init_args[key] for key in given} == given


def test_the_cpu_graph_has_no_gpu_operator(listed, monkeypatch) -> None:
    """The same capture on the CPU path: nothing mixed or GPU, so the capture sees the device."""
    builds = []
    monkeypatch.setattr(imagenet, "DaliLoader", lambda build, **_: builds.append(build))
    imagenet.make_loader(
        file_list=listed, batch_size=4, device="cpu", train=True, mix=MIXES["switch"]
    )
    ops, outputs = defined(builds[0](None))
    assert {device for device, _ in placement(ops)} == {"cpu"}
    assert without_kernel(ops) == []
    assert [node.device for node in outputs] == ["cpu", "cpu"]


# ---- mix and cutout on GPU images, as the GPU tests run them -------------------------------

MIX_CONFIGS = {
    "cutmix": MixConfig(num_classes=K),
    "mixup": MixConfig(num_classes=K, cutmix_alpha=0.0, mixup_alpha=0.4),
    "switch": MixConfig(num_classes=K, mixup_alpha=0.8, prob=0.5, label_smoothing=0.1),
    "minmax": MixConfig(num_classes=K, cutmix_minmax=(0.0, 0.1), prob=0.7),
    "pair": MixConfig(num_classes=K, cutmix_alpha=0.1, mixup_alpha=1.0, mode="pair"),
    "batch": MixConfig(num_classes=K, prob=0.5, mode="batch"),
}


def mix_graph(graph, *, dtype: types.DALIDataType, gpu_labels: bool, layout: str = "HWC"):
    @pipeline_def(batch_size=4, num_threads=1, device_id=0)
    def pipe():
        images = fn.external_source(name="images", layout=layout, dtype=dtype).gpu()
        labels = fn.external_source(name="labels", dtype=types.INT32)
        return graph(images, labels.gpu() if gpu_labels else labels)

    return defined(pipe())


@pytest.mark.parametrize("name", sorted(MIX_CONFIGS))
@pytest.mark.parametrize(
    "size, check_size",
    [(None, True), ((24, 24), True), ((24, 24), False)],
    ids=["shape-of", "known", "known-unchecked"],
)
@pytest.mark.parametrize("dtype", [types.UINT8, types.FLOAT], ids=["uint8", "float"])
@pytest.mark.parametrize("gpu_labels", [False, True], ids=["cpu-labels", "gpu-labels"])
def test_mix_defines_on_gpu_images(name, size, check_size, dtype, gpu_labels) -> None:
    config = MIX_CONFIGS[name]

    def graph(images, labels):
        return mix(images, labels, config, size=size, check_size=check_size)

    ops, outputs = mix_graph(graph, dtype=dtype, gpu_labels=gpu_labels)
    assert without_kernel(ops) == []
    # the targets are built where the labels are
    assert [node.device for node in outputs] == ["gpu", "gpu" if gpu_labels else "cpu"]
    assert ("gpu", "MultiPaste") in placement(ops) or config.cutmix_alpha == 0


def test_cutout_defines_on_gpu_chw_images() -> None:
    ops, outputs = mix_graph(
        lambda x, y: (cutout(x, size=0.5), y), dtype=types.UINT8, gpu_labels=False, layout="CHW"
    )
    assert without_kernel(ops) == []
    assert [node.device for node in outputs] == ["gpu", "cpu"]
