"""Errors a user can cause. The CLI prints their message on one line and exits 2."""

from typing import Any


class UserError(Exception):
    """Bad input: a seed file, a config setting, an unreachable server.

    The message names the place (file:line, or the config key) and is shown
    to the user as is, without a traceback.
    """


class RunFailed(UserError):
    """The run could not make the data asked for (too many requests failed, no rows): no dataset is
    written unless the user asks for partial results, and a scheduled run ends Failed."""


class RunStalled(UserError):
    """Nothing moved in the run for orchestration.stall_timeout_s: it stops, keeping what finished."""


def error_key(error: dict[str, Any]) -> str:
    """The dotted key of a pydantic validation error (`quality.judge.tries`)."""
    return ".".join(str(part) for part in error["loc"] if part != "[key]")


def describe_error(error: dict[str, Any]) -> str:
    """A pydantic validation error as a user reads it: the key and what is wrong with its value."""
    key = error_key(error)
    if error["type"] == "extra_forbidden":
        return f"unknown key '{key}'"
    if not key:
        return error["msg"].removeprefix("Value error, ")
    return f"'{key}': {error['msg'].removeprefix('Value error, ')}"
