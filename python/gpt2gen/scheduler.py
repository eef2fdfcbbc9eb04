"""The scheduler a model's generations run on (continuous batching, csrc/scheduler.hpp).

It is created on first use, stopped at interpreter exit, and replaced in a forked child: the
child does not have the parent's scheduler thread, so it gets a fresh one on its next request.
"""

from __future__ import annotations

import atexit
import os
import threading
import weakref

from . import _core

_hosts: weakref.WeakSet[SchedulerHost] = weakref.WeakSet()


class SchedulerHost:
    """Owns the ``_core.Scheduler`` of one model, with the limits it was given."""

    def __init__(self, model: _core.Model, *, max_batch: int = 16, max_queue: int = 256,
                 step_tokens: int = 256, kv_bytes: int = 0):
        self.model = model
        self.limits = dict(max_batch=max_batch, max_queue=max_queue, step_tokens=step_tokens,
                           kv_bytes=kv_bytes)
        _core.check_scheduler_limits(**self.limits)  # refuses bad limits now, not at first use
        self._scheduler = None
        self._lock = threading.Lock()
        _hosts.add(self)

    @property
    def scheduler(self) -> _core.Scheduler:
        scheduler = self._scheduler
        if scheduler is None:
            with self._lock:
                if self._scheduler is None:
                    self._scheduler = _core.Scheduler(self.model, **self.limits)
                scheduler = self._scheduler
        return scheduler

    @property
    def started(self) -> bool:
        return self._scheduler is not None

    def close(self) -> None:
        """Cancels every request in flight and stops the thread (a later request starts anew)."""
        with self._lock:
            scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None:
            scheduler.shutdown()

    def _forget_in_child(self) -> None:
        # The parent's thread does not exist here and its locks may be held: drop (never join)
        # the old scheduler, whose C++ side knows it is in a child.
        self._scheduler = None
        self._lock = threading.Lock()


def _after_fork_in_child() -> None:
    for host in list(_hosts):
        host._forget_in_child()


def _at_exit() -> None:
    for host in list(_hosts):
        host.close()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_at_exit)
