"""Imported first by the fork server of :mod:`dali_cutmix.procs`, and by nothing else.

The server must ignore SIGINT and SIGTERM, and so the workers it forks: a Ctrl-C
or a ``timeout`` meant for the main process killed them mid-task. It is started
with both blocked (``procs._start_server_deaf_to_stops``), so that none reaches it
before this runs; here they are ignored, which drops any that came meanwhile, and
unblocked, so that the programs its workers may run inherit no blocked mask.
"""

from __future__ import annotations

import signal

_STOPS = (signal.SIGINT, signal.SIGTERM)

for _stop in _STOPS:
    signal.signal(_stop, signal.SIG_IGN)
signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOPS)
