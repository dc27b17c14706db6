"""Training data on disk: the line-offset index, ranks reading only their share, exact resume,
epochs, and shards that drop nothing."""
import json
import tracemalloc

import pytest

from geopd.errors import UserError
from geopd.train import data as D
from geopd.train.data import JsonlRecords, Position, RecordStream, build_index, shard


def write(path, n, pad=0):
    with open(path, "w") as fh:
        for i in range(n):
            fh.write(json.dumps({"i": i, "prompt": f"p{i}", "pad": "x" * pad}) + "\n")
            if i % 7 == 3:
                fh.write("\n")  # blank lines are not records
    return path


@pytest.fixture
def jsonl(tmp_path):
    return write(tmp_path / "train.jsonl", 50)


def test_index_reads_records_by_position(jsonl, tmp_path):
    recs = JsonlRecords(jsonl, tmp_path / "idx")
    assert len(recs) == 50
    assert [r["i"] for r in recs[10:13]] == [10, 11, 12] and recs[-1]["i"] == 49
    with pytest.raises(IndexError):
        recs[50]


def test_index_is_cached_and_follows_the_file(jsonl, tmp_path):
    first = build_index(jsonl, tmp_path / "idx")
    assert build_index(jsonl, tmp_path / "idx") == first  # reused
    write(jsonl, 60)  # re-prepared: another size and mtime, another index
    assert len(JsonlRecords(jsonl, tmp_path / "idx")) == 60


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        JsonlRecords(tmp_path / "nope.jsonl", tmp_path / "idx")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"i": 0}\n{"i": 1,\n')
    recs = JsonlRecords(bad, tmp_path / "idx")
    assert recs[0] == {"i": 0}
    with pytest.raises(UserError, match=r"bad.jsonl: record 1 .*corrupt"):
        recs[1]


def test_memory_does_not_hold_the_records(tmp_path):
    path = write(tmp_path / "big.jsonl", 20_000, pad=1000)  # ~20 MB of records
    build_index(path, tmp_path / "idx")
    tracemalloc.start()
    try:
        stream = RecordStream(JsonlRecords(path, tmp_path / "idx"), seed=0)
        for _ in range(5):
            batch = shard(stream.next(64), 1, 4)
            assert len(batch) == 16
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 * 2**20, peak  # the order and offsets (~1 MB), a few records; not 20 MB


def test_two_ranks_read_disjoint_shares_whose_union_is_the_batch(jsonl, tmp_path, monkeypatch):
    parsed: dict[str, list[int]] = {"full": [], 0: [], 1: []}
    reader = {"now": "full"}
    real = JsonlRecords._read
    monkeypatch.setattr(JsonlRecords, "_read", lambda self, i: parsed[reader["now"]].append(i) or real(self, i))
    full = RecordStream(JsonlRecords(jsonl, tmp_path / "idx"), seed=3)
    ranks = [RecordStream(JsonlRecords(jsonl, tmp_path / "idx"), seed=3) for _ in range(2)]
    taken: dict[int, list[int]] = {0: [], 1: []}
    for _ in range(4):  # 4 batches of 16 cross the 50-record epoch boundary
        reader["now"] = "full"
        want = [r["i"] for r in full.next(16)[:]]
        shares = []
        for r, stream in enumerate(ranks):
            reader["now"] = r
            shares.append([x["i"] for x in shard(stream.next(16), r, 2)])
            taken[r] += shares[-1]
        assert shares[0] + shares[1] == want
        assert not set(shares[0]) & set(shares[1])
    for r in (0, 1):  # each rank parsed its own share and nothing else
        assert parsed[r] == taken[r] and len(parsed[r]) == 4 * 8


def test_resume_continues_exactly(jsonl, tmp_path):
    recs = JsonlRecords(jsonl, tmp_path / "idx")
    a = RecordStream(recs, seed=1)
    for _ in range(5):
        a.next(12)
    b = RecordStream(recs, seed=1, position=Position(**a.state()))
    for _ in range(6):
        assert [r["i"] for r in a.next(12)[:]] == [r["i"] for r in b.next(12)[:]]


@pytest.mark.parametrize("n, batch, steps, epochs", [(40, 8, 25, 5), (30, 8, 15, 4)])
def test_epochs_see_every_record_once(n, batch, steps, epochs):
    """steps x batch / n = epochs; each epoch's draws are a permutation of the records, also when
    batches straddle epochs (30 records, batches of 8)."""
    stream = RecordStream(list(range(n)), seed=0)
    drawn = []
    for s in range(steps):
        drawn += stream.next(batch)[:]
        assert stream.epochs == pytest.approx((s + 1) * batch / n)
    assert stream.epochs == epochs == steps * batch / n
    for e in range(epochs):
        assert sorted(drawn[e * n:(e + 1) * n]) == list(range(n))
    # The paper's SFT: 5375 iterations of 256 over the 275,200-example subset are exactly 5 epochs.
    assert 5375 * 256 == 5 * 275_200


@pytest.mark.parametrize("n, world", [(300, 16), (10, 4), (8, 4), (3, 4), (0, 2)])
def test_shard_drops_nothing(n, world):
    items = list(range(n))
    shares = [shard(items, r, world) for r in range(world)]
    assert sum(shares, []) == items  # contiguous, in order, none dropped
    sizes = [len(s) for s in shares]
    assert sizes == [n // world + (r < n % world) for r in range(world)]


def test_shard_of_a_batch_reads_lazily(jsonl, tmp_path):
    batch = RecordStream(JsonlRecords(jsonl, tmp_path / "idx"), seed=0).next(300)
    assert isinstance(batch, D.Batch) and len(batch) == 300
    assert [len(shard(batch, r, 16)) for r in range(16)] == [19] * 12 + [18] * 4
