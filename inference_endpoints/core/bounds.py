"""Length bounds on user-given paths and names, checked before the operating system sees them.

An over-long path makes `stat()` raise ENAMETOOLONG wherever it is first touched (a 500
in the API, a traceback in the CLI); checked here first it is an ordinary problem that
names its field. Pure: no filesystem access.
"""

from __future__ import annotations

from typing import Any

from inference_endpoints.core.errors import Problem, shown

# Linux's PATH_MAX and NAME_MAX (bytes, not characters: one character can take four).
MAX_PATH_BYTES = 4096
MAX_COMPONENT_BYTES = 255
MAX_NAME_CHARS = 128

_PATH_HINT = (f"Use a shorter path: at most {MAX_PATH_BYTES:,} bytes in all, and at most "
              f"{MAX_COMPONENT_BYTES} bytes for each directory or file name in it.")


def path_problems(value: Any, field_name: str = "path") -> list[Problem]:
    """What is wrong with `value` as a path before anything looks it up (empty: nothing)."""
    if not isinstance(value, str) or not value.strip():
        return [Problem("invalid_path", field_name, "Give the checkpoint directory's path.",
                        "An absolute path on the control-plane host.")]
    if "\x00" in value:
        return [Problem("invalid_path", field_name, "The path contains a NUL character.",
                        "Paths cannot contain NUL characters; check how the path was built.")]
    size = len(value.encode("utf-8", "surrogateescape"))
    if size > MAX_PATH_BYTES:
        return [Problem("path_too_long", field_name,
                        f"The path is {size:,} bytes long; the limit is {MAX_PATH_BYTES:,}.", _PATH_HINT)]
    for part in value.split("/"):
        part_size = len(part.encode("utf-8", "surrogateescape"))
        if part_size > MAX_COMPONENT_BYTES:
            return [Problem("path_too_long", field_name,
                            f"The path has a component of {part_size:,} bytes ({shown(part)}); "
                            f"the limit is {MAX_COMPONENT_BYTES}.", _PATH_HINT)]
    return []


def name_too_long(value: Any, field_name: str, limit: int = MAX_NAME_CHARS) -> Problem | None:
    """A problem for a string name over `limit` characters (None when it is within it)."""
    if isinstance(value, str) and len(value) > limit:
        return Problem(f"{field_name}_too_long", field_name,
                       f"The {field_name} is {len(value):,} characters long ({shown(value)}); "
                       f"the limit is {limit}.", f"Use at most {limit} characters.")
    return None
