"""geopd.io's shared helpers: atomic writes, JSONL, JSON on the command line."""
import os

import pytest

from geopd.errors import UserError
from geopd.io.atomic import publish_dir, replacing, write_text
from geopd.io.jsonarg import parse_json_arg
from geopd.io.jsonl import iter_jsonl, line_offsets, numbered_jsonl, parse_line, read_jsonl, write_jsonl


def test_replacing_publishes_only_a_finished_file(tmp_path):
    path = tmp_path / "sub" / "out.json"
    write_text(path, "old\n")
    with pytest.raises(RuntimeError):
        with replacing(path) as fh:
            fh.write("half")
            raise RuntimeError("killed")
    assert path.read_text() == "old\n" and os.listdir(path.parent) == ["out.json"]
    write_text(path, "new\n")
    assert path.read_text() == "new\n" and os.listdir(path.parent) == ["out.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # as open() would make it, not mkstemp's 0600


def test_publish_dir_replaces_a_folder_whole(tmp_path):
    final = tmp_path / "data"
    for content in ("first", "second"):
        tmp = tmp_path / f".data.{content}"
        tmp.mkdir()
        (tmp / "train.jsonl").write_text(content)
        publish_dir(tmp, final)
        assert (final / "train.jsonl").read_text() == content
    assert sorted(os.listdir(tmp_path)) == ["data"]
    (tmp_path / "file").write_text("x")
    (tmp_path / ".new").mkdir()
    with pytest.raises(UserError, match="not a checkpoint folder"):
        publish_dir(tmp_path / ".new", tmp_path / "file")


def test_jsonl_round_trip_blank_lines_and_offsets(tmp_path):
    path = tmp_path / "r.jsonl"
    assert write_jsonl(path, [{"b": 1, "a": [1, 2]}, {"x": "é"}]) == 2
    assert path.read_text(encoding="utf-8") == '{"a": [1, 2], "b": 1}\n{"x": "\\u00e9"}\n'
    with open(path, "a") as fh:
        fh.write("\n  \n" + '{"c": 3}\n')
    assert read_jsonl(path) == [{"b": 1, "a": [1, 2]}, {"x": "é"}, {"c": 3}]
    assert [n for n, _ in numbered_jsonl(path)] == [1, 2, 5]
    raw = path.read_bytes()
    assert [parse_line(raw[o:].split(b"\n")[0], "r") for o in line_offsets(path)] == list(iter_jsonl(path))
    with open(path, "a") as fh:
        fh.write("{oops\n")
    with pytest.raises(UserError, match=r"r\.jsonl:6: corrupt JSONL line"):
        read_jsonl(path)
    with pytest.raises(UserError, match="record 3 .* is a corrupt JSONL line"):
        parse_line(b"{oops", "r.jsonl: record 3 (byte 40)")


def test_write_jsonl_default_serialises_the_rest(tmp_path):
    path = tmp_path / "s.jsonl"
    write_jsonl(path, [{"p": tmp_path}], default=str)
    assert read_jsonl(path) == [{"p": str(tmp_path)}]


def test_parse_json_arg(tmp_path):
    assert parse_json_arg('{"a": 1}', "--spec", dict) == {"a": 1}
    assert parse_json_arg("[1]", "--commands") == [1]
    spec = tmp_path / "spec.json"
    spec.write_text('{"run": "r"}')
    assert parse_json_arg(f"@{spec}", "--spec", dict) == {"run": "r"}
    with pytest.raises(UserError, match=r"--spec is not valid JSON \(Expecting value at character 0\)"):
        parse_json_arg("nope", "--spec")
    with pytest.raises(UserError, match="--benchmark must be a JSON object"):
        parse_json_arg("[1]", "--benchmark", dict)
    with pytest.raises(UserError, match="--commands must be a JSON list"):
        parse_json_arg("{}", "--commands", list)
    with pytest.raises(UserError, match="--spec @.*missing.json: cannot be read"):
        parse_json_arg(f"@{tmp_path / 'missing.json'}", "--spec")
