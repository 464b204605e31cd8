"""The bookkeeping every shim of :mod:`pml_soproxy.benchmarker.compat` shares: one
record of each patched attribute (so :func:`undo` restores them all) and the
signature test that tells whether a library still needs a keyword shim.
"""

from __future__ import annotations

import inspect
from typing import Callable, Dict, List, Tuple

# (owner, attribute name, original value or _MISSING), most recent last.
_PATCHES: List[Tuple[object, str, object]] = []
#: ``{shim name: applied}`` of the shims installed so far
INSTALLED: Dict[str, bool] = {}
_MISSING = object()


def patch(owner, name: str, value) -> None:
    """Set ``owner.name = value``, remembering the original for :func:`undo`."""
    _PATCHES.append((owner, name, owner.__dict__.get(name, _MISSING)))
    setattr(owner, name, value)


def accepts(func: Callable, parameter: str) -> bool:
    try:  # follow_wrapped=False: a shim's wrapper counts as accepting it
        return parameter in inspect.signature(func, follow_wrapped=False).parameters
    except (TypeError, ValueError):
        return False


def undo() -> None:
    """Restore every patched attribute, newest first, and forget what was installed."""
    while _PATCHES:
        owner, name, original = _PATCHES.pop()
        if original is _MISSING:
            try:
                delattr(owner, name)
            except AttributeError:
                pass
        else:
            setattr(owner, name, original)
    INSTALLED.clear()
