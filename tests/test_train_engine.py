"""The step's GPU branches (NHWC input, channels-last, autocast, GradScaler), on the CPU."""

from __future__ import annotations

import io
import logging
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

import train.status
import train.utils
from dali_cutmix.cli import LOG_INTERVAL
from train.engine import (
    FIRST_FAILED,
    NONFINITE_SYNCS,
    LoaderError,
    StepOptions,
    evaluate,
    progress_bar,
    settle,
    train_one_epoch,
)
from train.trainer import SCHEDULER_BEFORE_OPTIMIZER
from train.utils import DistInfo, StopFlag

CPU = torch.device("cpu")


def test_prepare_gives_the_model_nchw_in_the_asked_memory_format() -> None:
    nhwc = torch.arange(2 * 4 * 5 * 3, dtype=torch.float32).reshape(2, 4, 5, 3)
    targets = torch.tensor([1, 0])
    options = StepOptions(device=CPU, channels_last=True, nhwc_input=True)
    images, out = options.prepare(nhwc, targets)
    assert images.shape == (2, 3, 4, 5) and images.stride() == (60, 1, 15, 3)  # channels-last
    assert images.data_ptr() == nhwc.data_ptr()  # a view of DALI's batch, not a copy
    assert torch.equal(images, nhwc.permute(0, 3, 1, 2)) and torch.equal(out, targets)
    nchw = nhwc.permute(0, 3, 1, 2).contiguous()  # the torchvision loader's batches
    converted, _ = StepOptions(device=CPU, channels_last=True).prepare(nchw, targets)
    assert converted.stride() == (60, 1, 15, 3) and torch.equal(converted, nchw)
    plain, _ = StepOptions(device=CPU).prepare(nchw, targets)
    assert plain is nchw


def _tiny_model() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
        )
    return model.to(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_autocast_and_grad_scaler_steps_on_nhwc_batches(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(4, 8, 8, 3, generator=gen), torch.randint(0, 3, (4,), generator=gen))
        for _ in range(3)
    ]
    model = _tiny_model()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    # The fp16 run's scaler is the branch a GPU run takes; a CPU GradScaler runs the same code.
    scaler = torch.amp.GradScaler("cpu", init_scale=16.0) if dtype is torch.float16 else None
    options = StepOptions(device=CPU, autocast_dtype=dtype, channels_last=True, nhwc_input=True)
    result = train_one_epoch(
        model,
        nn.CrossEntropyLoss(),
        optimizer,
        scheduler,
        batches,
        epoch=0,
        start_step=0,
        num_steps=3,
        options=options,
        scaler=scaler,
        info=DistInfo(),
        stop=StopFlag(),
        print_freq=1,
    )
    assert (result.steps_done, result.stopped, result.images) == (3, False, 12)
    assert result.meter.count == 12.0 and math.isfinite(result.meter.loss_sum)
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    if scaler is not None:
        assert scaler.get_scale() == 16.0  # no step was skipped for an overflow
    summary = evaluate(model, batches, options=options, info=DistInfo(), label="val 1")
    assert summary["samples"] == 12.0 and math.isfinite(summary["loss"])


def test_the_bar_shows_each_step_its_own_loss_and_learning_rate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # it showed the next step's rate (the scheduler's, stepped already), where a divergence
    # message names the step's own: 1.288e8 in the bar against 8.92e7 in the message
    import train.engine

    shown = []

    class Bar:
        def update(self, n: int) -> None:
            pass

        def set_postfix(self, refresh: bool, **values: str) -> None:
            shown.append(values["lr"])

        def close(self) -> None:
            pass

    monkeypatch.setattr(train.engine, "progress_bar", lambda *args, **kwargs: Bar())
    gen = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(4, 3, 8, 8, generator=gen), torch.randint(0, 3, (4,), generator=gen))
        for _ in range(3)
    ]
    result = _epoch(
        _tiny_model(), batches, start_step=0, num_steps=3, schedule=lambda step: 10.0**-step
    )
    assert shown == ["0.1", "0.01", "0.001"]
    assert result.lr == 0.001  # the last step's, which a divergence message names


def test_a_second_ctrl_c_closes_the_bars_before_the_abort_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # left open, a bar was closed by the garbage collector once the exception was handled,
    # after main's "aborted by Ctrl-C" line, and printed itself under it
    import train.engine

    closed = []
    make_bar = train.engine.progress_bar

    def recorded(*args, **kwargs):
        bar = make_bar(*args, **kwargs)
        close = bar.close
        bar.close = lambda: (closed.append(kwargs["desc"]), close())[1]
        return bar

    def closed_when_caught(interrupted: Callable[[], object]) -> list[str]:
        try:
            interrupted()
        except KeyboardInterrupt:  # where main prints its line
            return list(dict.fromkeys(closed))  # tqdm may close a bar twice
        raise AssertionError("no KeyboardInterrupt")

    class Interrupted(nn.Module):  # Ctrl-C in the forward, outside tqdm's own generator
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(1))

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            raise KeyboardInterrupt

    monkeypatch.setattr(train.engine, "progress_bar", recorded)
    assert closed_when_caught(
        lambda: _epoch(Interrupted(), _batches_then(OSError("not reached"), 2), start_step=0)
    ) == ["epoch 1"]
    assert closed_when_caught(
        lambda: evaluate(
            Interrupted(),
            _batches_then(OSError("not reached"), 2),
            options=StepOptions(device=CPU),
            info=DistInfo(),
            label="val 1",
        )
    ) == ["epoch 1", "val 1"]


def _batches_then(error: Exception, count: int):
    gen = torch.Generator().manual_seed(0)
    for _ in range(count):
        yield torch.randn(4, 3, 8, 8, generator=gen), torch.randint(0, 3, (4,), generator=gen)
    raise error


def _epoch(
    model: nn.Module,
    loader,
    *,
    start_step: int = 1,
    num_steps: int = 5,
    print_freq: int = 1,
    schedule: Callable[[int], float] = lambda step: 1.0,
):
    """One epoch on the CPU: by default of 5 steps, resumed at step 1, at lr 0.1."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    return train_one_epoch(
        model,
        nn.CrossEntropyLoss(),
        optimizer,
        scheduler,
        loader,
        epoch=0,
        start_step=start_step,
        num_steps=num_steps,
        options=StepOptions(device=CPU),
        scaler=None,
        info=DistInfo(),
        stop=StopFlag(),
        print_freq=print_freq,
    )


def test_a_loader_error_ends_the_epoch_with_the_steps_done_and_a_model_error_propagates() -> None:
    failure = OSError("the disk went away")
    result = _epoch(_tiny_model(), _batches_then(failure, 2))
    done = (result.steps_done, result.stopped, result.images, result.meter.count)
    assert done == (3, False, 8, 8.0)
    assert result.error is failure
    assert result.error.__traceback__ is not None  # kept for the traceback shown later
    with pytest.raises(RuntimeError, match="shape"):  # the step's own error is not the loader's
        _epoch(nn.Linear(5, 3), _batches_then(failure, 2))
    with pytest.raises(LoaderError, match="the data loader failed: the disk went away") as caught:
        evaluate(
            _tiny_model(),
            _batches_then(failure, 1),
            options=StepOptions(device=CPU),
            info=DistInfo(),
            label="val 1",
        )
    assert caught.value.__cause__ is failure


def test_progress_bars_do_not_flood_a_log_and_only_rank_0_shows_them(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a log file: not a terminal
    logged = progress_bar(DistInfo(), total=100, desc="epoch 1")
    assert (logged.mininterval, logged.maxinterval, logged.disable) == (LOG_INTERVAL,) * 2 + (
        False,
    )
    for _ in range(100):
        logged.update(1)
    logged.close()
    assert sys.stderr.getvalue().count("epoch 1") == 2  # the first state and the last
    assert progress_bar(DistInfo(rank=1, world_size=2), total=10).disable
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert progress_bar(DistInfo(), total=10).mininterval == 0.1  # live on a terminal


def test_the_steady_pace_leaves_out_the_steps_before_the_first_synchronisation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A clock that the loader moves: the first batch takes 100 s (start-up), the others 1 s.
    clock = [0.0]
    monkeypatch.setattr("train.engine.time.perf_counter", lambda: clock[0])

    def batches():
        gen = torch.Generator().manual_seed(0)
        for seconds in (100.0, 1.0, 1.0, 1.0):
            clock[0] += seconds
            yield torch.randn(4, 3, 8, 8, generator=gen), torch.randint(0, 3, (4,), generator=gen)

    result = _epoch(_tiny_model(), batches(), start_step=0, num_steps=4, print_freq=2)
    assert (result.images, result.seconds) == (16, 103.0)  # 0.16 images/s over the epoch
    assert (result.steady_images, result.steady_seconds) == (8, 2.0)  # 4 images/s after step 2


def _batches(values: list[float]):
    """Batches of 4 images; batch ``i`` is scaled by ``values[i]`` (``nan``: every pixel NaN)."""
    gen = torch.Generator().manual_seed(0)
    for value in values:
        yield (
            value * torch.rand(4, 3, 8, 8, generator=gen),
            torch.randint(0, 3, (4,), generator=gen),
        )


def test_weights_that_stop_being_finite_end_the_epoch_at_the_next_synchronisation() -> None:
    # Step 3's NaN batch makes every weight NaN; step 4 synchronises (print_freq 2) and sees it.
    model = _tiny_model()
    result = _epoch(
        model,
        _batches([1.0, 1.0, math.nan, 1.0, 1.0, 1.0]),
        start_step=0,
        num_steps=6,
        print_freq=2,
    )
    assert (result.steps_done, result.diverged, result.stopped, result.images) == (
        4,
        True,
        False,
        16,
    )
    assert math.isnan(result.last_loss)
    assert not any(torch.isfinite(p).any() for p in model.parameters())
    finite = _epoch(_tiny_model(), _batches([1.0] * 6), start_step=0, num_steps=6, print_freq=2)
    assert (finite.steps_done, finite.diverged, finite.stopped) == (6, False, False)
    assert math.isfinite(finite.last_loss)


def _scaled_epoch(
    model: nn.Module, values: list[float], scaler: torch.amp.GradScaler, nonfinite_syncs: int = 0
):
    """An epoch of ``len(values)`` steps with a float16-style loss scaler, synchronising
    every step."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return train_one_epoch(
        model,
        nn.CrossEntropyLoss(),
        optimizer,
        torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0),
        _batches(values),
        epoch=0,
        start_step=0,
        num_steps=len(values),
        options=StepOptions(device=CPU),
        scaler=scaler,
        info=DistInfo(),
        stop=StopFlag(),
        print_freq=1,
        nonfinite_syncs=nonfinite_syncs,
    )


@pytest.mark.filterwarnings(f"ignore:{SCHEDULER_BEFORE_OPTIMIZER}")  # as the trainer does
def test_the_count_of_non_finite_losses_goes_on_into_the_next_epoch() -> None:
    model = _tiny_model()
    scaler = torch.amp.GradScaler("cpu", init_scale=16.0)
    first = _scaled_epoch(model, [1.0, math.inf, math.inf], scaler)
    assert (first.steps_done, first.diverged, first.nonfinite_syncs) == (3, False, 2)
    second = _scaled_epoch(model, [math.inf, 1.0], scaler, nonfinite_syncs=first.nonfinite_syncs)
    assert (second.steps_done, second.diverged, second.stopped) == (1, True, False)
    third = _scaled_epoch(model, [1.0, math.inf], scaler, nonfinite_syncs=2)  # a finite one resets
    assert (third.steps_done, third.diverged, third.nonfinite_syncs) == (2, False, 1)


@pytest.mark.filterwarnings(f"ignore:{SCHEDULER_BEFORE_OPTIMIZER}")  # as the trainer does
def test_a_step_the_loss_scaler_skipped_is_not_a_divergence() -> None:
    # float16's scaler skips a step whose gradients overflow: the loss of that step is inf,
    # the weights stay finite and training goes on (the scale is halved).
    model = _tiny_model()
    scaler = torch.amp.GradScaler("cpu", init_scale=16.0)
    before = [p.detach().clone() for p in model.parameters()]
    result = _scaled_epoch(model, [math.inf, math.inf, 1.0, math.inf, 1.0], scaler)
    assert (result.steps_done, result.diverged, result.stopped) == (5, False, False)
    assert scaler.get_scale() == 2.0  # steps 1, 2 and 4 were skipped ...
    assert all(torch.isfinite(p).all() for p in model.parameters())  # ... 3 and 5 were taken
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.filterwarnings(f"ignore:{SCHEDULER_BEFORE_OPTIMIZER}")  # as the trainer does
def test_a_loss_that_stays_non_finite_under_the_scaler_is_a_divergence() -> None:
    # A forward pass that always overflows: the scaler skips every step, the weights stay
    # finite and frozen, and the run would "finish" having learnt nothing.
    model = _tiny_model()
    before = [p.detach().clone() for p in model.parameters()]
    scaler = torch.amp.GradScaler("cpu", init_scale=16.0)
    result = _scaled_epoch(model, [math.inf] * 6, scaler)
    assert (result.steps_done, result.diverged, result.stopped) == (NONFINITE_SYNCS, True, False)
    assert result.weights_finite and not math.isfinite(result.last_loss)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # frozen


# ---- a rank that exits non-zero under torchrun outlives its siblings -------------------------


def _sibling(seconds: float) -> subprocess.Popen:
    """A stand-in rank on this host that exits ``seconds`` from now (never forked: spawned)."""
    return subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({seconds})"])


def test_a_rank_leaving_non_zero_waits_for_its_siblings(monkeypatch) -> None:
    """torchrun killed the ranks that were still tearing down (-15) when rank 0 exited 3."""
    slow = _sibling(1.0)
    monkeypatch.setattr(train.utils, "_siblings", (slow.pid,))
    began = time.monotonic()
    train.utils.outlive_siblings(3, timeout=30)
    waited = time.monotonic() - began
    # the sibling exited (torchrun, its parent, reaps it: here a zombie until wait())
    assert slow.poll() == 0 and 0.5 < waited < 20, waited


def test_a_sibling_that_also_leaves_non_zero_is_not_waited_for(monkeypatch) -> None:
    """Every rank of a usage error leaves non-zero: none waits out the timeout for another."""
    busy = _sibling(60)
    try:
        monkeypatch.setattr(train.utils, "_siblings", (busy.pid,))
        marker = train.status.leaving_marker(busy.pid)
        marker.touch()  # as the sibling's own outlive_siblings does while it waits
        began = time.monotonic()
        train.utils.outlive_siblings(3, timeout=30)
        assert time.monotonic() - began < 5 and busy.poll() is None
        marker.unlink()
        began = time.monotonic()
        train.utils.outlive_siblings(3, timeout=1)  # without the marker: waited for, to the end
        assert 0.9 < time.monotonic() - began < 10
    finally:
        busy.kill()
        busy.wait()
    assert not train.status.leaving_marker(os.getpid()).exists()  # its own marker was removed


def _rank(script: str, **env: str) -> subprocess.Popen:
    """``python -c script`` in the repository, as a torchrun rank of ``env`` (spawned)."""
    return subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, **env},
        stderr=subprocess.PIPE,
        text=True,
    )


def _when_leaving(process: subprocess.Popen) -> None:
    """Waits until ``process`` has left its marker (it waits to exit), at most 60 s."""
    marker = train.status.leaving_marker(process.pid)
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
        time.sleep(0.05)


def test_torchrun_ending_a_leaving_rank_leaves_its_status_and_no_marker() -> None:
    """torchrun's SIGTERM to a rank waiting for its siblings: listed as killed (-15), and
    its marker left behind in the temporary folder. Now: its own status, marker gone."""
    script = (
        "import os, train.utils\n"
        "train.utils._siblings = (os.getppid(),)  # never exits while it waits\n"
        "train.utils.outlive_siblings(3, timeout=60)\n"
    )
    rank = _rank(script)
    try:
        _when_leaving(rank)
        rank.send_signal(signal.SIGTERM)
        assert rank.wait(timeout=30) == 3
    finally:
        rank.kill()
    assert not train.status.leaving_marker(rank.pid).exists()


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["--epochs", "-3"], "python -m train: error: --epochs must be an int >= 1, got -3\n"),
        (["--bogus"], "python -m train: error: unrecognized arguments: --bogus\n"),
    ],
)
def test_a_rank_but_its_host_s_first_keeps_a_flag_error_to_itself(
    argv: list[str], line: str
) -> None:
    """torchrun's second rank of a bad flag: ended by torchrun (once the first rank, which
    says it, has exited), it exits 2 without a word; not ended, it says its own."""
    script = f"import sys; from train.__main__ import main; sys.exit(main({argv!r}))"
    quiet = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}
    rank = _rank(script, **quiet)
    try:
        _when_leaving(rank)
        rank.send_signal(signal.SIGTERM)
        assert rank.wait(timeout=30) == 2
        assert rank.stderr.read() == ""
    finally:
        rank.kill()
    assert not train.status.leaving_marker(rank.pid).exists()
    # not ended in QUIET_WAIT: the error was its own (here, by a wait of 0.5 s); the host's
    # first rank says it at once
    script = f"import train.__main__ as m; m.QUIET_WAIT = 0.5\n{script}"
    for local_rank in ("1", "0"):
        done = subprocess.run(
            [sys.executable, "-c", script],
            cwd=Path(__file__).resolve().parents[1],
            env={**os.environ, **quiet, "LOCAL_RANK": local_rank},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 2
        assert done.stderr.endswith(line) and done.stderr.count("error:") == 1


def test_said_once_says_the_first_failed_rank_s_error_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import train.__main__ as entry

    said: list[str] = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    began = time.monotonic()
    assert entry._said_once(lambda: said.append("it"), first=True) == 2
    assert said == ["it"] and time.monotonic() - began < 1  # not its host's first: no matter
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert entry._said_once(lambda: said.append("late"), first=False, timeout=0.3) == 2
    assert said == ["it", "late"] and time.monotonic() - began > 0.3  # after the wait
    assert not train.status.leaving_marker(os.getpid()).exists()


def test_settle_names_the_first_rank_that_failed() -> None:
    error = ValueError("a shard of no image")
    with pytest.raises(ValueError) as raised:
        settle(error, DistInfo())
    assert raised.value is error and getattr(error, FIRST_FAILED) == 0
    settle(None, DistInfo())  # none failed: returns
    assert train.utils.lowest_rank_with(False, DistInfo()) is None


def test_a_rank_finds_its_host_siblings_before_any_process_group() -> None:
    # The first rank of a flag error waits for them to wait too: torchrun ended one still
    # parsing on a loaded machine, which it listed as killed (-15).
    rank = (
        "import time; from train.status import host_siblings\n"
        "print(sorted(host_siblings()), flush=True); time.sleep(1)"
    )
    # a parent of its own, as torchrun's agent is (the test process has other children)
    launcher = (
        "import subprocess, sys\n"
        f"ranks = [subprocess.Popen([sys.executable, '-c', {rank!r}], stdout=subprocess.PIPE,"
        " text=True) for _ in range(3)]\n"
        "for r in ranks: print(r.pid, r.communicate()[0].strip())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", launcher],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=120,
    )
    seen = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    pids = sorted(int(pid) for pid in seen)
    assert len(pids) == 3, done.stderr
    for pid, siblings in seen.items():
        assert siblings == str([other for other in pids if other != int(pid)])


def test_the_first_ctrl_c_is_said_by_rank_0_alone(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # torchrun forwards a Ctrl-C to every rank, and each said "stopping after this step".
    caplog.set_level(logging.WARNING, logger="train")
    for rank, lines in (("1", 0), ("0", 1)):
        monkeypatch.setenv("RANK", rank)
        flag = StopFlag()
        flag.request(signal.SIGINT, None)
        assert flag.requested
        said = [r for r in caplog.records if "stopping after this step" in r.getMessage()]
        assert len(said) == lines


def test_the_curves_tick_whole_epochs(tmp_path: Path, monkeypatch) -> None:
    # Two epochs were ticked at 1.00, 1.25, 1.50, ...
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    record = {"train_loss": 2.0, "val_loss": 1.5, "train_acc1": 10.0}
    record |= {"val_acc1": 20.0, "val_acc5": 50.0}
    path = train.utils.plot_curves(
        [{**record, "epoch": 1}, {**record, "epoch": 2}], tmp_path / "c.png"
    )
    assert path == tmp_path / "c.png" and path.read_bytes()[:4] == b"\x89PNG"
    (figure,) = figures
    for ax in figure.axes:
        low, high = ax.get_xlim()
        shown = [t for t in ax.get_xticks() if low <= t <= high]
        assert shown == [1.0, 2.0], shown


@pytest.mark.parametrize("signum, again", [(signal.SIGINT, "Ctrl-C"), (signal.SIGTERM, "SIGTERM")])
def test_the_first_stop_names_the_signal_that_aborts_as_the_one_received(
    signum: int, again: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A SIGTERM (a batch scheduler's, torchrun's) was answered "(Ctrl-C again to abort)".
    monkeypatch.delenv("RANK", raising=False)
    flag = StopFlag()
    with caplog.at_level("WARNING", logger="train.utils"):
        flag.request(signum, None)
    assert flag.requested and caplog.messages == [
        f"stopping after this step and writing a checkpoint ({again} again to abort)"
    ]
