"""`geopd prefetch`: download hub models and data sets into the hub mirror (needs network)."""
from __future__ import annotations

import argparse

from geopd.errors import UserError
from geopd.grid import Grid
from geopd.io.jsonarg import parse_json_arg
from geopd.mirror import download, is_complete, repo_dir


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--spec", help="JSON {kind, repo, mirror, allow_patterns?, revision?} (from the grid)")
    parser.add_argument("--configfile", nargs="+", help="prefetch every hub repo of these configs (merged)")


def main(args: argparse.Namespace) -> int:
    if bool(args.spec) == bool(args.configfile):
        raise UserError("give either --spec (one repo) or --configfile (every repo of a config)")
    if args.spec:
        specs = [parse_json_arg(args.spec, "--spec", dict)]
    else:
        grid = Grid.from_files(args.configfile)
        if grid.mirror is None:
            raise UserError(f"{', '.join(args.configfile)}: no hub_mirror is set, nothing to prefetch into")
        specs = [grid.prefetch_spec(kind, repo) for kind, repo in grid.hub_repos()]
    for spec in specs:
        if is_complete(repo_dir(spec["mirror"], spec["kind"], spec["repo"])) and not args.spec:
            print(f"{spec['kind']}/{spec['repo']}: already in the mirror")
            continue
        path = download(spec["kind"], spec["repo"], spec["mirror"], allow_patterns=spec.get("allow_patterns"),
                        revision=spec.get("revision"))
        print(f"{spec['kind']}/{spec['repo']}: {path}")
    return 0
