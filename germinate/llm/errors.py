"""How a backend says a request failed, and what the LLM layer does about it."""

from __future__ import annotations

from germinate.errors import UserError


class TransientError(Exception):
    """The server did not answer (429, 5xx, a timeout, a dropped connection, an unreadable body):
    worth another try, with the same sampling seed."""


class ServerDown(TransientError):
    """The server itself failed (refused the connection, timed out, answered 5xx): another server of
    the same model may answer. `refused`: nothing listens there at all."""

    def __init__(self, message: str, refused: bool = False):
        super().__init__(message)
        self.refused = refused


class PermanentError(Exception):
    """This request would fail the same way again (400: too long, malformed...)."""


class ServerRefused(UserError):
    """The server answers but refuses every request of this kind (401, 403, 404, 501): a setting to
    fix (the key, the model, the URL), so the run stops at once."""


class ServerLost(UserError):
    """No server answered within the patience (llm.outage_timeout_s): the run stops, keeping what finished."""
