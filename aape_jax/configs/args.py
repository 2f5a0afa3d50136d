"""The one parser of the config argument string (`--config FILE:dataset=dtd,seed=2,runlocal`).

Modelled on big_vision's `parse_arg`: each keyword names a known argument and gives its default,
whose type types the value.

    args = parse_arg("seed=2,runlocal", seed=1, dataset="", runlocal=False)
    args.seed, args.dataset, args.runlocal  # 2, "", True
"""

from __future__ import annotations

import ml_collections

# The types a config argument can have: its default's.
Arg = bool | int | float | str


def _convert(key: str, value: str | None, default: Arg, known: str) -> Arg:
    """`value` as the type of `default`; None: the key was given bare (`runlocal`)."""
    # bool first: it is a subclass of int.
    if isinstance(default, bool):
        if value is None or value.lower() == "true":
            return True
        if value.lower() == "false":
            return False
        raise ValueError(f"config argument {key}={value!r} is not true or false; known arguments: {known}")
    if value is None:
        raise ValueError(f"config argument {key!r} needs a value ({key}=...); known arguments: {known}")
    try:
        return type(default)(value)
    except ValueError:  # only int and float fail
        what = "an integer" if isinstance(default, int) else "a number"
        raise ValueError(f"config argument {key}={value!r} is not {what}; known arguments: {known}") from None


def parse_arg(arg: str, **spec: Arg) -> ml_collections.ConfigDict:
    """The config arguments in `arg` (comma-separated `key=value`; a bare `key` for a bool is true).

    Args:
      arg: the string after the config file's ':' (None or empty: every default).
      **spec: every known argument and its default (a bool, int, float or str), which types it.

    Returns:
      A ConfigDict with every key of `spec`: its value in `arg` (the last one, if given twice),
      else its default.

    Raises:
      ValueError: a key not in `spec`, or a value that does not parse as its default's type;
        the message names the key, the value and the known arguments.
    """
    for key, default in spec.items():
        if not isinstance(default, (bool, int, float, str)):
            raise TypeError(f"default of config argument {key!r} is a {type(default).__name__}; "
                            "give a bool, int, float or str")
    known = ", ".join(spec)
    values = dict(spec)
    for item in filter(None, (s.strip() for s in (arg or "").split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if key not in spec:
            raise ValueError(f"unknown config argument {key!r} (in {item!r}); known arguments: {known}")
        values[key] = _convert(key, value.strip() if sep else None, spec[key], known)
    return ml_collections.ConfigDict(values)
