"""Writing a file so that no reader ever sees half of it: a hidden temporary file, then a rename."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from xattn_ray.errors import XattnError


def write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to a hidden file beside `path`, then rename it over `path`."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    try:
        temporary.write_bytes(data)
        os.replace(temporary, path)
    except OSError as err:
        temporary.unlink(missing_ok=True)
        raise XattnError(f"cannot write {path}: {err.strerror or err}") from None
