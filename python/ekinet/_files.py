"""Writing files so that a crash or an error never leaves a half-written one where a complete one is expected."""

import contextlib
import os
import tempfile


@contextlib.contextmanager
def atomic_write(path, mode="w"):
    """Open a temporary file beside `path` for writing; when the block ends normally it replaces `path` (mode
    0644, as a plain open would give under the usual umask; mkstemp's 0600 would hide it from the group), and on
    any error it is deleted and `path` is left as it was."""
    directory = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".part")
    try:
        with os.fdopen(handle, mode) as f:
            yield f
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
