"""config/README.md from workflow/schemas/config.schema.yaml: every key, the values it takes and
what it means, so the schema (which Snakemake and `geopd validate` check configs against) is the
one place a key is described.

    python scripts/config_readme.py           # rewrite config/README.md
    python scripts/config_readme.py --check   # exit 1 when config/README.md is out of date
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from geopd.io.table import markdown

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
README = ROOT / "config" / "README.md"

HEADER = """\
# Configuration keys

<!-- Generated from workflow/schemas/config.schema.yaml by `python scripts/config_readme.py`:
edit the schema's descriptions, then rerun it (tests/test_workflow_conventions.py fails when
this file and the schema disagree). -->

{description}

Two configs follow this schema: `config/config.yaml`, the miniature default grid (it runs on a
laptop's CPU), and `config/paper.yaml`, the paper's grid on hub models and a Slurm GPU cluster
(`snakemake --configfile config/paper.yaml`). Several files given to `--configfile` are merged
in order. Top-level keys starting with `x-` are ignored: they hold YAML anchors for reuse.
Where a key has a default, its description says it (the code keeps the defaults).
`geopd validate --configfile FILE` runs the schema and the grid's cross-reference checks.
"""


def _ref(node: dict) -> str | None:
    ref = node.get("$ref")
    return ref.rsplit("/", 1)[-1] if ref else None


def _link(name: str) -> str:
    return f"[{name}](#{name})"


def _bounds(node: dict) -> str:
    lo = ("≥", node["minimum"]) if "minimum" in node else (">", node["exclusiveMinimum"]) \
        if "exclusiveMinimum" in node else None
    hi = ("≤", node["maximum"]) if "maximum" in node else ("<", node["exclusiveMaximum"]) \
        if "exclusiveMaximum" in node else None
    return " and ".join(f"{op} {v}" for op, v in (b for b in (lo, hi) if b))


def value(node: dict) -> str:
    """What a key takes, in words: its type, bounds, choices or the definition it refers to."""
    if _ref(node):
        return _link(_ref(node))
    if "oneOf" in node and "properties" not in node:
        return " or ".join(value(alt) for alt in node["oneOf"])
    if "enum" in node:
        return "one of " + ", ".join(f"`{v}`" for v in node["enum"])
    kind = node.get("type")
    if isinstance(kind, list):
        text = " or ".join(kind)
    elif kind == "array":
        count = ""
        if node.get("minItems") is not None and node.get("minItems") == node.get("maxItems"):
            count = f" of {node['minItems']}"
        elif node.get("minItems"):
            count = f" of at least {node['minItems']}"
        text = f"list{count}: " + value(node.get("items", {}))
        if node.get("uniqueItems"):
            text += ", no repeats"
    elif kind == "object" and "additionalProperties" in node and node["additionalProperties"] is not False:
        names = node.get("propertyNames", {})
        key = ", ".join(f"`{v}`" for v in names["enum"]) if "enum" in names else "name"
        text = f"map: {key} → " + value(node["additionalProperties"])
    else:
        text = kind or "any"
    if node.get("format") == "date":
        text += " (YYYY-MM-DD)"
    if node.get("pattern"):
        text += f" matching `{node['pattern']}`"
    bounds = _bounds(node)
    return f"{text} {bounds}" if bounds else text


def _text(node: dict) -> str:
    # "<mirror>/models" would read as an HTML tag; "|" would end a table cell.
    return " ".join(str(node.get("description", "")).split()).replace("<", "&lt;").replace("|", "\\|")


def rows(node: dict, prefix: str = "") -> list[list[str]]:
    """One row per key of an object, its inline objects' keys after it (dotted)."""
    out = []
    required = set(node.get("required", []))
    for key, child in (node.get("properties") or {}).items():
        name = f"{prefix}{key}"
        took = value(child) + (", required" if key in required else "")
        out.append([f"`{name}`", took.replace("|", "\\|"), _text(child)])
        if child.get("type") == "object" and child.get("properties"):
            out += rows(child, f"{name}.")
        items = child.get("items") or {}
        if child.get("type") == "array" and items.get("properties"):
            out += rows(items, f"{name}[].")
    return out


def render(schema: dict) -> str:
    parts = [HEADER.format(description=_text(schema)), "## Top level\n"]
    parts.append(markdown(["key", "value", "meaning"], rows(schema)))
    for name, node in schema["$defs"].items():
        parts.append(f"## {name}\n")
        parts.append(_text(node) + "\n")
        parts.append(markdown(["key", "value", "meaning"], rows(node)))
    return "\n".join(parts)


def undescribed(schema: dict) -> list[str]:
    """Keys of the schema without a description (the README would leave them unexplained)."""
    missing = []

    def walk(node: dict, where: str) -> None:
        for key, child in (node.get("properties") or {}).items():
            if not _text(child):
                missing.append(f"{where}{key}")
            walk(child, f"{where}{key}.")
            walk(child.get("items") or {}, f"{where}{key}[].")
    walk(schema, "")
    for name, node in schema["$defs"].items():
        walk(node, f"$defs.{name}.")
    return missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that config/README.md is up to date")
    args = parser.parse_args(argv)
    schema = yaml.safe_load(SCHEMA.read_text())
    missing = undescribed(schema)
    if missing:
        print(f"{SCHEMA}: keys without a description: {', '.join(missing)}", file=sys.stderr)
        return 1
    text = render(schema)
    if args.check:
        if not README.exists() or README.read_text() != text:
            print(f"{README} is out of date: run python scripts/config_readme.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(text)
    print(f"wrote {README}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
