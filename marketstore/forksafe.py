"""What a child process must forget after ``os.fork()``: one registry for every object.

Preforking servers (gunicorn, uvicorn workers) fork after the parent may have
used its pools. A child that reused the parent's sockets would interleave its
protocol messages with the parent's on one server session, and a lock held by
another of the parent's threads would never be released in the child. Each
object that holds such state registers one method here; the child calls them,
in the order registered, before it runs anything else.
"""
from __future__ import annotations

import os
import threading
import weakref
from typing import Callable

_hooks: "dict[int, weakref.WeakMethod]" = {}
_lock = threading.Lock()
_ids = iter(range(1 << 62))


def on_fork_in_child(method: Callable[[], None]) -> None:
    """Call the bound ``method`` in a child process after ``fork()``, for as long as its object lives.

    Held weakly: registering keeps nothing alive. The method must not close
    what it forgets (that would end the parent's server sessions).
    """
    with _lock:
        key = next(_ids)
        _hooks[key] = weakref.WeakMethod(method, lambda _ref, key=key: _hooks.pop(key, None))


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # the parent's may have been held by another of its threads
    for key in sorted(_hooks):
        method = _hooks[key]()
        if method is not None:
            method()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
