"""Read, merge and validate grid config files against workflow/schemas/config.schema.yaml.

One reader for `geopd plan` and the workflow (workflow/rules/common.smk, and the Snakemake
plugin snakemake_logger_plugin_geopd, which hands Snakemake's own --configfile parse failures
here): a config file is refused, naming the file and line, when it cannot be read, is not YAML
(syntax, a tab, an undefined alias), has aliases that loop or expand past MAX_VALUES, is
empty, is not a mapping at the top, repeats a key in one mapping (YAML would silently keep the
last), or has a key that is not a string. Several files merge in order (`snakemake
--configfile a b`); `Sources` remembers which file set which key, so every later message names
the file a key came from. A run that a later file redefines is reported (`Merged.changes`).
Beyond the schema every number must be finite and fit 64 bits.
"""
from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

from geopd.errors import UserError

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
INT64 = 2 ** 63 - 1


@functools.lru_cache(maxsize=1)
def schema() -> dict:
    with open(SCHEMA) as fh:
        return yaml.safe_load(fh)


# ---- one file ----------------------------------------------------------------------------------

class _StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key repeated in one mapping and keys that are not strings
    (a merge key `<<:` may still bring in keys the mapping then overrides)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                if not isinstance(key, str):
                    raise _KeyProblem(line, f"key {key_node.value or '(empty)'} is not a string, YAML reads it as "
                                            f"{key!r} (quote it: '{key_node.value}':)")
                if key in seen:
                    raise _KeyProblem(line, f"key '{key}' appears twice in one mapping (first on line {seen[key]}); "
                                            f"YAML would keep only the last: remove one")
                seen[key] = line
        return super().construct_mapping(node, deep)


class _KeyProblem(Exception):
    def __init__(self, line: int, message: str):
        super().__init__(message)
        self.line, self.message = line, message


def _yaml_problem(path: Path, exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    if "'\\t'" in problem:
        return f"{where}: a tab character: YAML indents with spaces only"
    context = getattr(exc, "context", None)
    context_mark = getattr(exc, "context_mark", None)
    if context and context_mark is not None and mark is not None and context_mark.line != mark.line:
        problem = f"{problem} ({context} on line {context_mark.line + 1})"
    elif context:
        problem = f"{problem} ({context})"
    column = f", column {mark.column + 1}" if mark is not None else ""
    return f"{where}: not valid YAML{column}: {problem}"


# The most values a config file may hold once its aliases are expanded (the paper config: ~2,000).
MAX_VALUES = 100_000


def alias_problem(data: Any) -> str | None:
    """What makes YAML aliases unusable: one that refers to a mapping or list containing it (a
    loop), or so many that the file expands beyond MAX_VALUES values (each would be checked)."""
    count = 0
    stack: list[tuple[Any, tuple[str, ...], tuple[int, ...]]] = [(data, (), ())]
    while stack:
        value, where, inside = stack.pop()
        count += 1
        if count > MAX_VALUES:
            return f"its aliases expand to more than {MAX_VALUES:,} values: not a config file"
        if isinstance(value, (dict, list)):
            if id(value) in inside:
                return f"{'.'.join(where)}: an alias refers to a mapping or list that contains it (a loop)"
            items = value.items() if isinstance(value, dict) else enumerate(value)
            stack += [(v, (*where, str(k)), (*inside, id(value))) for k, v in items]
    return None


def read_yaml(path: str | Path) -> dict:
    """One config file as a mapping; a UserError naming the file (and line) otherwise."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: config file not found")
    if path.is_dir():
        raise UserError(f"{path}: is a directory, not a config file")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}): is this a config file?") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except _KeyProblem as exc:
        raise UserError(f"{path}:{exc.line}: {exc.message}") from None
    except yaml.YAMLError as exc:
        raise UserError(_yaml_problem(path, exc)) from None
    except RecursionError:
        raise UserError(f"{path}: nested too deeply to be a config file") from None
    expanded = alias_problem(data)
    if expanded:
        raise UserError(f"{path}: {expanded}")
    if data is None:
        raise UserError(f"{path}: empty (no keys): a config file is a mapping of keys (name:, seed:, runs:, ...)")
    if not isinstance(data, dict):
        kind = "a list" if isinstance(data, list) else f"a {type(data).__name__}"
        raise UserError(f"{path}:1: the top level is {kind}: a config file is a mapping of keys "
                        f"(name:, seed:, runs:, ...)")
    return data


# ---- several files -------------------------------------------------------------------------------

@dataclass
class Sources:
    """Which file(s) set each key of a merged config, to name them in messages."""

    files: list[str]
    origin: dict[tuple[str, ...], list[str]] = field(default_factory=dict)

    def record(self, data: Any, file: str, prefix: tuple[str, ...] = ()) -> None:
        if prefix and not isinstance(data, dict):  # a value replaces what earlier files set there
            self.origin[prefix] = [file]
        elif prefix:  # a mapping merges into theirs
            files = self.origin.setdefault(prefix, [])
            if file not in files:
                files.append(file)
        if isinstance(data, dict):
            for key, value in data.items():
                self.record(value, file, (*prefix, str(key)))

    def files_of(self, key: str | Iterable[str]) -> list[str]:
        """The file(s) that set `key` ("runs.x.init" or a path), or the nearest key above it."""
        parts = split_key(key, self) if isinstance(key, str) else tuple(key)
        while parts:
            if parts in self.origin:
                return list(self.origin[parts])
            parts = parts[:-1]
        return list(self.files) or ["(config)"]

    def of(self, *keys: str | Iterable[str]) -> str:
        """The file(s) that set any of `keys`, for a message."""
        return ", ".join(dict.fromkeys(f for key in keys for f in self.files_of(key)))


def split_key(key: str, sources: Sources) -> tuple[str, ...]:
    """A dotted key as a path, keeping a name with dots ("runs.opd-mix-0.75.init") whole where the
    config has such a name."""
    parts = key.split(".")
    out: list[str] = []
    i = 0
    while i < len(parts):
        for j in range(len(parts), i, -1):
            candidate = (*out, ".".join(parts[i:j]))
            if candidate in sources.origin or j == i + 1:
                out = list(candidate)
                i = j
                break
    return tuple(out)


@dataclass
class Merged:
    config: dict
    sources: Sources
    changes: list[str]  # one line per run a later file redefines


def merge_files(paths: Iterable[str | Path]) -> Merged:
    """Config files read strictly and merged in order (mappings key by key, anything else
    replaced), with the file of every key and what each later file changed in a run."""
    paths = [str(p) for p in paths]
    sources = Sources(paths)
    config: dict = {}
    changes: list[str] = []
    for path in paths:
        data = read_yaml(path)
        runs_before = config.get("runs") if isinstance(config.get("runs"), dict) else {}
        runs_after = data.get("runs") if isinstance(data.get("runs"), dict) else {}
        for name, value in runs_after.items():
            if name in runs_before:
                diff = _differences(runs_before[name], deep_merge(runs_before[name], value))
                if diff:
                    changes.append(f"{path} redefines run {name}: {', '.join(diff)}")
        sources.record(data, path)
        config = deep_merge(config, data)
    return Merged(config, sources, changes)


def _short(value: Any) -> str:
    text = repr(value) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The keys that differ between two run entries, with old -> new for plain values."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in new:
            where = f"{prefix}{key}"
            if key not in old:
                out.append(f"{where} (new: {_short(new[key])})")
            else:
                out += _differences(old[key], new[key], f"{where}.")
        return out
    if old == new:
        return []
    name = prefix.rstrip(".")
    if isinstance(old, (dict, list)) or isinstance(new, (dict, list)):
        return [name]
    return [f"{name} ({_short(old)} -> {_short(new)})"]


# ---- the schema, and numbers ----------------------------------------------------------------------

def _key_path(error) -> str:
    parts = [str(p) for p in error.absolute_path]
    return ".".join(parts) if parts else "(top level)"


def number_errors(value: Any, where: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], str]]:
    """Numbers no job can use: NaN and infinities (every bound of the schema lets NaN through),
    and integers beyond 64 bits."""
    if isinstance(value, dict):
        return [e for k, v in value.items() for e in number_errors(v, (*where, str(k)))]
    if isinstance(value, list):
        return [e for i, v in enumerate(value) for e in number_errors(v, (*where, str(i)))]
    if isinstance(value, float) and not math.isfinite(value):
        return [(where, f"{value} is not a finite number")]
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT64:
        return [(where, f"{value} does not fit 64 bits")]
    return []


def _number_as_text(error) -> str:
    """A hint for a number YAML read as text: PyYAML (YAML 1.1) takes 1e-5 for a string."""
    value = error.instance
    if error.validator != "type" or not isinstance(value, str):
        return ""
    try:
        float(value)
    except ValueError:
        return ""
    return f" (YAML reads {value} as text: write it with a dot and a signed exponent, e.g. 1.0e-5)"


def schema_problems(config: dict) -> list[tuple[tuple[str, ...], str]]:
    """Every schema violation and unusable number as (key path, message), in key order."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    validator = Draft202012Validator(schema())
    out = []
    for error in sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path))):
        # oneOf/anyOf errors are vague; descend to the most relevant sub-error.
        if error.context:
            error = best_match(error.context) or error
        path = tuple(str(p) for p in error.absolute_path)
        if error.validator == "additionalProperties":
            extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
            extra = [k for k in extra if not any(re.match(p, k) for p in error.schema.get("patternProperties", {}))]
            msg = f"unknown key(s) {', '.join(map(repr, extra))}"
            if path:
                msg = f"{msg} under '{'.'.join(path)}'"
            out.append((path + (extra[0],) if len(extra) == 1 else path, msg))
        else:
            out.append((path, f"{_key_path(error)}: {error.message}{_number_as_text(error)}"))
    return out + [(p, f"{'.'.join(p)}: {m}") for p, m in number_errors(config)]


def schema_errors(config: dict) -> list[str]:
    """Every schema violation as 'key.path: message', most specific first."""
    return [m for _, m in schema_problems(config)]


def explain(config: dict, sources: Iterable[str | Path] | Sources) -> str:
    """One line per problem, each naming the file(s) its key came from; "" when valid."""
    if not isinstance(sources, Sources):
        sources = Sources([str(s) for s in sources])
    return "\n".join(f"{sources.of(path)}: {message}" for path, message in schema_problems(config))


def validate(config: dict, sources: Iterable[str | Path] | Sources = ()) -> dict:
    message = explain(config, sources)
    if message:
        raise UserError(message)
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
