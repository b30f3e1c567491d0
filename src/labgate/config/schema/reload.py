"""``gateway.yaml`` ``config:``: how a running gateway follows changes to its config files."""

from __future__ import annotations

from pydantic import Field

from labgate.config.schema.base import Strict


class ReloadConfig(Strict):
    """Hot reload and config backups.

    A reload validates the files, builds a new runtime and swaps it in; the
    old one keeps serving its in-flight requests and closes its upstream
    connections once they are done (or after ``drain_timeout_s``).
    """

    watch: bool = False  # reload when a config file changes (polled, debounced)
    watch_interval_s: float = Field(default=1.0, gt=0)
    debounce_s: float = Field(default=0.5, ge=0)  # a change must settle this long (editors write in steps)
    # the longest an old runtime waits for its in-flight requests (a hung stream) before it is closed
    drain_timeout_s: float = Field(default=600.0, gt=0, allow_inf_nan=False)
    backup: bool = True  # keep a copy of every config that loaded (for ``labgate reload`` rollbacks)
    backup_dir: str = "backups"  # relative to the config directory
