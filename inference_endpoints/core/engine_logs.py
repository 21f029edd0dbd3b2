"""Finding why an engine died in its log: the root cause, not the last traceback frame."""

from __future__ import annotations

import re

# A raised exception's own line: `ValueError: …`, anchored at the start of the message.
_EXCEPTION = re.compile(r"^([A-Z][\w.]*(?:Error|Exception|Exit)): (.+)$")
# vLLM's log prefix: `(Worker pid=2) ERROR 11-26 20:36:15 [file.py:953] message`.
_PREFIX = re.compile(r"^(?:\([^)]*\) )?(DEBUG|INFO|WARNING|ERROR|CRITICAL) \S+ \S+ \[[^\]]*\] ?")
# Wrappers vLLM raises around the real failure; they point at it rather than name it.
_GENERIC = ("Engine core initialization failed", "See root cause above", "Engine process failed")


def root_cause(lines: list[str]) -> str | None:
    """The first specific exception message in the log (`RuntimeError: start (0) + …`)."""
    generic: str | None = None
    for line in lines:
        prefixed = _PREFIX.match(line)
        if prefixed is not None:
            if prefixed.group(1) not in ("ERROR", "CRITICAL"):
                continue
            line = line[prefixed.end():]
        match = _EXCEPTION.match(line.strip())
        if match is None:
            continue
        text = f"{match.group(1)}: {match.group(2).strip()}"
        if any(marker in text for marker in _GENERIC):
            generic = generic or text
            continue
        return text
    return generic


def failure_summary(exit_code: int, lines: list[str], tail: int = 12) -> str:
    cause = root_cause(lines)
    head = f"vLLM exited with code {exit_code}"
    if cause:
        head += f": {cause}"
    last = "\n".join(lines[-tail:])
    return f"{head}\nLast log lines:\n{last}"
