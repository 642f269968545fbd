"""Errors the registry raises. Each names the problem and the fix, in one paragraph."""

from __future__ import annotations

from fledge.core.errors import FledgeError


class RegistryError(FledgeError):
    """A refusal about a model, version, alias or artifact: the same call fails the same way again."""


class UnknownModel(RegistryError):
    pass


class UnknownVersion(RegistryError):
    pass


class UnknownAlias(RegistryError):
    pass


class InvalidReference(RegistryError):
    pass


class CheckpointRefused(RegistryError):
    """The checkpoint directory is not something Fledge will register or serve."""

    def __init__(self, path, problems: list[str]):
        self.path = path
        self.problems = problems
        listed = "; ".join(problems)
        super().__init__(f"Refusing checkpoint {path}: {listed}.")


class ChecksumMismatch(RegistryError):
    def __init__(self, ref: str, problems: list[str]):
        self.problems = problems
        listed = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        super().__init__(
            f"{ref} does not match its checksum manifest ({listed}). The stored artifact was changed "
            "or damaged after registration: it will not be served. Re-register the checkpoint from "
            "a good copy."
        )


class UnservableArtifact(RegistryError):
    """A version whose artifacts are not something vLLM can serve (another flavor, no weights)."""


class AdapterBaseMismatch(RegistryError):
    """A LoRA adapter released against a champion whose base model is not the adapter's base."""
