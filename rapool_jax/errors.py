"""Bad input ends the program with one line that names what is at fault; a
bug keeps its traceback and says where to report it."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import sys
import threading
import traceback

from rapool_jax import provenance


class UserError(ValueError):
  """An error in the user's input (file, config key or value)."""


class DivergedError(FloatingPointError):
  """The loss became NaN or infinite: the run's settings, not the code."""


# What one line answers: the project's checks, a missing or unreadable file,
# a diverged loss. Anything else is a bug and keeps its traceback.
INPUT_ERRORS = (UserError, OSError, DivergedError)
BUG_EXIT = 1  # as Python exits on an uncaught exception
INTERRUPTED_EXIT = 130  # 128 + SIGINT, as shells report it


@contextlib.contextmanager
def one_line_errors(interrupted: str = "interrupted"):
  """Turns ``INPUT_ERRORS`` into ``error: ...`` on stderr and exit status 2,
  Ctrl-C into the line ``interrupted`` and exit status 130, and any other
  exception into its traceback, a line naming it a bug, and exit status 1."""
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
  except INPUT_ERRORS as e:
    print(f"error: {one_line(e)}", file=sys.stderr, flush=True)
    sys.exit(2)
  except KeyboardInterrupt:  # raised by a library with its own SIGINT handler
    interrupt()
  except Exception:  # pylint: disable=broad-except
    traceback.print_exc()
    print(bug_line(), file=sys.stderr, flush=True)
    sys.exit(BUG_EXIT)
  finally:
    if in_main:
      signal.signal(signal.SIGINT, previous)


def bug_line(argv=None) -> str:
  """The line after a bug's traceback: what to report, and where from."""
  command = shlex.join(sys.argv if argv is None else argv)
  commit = provenance.git_commit() or "unknown (no git checkout)"
  return (f"bug: this is an error in rapool_jax, not in its input; please "
          f"report it with the traceback above, the command `{command}` and "
          f"the commit {commit}")


def check_choice(key: str, value, choices, verb: str = "choose one of"):
  """``key=value`` must be one of ``choices`` (one line naming both)."""
  if value not in choices:
    raise UserError(f"{key}={value!r}: {verb} {tuple(choices)}")


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
    raise UserError(f"{key}={value!r} must be {' and '.join(bounds)}")


def one_line(e: BaseException) -> str:
  """``Type: message`` on one line (some libraries put escaped newlines in)."""
  message = str(e).replace("\\n", "\n").replace("\\'", "'")
  message = " ".join(message.split())
  # KeyError and ml_collections wrap messages in quotes; drop matched pairs only.
  while len(message) >= 2 and message[0] == message[-1] and message[0] in "'\"":
    message = message[1:-1].strip()
  return f"{type(e).__name__}: {message or '(no message)'}"
