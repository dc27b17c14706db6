"""The hub mirror: a local directory laid out like the hub, filled once where the network is.

    <mirror>/models/<owner>/<name>/     a model repo's weights, config and tokenizer files
    <mirror>/datasets/<owner>/<name>/   a data set repo's files (README.md with its configs)
    .../.geopd-prefetch.json            completion marker: written last, after every file

`geopd prefetch` (the Snakemake `prefetch` local rule, on a node with network) downloads one repo
with huggingface_hub's snapshot_download into its folder and then writes the marker; compute
jobs read models and data sets from these folders with HF_HUB_OFFLINE=1 through the same loaders
(`transformers.from_pretrained`, `datasets.load_dataset`) they would use on a hub id. The
paper-shaped fixture (`geopd fixture`) writes the same layout and markers, so tests run the
cluster's loading code, offline, on data the project makes itself.

Gated repos (Idavidrein/gpqa): accept the terms on the repo's hub page with your account, then
export HF_TOKEN (or run `huggingface-cli login`) before prefetching.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path

from geopd.errors import UserError
from geopd.io.atomic import write_text
from geopd.io.jsonarg import parse_json_arg

MARKER = ".geopd-prefetch.json"
KINDS = ("models", "datasets")
_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Weights, config and tokenizer only: no .bin/.pth duplicates, GGUF or ONNX exports.
MODEL_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja"]


def _check(kind: str, repo: str) -> None:
    if kind not in KINDS:
        raise UserError(f"hub mirror: kind must be one of {KINDS}, not {kind!r}")
    if not _REPO.match(repo):
        raise UserError(f"hub mirror: '{repo}' is not a hub repo id (owner/name)")


def repo_dir(mirror: str | os.PathLike, kind: str, repo: str) -> Path:
    _check(kind, repo)
    return Path(mirror) / kind / repo


def marker(mirror: str | os.PathLike, kind: str, repo: str) -> Path:
    return repo_dir(mirror, kind, repo) / MARKER


def is_complete(directory: str | os.PathLike) -> bool:
    return (Path(directory) / MARKER).is_file()


def require(directory: str | os.PathLike, what: str) -> Path:
    """`directory` if it holds a completed copy, else a clear error on how to make one."""
    directory = Path(directory)
    if not is_complete(directory):
        raise UserError(f"{what}: no complete copy in the hub mirror at {directory} (no {MARKER}); "
                        "run the `prefetch` rule on a node with network, or `geopd fixture` for the test fixture")
    return directory


def write_marker(directory: Path, info: dict) -> Path:
    """The completion marker, written atomically after everything else."""
    path = directory / MARKER
    files = sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*")
                   if p.is_file() and not any(part.startswith(".") for part in p.relative_to(directory).parts))
    write_text(path, json.dumps({**info, "files": files,
                                 "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=1))
    return path


def download(kind: str, repo: str, mirror: str | os.PathLike, *, allow_patterns: list[str] | None = None,
             revision: str | None = None) -> Path:
    """Download one repo into the mirror (huggingface_hub snapshot_download), then mark it done."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    directory = repo_dir(mirror, kind, repo)
    repo_type = "model" if kind == "models" else "dataset"
    token = os.environ.get("HF_TOKEN") or None
    if allow_patterns is None and kind == "models":
        allow_patterns = MODEL_PATTERNS
    try:
        sha = HfApi(token=token).repo_info(repo, repo_type=repo_type, revision=revision).sha
        snapshot_download(repo, repo_type=repo_type, revision=sha, local_dir=directory,
                          allow_patterns=allow_patterns, token=token)
    except GatedRepoError:
        raise UserError(f"{repo_type} {repo} is gated: accept its terms on the hub with your account, "
                        "then set HF_TOKEN (or `huggingface-cli login`) and prefetch again") from None
    except RepositoryNotFoundError:
        raise UserError(f"{repo_type} {repo}: no such repo on the hub (or it is private; set HF_TOKEN)") from None
    except Exception as exc:  # network down, offline mode, disk full: say which repo
        raise UserError(f"cannot download {repo_type} {repo} into {directory}: {type(exc).__name__}: {exc}") from None
    return write_marker(directory, {"repo": repo, "kind": kind, "revision": sha, "source": "hub",
                                    "allow_patterns": allow_patterns})


# ---- command ---------------------------------------------------------------------------------

def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--spec", help="JSON {kind, repo, mirror, allow_patterns?, revision?} (from the grid)")
    parser.add_argument("--configfile", nargs="+", help="prefetch every hub repo of these configs (merged)")


def main(args: argparse.Namespace) -> int:
    if bool(args.spec) == bool(args.configfile):
        raise UserError("give either --spec (one repo) or --configfile (every repo of a config)")
    if args.spec:
        specs = [parse_json_arg(args.spec, "--spec", dict)]
    else:
        from geopd.grid import Grid

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
