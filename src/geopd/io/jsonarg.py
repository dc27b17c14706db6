"""JSON on the command line: the transport of every spec the workflow hands a command."""
from __future__ import annotations

import json
from pathlib import Path

from geopd.errors import UserError

_KINDS = {dict: "a JSON object", list: "a JSON list"}


def parse_json_arg(text: str, option: str, expect: type | None = None):
    """The value of the command-line option `option` (e.g. "--spec"), given as JSON text or as
    @FILE holding it. A UserError names the option when the text is not valid JSON, or not of
    the type `expect` (dict or list)."""
    if text.startswith("@"):  # never valid JSON: a file to read
        try:
            text = Path(text[1:]).read_text()
        except OSError as exc:
            raise UserError(f"{option} {text}: cannot be read ({exc.strerror or exc})") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{option} is not valid JSON ({exc.msg} at character {exc.pos})") from None
    if expect is not None and not isinstance(value, expect):
        raise UserError(f"{option} must be {_KINDS[expect]}")
    return value
