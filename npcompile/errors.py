"""Error types of npcompile and the exit codes the CLI maps them to."""

from __future__ import annotations

__all__ = ["NpcompileError", "UserError", "GateError", "PassError", "VerificationError"]


class NpcompileError(Exception):
    """Base class of every error npcompile raises on purpose."""

    exit_code = 3


class UserError(NpcompileError):
    """Bad input: a missing or corrupt file, wrong data, an unknown option. CLI exit code 2."""

    exit_code = 2


class VerificationError(NpcompileError):
    """npcompile's own output failed verification (checker, ONNX Runtime, output difference): an
    internal error, CLI exit code 3 with its traceback."""

    exit_code = 3


class GateError(NpcompileError):
    """A deployment gate (accuracy drop, speedup, size...) was violated. CLI exit code 1."""

    exit_code = 1


class PassError(NpcompileError):
    """A pass failed; the message names the pass and the passes that ran before it."""

    def __init__(self, message: str, exit_code: int = 3) -> None:
        super().__init__(message)
        self.exit_code = exit_code
