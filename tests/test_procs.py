"""No worker process is forked: a fork copies DALI pipelines whose threads it does not copy."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from torchvision.transforms import v2

from dali_cutmix.procs import exit_on_sigterm, process_context, signals_deferred, worker_pool
from dali_cutmix.scan import scan
from dali_cutmix.synthetic import SyntheticSpec, generate
from pipelines.torchvision_ref import make_torchvision_loader

REPO = Path(__file__).resolve().parents[1]
_TO_8X8 = v2.Compose([v2.PILToTensor(), v2.Resize((8, 8), antialias=True)])


def test_process_context_never_forks() -> None:
    assert process_context().get_start_method() in ("forkserver", "spawn")


def _scan(folder: Path, tmp_path: Path) -> int:
    return len(scan(folder, workers=2, chunk_size=4, progress=False).errors)


def _generate(folder: Path, tmp_path: Path) -> int:
    spec = SyntheticSpec(num_classes=2, train_per_class=3, val_per_class=1, size_scale=0.2)
    root = generate(tmp_path / "generated", spec, workers=2, progress=False)
    return len(list(root.rglob("*.JPEG")))


def _torchvision_loader(folder: Path, tmp_path: Path) -> int:
    loader = make_torchvision_loader(
        folder, train=False, batch_size=5, workers=2, crop_size=8, resize_size=8
    )
    return sum(len(images) for images, _ in loader)


@pytest.mark.parametrize(
    ("start", "expected"),
    [(_scan, 15), (_generate, 8), (_torchvision_loader, 15)],
    ids=["scan", "synthetic.generate", "make_torchvision_loader"],
)
def test_worker_processes_are_not_forked(
    start: Callable[[Path, Path], int],
    expected: int,
    image_folder: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every way this project starts workers, with fork made to fail: "fork" calls os.fork
    # here, while "forkserver" and "spawn" execute a new interpreter.
    def forbidden() -> int:
        raise AssertionError("os.fork() in a process that may hold DALI pipelines")

    monkeypatch.setattr(os, "fork", forbidden)
    assert start(image_folder, tmp_path) == expected


# The reported hang: a pipeline the parent has dropped but not yet collected is collected in
# a forked child, whose Pipeline.__del__ then waits forever for DALI threads that are not
# there. The at-fork hook runs that collection at once, where a busy child runs it sooner or
# later; without a fork it never runs in a worker.
_HANG = """
import gc, os, sys
from pipelines.imagenet import make_loader
from dali_cutmix.scan import scan

root = sys.argv[1]
gc.disable()
loader = make_loader(root, train=False, batch_size=4, device="cpu", crop_size=8, num_threads=1)
next(iter(loader))
loader.cycle = loader  # now garbage that only a collection finds
del loader
os.register_at_fork(after_in_child=gc.collect)
print(len(scan(root, workers=2, progress=False).good))
"""


@pytest.mark.slow
def test_scan_finishes_after_a_pipeline_was_dropped(image_folder: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", _HANG, str(image_folder)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its workers too can be killed, should they hang
    )
    try:
        out, err = process.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        pytest.fail("scan() hung in a process that had dropped a DALI pipeline")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # the script, or workers it left hanging
        process.wait()
    assert process.returncode == 0, err[-2000:]
    assert out.split() == ["15"]


def test_sigterm_inside_exit_on_sigterm_runs_finally_clauses() -> None:
    # By default SIGTERM killed scan and synthetic at once: their pools' workers lived on
    # and synthetic's partial folder stayed.
    before = signal.getsignal(signal.SIGTERM)
    cleaned = []
    with pytest.raises(SystemExit) as caught, exit_on_sigterm():
        try:
            signal.raise_signal(signal.SIGTERM)
            time.sleep(5)  # the handler raises at once, interrupting the sleep
        finally:
            cleaned.append(True)
    assert caught.value.code == 128 + signal.SIGTERM and cleaned == [True]
    assert signal.getsignal(signal.SIGTERM) is before


def test_worker_pool_cancels_what_has_not_started_when_the_block_fails() -> None:
    # ProcessPoolExecutor's own `with` waits for every submitted task.
    with pytest.raises(KeyboardInterrupt), worker_pool(1) as pool:
        futures = [pool.submit(time.sleep, 0.5) for _ in range(40)]
        raise KeyboardInterrupt
    assert sum(f.cancelled() for f in futures) >= 35
    assert all(f.done() for f in futures)


_TWICE = """
import os, signal, threading, time
from dali_cutmix.procs import worker_pool

processes = []
try:
    with worker_pool(2) as pool:
        futures = [pool.submit(time.sleep, 3) for _ in range(4)]
        time.sleep(1)  # both workers run a task
        processes = list(pool._processes.values())
        # the second Ctrl-C comes while the shutdown waits for the running tasks
        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
        raise KeyboardInterrupt
except KeyboardInterrupt:
    print(len(processes), [p.is_alive() for p in processes], flush=True)
"""


def test_a_second_ctrl_c_while_the_pool_shuts_down_ends_its_workers() -> None:
    # a shutdown cut short left workers waiting for markers it never sent: the process hung
    # at exit, where multiprocessing joins its children
    process = subprocess.Popen(
        [sys.executable, "-c", _TWICE],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    started = time.monotonic()
    try:
        out, err = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise
    assert process.returncode == 0, err[-2000:]
    assert out == "2 [False, False]\n"
    assert time.monotonic() - started < 30  # not after the 3-s tasks ran


_DEAF = """
import signal
from dali_cutmix.procs import worker_pool

with worker_pool(1) as pool:
    print(pool.submit(signal.getsignal, signal.SIGINT).result() is signal.SIG_IGN)
    print(pool.submit(signal.getsignal, signal.SIGTERM).result() is signal.SIG_IGN)
"""


def test_workers_leave_ctrl_c_to_the_main_process() -> None:
    # A terminal's Ctrl-C reaches the whole process group: the fork server died in its
    # imports (a traceback after "aborted by Ctrl-C") and DataLoader workers mid-batch ("worker
    # exited unexpectedly", exit 1) while the training was stopping cleanly at its step.
    done = subprocess.run(
        [sys.executable, "-c", _DEAF],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as at a terminal
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", "True"]


# The tests' own stops are raised in this thread (signal.raise_signal): one sent to the process
# (os.kill(os.getpid(), ...)) may be taken by any thread that does not block it, and its
# handler can then run late, after the test (a full-suite run once ended in a
# KeyboardInterrupt among these tests).


def test_a_ctrl_c_while_a_worker_starts_is_taken_once_it_has_started() -> None:
    # One inside the wait for the fork server's reply left an unregistered worker that
    # printed a traceback after "aborted by Ctrl-C".
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # as at a terminal
    reached = []
    try:
        with pytest.raises(KeyboardInterrupt), signals_deferred():
            signal.raise_signal(signal.SIGINT)
            time.sleep(0.2)  # a signal is handled within a few bytecodes: it was held
            reached.append(True)
        assert reached == [True]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)


def test_every_ctrl_c_held_while_a_worker_starts_is_handled_in_order(capsys) -> None:
    # A second press (a training's "abort") was lost: only one was replayed.
    pressed = []
    before = signal.signal(signal.SIGINT, lambda signum, frame: pressed.append(signum))
    try:
        # the first held press is said at once: a start of 13 s under load was silent
        with signals_deferred("the worker process being started is up"):
            signal.raise_signal(signal.SIGINT)
            time.sleep(0.1)
            signal.raise_signal(signal.SIGINT)
            time.sleep(0.1)
            assert pressed == []  # held
            assert capsys.readouterr().err == (
                "SIGINT received: stopping once the worker process being started is up\n"
            )
        assert pressed == [signal.SIGINT, signal.SIGINT]
    finally:
        signal.signal(signal.SIGINT, before)


def test_a_sigterm_while_a_worker_starts_is_taken_once_it_has_started() -> None:
    # Under exit_on_sigterm, one inside the wait for the fork server's reply left an
    # unregistered worker that printed a traceback (FileNotFoundError rebuilding the pool's
    # semaphore) after the process had exited 143: 6 of 6 runs of `synthetic` signalled
    # 1 to 2.5 s after its start.
    got = []
    before = signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
    try:
        with signals_deferred():
            signal.raise_signal(signal.SIGTERM)
            signal.raise_signal(signal.SIGINT)
            time.sleep(0.2)
            assert got == []  # held
            got.append("block ended")
    except KeyboardInterrupt:
        got.append("KeyboardInterrupt")
    finally:
        signal.signal(signal.SIGTERM, before)
    assert got == ["block ended", signal.SIGTERM, "KeyboardInterrupt"]  # in their order


def test_a_ctrl_c_while_the_fork_server_starts_is_taken_once_it_has_started(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The stops are ignored while the server starts, so that it inherits them ignored; a
    # Ctrl-C then was lost, and the command ran to its end (synthetic, 2 runs of ~30).
    import multiprocessing.forkserver

    start = multiprocessing.forkserver.ensure_running

    def interrupted() -> None:  # the Ctrl-C comes while the server starts
        signal.raise_signal(signal.SIGINT)
        start()

    monkeypatch.setattr(multiprocessing.forkserver, "ensure_running", interrupted)
    with pytest.raises(KeyboardInterrupt):
        process_context()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == set()


_MASKS = """
import os
from dali_cutmix.procs import process_context, worker_pool

def masks(pid):
    status = dict(line.split(":\t") for line in open(f"/proc/{pid}/status").read().splitlines())
    return [int(status[name], 16) >> 1 & 1 | (int(status[name], 16) >> 14 & 1) << 1
            for name in ("SigBlk", "SigIgn")]

process_context()
import multiprocessing.forkserver as server
with worker_pool(1) as pool:
    worker = pool.submit(os.getpid).result()
    print(masks(server._forkserver._forkserver_pid), masks(worker), masks(os.getpid()))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="Linux's /proc")
def test_the_fork_server_and_its_workers_ignore_the_stops_and_block_none() -> None:
    # [blocked, ignored] of SIGINT (bit 0) and SIGTERM (bit 1): the server, a worker, and the
    # main process (which handles both)
    done = subprocess.run(
        [sys.executable, "-c", _MASKS], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == "[0, 3] [0, 3] [0, 0]\n"


def test_a_sigint_handler_set_outside_python_is_left_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Python embedded in a program that set its own SIGINT handler: getsignal gives None and
    # signal.signal returns None for it, which could not be put back (signal.signal(SIGINT,
    # None) raises TypeError), so the handler would have been lost.
    calls = []

    def signal_of_python(signum: int, handler: Any) -> Any:
        calls.append(handler)
        if handler is None:
            raise TypeError("signal handler must be signal.SIG_IGN, signal.SIG_DFL, or a callable")
        return None  # the handler before was not Python's

    monkeypatch.setattr(signal, "getsignal", lambda signum: None)
    monkeypatch.setattr(signal, "signal", signal_of_python)
    ran = []
    with signals_deferred():
        ran.append(True)
    assert ran == [True] and calls == []  # the handler was never replaced


_KILLED = """
import os, signal, sys
import multiprocessing.forkserver as server
import torch
from dali_cutmix.procs import process_context, worker_pool

loader = torch.utils.data.DataLoader(
    torch.utils.data.TensorDataset(torch.arange(64)),
    batch_size=2,
    num_workers=2,
    multiprocessing_context=process_context(),
)
batches = iter(loader)
next(batches)  # the DataLoader's workers wait for more indices
with worker_pool(1) as pool:
    pool.submit(os.getpid).result()
    pids = [server._forkserver._forkserver_pid] + [w.pid for w in batches._workers]
    pids += list(pool._processes)
    with open(sys.argv[1], "w") as out:
        out.write(" ".join(map(str, pids)))
    os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer does: no clean-up runs
"""


def _alive(pid: int) -> bool:
    """``pid`` runs (a zombie, which no parent reaped yet, has ended)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            return "\nState:\tZ" not in status.read()
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's PR_SET_PDEATHSIG")
def test_the_fork_server_and_its_workers_end_when_the_main_process_is_killed(
    tmp_path: Path,
) -> None:
    # A DataLoader worker's parent is the fork server, and it holds the pipe whose closing
    # ends the server: they waited for each other forever after the main process was killed
    # (2 of 4 benchmarks stopped by Ctrl-C, whose measuring process subprocess.run kills).
    # Its output goes to a file: survivors would hold a pipe open, and the run would wait.
    # (the resource tracker may warn there of the semaphores it cleans up after the kill)
    log, listed = tmp_path / "log", tmp_path / "pids"
    with log.open("w") as out:
        command = [sys.executable, "-c", _KILLED, str(listed)]
        code = subprocess.run(command, cwd=REPO, stdout=out, stderr=out, timeout=120).returncode
    assert code == -signal.SIGKILL, log.read_text()[-2000:]
    pids = [int(pid) for pid in listed.read_text().split()]
    assert len(pids) == 4  # the server, two DataLoader workers, a pool worker
    deadline = time.monotonic() + 20
    while any(map(_alive, pids)) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [pid for pid in pids if _alive(pid)]
    for pid in left:  # not to leave them to the rest of the session
        os.kill(pid, signal.SIGKILL)
    assert left == []


_EXIT_WITH = """
import atexit, concurrent.futures, signal, sys, time
from dali_cutmix.procs import exit_with
WHERE = sys.argv[1]
class Dropped:  # a cycle, collected by exit_with's gc.collect (as pipelines are)
    def __init__(self):
        self.me = self
    def __del__(self):
        if WHERE == "gc":
            signal.raise_signal(signal.SIGTERM)
            time.sleep(30)
def stop():
    if WHERE == "atexit":
        signal.raise_signal(signal.SIGINT)
        time.sleep(30)
    print("atexit ran", flush=True)
atexit.register(stop)
Dropped()
pool = concurrent.futures.ThreadPoolExecutor(1)  # its idle worker is not waited for forever
pool.submit(time.sleep, 0.1)
print("unflushed", end=" ")
exit_with(3)
"""


@pytest.mark.parametrize("where", ["nothing", "atexit", "gc"])
def test_exit_with_ends_with_the_status_on_a_signal_during_the_teardown(where: str) -> None:
    # After a run, a Ctrl-C in the interpreter's teardown ended the process by SIGINT (-2)
    # without a word, or printed "Exception ignored in atexit callback ... KeyboardInterrupt".
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", _EXIT_WITH, where],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 3, done.stderr
    assert time.monotonic() - start < 25  # the signal ended the 30 s sleep
    assert done.stderr == ""
    # the teardown goes on to its end, or ends at the signal; what was printed is kept
    assert done.stdout == ("unflushed atexit ran\n" if where == "nothing" else "unflushed ")


def test_a_ctrl_c_while_the_torchvision_loaders_workers_start_is_taken_once_they_have(
    image_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One inside the wait for the fork server's reply left a worker the DataLoader never
    # registered, which printed a FileNotFoundError traceback after "aborted by Ctrl-C".
    import torch.utils.data

    loader = make_torchvision_loader(
        image_folder, train=False, batch_size=5, workers=1, crop_size=8, resize_size=8
    )
    starting = torch.utils.data.DataLoader.__iter__
    events = []

    def pressed_while_starting(self):
        signal.raise_signal(signal.SIGINT)
        time.sleep(0.2)  # a signal is handled within a few bytecodes: it was held
        stream = starting(self)
        events.append(len(stream._workers))
        return stream

    monkeypatch.setattr(torch.utils.data.DataLoader, "__iter__", pressed_while_starting)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # as at a terminal
    try:
        with pytest.raises(KeyboardInterrupt):
            next(iter(loader))
    finally:
        signal.signal(signal.SIGINT, before)
    assert events == [1]  # the worker had started, registered, when the Ctrl-C was taken
    monkeypatch.undo()
    assert sum(len(images) for images, _ in loader) == 15  # and the loader still reads
