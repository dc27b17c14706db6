"""Training data: records read on demand from disk, deterministic resumable batches, and their
tokenisation in the tokenizer's chat format.

Records: a prepared JSONL file is read through an index of line offsets (`JsonlRecords`), so a
process holds only the records it is working on, never the file (Dolci-Think: ~275k long
conversations). Every data-parallel rank draws the same global order (`RecordStream`) and
`shard` slices each batch lazily: a rank parses only its own share.

Chat format: SFT conversations are rendered once, whole, by the tokenizer's chat template; the
loss covers every assistant turn up to and including the template's end-of-turn token
(Qwen3: `<|im_end|>`), exactly as those tokens appear in that one rendering. Rollouts and
evaluation prompt with the same template (`format_prompt`) and stop at the same token
(geopd.engines.rollout.eos_ids).
"""
from __future__ import annotations

import bisect
import hashlib
import json
import os
import random
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from geopd.errors import UserError


# ---- records on disk ------------------------------------------------------------------------

def _scan_offsets(path: Path) -> list[int]:
    """Byte offset of every non-blank line (blank lines are not records, as in read_jsonl)."""
    offsets, pos = [], 0
    with open(path, "rb") as fh:
        for line in fh:
            if line.strip():
                offsets.append(pos)
            pos += len(line)
    return offsets


def index_path(path: Path, cache_dir: Path) -> Path:
    """Where the offsets of `path` are cached: keyed by the file's absolute path, size and
    mtime, so a re-prepared file is never read through a stale index."""
    st = path.stat()
    key = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    return cache_dir / f"{path.stem}.{key}.{st.st_size}.{st.st_mtime_ns}.offsets.npy"


def build_index(path: str | Path, cache_dir: str | Path) -> Path:
    """Scan `path` once and cache its line offsets under `cache_dir` (atomic; reused if there)."""
    import numpy as np

    path, cache_dir = Path(path), Path(cache_dir)
    if not path.is_file():
        raise UserError(f"data file not found: {path} (run the prepare_data rule first)")
    out = index_path(path, cache_dir)
    if out.is_file():
        return out
    cache_dir.mkdir(parents=True, exist_ok=True)
    offsets = np.asarray(_scan_offsets(path), dtype=np.int64)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, offsets)
    os.replace(tmp, out)
    return out


class JsonlRecords(Sequence):
    """The records of a JSONL file, parsed only when asked for (by position, in file order).

    Holds the offsets (8 bytes a record) and an open file; `records[i]` seeks and parses one
    line. Build the index first with `build_index` (one process; the others then open it).
    """

    def __init__(self, path: str | Path, cache_dir: str | Path):
        import numpy as np

        self.path = Path(path)
        self.offsets = np.load(build_index(self.path, cache_dir))  # checks the file; reuses a cached index
        self._fh = None

    def __len__(self) -> int:
        return len(self.offsets)

    def _read(self, i: int) -> dict:
        if self._fh is None:
            self._fh = open(self.path, "rb")
        offset = int(self.offsets[i])
        self._fh.seek(offset)
        line = self._fh.readline()
        try:
            return json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{self.path}: record {i} (byte {offset}) is a corrupt JSONL line ({exc})") from None

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self._read(k) for k in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self._read(i)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class Batch(Sequence):
    """A batch by reference: positions into `records`, parsed only when indexed or sliced, so a
    rank that takes its `shard` reads only its own records."""

    def __init__(self, records: Sequence, indices: list[int]):
        self.records = records
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self.records[i] for i in self.indices[k]]
        return self.records[self.indices[k]]


# ---- batches ------------------------------------------------------------------------------

@dataclass
class Position:
    epoch: int = 0
    offset: int = 0


class RecordStream:
    """Yields global batches in a seeded order, epoch after epoch; the position resumes exactly.

    Every data-parallel rank builds the same stream and takes its own slice of each batch
    (`shard(stream.next(n), rank, world)`), so no rank ever needs another's position. A batch
    that reaches the end of an epoch is completed from the next epoch's order, so every record
    is seen exactly once per epoch.
    """

    def __init__(self, records: Sequence, seed: int, position: Position | None = None):
        self.records = records
        self.seed = seed
        self.position = position or Position()
        self._order = self._permutation(self.position.epoch)

    def _permutation(self, epoch: int) -> list[int]:
        order = list(range(len(self.records)))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def next(self, n: int) -> Batch:
        idx: list[int] = []
        while len(idx) < n:
            if self.position.offset >= len(self._order):
                self.position = Position(self.position.epoch + 1, 0)
                self._order = self._permutation(self.position.epoch)
            take = min(n - len(idx), len(self._order) - self.position.offset)
            idx += self._order[self.position.offset:self.position.offset + take]
            self.position.offset += take
        return Batch(self.records, idx)

    @property
    def epochs(self) -> float:
        """Passes over the data so far (records drawn / records): 5.0 after exactly 5 epochs."""
        return (self.position.epoch * len(self.records) + self.position.offset) / len(self.records)

    def state(self) -> dict:
        return {"epoch": self.position.epoch, "offset": self.position.offset}


def shard(items: Sequence, rank: int, world: int) -> list:
    """This rank's contiguous slice; none dropped: the first len(items) % world ranks take one
    item more than the others (300 prompts on 16 ranks: 12 ranks of 19, 4 of 18)."""
    per, extra = divmod(len(items), world)
    start = rank * per + min(rank, extra)
    return list(items[start:start + per + (rank < extra)])


# ---- chat format ----------------------------------------------------------------------------

def conversation(record: dict) -> list[dict]:
    """The messages of an SFT record: {"messages": [...]} (system turns and multi-turn as
    prepared), or a miniature demonstration {"prompt", "response"} as one user and one
    assistant turn. A "response" after messages that end without it is its last turn."""
    if record.get("messages"):
        messages = [{"role": m["role"], "content": m["content"]} for m in record["messages"]]
        if "response" in record and messages[-1]["role"] != "assistant":
            messages.append({"role": "assistant", "content": record["response"]})
        return messages
    return [{"role": "user", "content": record["prompt"]}, {"role": "assistant", "content": record["response"]}]


def _render(tokenizer, messages: list[dict], *, generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=False)


def format_prompt(tokenizer, prompt: str | list[dict]) -> str:
    """The model-facing prompt: the tokenizer's own chat template (hub Qwen3 and ours alike),
    for a bare user turn or a list of messages (system turn first, say)."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    if getattr(tokenizer, "chat_template", None):
        return _render(tokenizer, messages, generation_prompt=True)
    if not isinstance(prompt, str):
        raise UserError("a message list needs a tokenizer with a chat template")
    return prompt


_PROBE = "geopd-end-of-turn-probe"


_END_OF_TURN = weakref.WeakKeyDictionary()  # tokenizer -> (its chat template, the id found)


def end_of_turn_id(tokenizer) -> int | None:
    """The token the chat template closes an assistant turn with (Qwen3: <|im_end|>, the
    miniature template: <|endoftext|>), read off the template itself, not the tokenizer's eos
    (a Qwen3-*-Base tokenizer's eos is <|endoftext|>). None without a template, or when the
    template follows the turn with plain text rather than a special token. Found once per
    tokenizer and template (every SFT batch and rollout asks)."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return None
    try:
        cached = _END_OF_TURN.get(tokenizer)
    except TypeError:  # not weak-referenceable: find it every time
        return _find_end_of_turn(tokenizer)
    if cached is None or cached[0] != template:
        cached = (template, _find_end_of_turn(tokenizer))
        _END_OF_TURN[tokenizer] = cached
    return cached[1]


def _find_end_of_turn(tokenizer) -> int | None:
    text = _render(tokenizer, [{"role": "user", "content": "?"}, {"role": "assistant", "content": _PROBE}])
    if _PROBE not in text:  # a template that does not render assistant turns verbatim
        return None
    tail = text[text.rindex(_PROBE) + len(_PROBE):]
    ids = tokenizer(tail, add_special_tokens=False)["input_ids"]
    added = set(tokenizer.get_added_vocab().values())
    return int(ids[0]) if ids and ids[0] in added else None


def encode_conversation(tokenizer, messages: list[dict], *, end_id: int | None = None) -> tuple[list[int], list[int]]:
    """Token ids of the whole rendered conversation and a 0/1 loss mask: 1 on every assistant
    turn's tokens up to and including its end-of-turn token.

    The conversation is tokenised once, whole, and each assistant turn is located in that one
    text: a turn starts where the template's generation prompt for it ends (the rendering of the
    messages before it with add_generation_prompt) and ends at the next message whose
    preceding rendering is a prefix of the whole text. Templates that rewrite earlier turns
    (Qwen3 drops the <think> block of assistant turns before the last user turn, and gives the
    last turn an empty one) are handled, because the mask marks what the whole rendering holds,
    never a separately rendered piece. Needs a fast tokenizer (character offsets).
    """
    if not getattr(tokenizer, "is_fast", False):
        raise UserError(f"{type(tokenizer).__name__}: SFT needs a fast (tokenizers-backed) tokenizer")
    if not getattr(tokenizer, "chat_template", None):  # plain concatenation, each turn tokenised apart
        ids, loss = [], []
        for m in messages:
            trained = m["role"] == "assistant"
            piece = tokenizer(m["content"] + (tokenizer.eos_token if trained else ""),
                              add_special_tokens=False)["input_ids"]
            ids += piece
            loss += [int(trained)] * len(piece)
        return ids, loss
    end_id = end_of_turn_id(tokenizer) if end_id is None else end_id
    if end_id is None:
        end_id = tokenizer.eos_token_id
    text = _render(tokenizer, messages)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        if i == 0:
            raise UserError("an SFT conversation starts with an assistant turn; it needs a prompt before it")
        head = _render(tokenizer, messages[:i], generation_prompt=True)
        if not text.startswith(head):
            raise UserError(f"the chat template renders the conversation before assistant turn {i} differently "
                            "from the whole conversation; cannot tell that turn's tokens apart")
        end = len(text)
        for k in range(i + 1, len(messages)):
            before = _render(tokenizer, messages[:k])
            if text.startswith(before):
                end = len(before)
                break
        spans.append((len(head), end))
    # The fast tokenizer's backend directly: ids and character offsets, without the wrapper's
    # per-call conversion (half the time on a 16k-token conversation).
    enc = tokenizer.backend_tokenizer.encode(text, add_special_tokens=False)
    ids, starts = enc.ids, [a for a, _ in enc.offsets]
    loss = [0] * len(ids)
    for start, end in spans:
        # Tokens that start inside the turn (a token straddling the generation prompt's end
        # belongs to the prompt), up to and including the first end-of-turn token.
        lo, hi = bisect.bisect_left(starts, start), bisect.bisect_left(starts, end)
        try:
            stop = ids.index(end_id, lo, hi)
        except ValueError:
            raise UserError(f"the chat template does not close an assistant turn with "
                            f"{tokenizer.convert_ids_to_tokens(end_id)!r}: the model could never learn to stop") from None
        loss[lo:stop + 1] = [1] * (stop + 1 - lo)
    return ids, loss


def encode_sft(tokenizer, records: list[dict], max_length: int, *, loss_on: str = "response"):
    """Right-padded ids, attention mask and loss mask (1 on the tokens that are trained).

    loss_on="response": conversations (`conversation(record)`) in the chat format, loss on
    every assistant turn and its end-of-turn token (`encode_conversation`);
    loss_on="all": pretraining text {"text"}, loss on every token and a closing EOS.
    """
    rows, masks = [], []
    end_id = end_of_turn_id(tokenizer) if loss_on != "all" else None
    for r in records:
        if loss_on == "all":
            ids = tokenizer(r["text"] + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
            loss = [1] * len(ids)
        else:
            ids, loss = encode_conversation(tokenizer, conversation(r), end_id=end_id)
            # Tokens after the last trained one (the template's "\n" after <|im_end|>) predict
            # nothing that is trained: drop them.
            end = len(loss) - loss[::-1].index(1) if 1 in loss else len(loss)
            ids, loss = ids[:end], loss[:end]
        rows.append(ids[:max_length])
        masks.append(loss[:max_length])
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    loss_mask = torch.zeros((len(rows), width), dtype=torch.float32)
    for i, (ids, m) in enumerate(zip(rows, masks)):
        input_ids[i, :len(ids)] = torch.tensor(ids)
        attention[i, :len(ids)] = 1
        loss_mask[i, :len(m)] = torch.tensor(m, dtype=torch.float32)
    return input_ids, attention, loss_mask


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, so a left-padded prompt sees the same positions as an
    unpadded one (HF models default to 0..L-1 regardless of padding)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
