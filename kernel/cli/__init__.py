"""The ``svsm`` command.  ``run()`` is the console entry; tests call :func:`main`."""

from ._main import ExitCode as ExitCode
from ._main import UsageError as UsageError
from ._main import main as main
from ._main import run as run

__all__ = ["ExitCode", "UsageError", "main", "run"]
