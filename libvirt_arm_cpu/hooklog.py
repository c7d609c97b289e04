"""Where the libvirt hook's lines go, and its resident checker's: syslog
or standard error, as the settings' ``[hook] log`` says."""

from __future__ import annotations

import os
import sys

__all__ = ["Log"]


class Log:
    """Where the hook's lines go: syslog (facility daemon), or stderr,
    which libvirt copies into its own log."""

    def __init__(self, how: str) -> None:
        self.syslog = None
        if how == "syslog" or (how == "auto" and os.path.exists("/dev/log")):
            import syslog
            syslog.openlog("libvirt-arm-cpu", syslog.LOG_PID, syslog.LOG_DAEMON)
            self.syslog = syslog

    def __call__(self, level: str, message: str) -> None:
        if self.syslog is not None:
            prio = {"error": self.syslog.LOG_ERR, "warning": self.syslog.LOG_WARNING}.get(
                level, self.syslog.LOG_INFO)
            self.syslog.syslog(prio, message)
        else:
            print(f"libvirt-arm-cpu: {level}: {message}", file=sys.stderr)
