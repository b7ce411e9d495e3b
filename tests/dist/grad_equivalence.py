"""Run under `torchrun --nproc_per_node 2`: FSDP2 (gloo, CPU) loss and gradients on a global batch
split by rank must equal one process computing the whole batch. Rank 0 writes the comparison.

    grad_equivalence.py OUT.json [packed | shared_prompts | lora]

`shared_prompts`: padded rows with each distinct prompt run once (two backbone passes per
micro-batch under FSDP2). `lora`: packed, with peft LoRA adapters on every linear layer (B random, as
after training): only the adapters have gradients, the frozen base is sharded alongside. Qwen2's RMSNorm is switched to float64 arithmetic here (transformers
computes it in float32 for any dtype), so that the only difference left is summation order."""

import json
import sys

import torch
import torch.distributed as torch_dist

from justrl_min import dist, tiny
from justrl_min.config import LoraConfig, load_recipe
from justrl_min.model import MicroBatcher, TokenScorer, shard, unflatten
from justrl_min.optim import build_adamw
from justrl_min.trainer import Batch, PolicyUpdate


def global_batch(n_prompts: int, group: int) -> Batch:
    g = torch.Generator().manual_seed(0)
    prompts, responses = [], []
    for p in range(n_prompts):
        prompt = torch.randint(0, 255, (int(torch.randint(3, 8, (1,), generator=g)),), generator=g).tolist()
        # Rank 0's groups (the first half) get long responses: under the micro-batch budget it needs
        # several times as many micro-batches as rank 1, which must run as many or FSDP hangs.
        shortest, longest = (15, 30) if p < n_prompts // 2 else (1, 10)
        for _ in range(group):
            prompts.append(prompt)
            responses.append(torch.randint(0, 255, (int(torch.randint(shortest, longest, (1,), generator=g)),),
                                           generator=g).tolist())
    lengths = [len(r) for r in responses]
    width = max(lengths)
    mask = unflatten(torch.ones(sum(lengths)), lengths, width)
    old_logp = unflatten(-torch.rand(sum(lengths), generator=g, dtype=torch.float64) * 4, lengths, width)
    advantages = torch.randn(len(responses), generator=g, dtype=torch.float64)
    return Batch(prompts, responses, mask, old_logp, torch.zeros_like(mask), advantages=advantages)


def shard_rows(batch: Batch, rows: list[int]) -> Batch:
    width = max(len(batch.responses[i]) for i in rows)
    return Batch([batch.prompts[i] for i in rows], [batch.responses[i] for i in rows], batch.mask[rows, :width],
                 batch.old_logp[rows, :width], batch.entropy[rows, :width], advantages=batch.advantages[rows])


def backward(cfg, batch: Batch, scorer, packed: bool, info: dist.DistInfo):
    """The recipe's policy-loss gradient over the whole `batch`, accumulated into `scorer`."""
    microbatches = MicroBatcher(cfg.train.max_tokens_per_microbatch, packed, torch.device("cpu"), 0, info)
    update = PolicyUpdate.from_config(cfg, scorer, None, None, microbatches)
    return update.minibatch_backward(batch, list(range(len(batch.responses))), batch.old_logp, batch.entropy)


def build_policy(layout: str) -> torch.nn.Module:
    # `packed` unties the LM head from the input embedding, which FSDP2 then shards as a unit of its own.
    model = tiny.build_model(tiny.build_tokenizer(), seed=0, hidden=32, layers=2,
                             tie_embeddings=layout != "packed").double()
    if layout != "lora":
        return model
    from justrl_min.variants.lora import LoraFineTuning

    policy = LoraFineTuning(LoraConfig(rank=4, alpha=8.0), seed=0).load_policy(lambda _: model, "", None).double()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in policy.named_parameters():
            if "lora_B" in name:  # peft starts B at 0, where A would get no gradient
                parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
    return policy


def float64_rms_norm(self, hidden_states):
    """Qwen2RMSNorm.forward in the input's dtype (transformers upcasts to float32 only)."""
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


def main(out_path: str, layout: str) -> None:
    from transformers.models.qwen2 import modeling_qwen2

    modeling_qwen2.Qwen2RMSNorm.forward = float64_rms_norm
    packed, share = layout in ("packed", "lora"), "always" if layout == "shared_prompts" else "never"
    info = dist.init("cpu")
    cfg = load_recipe(None, ["train.max_tokens_per_microbatch=40", "rollout.temperature=0.9",
                             "model.logprob_chunk_tokens=7", "rollout.n=4", "train.mini_batch_prompts=4",
                             "train.prompts_per_step=4"])
    reference = TokenScorer(build_policy(layout), share_prompts=share, temperature=0.9, chunk_tokens=7)
    reference_copy = {k: v.clone() for k, v in reference.state_dict().items()}
    batch = global_batch(n_prompts=4, group=4)

    # One process, whole batch.
    whole = backward(cfg, batch, reference, packed, dist.DistInfo())
    whole_grads = {n: p.grad.clone() for n, p in reference.named_parameters() if p.requires_grad}

    # Two ranks, FSDP2, each with its own whole prompt groups.
    scorer = TokenScorer(build_policy(layout), share_prompts=share, temperature=0.9, chunk_tokens=7)
    scorer.load_state_dict(reference_copy)
    scorer = shard(scorer, info, torch.float64)
    rows = list(range(info.rank * 8, (info.rank + 1) * 8))
    local = shard_rows(batch, rows)
    split = backward(cfg, local, scorer, packed, info)
    split_grads = {n: p.grad.full_tensor() for n, p in scorer.named_parameters() if p.requires_grad}

    # One AdamW step on each: the default implementation on the whole model, the trainer's choice (the
    # fused kernel) on FSDP2's sharded parameters.
    adamw = dict(lr=1e-2, betas=(0.9, 0.999), weight_decay=0.1)
    build_adamw(reference.parameters(), **adamw, implementation="default")[0].step()
    sharded_adamw, implementation = build_adamw(scorer.parameters(), **adamw)
    sharded_adamw.step()
    stepped = dist.full_model_state(scorer, info)

    if info.rank == 0:
        diffs = {n: (whole_grads[n] - split_grads[n]).abs().max().item() for n in whole_grads}
        scale = max(g.abs().max().item() for g in whole_grads.values())
        with open(out_path, "w") as f:
            json.dump({"loss_whole": whole.loss, "loss_split": split.loss, "max_grad_diff": max(diffs.values()),
                       "grad_scale": scale, "params": len(diffs), "world_size": info.world_size,
                       "adamw": implementation,
                       "max_weight_diff": max((stepped[n] - v).abs().max().item()
                                              for n, v in reference.state_dict().items()),
                       "max_weight_moved": max((reference_copy[n] - v).abs().max().item()
                                               for n, v in reference.state_dict().items())}, f)
    torch_dist.barrier()
    dist.shutdown(info)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "packed")
    dist.exit_worker(0)
