"""Exceptions the CLI turns into one-line messages and exit statuses (see `densepred.cli.main`)."""

from __future__ import annotations

import signal


class Stopped(SystemExit):
    """A command stopped on a signal; exit status 128 + signal number, `message` says how to go on.

    A SystemExit, so no `except Exception` on the way up swallows it, while every `finally` (the
    temp outputs of `densepred.io`) still runs.
    """

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(128 + signum)
        self.signum = signum
        self.message = message


def stopped_by(signum: int, what: str) -> Stopped:
    """A `Stopped` for signal `signum` whose message reads 'stopped by SIGTERM; <what>'."""
    return Stopped(signum, f"stopped by {signal.Signals(signum).name}; {what}")
