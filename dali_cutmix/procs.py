"""The one way this project starts worker processes: never by ``fork``.

A forked child is a copy of its parent, DALI pipelines included, but without
the parent's threads. When a garbage collection in the child finds a pipeline
(one the parent had dropped but not yet collected), ``Pipeline.__del__`` runs
``_shutdown``, which waits for DALI's worker threads; they do not exist in the
child, so it waits forever and the parent waits for the child. Any process
that may hold a pipeline (a test session, a notebook holding a loader, the
training application) therefore must not fork. ``fork`` was the default start
method on Linux up to Python 3.13, for ``multiprocessing``,
``concurrent.futures.ProcessPoolExecutor`` and ``torch.utils.data.DataLoader``
workers alike, so every place that starts processes passes
:func:`process_context` explicitly (``mp_context=`` for an executor,
``multiprocessing_context=`` for a ``DataLoader``). ``subprocess`` is fine: it
executes a new program.

``forkserver`` starts a clean server process once (a new interpreter, which
never sees the parent's pipelines) and forks each worker from it; it starts
workers much faster than ``spawn`` because the server has already imported
torch and DALI. Where it is missing (Windows), ``spawn`` is used. Either way the
functions and arguments given to workers must be picklable: top-level
functions and classes, no lambdas.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import gc
import logging
import multiprocessing
import multiprocessing.forkserver
import multiprocessing.resource_tracker
import os
import signal
import sys
import threading
from collections.abc import Iterator
from multiprocessing.context import BaseContext
from typing import Any, NoReturn

__all__ = [
    "START_METHOD",
    "Terminated",
    "exit_on_sigterm",
    "exit_with",
    "process_context",
    "signals_deferred",
    "worker_pool",
]

START_METHOD = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"

# Imported once by the fork server, so that workers do not import torch, DALI and
# torchvision (about 3 s of CPU each) every time a pool or a DataLoader starts. Importing
# builds no pipeline. It replaces the default ["__main__"]: the server does not run the
# user's script, which might build pipelines at import; each worker still imports it.
# dali_cutmix._forkserver comes first: it makes the server deaf to the stops it was started
# with blocked (_start_server_deaf_to_stops), before the long imports.
_FORKSERVER_PRELOAD = ["dali_cutmix._forkserver", "dali_cutmix", "torchvision"]


# Names this process to the fork server it starts, which then ends with it; read (and
# removed) by dali_cutmix._forkserver, which is not imported here: it ignores the stops.
PARENT_ENV = "DALI_CUTMIX_FORKSERVER_PARENT"

# The stops the main process alone decides on: workers ignore them, and a worker's start
# holds them until the pool knows the worker.
_DEFERRED = (signal.SIGINT, signal.SIGTERM)


def process_context() -> BaseContext:
    """The multiprocessing context for every worker process of this project.

    Returns:
        a ``forkserver`` context (``spawn`` where forkserver does not exist);
        never ``fork``. Pass it as ``mp_context=`` to
        ``concurrent.futures.ProcessPoolExecutor`` and as
        ``multiprocessing_context=`` to ``torch.utils.data.DataLoader``.
    """
    context = multiprocessing.get_context(START_METHOD)
    if START_METHOD == "forkserver":
        # Takes effect when the server starts (the first worker of this process).
        context.set_forkserver_preload(_FORKSERVER_PRELOAD)
        _start_server_deaf_to_stops()
    return context


def _start_server_deaf_to_stops() -> None:
    """Starts the fork server (if it is not running) with SIGINT and SIGTERM ignored, and so
    its workers.

    A Ctrl-C at a terminal reaches every process of its group. The server and the
    workers forked from it took it with Python's default handler: the server died
    in its imports with a traceback, and DataLoader or pool workers died mid-task
    ("DataLoader worker exited unexpectedly", a half-removed temporary folder), while
    the main process, which alone decides what a Ctrl-C does, was stopping cleanly.
    SIGTERM sent to the whole group (``timeout``, a batch scheduler's cancel) did the same:
    the server died while the main process waited for its reply to a worker's start (an
    ``EOFError`` traceback after exit 143, 2 runs of 4 of ``timeout -s TERM 2 python -m
    dali_cutmix.synthetic ...``), and DataLoader workers died under a training that stops
    at its next step on SIGTERM.

    The server's first import, :mod:`dali_cutmix._forkserver`, ignores both; until then
    they are blocked: this thread blocks them while the server starts, and the server
    inherits the mask (as multiprocessing's resource tracker is started). The server
    hands the ignored stops to every worker it forks. Workers still end with this
    process: pools and DataLoaders shut them down, and where it is killed instead, the
    kernel kills the server and its workers (``PR_SET_PDEATHSIG``, see
    :mod:`dali_cutmix._forkserver`; a DataLoader worker's own check of its parent looks at
    the server, which lived on, held by its workers).

    This process keeps its own handlers throughout. They used to be set to "ignore"
    while the server started, for it to inherit that: a Ctrl-C then was lost, and the
    command ran to its end (2 runs of about 30 of ``synthetic`` interrupted 2.75 s in).
    """
    if threading.current_thread() is not threading.main_thread():
        return  # the stops' handlers run in the main thread; the server starts as it would
    # The resource tracker first: the server's start starts it, and its own start unblocks
    # the stops when it is done (not restores), which would end the block below early.
    multiprocessing.resource_tracker.ensure_running()
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _DEFERRED)
    # The server, started by this thread, ends with it (dali_cutmix._forkserver)
    os.environ[PARENT_ENV] = str(os.getpid())
    try:
        multiprocessing.forkserver.ensure_running()
    finally:  # a stop that came meanwhile is taken now
        os.environ.pop(PARENT_ENV, None)
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


@contextlib.contextmanager
def worker_pool(workers: int) -> Iterator[concurrent.futures.ProcessPoolExecutor]:
    """A ``ProcessPoolExecutor`` of :func:`process_context` that never outlives the block.

    However the block ends (done, an error, Ctrl-C, SIGTERM under
    :func:`exit_on_sigterm`), tasks not started are cancelled and the pool waits
    for the running ones (short by design) and its workers; a second stop during that
    wait kills the workers instead. The executor's own
    ``with`` waits for every task submitted, which is all of them.
    """
    pool = _Pool(workers, mp_context=process_context())
    try:
        yield pool
    finally:
        try:
            pool.shutdown(wait=True, cancel_futures=True)
        except BaseException:  # a second Ctrl-C (or SIGTERM) while it waits: end them now
            _kill_workers(pool)
            raise


def _kill_workers(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    """Ends ``pool``'s workers at once (SIGKILL: they ignore the stops) and waits for them.

    A shutdown cut short left workers waiting for the end-of-work markers it had not
    sent, and the process hung at exit, where multiprocessing joins its children (2
    runs of 12 of ``timeout -s INT 8 python -m dali_cutmix.synthetic ...``, whose
    ``timeout`` sends SIGINT twice: to the command and to its process group).
    """
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for process in processes:
        process.kill()
    for process in processes:
        process.join(timeout=10)


class _Pool(concurrent.futures.ProcessPoolExecutor):
    """A ``ProcessPoolExecutor`` whose ``submit`` (and so ``map``) starts a worker whole."""

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        # A submit may start a worker: a Ctrl-C (or SIGTERM under exit_on_sigterm) while it
        # waits for the fork server's reply left a process the pool never registered, which
        # failed with a traceback once this process was gone (it could not rebuild the
        # pool's semaphore). The signal is taken once the submit returns.
        with signals_deferred("the worker process being started is up"):
            return super().submit(fn, *args, **kwargs)

    @property
    def started(self) -> int:
        """The workers started so far: a pool that does not fork starts one as a task finds
        none idle, up to ``max_workers`` (9 files in one task start one)."""
        return len(self._processes or ())  # type: ignore[attr-defined]


@contextlib.contextmanager
def signals_deferred(until: str | None = None) -> Iterator[None]:
    """Within the block SIGINT and SIGTERM are held, then handled as they would have been,
    in the order they came, at its end. ``until`` (what the block does, ``"the worker
    process being started is up"``) is said on stderr as the first one comes: a start of
    13 s under load held a Ctrl-C without a word."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signals are handled by the main thread only
        return
    held: list[int] = []

    def hold(signum: int, frame: Any) -> None:
        if until and not held:
            sys.stderr.write(f"{signal.Signals(signum).name} received: stopping once {until}\n")
            sys.stderr.flush()
        held.append(signum)

    with _stops_handled_by(hold) as previous:
        yield
    for signum in held:  # each press, in order: a second Ctrl-C aborts a training's stop
        handler = previous[signum]
        if callable(handler):
            handler(signum, None)  # Python's SIGINT default raises KeyboardInterrupt here
        elif handler == signal.SIG_DFL:
            signal.raise_signal(signum)


@contextlib.contextmanager
def _stops_handled_by(handler: Any) -> Iterator[dict[int, Any]]:
    """Within the block :data:`_DEFERRED`'s signals go to ``handler``; their handlers before
    (yielded) are put back at its end. A handler not set from Python (``getsignal`` gives
    ``None``) could not be put back, so its signal is left alone."""
    previous = {
        signum: signal.signal(signum, handler)
        for signum in _DEFERRED
        if signal.getsignal(signum) is not None
    }
    try:
        yield previous
    finally:
        for signum, before in previous.items():
            signal.signal(signum, before)


class Terminated(SystemExit):
    """The ``SystemExit(143)`` of :func:`exit_on_sigterm`: SIGTERM, told from other exits."""


@contextlib.contextmanager
def exit_on_sigterm() -> Iterator[None]:
    """Within the block, SIGTERM ends the process by ``SystemExit(143)`` (128 + 15; a
    :class:`Terminated`), so that ``finally`` clauses and pools shut down; by default it
    killed the process at once and left its worker processes and temporary files behind."""

    def leave(signum: int, frame: Any) -> None:
        raise Terminated(128 + signum)

    previous = signal.signal(signal.SIGTERM, leave)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def exit_with(status: int) -> NoReturn:
    """Ends the process with ``status``, the outcome of a command that has returned.

    The interpreter's own teardown after a run (collecting DALI pipelines, DALI's
    and multiprocessing's ``atexit`` callbacks, then freeing the modules: about 1.5 s
    on the 2-core machine) took a Ctrl-C or SIGTERM as an error: the process died of
    the signal without a word (status -2 or -15 instead of the run's 0), or printed
    ``Exception ignored in atexit callback ... KeyboardInterrupt``. Here the collection
    and the ``atexit`` callbacks run with both signals ending the process at once with
    ``status``, and the freeing of the modules (nothing left to write) is skipped.
    """

    def leave(signum: int, frame: Any) -> None:
        _flush_output()
        os._exit(status)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, leave)
    # What the interpreter's exit does first (CPython's wait_for_thread_shutdown): the
    # executors' exit hooks, then the non-daemon threads joined. Joining those threads
    # alone waited forever for the workers of a live thread pool.
    threading._shutdown()  # type: ignore[attr-defined]
    gc.collect()  # pipelines dropped by the command: their threads stop here
    atexit._run_exitfuncs()  # DALI's unloading, multiprocessing's children joined
    _flush_output()
    os._exit(status)


def _flush_output() -> None:
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # closed, or a flush the signal interrupted
            stream.flush()
