"""Command-line conventions shared by the entry scripts.

`HelpFormatter` appends "(default: X)" to a flag's help only where it says something: not
when the help already names the default, not for switches (--no-progress), not for
defaults that mean "unset". The argument types name the valid range in their errors, and
argparse adds the flag: "argument --epochs: must be at least 1, got 0". Floats must be finite:
nan and inf would pass every range check or fail far from the flag that caused them.
"""
import argparse
import math


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
