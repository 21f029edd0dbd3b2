"""One structured error type for everything a user can get wrong.

Every problem names the field, says what is wrong and how to fix it; a request
with several problems reports all of them at once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SHOWN_CHARS = 80


def shown(value: Any) -> str:
    """A rejected value as an error message quotes it: its repr, cut to SHOWN_CHARS.

    A 10 MB name is named, not echoed back whole.
    """
    text = repr(value)
    if len(text) <= SHOWN_CHARS:
        return text
    return f"{text[:SHOWN_CHARS]}… ({len(str(value)):,} characters)"


@dataclass(frozen=True)
class Problem:
    code: str
    field: str
    message: str
    hint: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass
class RequestInvalid(Exception):
    """Raised when a request is rejected; nothing has been written when it is."""

    problems: list[Problem] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.summary())

    def summary(self) -> str:
        return "; ".join(f"{p.field}: {p.message}" for p in self.problems)

    @classmethod
    def single(cls, code: str, field_name: str, message: str, hint: str = "") -> RequestInvalid:
        return cls([Problem(code, field_name, message, hint)])

    @property
    def codes(self) -> list[str]:
        return [p.code for p in self.problems]

    def to_dict(self) -> dict[str, Any]:
        return {"problems": [p.to_dict() for p in self.problems], **self.details}


def invalid(code: str, field_name: str, message: str, hint: str = "") -> RequestInvalid:
    return RequestInvalid([Problem(code, field_name, message, hint)])


class CheckpointError(Exception):
    """A checkpoint directory cannot be understood; carries a `Problem`."""

    def __init__(self, code: str, message: str, hint: str = "", field_name: str = "path"):
        super().__init__(message)
        self.problem = Problem(code, field_name, message, hint)


class StorageFull(Exception):
    """The disk ran out while bytes were being stored; what was partly written is gone again."""

    def __init__(self, where: str, detail: str):
        super().__init__(f"no space left in {where}: {detail}")
        self.problem = Problem(
            "insufficient_storage", "checkpoint",
            f"The disk holding {where} ran out of space while storing the checkpoint; nothing was kept.",
            "Free space there (`endpoints gc` reclaims deleted checkpoints' bytes) or store a smaller "
            "checkpoint, then try again.")


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC or EDQUOT, raised directly or collected by `shutil.copytree` (one entry per file)."""
    import errno
    import shutil

    if isinstance(exc, shutil.Error):
        entries = exc.args[0] if exc.args and isinstance(exc.args[0], list) else []
        return any(f"[Errno {errno.ENOSPC}]" in str(e[-1]) or f"[Errno {errno.EDQUOT}]" in str(e[-1])
                   for e in entries)
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
