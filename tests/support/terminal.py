"""A command on a pseudo-terminal of a given width, read as a person would see it."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


def plain(text: str) -> str:
    """The text without colours and cursor moves."""
    return _ANSI.sub("", text)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Terminal:
    """`argv` with stdin, stdout and stderr on one pseudo-terminal of `columns` columns."""

    def __init__(self, argv: Sequence[str], *, columns: int = 80, cwd: Path | None = None, env: dict | None = None):
        primary, secondary = pty.openpty()
        env = {**os.environ, **(env or {}), "COLUMNS": str(columns), "LINES": "40", "TERM": "xterm-256color"}
        env.pop("NO_COLOR", None)
        self.proc = subprocess.Popen(
            list(argv),
            stdin=secondary,
            stdout=secondary,
            stderr=secondary,
            env=env,
            cwd=cwd,
            close_fds=True,
            # As from a person's shell: Ctrl-C interrupts, even when the tests run where SIGINT is
            # ignored (a background job of a non-interactive shell), which a child would inherit.
            preexec_fn=_default_sigint,
        )
        os.close(secondary)
        self.primary = primary
        self.chunks: list[bytes] = []

    @property
    def screen(self) -> str:
        return plain(b"".join(self.chunks).decode("utf-8", "replace"))

    def read_until(self, done: Callable[[str], bool], timeout: float = 120) -> bool:
        """Read output until done(screen) or the process ends or `timeout` s pass; return done(screen)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not done(self.screen):
            ready, _, _ = select.select([self.primary], [], [], 0.5)
            if ready:
                try:
                    data = os.read(self.primary, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not data:
                    break
                self.chunks.append(data)
            elif self.proc.poll() is not None:
                break
        return done(self.screen)

    def interrupt(self) -> None:
        self.proc.send_signal(signal.SIGINT)

    def finish(self, timeout: float = 120) -> int:
        """Read to the end; the exit code."""
        self.read_until(lambda _: False, timeout)
        try:
            code = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            tail = self.screen[-1500:]
            raise AssertionError(f"{self.proc.args[:4]} still runs; its screen ends with:\n{tail}") from None
        finally:
            os.close(self.primary)
        return code

    def lines(self) -> list[str]:
        """Lines as drawn: a carriage return starts the line again (the bar redraws in place)."""
        out = []
        for line in self.screen.replace("\r\n", "\n").split("\n"):
            out.append(line.rsplit("\r", 1)[-1] if "\r" in line.rstrip("\r") else line.rstrip("\r"))
        return out
