"""A run folder's ``train.log``: every log record of the run, from its very first line.

Records are held in memory until :meth:`RunLog.start` creates the run folder, so that a run
refused at start (a missing GPU, a bad model file, data that cannot train) leaves no folder
with an empty log behind, while a run that starts still logs what happened before (the
compute setup, data loading).
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import TracebackType

LOG_NAME = "train.log"
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _Buffer(logging.Handler):
    """Keeps records until they can be written."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class RunLog:
    """Context manager that logs to ``<run_dir>/train.log`` once the run has started.

    Args:
        run_dir: The run folder; created by :meth:`start`, never before.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOG_NAME
        self._buffer = _Buffer()
        self._file: logging.FileHandler | None = None

    def __enter__(self) -> RunLog:
        # Records pass the loggers' levels as configured (the command line logs INFO).
        logging.getLogger().addHandler(self._buffer)
        return self

    def start(self) -> None:
        """Create the run folder, write the records so far and log to the file from now on."""
        if self._file is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = logging.FileHandler(self.path, encoding="utf-8")
        self._file.setFormatter(logging.Formatter(_FORMAT))
        root = logging.getLogger()
        root.removeHandler(self._buffer)
        for record in self._buffer.records:
            self._file.handle(record)
        self._buffer.records.clear()
        root.addHandler(self._file)

    def discard(self) -> None:
        """Never write a log (a torchrun process other than rank 0): drop what was held."""
        logging.getLogger().removeHandler(self._buffer)
        self._buffer.records.clear()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        root = logging.getLogger()
        root.removeHandler(self._buffer)
        self._buffer.records.clear()
        if self._file is not None:
            root.removeHandler(self._file)
            if error is not None:
                # The reason a run ended belongs in its log too (stderr says it already).
                record = logging.getLogger(__name__).makeRecord(
                    __name__, logging.ERROR, __file__, 0, "run failed: %s", (error,), None
                )
                self._file.handle(record)
            self._file.close()
