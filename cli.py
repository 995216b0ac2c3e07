"""Command-line conventions shared by the entry scripts.

`HelpFormatter` appends "(default: X)" to a flag's help only where it says something: not
when the help already names the default, not for switches (--no-progress), not for
defaults that mean "unset". The argument types name the valid range in their errors, and
argparse adds the flag: "argument --epochs: must be at least 1, got 0". Floats must be finite:
nan and inf would pass every range check or fail far from the flag that caused them.

The flags several entry scripts share (--data-root, --runs-root, --device, --threads,
--no-progress) are written once here, `add_data_root(parser)` etc., each with one help text, so
that the scripts cannot drift apart (tests/test_cli.py). They take a parser or an argument group
and return the action. This module imports no torch: the environment variables are spelled out
(settings.DATA_ROOT_ENV and RUNS_ROOT_ENV; tests/test_cli.py checks they agree).

`ArgumentParser` is argparse's with a short refusal: the error and a line naming --help.
"""
import argparse
import math
import os
import sys


def run_main(main):
    """Runs an entry script's main(); a reader that goes away (`python produce_scores.py | head`)
    ends it quietly with 141 (128 + SIGPIPE), as a shell tool ends, not with a traceback."""
    try:
        return main()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # else Python's flush at exit fails again
        sys.exit(141)


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, whose refusals print the error and where to look, not the whole usage block
    before it, which pushes a one-line message out of sight."""

    def error(self, message):
        command = f"python {self.prog}" if self.prog.endswith(".py") else self.prog
        self.exit(2, f"{self.prog}: error: {message}\n(every setting and its valid values: {command} --help)\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    def _get_help_string(self, action):
        text = action.help or ""
        unset = action.default is None or action.default is argparse.SUPPRESS or isinstance(action.default, bool)
        if "default" in text or unset or not action.option_strings or action.nargs == 0:
            return text
        return f"{text} (default: %(default)s)"


def int_at_least(minimum, maximum=None):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum}, got {value}")
        return value
    parse.__name__ = f"whole number >= {minimum}"
    return parse


def finite_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def positive_float(text):
    value = finite_float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def float_at_least(minimum):
    def parse(text):
        value = finite_float(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {text}")
        return value
    parse.__name__ = f"number >= {minimum}"
    return parse


# -----------------------------------------------------------------------------
# the flags the entry scripts share (resolved by settings.data_root, runs_root, pick_device, set_threads)

DATA_ROOT_HELP = "folder holding the datasets (default: $WAVES_DATA_ROOT, else ./data)"
RUNS_ROOT_HELP = "folder holding the run directories (default: $WAVES_RUNS_ROOT, else ./runs)"
DEVICE_HELP = "cpu, cuda, cuda:N or auto (cuda when available)"
THREADS_HELP = ("CPU threads (default: the cores this process may use; on a machine shared with other work, "
                "fewer threads than cores keep each step from waiting on a busy core)")


def progress_help(log=None):
    """--no-progress's help. `log`: what the program writes instead of its bars when its output is not a
    terminal ("one line per epoch"); None where it draws its bar in a log too."""
    return "no progress bars" + (f" (they are shown on a terminal only; in a log, {log})" if log else "")


def shows_bars(progress):
    """Whether a program draws progress bars: not turned off (--no-progress) and writing to a
    terminal; in a log it prints plain lines instead."""
    return progress and sys.stderr.isatty()


def add_data_root(parser):
    return parser.add_argument("--data-root", default=None, help=DATA_ROOT_HELP)


def add_runs_root(parser):
    return parser.add_argument("--runs-root", default=None, help=RUNS_ROOT_HELP)


def add_device(parser):
    return parser.add_argument("--device", default="auto", help=DEVICE_HELP)


def add_threads(parser):
    return parser.add_argument("--threads", type=int_at_least(1), default=None, help=THREADS_HELP)


def add_progress(parser, log=None):
    """--no-progress, stored as `progress` (True unless given); `log` as in progress_help."""
    return parser.add_argument("--no-progress", dest="progress", action="store_false", help=progress_help(log))
