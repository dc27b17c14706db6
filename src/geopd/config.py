"""Load and validate a grid config against workflow/schemas/config.schema.yaml.

The Snakefile validates with Snakemake's own `validate` (same schema); on failure it calls
`explain` here so the message names the offending key and the config file(s). The planner
and the tests use `load` directly, without Snakemake.
"""
from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any, Iterable

import yaml

from geopd.errors import UserError

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


@functools.lru_cache(maxsize=1)
def schema() -> dict:
    with open(SCHEMA) as fh:
        return yaml.safe_load(fh)


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        with open(path) as fh:
            data = yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: the top level must be a mapping of keys")
    return data


def _key_path(error) -> str:
    parts = [str(p) for p in error.absolute_path]
    return ".".join(parts) if parts else "(top level)"


def schema_errors(config: dict) -> list[str]:
    """Every schema violation as 'key.path: message', most specific first."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    validator = Draft202012Validator(schema())
    messages = []
    for error in sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path))):
        # oneOf/anyOf errors are vague; descend to the most relevant sub-error.
        if error.context:
            error = best_match(error.context) or error
        where = _key_path(error)
        if error.validator == "additionalProperties":
            extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
            extra = [k for k in extra if not any(re.match(p, k) for p in error.schema.get("patternProperties", {}))]
            msg = f"unknown key(s) {', '.join(map(repr, extra))}"
            if where != "(top level)":
                msg = f"{msg} under '{where}'"
            messages.append(msg)
        else:
            messages.append(f"{where}: {error.message}")
    return messages


def explain(config: dict, sources: Iterable[str | Path]) -> str:
    names = ", ".join(str(s) for s in sources) or "(config given on the command line)"
    errors = schema_errors(config)
    if not errors:
        return ""
    lines = [f"invalid config in {names}:"] + [f"  - {m}" for m in errors]
    return "\n".join(lines)


def validate(config: dict, sources: Iterable[str | Path] = ()) -> dict:
    if schema_errors(config):
        raise UserError(explain(config, sources))
    return config


def load(path: str | Path, overrides: dict | None = None) -> dict:
    config = read_yaml(path)
    if overrides:
        config = deep_merge(config, overrides)
    return validate(config, [path])


def deep_merge(base: Any, override: Any) -> Any:
    """Mappings merge key by key; anything else in `override` replaces `base`."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = deep_merge(base[key], value) if key in base else value
        return merged
    return override



def mask_alphas(diagnostics: dict) -> tuple[float, ...]:
    """The update-mask fractions of a config's `diagnostics.alpha` (a number or a list), in
    order: the first is the reading the report's headline columns, Fig. 3 and the claims use;
    the others are computed and shown beside it."""
    value = diagnostics.get("alpha", 0.5)
    values = value if isinstance(value, (list, tuple)) else [value]
    return tuple(float(a) for a in values)
