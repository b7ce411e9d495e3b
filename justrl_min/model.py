"""Policy / reference loading, lean per-token log-probs and entropy, and micro-batch packing.

Log-probs are taken from logits divided by the rollout temperature, because that is the
distribution the sampler drew from (a mismatch here silently biases every importance ratio).
They are computed from the final hidden states in chunks of `chunk_tokens` rows through the LM
head; each chunk is recomputed in the backward pass, so at most one chunk's [chunk, vocab] logits
exist at a time instead of the full [T, vocab] tensor (~5 GB per float32 copy for T = 8k and
Qwen2's 151,936-token vocabulary).

Two layouts of a micro-batch. Packed: its sequences back to back in one row, position ids
restarting at 0 and `cu_seqlens` marking the boundaries; attention runs per sequence (a
variable-length kernel on CUDA, SDPA per slice on CPU, see attention.py), never under a dense
mask over the row. Padded: length-sorted, right-padded rows under an ordinary padding mask.
`choose_packing` picks one for `train.packing=auto` (bench/update_speed.py measures both).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace

import torch
from torch.utils.checkpoint import checkpoint

from justrl_min import attention, dist
from justrl_min.algo import entropy_from_log_probs

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "float64": torch.float64}


def resolve_model_path(path: str) -> str:
    """`tiny` is the embedded warm-started model, built and cached on first use."""
    if path == "tiny":
        from justrl_min.tiny import prepare_warm_start

        return str(prepare_warm_start())
    return path


def load_tokenizer(path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(path), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(path: str, *, dtype: str = "float32", attn_implementation: str = "sdpa",
                   trust_remote_code: bool = False, gradient_checkpointing: bool = False,
                   device: str | torch.device = "cpu", trainable: bool = True):
    """AutoModelForCausalLM from a hub id or folder; a frozen copy when `trainable` is False."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        resolve_model_path(path), dtype=DTYPES[dtype], attn_implementation=attn_implementation,
        trust_remote_code=trust_remote_code)
    model.to(device)
    model.config.use_cache = False
    if trainable:
        model.train()
        if gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.eval()
        model.requires_grad_(False)
    return model


def trainable_parameters(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    """What the optimizer steps: every parameter in full fine-tuning, only the adapters under LoRA."""
    return [p for p in module.parameters() if p.requires_grad]


POLICY_PREFIX = "causal_lm."
"""TokenScorer's name for the policy's own tensors; the rest of a scorer's state (a value head on the
policy's backbone, critic.shared_backbone) is not the policy's."""


def weights_for_engine(scorer: torch.nn.Module, info: dist.DistInfo, dtype: torch.dtype):
    """The policy's full weights under Hugging Face names, lazily (an engine that samples from the
    trainer's own module never consumes them, so nothing is gathered for it); no value head's."""
    return ((name.removeprefix(POLICY_PREFIX), tensor) for name, tensor in dist.iter_full_tensors(scorer, info, dtype)
            if name.startswith(POLICY_PREFIX))


class FullFineTuning:
    """Every parameter trains; a checkpoint is the whole policy as a Hugging Face folder, and the
    engine gets its tensors as they are. `variants.lora.LoraFineTuning` is the other kind (`options.fine_tuning`)."""

    def __init__(self):
        self.policy = None

    def load_policy(self, load, base_path: str, resume_from=None) -> torch.nn.Module:
        """`load(path)` of the checkpoint folder when resuming (it holds every weight), else of `base_path`."""
        self.policy = load(str(resume_from) if resume_from else base_path)
        return self.policy

    def reference(self, scorer: torch.nn.Module, frozen_copy) -> torch.nn.Module:
        """A second, frozen copy of the base model (`frozen_copy()`); the policy itself has moved."""
        del scorer
        return frozen_copy()

    engine_weights = staticmethod(weights_for_engine)  # the policy's tensors as they are

    def save_policy(self, folder, model_state: dict[str, torch.Tensor]) -> None:
        self.policy.save_pretrained(folder, state_dict={name.removeprefix(POLICY_PREFIX): value
                                                        for name, value in model_state.items()})


# --------------------------------------------------------------------------------------------------
# Micro-batches


@dataclass
class MicroBatch:
    """Sequences laid out for one forward pass, and where their response tokens sit.

    Packed: input_ids/position_ids (1, L), attention_mask None, cu_seqlens (b + 1,) int32 with the
    sequence boundaries. Padded: (b, L) with a mask, cu_seqlens None.
    `target_index` (n,) indexes the flattened (b * L) hidden states that predict the response
    tokens `target_ids` (n,), sequence after sequence; `response_lengths` (b,) splits them.
    """
    input_ids: torch.Tensor
    position_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    target_index: torch.Tensor
    target_ids: torch.Tensor
    response_lengths: list[int]
    cu_seqlens: torch.Tensor | None = None
    max_length: int = 0
    """Longest sequence (what a variable-length kernel sizes its tiles by)."""
    prompt_lengths: torch.Tensor | None = None
    """Padded layout: (b,) each row's prompt length, for the shared-prompt forward."""
    prompt_of_row: torch.Tensor | None = None
    """Padded layout: (b,) which distinct prompt each row has, numbered in order of first row."""
    first_row_of_prompt: torch.Tensor | None = None
    """Padded layout: (P,) the first row holding each distinct prompt."""
    prompt_width: int = 0
    """Padded layout: the longest prompt."""

    @property
    def shared_prompt_tokens(self) -> int:
        """Token positions of the shared-prompt forward: P x prompt width + b x response width."""
        prompts, rows = len(self.first_row_of_prompt), len(self.response_lengths)
        return prompts * self.prompt_width + rows * max(self.response_lengths)

    @property
    def computed_tokens(self) -> int:
        return self.input_ids.numel()

    def to(self, device) -> MicroBatch:
        tensors = {f.name: getattr(self, f.name) for f in fields(self)}
        return replace(self, **{k: t.to(device) for k, t in tensors.items() if isinstance(t, torch.Tensor)})


def plan_microbatches(lengths: list[int], max_tokens: int, packed: bool) -> list[list[int]]:
    """Group sequence indices into micro-batches whose computed tokens fit `max_tokens`.

    Packed: first-fit decreasing on the lengths (computed tokens = sum of lengths). Padded:
    length-sorted runs (computed tokens = rows x longest row). A sequence longer than the budget
    gets a micro-batch of its own. Deterministic for a given input.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    groups: list[list[int]] = []
    if packed:
        room: list[int] = []
        for i in order:
            for g, free in enumerate(room):
                if lengths[i] <= free:
                    groups[g].append(i)
                    room[g] -= lengths[i]
                    break
            else:
                groups.append([i])
                room.append(max_tokens - lengths[i])
    else:
        for i in order:
            if groups and (len(groups[-1]) + 1) * lengths[groups[-1][0]] <= max_tokens:
                groups[-1].append(i)
            else:
                groups.append([i])
    return [sorted(g) for g in groups]


def split_microbatches(groups: list[list[int]], count: int) -> list[list[int]]:
    """Split micro-batches (largest first, in halves of their order) until there are `count`.

    Halves of a planned micro-batch fit its budget in either layout. Under FSDP every rank must run
    the same number of forwards and backwards (each one gathers and reduces the parameters), so a
    rank with fewer micro-batches than another splits its own rather than hang the others.
    """
    groups = [list(g) for g in groups]
    while len(groups) < count:
        largest = max(range(len(groups)), key=lambda g: len(groups[g]))
        group = groups[largest]
        if len(group) < 2:
            raise RuntimeError(f"cannot make {count} micro-batches from {sum(map(len, groups))} sequences")
        groups[largest:largest + 1] = [group[:len(group) // 2], group[len(group) // 2:]]
    return groups


def build_microbatch(prompts: list[list[int]], responses: list[list[int]], indices: list[int],
                     packed: bool, pad_id: int = 0) -> MicroBatch:
    """Lay out the sequences `indices` (prompt + response each) for one forward pass."""
    rows = [prompts[i] + responses[i] for i in indices]
    lengths = torch.tensor([len(row) for row in rows])                            # (b,)
    response_lengths = [len(responses[i]) for i in indices]
    width = int(lengths.max())
    cu_seqlens = attention.cu_seqlens_of(lengths.tolist())
    sharing = {}
    if packed:
        input_ids = torch.tensor([tok for row in rows for tok in row])[None]
        starts = cu_seqlens[:-1].long()
        position_ids = (torch.arange(input_ids.shape[1]) - starts.repeat_interleave(lengths))[None]
        attention_mask = None
    else:
        input_ids = torch.tensor([row + [pad_id] * (width - len(row)) for row in rows])
        attention_mask = (torch.arange(width)[None] < lengths[:, None]).long()
        position_ids = torch.arange(width)[None].expand(len(rows), -1).clone()
        starts = torch.arange(len(rows)) * width
        distinct: dict[tuple[int, ...], int] = {}
        prompt_of_row = [distinct.setdefault(tuple(prompts[i]), len(distinct)) for i in indices]
        sharing = dict(prompt_lengths=torch.tensor([len(prompts[i]) for i in indices]),
                       prompt_of_row=torch.tensor(prompt_of_row),
                       first_row_of_prompt=torch.tensor([prompt_of_row.index(p) for p in range(len(distinct))]),
                       prompt_width=max(len(prompts[i]) for i in indices))
    # The hidden state at position t predicts token t + 1: sequence j's response tokens are
    # predicted from flat positions start_j + p_j - 1 onwards, one per response token (response
    # token i of the whole micro-batch is token i - (n_0 + ... + n_{j-1}) of its sequence j).
    n = torch.tensor(response_lengths)
    target_index = (starts + lengths - n.cumsum(0) - 1).repeat_interleave(n) + torch.arange(int(n.sum()))
    target_ids = torch.tensor([tok for i in indices for tok in responses[i]], dtype=torch.long)
    return MicroBatch(input_ids, position_ids, attention_mask, target_index, target_ids, response_lengths,
                      cu_seqlens if packed else None, width, **sharing)


@dataclass(frozen=True)
class MicroBatcher:
    """The one micro-batch loop (old log-probs, reference, update, critic), its run constants bound once."""
    max_tokens: int
    """`train.max_tokens_per_microbatch`."""
    packed: bool
    device: torch.device
    pad_id: int = 0
    info: dist.DistInfo = dist.DistInfo()

    def __call__(self, prompts: list[list[int]], responses: list[list[int]],
                 rows: list[int]) -> Iterator[tuple[list[int], MicroBatch]]:
        """(rows of this micro-batch, the micro-batch on the device), for every micro-batch of `rows`."""
        lengths = [len(prompts[i]) + len(responses[i]) for i in rows]
        groups = plan_microbatches(lengths, self.max_tokens, self.packed)
        if self.info.enabled:  # every rank runs as many as the rank that needs the most (FSDP collectives in each)
            groups = split_microbatches(groups, int(dist.all_reduce_max(torch.tensor(len(groups)), self.info).item()))
        for group in groups:
            idx = [rows[g] for g in group]
            yield idx, build_microbatch(prompts, responses, idx, self.packed, self.pad_id).to(self.device)

    @torch.no_grad()
    def score(self, model: torch.nn.Module, prompts: list[list[int]], responses: list[list[int]],
              rows: list[int], *outputs: torch.Tensor) -> None:
        """Write model(micro-batch)'s per-token outputs, right-padded, into `outputs` (R, T) at `rows`."""
        for idx, micro in self(prompts, responses, rows):
            values = model(micro)
            for out, v in zip(outputs, values if isinstance(values, tuple) else (values,)):
                out[idx] = unflatten(v.float().cpu(), micro.response_lengths, out.shape[1])


def minibatch_rows(rows: int, rows_per_minibatch: int, epochs: int) -> Iterator[tuple[int, int, list[int]]]:
    """(epoch, mini-batch number, its rows) over `epochs` passes of consecutive mini-batches."""
    starts = range(0, rows, rows_per_minibatch)
    for epoch in range(epochs):
        for number, start in enumerate(starts):
            yield epoch, number, list(range(start, min(start + rows_per_minibatch, rows)))


def clip_grad_norm(module: torch.nn.Module, max_norm: float) -> float:
    """Clip the gradient's global norm in place; returns the norm before clipping (whole, under FSDP)."""
    grad_norm = torch.nn.utils.clip_grad_norm_(module.parameters(), max_norm)
    return float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)


def optimizer_step(module: torch.nn.Module, optimizer: torch.optim.Optimizer, max_norm: float, loss_finite: bool,
                   scheduler: torch.optim.lr_scheduler.LRScheduler | None = None) -> tuple[float, bool]:
    """The end of a mini-batch, for the policy and the critic alike: clip the accumulated gradient,
    step unless the loss or the norm is not finite (skipped rather than poison the weights and Adam's
    moments), clear the gradient. Returns (norm before clipping, whether it stepped)."""
    grad_norm = clip_grad_norm(module, max_norm)
    finite = loss_finite and math.isfinite(grad_norm)
    if finite:
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm, finite


# --------------------------------------------------------------------------------------------------
# Log-probs and entropy


class TokenScorer(torch.nn.Module):
    """Wraps a causal LM so that one forward returns per-token log-probs and entropy.

    Being a module (rather than a function poking at the LM's parts) matters for FSDP2: the
    wrapper is the root that gathers the embedding / final norm / LM head for its forward.
    """
    has_values = False
    """Whether the forward also returns per-token values (critic.ValueTokenScorer's value head)."""

    def __init__(self, causal_lm: torch.nn.Module, autocast_dtype: torch.dtype | None = None,
                 share_prompts: str = "never", temperature: float = 1.0, chunk_tokens: int = 512):
        super().__init__()
        attention.prepare_for_packing(causal_lm)
        self.causal_lm = causal_lm
        self.temperature = temperature
        """The sampler's temperature: log-probs are those of the distribution it drew from."""
        self.chunk_tokens = chunk_tokens
        """Rows per chunk through the LM head (`model.logprob_chunk_tokens`)."""
        self.autocast_dtype = autocast_dtype
        """Compute dtype when it differs from the stored one and no FSDP policy casts for us."""
        self.share_prompts = share_prompts
        """Padded micro-batches: run each distinct prompt once (see `_shared_prompt_hidden`): "always",
        "never", or "when_smaller": where that runs at most SHARE_PROMPTS_AT of the token positions."""

    def forward(self, batch: MicroBatch, temperature: float | None = None,
                chunk_tokens: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probs and entropy (n,), (n,) at the bound temperature and chunk size, unless a one-off
        call (shard's warm-up, a test) names its own."""
        with torch.autocast(batch.input_ids.device.type, dtype=self.autocast_dtype,
                            enabled=self.autocast_dtype is not None):
            return self._forward(batch, temperature or self.temperature, chunk_tokens or self.chunk_tokens)

    def _forward(self, batch: MicroBatch, temperature: float, chunk_tokens: int):
        return self._token_logprobs(self._response_hidden(batch), batch.target_ids, temperature, chunk_tokens)

    def _response_hidden(self, batch: MicroBatch) -> torch.Tensor:
        """The final hidden states (n, H) that predict the response tokens."""
        backbone = self.causal_lm.get_decoder()
        packed = {}
        if batch.cu_seqlens is not None:
            implementation = self.causal_lm.config._attn_implementation
            if not attention.handles_packing(implementation):
                raise ValueError(f"attn_implementation={implementation!r} has no packed path; use train.packing=padded")
            packed = dict(cu_seq_lens_q=batch.cu_seqlens, cu_seq_lens_k=batch.cu_seqlens,
                          max_length_q=batch.max_length, max_length_k=batch.max_length)
        if self.shares_prompts(batch):
            hidden = _shared_prompt_hidden(backbone, batch)
        else:
            hidden = backbone(input_ids=batch.input_ids, position_ids=batch.position_ids,
                              attention_mask=batch.attention_mask, use_cache=False, **packed).last_hidden_state
            hidden = hidden.reshape(-1, hidden.shape[-1])[batch.target_index]    # (n, H)
        return hidden

    def _token_logprobs(self, hidden: torch.Tensor, target_ids: torch.Tensor, temperature: float,
                        chunk_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        head = self.causal_lm.get_output_embeddings()
        chunk = (functools.partial(checkpoint, _chunk_logprob_entropy, use_reentrant=False) if torch.is_grad_enabled()
                 else _chunk_logprob_entropy)
        logps, entropies = zip(*(chunk(h, ids, head, temperature)
                                 for h, ids in zip(hidden.split(chunk_tokens), target_ids.split(chunk_tokens))))
        return torch.cat(logps), torch.cat(entropies)                        # (n,), (n,)

    def shares_prompts(self, batch: MicroBatch) -> bool:
        if self.share_prompts == "never" or batch.prompt_of_row is None:
            return False
        # The response pass attends through a padding mask into the indexed-out cache; measured here
        # (bench/update_speed.py, bench/step_time_vs_trl.py) that needs a clear saving in tokens.
        return (self.share_prompts == "always"
                or batch.shared_prompt_tokens <= SHARE_PROMPTS_AT * batch.computed_tokens)


SHARE_PROMPTS_AT = 0.75
"""share_prompts="when_smaller" shares a micro-batch's prompts when that runs <= this share of its tokens."""


def _shared_prompt_hidden(backbone: torch.nn.Module, batch: MicroBatch) -> torch.Tensor:
    """Hidden states that predict the response tokens, each distinct prompt computed once.

    The n samples of a prompt share it token for token, so its keys and values are the same in
    every row: one pass over the P distinct prompts (right-padded) fills a KV cache, which is
    indexed out to the b rows (`reorder_cache`: an index_select whose backward sums the rows'
    gradients back into their prompt), and a second pass runs only the responses on top of it,
    at the positions they have in the full sequence. The same function as the padded forward, up
    to float rounding, for (P * prompt + b * response) tokens instead of b * (prompt + response).
    Needs the cache, so not with gradient checkpointing (transformers drops the cache there).
    """
    ids, prompt_lengths, prompt_of_row, first_rows = (batch.input_ids, batch.prompt_lengths, batch.prompt_of_row,
                                                      batch.first_row_of_prompt)
    device = ids.device
    columns = torch.arange(batch.prompt_width, device=device)
    prompt_mask = (columns[None] < prompt_lengths[first_rows, None]).long()                 # (P, Lp)
    prompt_pass = backbone(input_ids=ids[first_rows, :batch.prompt_width], attention_mask=prompt_mask,
                           position_ids=columns[None].expand(len(first_rows), -1), use_cache=True)
    cache = prompt_pass.past_key_values
    cache.reorder_cache(prompt_of_row)                                                       # P -> b rows
    # The last prompt token predicts the first response token.
    last_prompt_hidden = prompt_pass.last_hidden_state[prompt_of_row, prompt_lengths - 1]   # (b, H)

    response_lengths = torch.tensor(batch.response_lengths, device=device)
    response_width = max(batch.response_lengths)
    steps = torch.arange(response_width, device=device)
    positions = prompt_lengths[:, None] + steps[None]                                        # (b, Lr)
    response_ids = ids.gather(1, positions.clamp(max=ids.shape[1] - 1))
    response_mask = (steps[None] < response_lengths[:, None]).long()
    response_pass = backbone(input_ids=response_ids, position_ids=positions, past_key_values=cache,
                             attention_mask=torch.cat([prompt_mask[prompt_of_row], response_mask], 1),
                             use_cache=True)
    hidden = torch.cat([last_prompt_hidden[:, None], response_pass.last_hidden_state], 1)   # (b, Lr + 1, H)
    # Row j's response tokens are predicted from its positions 0 .. len_j - 1 of `hidden`.
    return hidden[torch.arange(response_width + 1, device=device)[None] < response_lengths[:, None]]  # (n, H)


def _chunk_logprob_entropy(hidden: torch.Tensor, target_ids: torch.Tensor, head: torch.nn.Module,
                           temperature: float):
    logits = head(hidden)
    logits = (logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits) / temperature
    log_probs = torch.log_softmax(logits, dim=-1)  # one [chunk, vocab] buffer serves both outputs
    return log_probs.gather(-1, target_ids[:, None]).squeeze(-1), entropy_from_log_probs(log_probs)


def shard(scorer: torch.nn.Module, info: dist.DistInfo, param_dtype: torch.dtype) -> torch.nn.Module:
    """FSDP2: shard each decoder layer, the input embedding (unless the LM head shares it), then the
    root (the rest: final norm, LM head)."""
    if not info.enabled:
        return scorer
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    # Reductions in fp32 even when the parameters are bf16: summing many bf16 gradients loses bits.
    reduce_dtype = torch.float64 if param_dtype == torch.float64 else torch.float32
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    decoder = scorer.causal_lm.get_decoder()
    if getattr(decoder, "layers", None) is None:
        raise RuntimeError(f"{type(decoder).__name__} has no `.layers`: cannot shard it per layer")
    for layer in decoder.layers:
        fully_shard(layer, mp_policy=mp)
    # An untied input embedding is its own unit: gathered only around its forward and backward, and
    # its [vocab, hidden] gradient reduced apart from the LM head's (at 151,936 x 1536, 0.5 GiB in bf16
    # and 0.9 GiB in fp32 each), instead of the root holding both for the whole step.
    embedding, head = scorer.causal_lm.get_input_embeddings(), scorer.causal_lm.get_output_embeddings()
    if getattr(head, "weight", None) is not embedding.weight:
        fully_shard(embedding, mp_policy=mp)
    fully_shard(scorer, mp_policy=mp)
    # FSDP2 initialises lazily on the root's first forward; HF `generate` would otherwise reach the
    # layers first (it bypasses the root), which FSDP rejects. One token through the root settles it.
    device = next(scorer.parameters()).device
    with torch.no_grad():
        scorer(build_microbatch([[0]], [[0]], [0], packed=True).to(device), 1.0, 1)
    scorer.reshard()  # the root keeps its parameters gathered after a forward; the optimizer needs shards
    return scorer


def unflatten(values: torch.Tensor, lengths: list[int], width: int | None = None) -> torch.Tensor:
    """Flat per-token values (sum(lengths),) -> right-padded (len(lengths), width) with zeros."""
    width = max(lengths, default=0) if width is None else width
    out = values.new_zeros((len(lengths), width))
    mask = torch.arange(width, device=values.device)[None] < torch.tensor(lengths, device=values.device)[:, None]
    return out.masked_scatter(mask, values)


def choose_packing(mode: str, attn_implementation: str, device: torch.device) -> tuple[bool, str]:
    """`train.packing` -> (packed?, why), decided once per run.

    auto: packed where a variable-length kernel runs it (CUDA with torch's varlen_attn, or a
    flash-attention implementation); padded elsewhere, because on CPU length-sorted padded rows
    measured fastest (bench/update_speed.py): one batched SDPA call beats a call per sequence.
    """
    if mode != "auto":
        if mode == "packed" and not attention.handles_packing(attn_implementation):
            raise ValueError(f"train.packing=packed: attn_implementation={attn_implementation!r} has no packed path")
        return mode == "packed", f"train.packing={mode}"
    if attn_implementation in attention.NATIVE_VARLEN:
        return True, f"packed rows ({attn_implementation} runs them variable-length)"
    if attn_implementation in attention.SWITCHED_TO_PACKED and attention.varlen_available(device):
        return True, "packed rows (torch varlen_attn on CUDA)"
    return False, f"length-sorted padded rows ({attn_implementation} on {device.type}: no variable-length kernel)"


def choose_prompt_sharing(mode: str, packed: bool, gradient_checkpointing: bool) -> tuple[str, str]:
    """`train.share_prompts` (auto | true | false) -> (TokenScorer's share_prompts, why), once per run."""
    blocker = ("packed rows" if packed else
               "gradient checkpointing (transformers drops the KV cache under it)" if gradient_checkpointing else "")
    if mode == "true" and blocker:
        raise ValueError(f"train.share_prompts=true does not work with {blocker}; use train.share_prompts=auto")
    if mode == "false" or blocker:
        why = "train.share_prompts=false" if mode == "false" else blocker
        return "never", f"each prompt computed once per response ({why})"
    if mode == "true":
        return "always", "each distinct prompt computed once per micro-batch, responses on its KV cache"
    return "when_smaller", (f"each distinct prompt computed once per micro-batch where that runs <= "
                            f"{SHARE_PROMPTS_AT:.0%} of its tokens, responses on its KV cache")
