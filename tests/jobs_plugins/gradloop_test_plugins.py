"""Test-only loss plugins that crash a job or flood its log, shipped the way a third party ships a plugin (an
entry point in a dist-info directory); only the job-service tests put this folder on the
service's PYTHONPATH."""

from __future__ import annotations

import os
import time

import torch
from pydantic import BaseModel, ConfigDict, Field

from gradloop.errors import GradloopError
from gradloop.registry import Plugin


class CrashOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    at_call: int = Field(3, ge=1, description="crash on this call of the loss")
    exit_code: int = Field(7, ge=1, le=255)
    message_bytes: int = Field(0, ge=0, description="bytes of filler appended to the raised error's message")
    gradloop_error: bool = Field(False, description="raise a GradloopError (an error gradloop reports) instead")


class _Crash(torch.nn.Module):
    def __init__(self, options: CrashOptions, how: str):
        super().__init__()
        self.options, self.how, self.calls = options, how, 0

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls >= self.options.at_call:
            if self.how == "exit":
                os._exit(self.options.exit_code)  # no cleanup at all, like a native crash
            error = GradloopError if self.options.gradloop_error else RuntimeError
            raise error(f"test plugin raised on call {self.calls}" + "x" * self.options.message_bytes)
        return torch.nn.functional.cross_entropy(output, target)


exit_loss = Plugin("exit_loss", lambda *, options: _Crash(options, "exit"), CrashOptions, "calls os._exit mid-training")
raise_loss = Plugin("raise_loss", lambda *, options: _Crash(options, "raise"), CrashOptions, "raises mid-training")


class NoisyOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bytes_per_call: int = Field(10_000, ge=100, description="written to stdout on every call, in 100-byte lines")


class _Noisy(torch.nn.Module):
    def __init__(self, options: NoisyOptions):
        super().__init__()
        self.chunk = (b"noise " * 16 + b"." * 3 + b"\n") * (options.bytes_per_call // 100)

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        os.write(1, self.chunk)  # past Python's buffers, the way native code writes
        return torch.nn.functional.cross_entropy(output, target)


noisy_loss = Plugin("noisy_loss", lambda *, options: _Noisy(options), NoisyOptions, "floods stdout on every call")


class SlowOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sleep_s: float = Field(0.02, ge=0, le=1, description="seconds every call waits before computing the loss")


class _Slow(torch.nn.Module):
    def __init__(self, options: SlowOptions):
        super().__init__()
        self.sleep_s = options.sleep_s

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        time.sleep(self.sleep_s)  # a step that lasts long enough to stop a job in the middle of its run
        return torch.nn.functional.cross_entropy(output, target)


slow_loss = Plugin("slow_loss", lambda *, options: _Slow(options), SlowOptions, "cross entropy, after a short sleep")
