"""Config files Snakemake cannot parse, named by file and line (geopd.config.read_yaml).

Snakemake reads `--configfile` files itself, before it reads the Snakefile, and reports a
file it cannot parse only as "Config file is not valid JSON or YAML" (or "must be given ...
with keys at top level"): no file, no line, so workflow/rules/common.smk never gets to say
which. Snakemake imports every installed plugin package when it starts, before that parse;
this package, a logger plugin by its name, uses that moment to wrap Snakemake's config file
loader: when Snakemake's own parse fails, the file is read again by geopd.config.read_yaml,
which names the file and line (a syntax error, a tab, an undefined alias, an empty file, a
list at the top, a directory), and Snakemake stops with that one line and exit status 2, as
`geopd plan` does. Files Snakemake parses are only checked for aliases that loop or expand
past geopd.config.MAX_VALUES (common.smk reads them strictly, for repeated keys). As a logger (`--logger geopd`) it writes plain messages to stderr.
"""
from __future__ import annotations

import os
import sys
from logging import LogRecord

from snakemake_interface_logger_plugins.base import LogHandlerBase


class LogHandler(LogHandlerBase):
    """Plain messages to stderr."""

    def emit(self, record: LogRecord) -> None:
        message = self.format(record) if self.formatter else record.getMessage()
        if message:
            print(message, file=sys.stderr)

    @property
    def writes_to_stream(self) -> bool:
        return True

    @property
    def writes_to_file(self) -> bool:
        return False

    @property
    def has_filter(self) -> bool:
        return False

    @property
    def has_formatter(self) -> bool:
        return False

    @property
    def needs_rulegraph(self) -> bool:
        return False


def _problem(path) -> str | None:
    """geopd's one-line account of why `path` is no config file, or None if it reads it."""
    if not isinstance(path, (str, os.PathLike)):
        return None
    try:
        from geopd.config import read_yaml
        from geopd.errors import UserError
    except ImportError:  # pragma: no cover - geopd not importable: Snakemake's own message
        return None
    try:
        read_yaml(path)
    except UserError as exc:
        return str(exc)
    return None


def _alias_problem(data) -> str | None:
    try:
        from geopd.config import alias_problem
    except ImportError:  # pragma: no cover - geopd not importable
        return None
    return alias_problem(data)


def _install() -> None:
    try:
        import snakemake.common.configfile as configfile
        import snakemake.settings.types as settings_types
    except ImportError:  # pragma: no cover - another Snakemake layout: leave it alone
        return
    original = configfile.load_configfile
    if getattr(original, "geopd", False):
        return

    def load_configfile(configpath):
        try:
            data = original(configpath)
        except Exception:
            problem = _problem(configpath)
            if problem is None:
                raise
            print(f"error: {problem}", file=sys.stderr)
            raise SystemExit(2) from None
        # Parsed, but aliases that loop (`&r {self: *r}`) would recurse in Snakemake's merge.
        problem = _alias_problem(data)
        if problem:
            print(f"error: {configpath}: {problem}", file=sys.stderr)
            raise SystemExit(2)
        return data

    load_configfile.geopd = True
    configfile.load_configfile = load_configfile
    if getattr(settings_types, "load_configfile", None) is original:
        settings_types.load_configfile = load_configfile


_install()
