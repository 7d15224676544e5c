"""Errors a user can cause. The CLI prints their message on one line and exits 2."""


class UserError(Exception):
    """Bad input: a seed file, a config setting, an unreachable server.

    The message names the place (file:line, or the config key) and is shown
    to the user as is, without a traceback.
    """


class RunFailed(UserError):
    """The run could not make the data asked for (too many requests failed, no rows): no dataset is
    written unless the user asks for partial results, and a scheduled run ends Failed."""
