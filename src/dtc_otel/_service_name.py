"""A sensible ``service.name`` for a command when the user sets none."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

__all__ = ["default_service_name"]

# Module and file names too generic to name a service.
_GENERIC = frozenset({"app", "main", "asgi", "wsgi", "server", "application", "api", "__main__", "run"})
_PYTHON = re.compile(r"^python(\d+(\.\d+)?)?$")
_APP_REFERENCE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.()]*$")


def _clean(name: str) -> str:
    name = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-.")

    return name or "unknown_service"


def _from_dotted(dotted: str, fallback: str) -> str:
    parts = [part for part in dotted.split(".") if part]
    for part in reversed(parts):
        if part not in _GENERIC:
            return part

    return fallback


def _option_value(argv: Sequence[str], option: str) -> str | None:
    for index, arg in enumerate(argv):
        if arg == option and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith(option + "="):
            return arg.split("=", 1)[1]

    return None


def default_service_name(argv: Sequence[str], cwd: str | None = None) -> str:
    """Derive a service name from the command line *argv* (command first).

    ``uvicorn billing.api:app`` gives ``billing``, ``python portal/app.py``
    gives ``portal`` (the folder, since ``app`` is generic), ``python -m
    worker`` gives ``worker``; otherwise the command's own name.
    """
    folder = os.path.basename(cwd or os.getcwd())
    if not argv:
        return _clean(folder)

    app_dir = _option_value(argv, "--app-dir") or _option_value(argv, "--chdir")
    if app_dir:
        folder = os.path.basename(os.path.normpath(app_dir)) or folder

    for arg in argv[1:]:
        if _APP_REFERENCE.match(arg):
            return _clean(_from_dotted(arg.split(":", 1)[0], folder))

    command = os.path.basename(argv[0])
    if _PYTHON.match(command):
        args = list(argv[1:])
        while args and args[0].startswith("-") and args[0] != "-m":
            args.pop(0)
        if len(args) >= 2 and args[0] == "-m":
            return _clean(_from_dotted(args[1], folder))
        if args:
            script = args[0]
            stem = os.path.splitext(os.path.basename(script))[0]
            if stem in _GENERIC:
                parent = os.path.basename(os.path.dirname(os.path.abspath(script)))
                return _clean(parent or folder)
            return _clean(stem)

    return _clean(command)
