"""Bad input ends the program with one line that names what is at fault."""

from __future__ import annotations

import contextlib
import os
import sys


class UserError(ValueError):
  """An error in the user's input (file, config key or value)."""


@contextlib.contextmanager
def one_line_errors():
  """Turns input errors into ``error: ...`` on stderr and exit status 2.

  ValueError covers our own checks (data, config, weights files), KeyError an
  unknown config key, OSError a missing or unreadable file.
  """
  if os.environ.get("RAPOOL_DEBUG"):
    yield
    return
  try:
    yield
  except (ValueError, KeyError, AttributeError, OSError) as e:
    message = str(e).strip().strip("'\"") or type(e).__name__
    first = message.splitlines()[0]
    if len(message.splitlines()) > 1:
      first += " (set RAPOOL_DEBUG=1 for details)"
    print(f"error: {type(e).__name__}: {first}", file=sys.stderr, flush=True)
    sys.exit(2)
