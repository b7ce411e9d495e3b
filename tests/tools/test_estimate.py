"""The recipe estimator: parameter count against the real model's, components by hand, the CLI."""

import json

import pytest

from justrl_min.config import load_recipe
from justrl_min.tools.estimate import GiB, Hardware, ModelShape, Workload, estimate, main

# DeepSeek-R1-Distill-Qwen-1.5B's config.json (the facts of DESIGN.md section 5).
DEEPSEEK = {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12,
            "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": False}


def test_parameter_count_is_the_real_models():
    shape = ModelShape.from_config(DEEPSEEK)
    assert shape.head_dim == 128 and shape.kv_dim == 256
    # the hub model's safetensors hold 1,777,088,000 parameters
    assert shape.params == 1_777_088_000
    # 28 layers x 46,797,824 + the head's 151,936 x 1536 (the embedding lookup costs no FLOPs)
    assert shape.matmul_params == 28 * 46_797_824 + 151936 * 1536
    assert shape.kv_bytes_per_token(2) == 2 * 28 * 256 * 2


def _tiny_shape() -> ModelShape:
    return ModelShape(hidden=8, intermediate=16, layers=2, heads=2, kv_heads=1, head_dim=4, vocab=10,
                      tied_embeddings=False)


def test_tiny_shape_by_hand():
    shape = _tiny_shape()
    # q 8*8+8, k and v 2*(8*4+4), o 8*8, mlp 3*8*16, norms 2*8 = 72 + 72 + 64 + 384 + 16
    assert shape.layer_params == 608
    assert shape.params == 2 * 608 + 2 * 10 * 8 + 8
    # two fp32 norm inputs 2*4*8 = 64, plus 2 bytes x (two normed inputs 2*8 = 16; q, k, v and the
    # attention output 8+4+4+8 = 24; o_proj's input 8; MLP gate, up, SiLU, product 4*16 = 64) = 2 * 112
    assert shape.activation_bytes_per_token(2) == 288


def test_memory_components_shard_over_ranks():
    cfg = load_recipe("recipes/deepseek_1p5b.yaml", ["train.max_tokens_per_microbatch=1000",
                                                       "model.logprob_chunk_tokens=4"])
    shape = _tiny_shape()
    one = estimate(cfg, shape, Hardware(ranks=1, mem_gib=80, tflops=100, bandwidth_tbs=1), Workload())
    four = estimate(cfg, shape, Hardware(ranks=4, mem_gib=80, tflops=100, bandwidth_tbs=1), Workload())
    p = shape.params
    assert one.memory["weights (master, sharded)"] == p * 4
    assert four.memory["AdamW moments (2 x fp32, sharded)"] == 2 * p * 4 / 4
    # one rank: autocast keeps a bf16 cast of every weight; four: at the end of backward the untied
    # embedding and LM head (10 x 8 each) whole in bf16 with their bf16 gradients (4 x 2 bytes), one
    # of those gradients in fp32 for its reduction (4 bytes), and two layers gathered in bf16
    assert one.memory["compute-dtype weight copies"] == p * 2
    assert four.memory["embedding + LM head gathered, end of backward"] == \
        10 * 8 * (4 * 2 + 4) + 2 * 608 * 2
    # checkpointed: each layer's bf16 input for 1000 tokens, plus one layer's full activations
    assert one.memory["activations (checkpointed: layer inputs + one layer)"] == 2 * 8 * 2 * 1000 + 288 * 1000
    assert one.memory["LM-head chunk (fp32 logits, log-softmax, grad)"] == 3 * 4 * 10 * 4
    # sleep mode: vLLM's reservation is not held while training, it is while generating
    assert one.peaks["generation"] > 0.6 * 80 * GiB > one.peaks["training"]


def test_update_time_scales_with_ranks_and_checkpointing():
    cfg = load_recipe("recipes/deepseek_1p5b.yaml")
    shape = ModelShape.from_config(DEEPSEEK)
    work = Workload(prompt_tokens=100, response_tokens=1000)
    hw = Hardware(ranks=8, mem_gib=80, tflops=100, bandwidth_tbs=2, train_mfu=0.5)
    times = estimate(cfg, shape, hw, work).times
    tokens = 256 * 8 * 1100
    forward = 2 * shape.matmul_params * tokens + 256 * 8 * 2 * 28 * 1536 * 1100**2
    assert times["update"] == pytest.approx(4 * forward / (8 * 100e12 * 0.5))
    # four mini-batches: the first scores its own old log-probs
    assert times["old log-probs"] == pytest.approx(0.75 * forward / (8 * 100e12 * 0.5))
    no_ckpt = load_recipe("recipes/deepseek_1p5b.yaml", ["model.gradient_checkpointing=false"])
    assert estimate(no_ckpt, shape, hw, work).times["update"] == pytest.approx(times["update"] * 3 / 4)


def test_cli_prints_every_component_and_assumption(tmp_path, capsys):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(DEEPSEEK))
    main(["recipes/deepseek_1p5b.yaml", "--model-config", str(config), "--gpus", "8", "--gpu-mem", "80"])
    out = capsys.readouterr().out
    assert "1.777B parameters" in out and "peak while generation" in out and "assumptions:" in out
    assert "4,380 steps" in out


def test_cli_names_the_missing_model_config(tmp_path):
    with pytest.raises(SystemExit, match="--model-config"):
        main(["recipes/deepseek_1p5b.yaml", f"model.path={tmp_path}"])


def test_a_known_hub_model_is_read_from_the_stand_in_facts(capsys):
    main(["deepseek_1p5b", "--gpus", "8"])     # a shipped recipe by name; its model.path is a hub id
    assert "1.777B parameters" in capsys.readouterr().out
