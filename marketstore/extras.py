"""Optional dependencies: the one way to import a module of an extra, or say which extra is missing."""
from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingExtraError


def require(module: str, extra: str, *, otherwise: str | None = None) -> ModuleType:
    """Import ``module``, which the ``extra`` of ``setup.cfg`` installs, and return it.

    Raises :class:`MissingExtraError` (``extra`` and ``module`` as attributes)
    when it is not installed, with the command that installs it:
    ``pip install 'marketstore[<extra>]'``; ``otherwise`` adds another way out
    (e.g. "set MARKETSTORE_DATABASE_URL to a PostgreSQL server").
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        alternative = f", or {otherwise}" if otherwise else ""
        raise MissingExtraError(f"{module} is not installed: it comes with the '{extra}' extra "
                                f"(pip install 'marketstore[{extra}]'{alternative})",
                                extra=extra, module=module) from exc
