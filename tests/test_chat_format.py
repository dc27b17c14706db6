"""The chat format of training, rollouts and evaluation, on a Qwen3-style tokenizer (byte-level
BPE trained here, Qwen3's special tokens and Qwen3's published chat template) and on the
miniature character tokenizer."""
from pathlib import Path

import pytest
import torch

from geopd.errors import UserError
from geopd.engines.chat import conversation, encode_conversation, encode_sft, end_of_turn_id, format_prompt
from geopd.engines.rollout import assemble, eos_ids

QWEN3_TEMPLATE = (Path(__file__).parent / "fixtures" / "qwen3_chat_template.jinja").read_text().rstrip("\n")
# Qwen2/Qwen3's pre-tokenizer split pattern (tokenizer.json of the Qwen3 repos).
SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
         r"|\s+(?!\S)|\s+")


def qwen3_style(eos: str = "<|endoftext|>"):
    """A small byte-level BPE tokenizer laid out like Qwen3's: eos <|endoftext|> as the Base
    models ship it (post-trained: <|im_end|>), pad <|endoftext|>, <think>/</think> as added
    non-special tokens, Qwen3's chat template."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(SPLIT), behavior="isolated"),
                                                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(["system user assistant What is 2 + 3? The answer is 5. Let me think.\n\n"] * 4, trainer)
    tk.add_tokens([AddedToken(t, special=False, normalized=False) for t in ("<think>", "</think>")])
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token=eos, pad_token="<|endoftext|>",
                                   chat_template=QWEN3_TEMPLATE, clean_up_tokenization_spaces=False)


@pytest.fixture(scope="module")
def base_tok():
    return qwen3_style()


def trained_runs(tok, ids, loss) -> list[str]:
    """The trained tokens as decoded contiguous runs."""
    runs, cur = [], []
    for i, m in zip(ids, loss):
        if m:
            cur.append(i)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    return [tok.decode(r) for r in runs]


def test_end_of_turn_is_read_off_the_template(base_tok):
    im_end = base_tok.convert_tokens_to_ids("<|im_end|>")
    assert base_tok.eos_token == "<|endoftext|>"  # a Base model's eos is not its end of turn
    assert end_of_turn_id(base_tok) == im_end
    assert end_of_turn_id(qwen3_style(eos="<|im_end|>")) == im_end
    from geopd.world.tokenizer import build_tokenizer
    mini = build_tokenizer()
    assert end_of_turn_id(mini) == mini.eos_token_id  # the miniature template ends turns with EOS


def test_rollouts_stop_at_the_end_of_turn(base_tok):
    im_end, eot = base_tok.convert_tokens_to_ids("<|im_end|>"), base_tok.eos_token_id
    assert set(eos_ids(base_tok)) == {im_end, eot}
    a, b = base_tok("The answer", add_special_tokens=False)["input_ids"][:2]
    ro = assemble(base_tok, [[a]], 1, [[a, b, im_end, b, b]], None, eos_ids(base_tok))
    assert ro.response_lengths.tolist() == [3] and ro.finished.tolist() == [True]


def test_hf_rollout_of_a_base_student_stops_at_im_end(base_tok):
    """A model that always emits <|im_end|>: the engine must stop after one token."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from geopd.engines.rollout import HFRollout

    cfg = Qwen3Config(vocab_size=len(base_tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, head_dim=8, intermediate_size=32, tie_word_embeddings=False,
                      eos_token_id=base_tok.eos_token_id, pad_token_id=base_tok.pad_token_id)
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(cfg)
    im_end = base_tok.convert_tokens_to_ids("<|im_end|>")
    with torch.no_grad():
        for p in model.model.layers.parameters():
            p.zero_()  # each layer adds nothing: the final hidden state is the (shared) embedding
        model.model.embed_tokens.weight.copy_(torch.linspace(-1, 1, 16).expand(len(base_tok), 16))
        h = model.model.norm(model.model.embed_tokens.weight[:1])[0]
        model.lm_head.weight.zero_()
        model.lm_head.weight[im_end] = 50 * h
    ro = HFRollout(model, base_tok).generate([format_prompt(base_tok, "What is 2 + 3?")], 2, temperature=1.0,
                                             top_p=1.0, max_new_tokens=8, seed=0)
    assert ro.response_lengths.tolist() == [1, 1] and ro.finished.all()


def test_single_turn_trains_the_response_and_im_end(base_tok):
    record = {"prompt": "What is 2 + 3?", "response": "<think>\nadd\n</think>\n\nThe answer is 5."}
    ids, loss = encode_conversation(base_tok, conversation(record))
    text = base_tok.apply_chat_template(conversation(record), tokenize=False)
    assert ids == base_tok(text, add_special_tokens=False)["input_ids"]  # one tokenisation of the whole
    assert trained_runs(base_tok, ids, loss) == ["<think>\nadd\n</think>\n\nThe answer is 5.<|im_end|>"]
    assert base_tok.decode(ids[len(loss) - 1:]) == "\n" and loss[-1] == 0  # after the turn: not trained
    # The untrained prefix is exactly what rollouts and evaluation prompt with.
    first = loss.index(1)
    assert ids[:first] == base_tok(format_prompt(base_tok, record["prompt"]), add_special_tokens=False)["input_ids"]


def test_template_adds_an_empty_think_block_and_it_is_trained(base_tok):
    ids, loss = encode_conversation(base_tok, conversation({"prompt": "Hi", "response": "5"}))
    assert trained_runs(base_tok, ids, loss) == ["<think>\n\n</think>\n\n5<|im_end|>"]


def test_multi_turn_with_system_turn(base_tok):
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "What is 2+3?"},
                {"role": "assistant", "content": "<think>\nadd them\n</think>\n\nThe answer is 5."},
                {"role": "user", "content": "And 2+2?"},
                {"role": "assistant", "content": "<think>add</think>4"}]
    ids, loss = encode_conversation(base_tok, messages)
    # Qwen3 drops the earlier turn's reasoning and normalises the last one's: the mask follows
    # the whole rendering, where "add them" no longer appears.
    assert trained_runs(base_tok, ids, loss) == ["The answer is 5.<|im_end|>", "<think>\nadd\n</think>\n\n4<|im_end|>"]
    assert "add them" not in base_tok.decode(ids)
    untrained = base_tok.decode([i for i, m in zip(ids, loss) if not m])
    assert "Be brief." in untrained and "And 2+2?" in untrained


def test_prepared_records_and_miniature_records_both_encode(base_tok):
    prepared = {"messages": [{"role": "user", "content": "What is 2+3?"},
                             {"role": "assistant", "content": "5"}], "task": "sft"}
    legacy = {"prompt": "What is 2+3?", "response": "5"}
    a = encode_sft(base_tok, [prepared], 64)
    b = encode_sft(base_tok, [legacy], 64)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    ids, attn, mask = a
    assert int(mask.sum()) == len(base_tok("<think>\n\n</think>\n\n5", add_special_tokens=False)["input_ids"]) + 1


def test_miniature_format_is_unchanged():
    """The character tokenizer: prompt ids, then response and EOS trained (as before)."""
    from geopd.world.tokenizer import build_tokenizer

    tok = build_tokenizer()
    rec = {"prompt": "1+2=?", "response": "3"}
    ids, attn, mask = encode_sft(tok, [rec], 64)
    p = tok(format_prompt(tok, rec["prompt"]), add_special_tokens=False)["input_ids"]
    a = tok(rec["response"] + tok.eos_token, add_special_tokens=False)["input_ids"]
    # The template's "\n" after EOS predicts nothing trained and is dropped.
    assert ids[0].tolist() == p + a and mask[0].tolist() == [0.0] * len(p) + [1.0] * len(a)
    assert end_of_turn_id(tok) in eos_ids(tok) and eos_ids(tok) == [tok.eos_token_id]


def test_truncation_and_bad_conversations(base_tok):
    ids, attn, mask = encode_sft(base_tok, [{"prompt": "What is 2 + 3?", "response": "The answer is 5."}], 12)
    assert ids.shape == (1, 12)
    with pytest.raises(UserError, match="starts with an assistant"):
        encode_conversation(base_tok, [{"role": "assistant", "content": "5"}])
