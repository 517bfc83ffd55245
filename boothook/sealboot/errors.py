"""The toolkit's exceptions; each carries its exit code and what the caller should do."""

from __future__ import annotations

from typing import ClassVar

# The outcome of a failed command that changed nothing in AWS, said in its own words.
NOTHING_CREATED = "nothing was created"
NOTHING_DELETED = "nothing was deleted"


class SealbootError(Exception):
    """Base of every toolkit error; ``exit_code`` is documented in the README.

    ``hint`` says what to do about the failure; ``outcome`` says what the failed command left
    behind (set by the command that knows, e.g. "nothing was created"); ``advice`` joins them.
    """

    exit_code: ClassVar[int] = 1
    hint: ClassVar[str] = "this is a bug in sealboot; please report it with the output of -v"

    def __init__(self, message: str, *, hint: str | None = None, outcome: str | None = None):
        super().__init__(message)
        self.message = message
        self._hint = hint
        self.outcome = outcome

    @property
    def advice(self) -> str:
        hint = self._hint if self._hint is not None else self.hint
        return "; ".join(part for part in (hint, self.outcome) if part)

    def __str__(self) -> str:
        return self.message


class InputError(SealbootError):
    """Bad names, bad manifest, unreadable input."""

    exit_code = 2
    hint = "fix the input and run again"


class TooLarge(SealbootError):
    exit_code = 3
    hint = "EC2 user data is limited to 16384 bytes; seal with fewer, larger fragments"


class AwsError(SealbootError):
    exit_code = 4
    hint = "check the credentials, region and endpoint (-v shows which were used)"


class AccessDenied(AwsError):
    exit_code = 5
    hint = "grant the controller the actions in 'sealboot policy --role controller'"


EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "unexpected internal error (a bug; please report it)",
    InputError.exit_code: "bad input: names, manifest, user data file, flags",
    TooLarge.exit_code: "rendered user data over EC2's 16 KB limit",
    AwsError.exit_code: "AWS call failed (throttled past the deadline, 5xx, network, not found)",
    AccessDenied.exit_code: "AWS denied the request",
}
