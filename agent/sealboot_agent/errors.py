"""The agent's exceptions; each carries the exit code and what the operator should do."""

from __future__ import annotations

from typing import ClassVar

# Escapes outside text; it lives with the parser, which the fallback carries too.
from sealboot_agent.userdata import shown as shown


class AgentError(Exception):
    """Base of every error the agent reports; ``exit_code`` is documented in the README."""

    exit_code: ClassVar[int] = 1
    hint: ClassVar[str] = ""

    def __init__(self, message: str, *, hint: str | None = None, fragment: str | None = None):
        super().__init__(message)
        self.message = message
        self.fragment = fragment
        self._hint = hint

    @property
    def advice(self) -> str:
        return self._hint if self._hint is not None else self.hint

    def __str__(self) -> str:
        return self.message


class UsageError(AgentError):
    exit_code = 2
    hint = "see 'sealboot-agent fetch --help'"


class ManifestError(AgentError):
    exit_code = 2
    hint = "re-render the user data with 'sealboot render' from the same sealboot release"


class ImdsError(AgentError):
    exit_code = 3
    hint = (
        "check that IMDSv2 is enabled (HttpTokens=required is fine), that the hop limit allows "
        "this process, and that an instance profile is attached"
    )


class FragmentMissing(AgentError):
    exit_code = 4
    hint = (
        "the fragment was deleted or never written; re-seal the user data and replace the "
        "instance. Every other fragment was left in place"
    )


class AccessDenied(AgentError):
    exit_code = 5
    hint = (
        "grant the instance role secretsmanager:GetSecretValue and secretsmanager:DeleteSecret "
        "on its fragments (see 'sealboot policy'), plus kms:Decrypt on a customer key. "
        "No fragment was deleted"
    )


class IntegrityError(AgentError):
    exit_code = 6
    hint = (
        "a fragment does not match the digest sealed with it; the user data was not written "
        "and no fragment was deleted. Re-seal, and check who can write these secrets"
    )


class ServiceError(AgentError):
    exit_code = 7
    hint = (
        "AWS did not answer in time (throttling, 5xx or network); no fragment was deleted. "
        "The agent runs again on the next boot, or run 'sealboot-agent fetch' by hand"
    )


class WriteError(AgentError):
    exit_code = 8
    hint = "free space or make the target writable, then rerun; no fragment was deleted"


class DeleteError(AgentError):
    exit_code = 9
    hint = "the user data was written; remove the fragments with 'sealboot delete MANIFEST'"


class StateError(AgentError):
    exit_code = 10
    hint = "inspect /var/lib/sealboot/state.json; remove it only if you know the run is over"


class UnsupportedUserData(AgentError):
    exit_code = 11
    hint = (
        "the boothook hand-off cannot apply this user data faithfully; nothing was deleted. "
        "Seal cloud-config, shell scripts or boothooks (plain, gzip or MIME), or use the "
        "sealboot datasource"
    )


EXIT_CODES: dict[int, str] = {
    0: "success, or nothing to do (already done on this instance)",
    1: "unexpected internal error (a bug; please report it with the log)",
    UsageError.exit_code: "bad command line or manifest",
    ImdsError.exit_code: "instance metadata (IMDSv2) or instance-profile credentials unavailable",
    FragmentMissing.exit_code: "a fragment does not exist",
    AccessDenied.exit_code: "access denied to a fragment or its KMS key",
    IntegrityError.exit_code: "digest mismatch, corrupt fragment, or payload over the size cap",
    ServiceError.exit_code: "AWS throttled, failed or was unreachable until the deadline",
    WriteError.exit_code: "could not write the user data durably (disk full, read-only, ...)",
    DeleteError.exit_code: "fragments could not be deleted (only with --require-delete)",
    StateError.exit_code: "the state file is unreadable or another run holds the lock",
    UnsupportedUserData.exit_code: "user data has a part the cloud-init hand-off cannot apply",
}
