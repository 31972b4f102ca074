"""Imported first by the fork server of :mod:`dali_cutmix.procs`, and by nothing else.

The server must ignore SIGINT and SIGTERM, and so the workers it forks: a Ctrl-C
or a ``timeout`` meant for the main process killed them mid-task. It is started
with both blocked (``procs._start_server_deaf_to_stops``), so that none reaches it
before this runs; here they are ignored, which drops any that came meanwhile, and
unblocked, so that the programs its workers may run inherit no blocked mask.

The server and its workers also end with the main process, however it ends. A
worker's parent is the server, not the main process, and each worker holds the
pipe whose closing ends the server: a main process killed (by the kernel's OOM
killer, ``kill -9``, or a parent that gave it 0.25 s, as ``subprocess.run`` does on
Ctrl-C) left the server and its DataLoader workers waiting for each other
forever (2 of 4 benchmarks stopped by Ctrl-C). On Linux the server asks to be
killed when the main process's thread that started it ends (the main thread:
``PR_SET_PDEATHSIG``, for a server started there, which ``PARENT_ENV`` names), and
each worker when the server ends.
"""

from __future__ import annotations

import os
import signal
import sys

_STOPS = (signal.SIGINT, signal.SIGTERM)

# procs.PARENT_ENV: set by procs._start_server_deaf_to_stops, in the main thread only, to
# its process id (this module imports nothing of the project's: nothing else runs first).
PARENT_ENV = "DALI_CUTMIX_FORKSERVER_PARENT"
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent: int) -> None:
    """Has Linux SIGKILL this process when the thread of ``parent`` that started it ends
    (at once, if ``parent`` has ended already); nothing elsewhere."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return  # a kernel that refuses it: as before, workers end when told to
    if os.getppid() != parent:  # the parent ended before the request: no signal will come
        os.kill(os.getpid(), signal.SIGKILL)


_forking = [os.getpid()]  # the process that forks, as it forks


def _before_fork() -> None:
    _forking[0] = os.getpid()


def _in_child() -> None:
    die_with_parent(_forking[0])


for _stop in _STOPS:
    signal.signal(_stop, signal.SIG_IGN)
signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOPS)

_parent = os.environ.pop(PARENT_ENV, "")
if _parent == str(os.getppid()):
    die_with_parent(int(_parent))
os.register_at_fork(before=_before_fork, after_in_child=_in_child)
