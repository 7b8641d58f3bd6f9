"""Errors a user can cause and fix.

Every such error carries one readable sentence per problem that names the field or input
and says what to do instead. The CLI prints them without a traceback (exit code 2); the HTTP
service turns them into problem+json bodies. Errors that are gradloop's own bugs stay
ordinary exceptions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


class GradloopError(Exception):
    """An error caused by the user's input, with a message that says how to fix it."""


@dataclass(frozen=True)
class FieldError:
    """One problem at one place in a config: `path` is dotted (e.g. optimizer.options.lr)."""

    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.path or '<config>'}"
        if self.line is not None:
            where += f" (line {self.line})"
        return f"{where}: {self.message}"

    def to_dict(self) -> dict:
        return asdict(self)


class ConfigError(GradloopError, ValueError):
    """A config (file, dict or HTTP body) is invalid; lists every problem at once."""

    def __init__(self, errors: list[FieldError], source: str | None = None):
        self.errors = list(errors)
        self.source = source
        super().__init__(self._render())

    def _render(self) -> str:
        head = f"{self.source}: " if self.source else ""
        if len(self.errors) == 1:
            return f"{head}invalid config: {self.errors[0]}"
        lines = [f"{head}invalid config ({len(self.errors)} errors):"]
        lines += [f"  - {e}" for e in self.errors]
        return "\n".join(lines)

    @classmethod
    def single(cls, path: str, message: str, source: str | None = None) -> ConfigError:
        return cls([FieldError(path, message)], source)


def singular(kind: str) -> str:
    """`losses` -> `loss`, `optimizers` -> `optimizer`: a plugin kind named in a sentence."""
    return kind[:-2] if kind.endswith("sses") else kind[:-1]


class PluginNotFoundError(GradloopError, LookupError):
    """A plugin name that no registry knows; the message lists the known names."""

    def __init__(self, kind: str, name: str, known: list[str], suggestion: str | None):
        self.kind, self.name, self.known, self.suggestion = kind, name, known, suggestion
        hint = f" Did you mean {suggestion!r}?" if suggestion else ""
        listing = ", ".join(known) if known else "(none registered)"
        super().__init__(f"unknown {singular(kind)} {name!r}.{hint} Registered {kind}: {listing}.")

    def __str__(self) -> str:  # LookupError would otherwise quote the whole message
        return self.args[0]


class ParamsError(GradloopError, ValueError):
    """The parameters handed to an optimizer cannot become valid parameter groups."""


class TrainingError(GradloopError, RuntimeError):
    """Training cannot go on (e.g. a non-finite loss with on_nonfinite=fail)."""


class PluginLoadError(PluginNotFoundError):
    """A plugin name whose entry point exists but failed to load; the message gives its error."""

    def __init__(self, kind: str, name: str, error: str):
        self.kind, self.name, self.known, self.suggestion = kind, name, [], None
        GradloopError.__init__(self, f"{singular(kind)} {name!r} failed to load: {error}")
