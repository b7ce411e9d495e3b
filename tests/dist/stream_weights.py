"""Run under `torchrun --nproc_per_node 2`: the per-tensor gather used to refresh vLLM's weights
yields exactly the full (unsharded) state dict, cast to the compute dtype."""

import json
import sys

import torch

from justrl_min import dist, tiny
from justrl_min.model import TokenScorer, shard


def main(out_path: str) -> None:
    info = dist.init("cpu")
    model = tiny.build_model(tiny.build_tokenizer(), seed=0, hidden=32, layers=2)
    expected = {k: v.clone() for k, v in TokenScorer(model).state_dict().items()}
    scorer = shard(TokenScorer(model), info, torch.float32)
    streamed = dict(dist.iter_full_tensors(scorer, info, torch.bfloat16))
    if info.is_main:
        diffs = [(streamed[k].float() - expected[k].to(torch.bfloat16).float()).abs().max().item() for k in expected]
        with open(out_path, "w") as f:
            json.dump({"names_equal": sorted(streamed) == sorted(expected), "max_diff": max(diffs),
                       "dtype": str(next(iter(streamed.values())).dtype)}, f)
    dist.barrier(info)
    dist.shutdown(info)


if __name__ == "__main__":
    main(sys.argv[1])
    dist.exit_worker(0)
