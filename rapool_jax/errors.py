"""Bad input ends the program with one line that names what is at fault."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading


class UserError(ValueError):
  """An error in the user's input (file, config key or value)."""


INTERRUPTED_EXIT = 130  # 128 + SIGINT, as shells report it


@contextlib.contextmanager
def one_line_errors(interrupted: str = "interrupted"):
  """Turns input errors into ``error: ...`` on stderr and exit status 2, and
  Ctrl-C into the line ``interrupted`` and exit status 130.

  ValueError covers our own checks (data, config, weights files), KeyError an
  unknown config key, OSError a missing or unreadable file, ArithmeticError
  a diverged loss.
  """
  if os.environ.get("RAPOOL_DEBUG"):
    yield
    return

  def interrupt(*_):
    print(interrupted, file=sys.stderr, flush=True)
    sys.stdout.flush()
    # Not sys.exit: at interpreter shutdown the input pipeline's and the
    # checkpointer's background threads would still try to schedule work and
    # print tracebacks after the line. Checkpoints are written atomically, so
    # the last complete one is what the same command resumes from.
    os._exit(INTERRUPTED_EXIT)

  # A handler, not KeyboardInterrupt: raised inside a garbage-collection
  # callback (JAX registers one) the exception is printed and dropped, and
  # the run would go on as if Ctrl-C had not been pressed.
  in_main = threading.current_thread() is threading.main_thread()
  previous = signal.signal(signal.SIGINT, interrupt) if in_main else None
  try:
    yield
  except (ValueError, KeyError, AttributeError, OSError, ArithmeticError) as e:
    print(f"error: {one_line(e)}", file=sys.stderr, flush=True)
    sys.exit(2)
  except KeyboardInterrupt:  # raised by a library with its own SIGINT handler
    interrupt()
  finally:
    if in_main:
      signal.signal(signal.SIGINT, previous)


def check_choice(key: str, value, choices, verb: str = "choose one of"):
  """``key=value`` must be one of ``choices`` (one line naming both)."""
  if value not in choices:
    raise ValueError(f"{key}={value!r}: {verb} {tuple(choices)}")


def check_range(key: str, value, low=None, high=None, *, low_open=False,
                high_open=False) -> None:
  """``key=value`` must lie in its stated range: ``low <= value <= high``
  (``<`` where open; None: unbounded)."""
  too_low = low is not None and (value <= low if low_open else value < low)
  too_high = high is not None and (value >= high if high_open else value > high)
  if too_low or too_high:
    bounds = []
    if low is not None:
      bounds.append(f"{'>' if low_open else '>='} {low}")
    if high is not None:
      bounds.append(f"{'<' if high_open else '<='} {high}")
    raise ValueError(f"{key}={value!r} must be {' and '.join(bounds)}")


def one_line(e: BaseException) -> str:
  """``Type: message`` on one line (some libraries put escaped newlines in)."""
  message = str(e).replace("\\n", "\n").replace("\\'", "'")
  message = " ".join(message.split())
  # KeyError and ml_collections wrap messages in quotes; drop matched pairs only.
  while len(message) >= 2 and message[0] == message[-1] and message[0] in "'\"":
    message = message[1:-1].strip()
  return f"{type(e).__name__}: {message or '(no message)'}"
