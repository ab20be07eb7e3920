"""Where a run happens: the machine it reports, and its data directory."""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .options import Options


def machine() -> dict[str, Any]:
    """The machine a run happened on, as the JSON reports it."""
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


class DataDir:
    """A fresh temporary directory (deleted after), or ``--keep DIR`` (must be new)."""

    def __init__(self, opts: Options) -> None:
        self.keep = opts.keep
        self.path: Path | None = None

    def __enter__(self) -> Path:
        if self.keep:
            self.path = Path(self.keep)
            if self.path.exists() and any(self.path.iterdir()):
                raise SystemExit(f"--keep {self.keep}: the directory must be new or empty")
            self.path.mkdir(parents=True, exist_ok=True)
        else:
            self.path = Path(tempfile.mkdtemp(prefix="ticketing-bench-"))
        return self.path

    def __exit__(self, *exc: object) -> None:
        if self.path is not None and not self.keep:
            shutil.rmtree(self.path, ignore_errors=True)
