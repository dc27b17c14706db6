"""Chats in the tokenizer's own format: prompts for sampling, encoded conversations for SFT.

Prompts (`format_prompt`) are rendered by the tokenizer's chat template with the generation
prompt, for rollouts and evaluation alike. SFT conversations are rendered once, whole, by the
same template; the loss covers every assistant turn up to and including the template's
end-of-turn token (Qwen3: `<|im_end|>`, `end_of_turn_id`), exactly as those tokens appear in
that one rendering, and sampling stops at the same token (geopd.engines.rollout.eos_ids).
"""
from __future__ import annotations

import bisect
import weakref

import torch

from geopd.errors import UserError


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
