"""Write a checkpoint as a plain, merged Hugging Face model folder (what eval.py and vLLM load).

    python -m justrl_min.tools.export RUN_OR_CHECKPOINT --out DIR [--dtype bfloat16]
    justrl export runs/x --out DIR

RUN_OR_CHECKPOINT is a run directory (its newest checkpoint that passes its check is exported) or one
checkpoint folder (checked against its manifest first).
A LoRA checkpoint (a PEFT folder) is loaded onto the base model it names and merged (W + scaling B A,
peft's `merge_and_unload`); a full-weight checkpoint is copied without the trainer's state. Either
way DIR holds config.json, generation_config.json, model.safetensors and the tokenizer, and nothing
that needs peft to read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from justrl_min.checkpoint import checked_model_folder
from justrl_min.config import ConfigError
from justrl_min.model import DTYPES, load_tokenizer
from justrl_min.variants.lora import adapter_base_path, is_adapter_folder, require_peft


def checkpoint_folder(run_or_checkpoint: str | Path) -> Path:
    """A checkpoint folder itself, or a run directory's newest checkpoint that passes its check."""
    folder = Path(checked_model_folder(run_or_checkpoint, log=lambda text: print(text, file=sys.stderr)))
    if (folder / "config.json").is_file() or is_adapter_folder(folder):
        return folder.resolve()
    raise ConfigError(f"{run_or_checkpoint}: neither a checkpoint folder (config.json) nor a run directory "
                      "with checkpoints/")


def load_merged(folder: Path, dtype: str | None = None) -> torch.nn.Module:
    """The checkpoint's policy as a plain transformers model; LoRA adapters merged into their weights."""
    from transformers import AutoModelForCausalLM

    if not is_adapter_folder(folder):
        return AutoModelForCausalLM.from_pretrained(folder, dtype=DTYPES[dtype] if dtype else "auto")
    peft = require_peft()
    # Merged in the stored (float32) dtype, cast after: merging in bf16 would round B A away.
    base = AutoModelForCausalLM.from_pretrained(adapter_base_path(folder), dtype="auto")
    merged = peft.PeftModel.from_pretrained(base, str(folder)).merge_and_unload()
    return merged.to(DTYPES[dtype]) if dtype else merged


def export(run_or_checkpoint: str | Path, out: str | Path, dtype: str | None = None) -> Path:
    folder = checkpoint_folder(run_or_checkpoint)
    out = Path(out)
    if out.resolve() == folder:
        raise ConfigError(f"--out {out} is the checkpoint itself; choose another folder")
    model = load_merged(folder, dtype)
    model.config.use_cache = True  # the trainer turns it off for scoring; generation wants it
    model.save_pretrained(out)
    load_tokenizer(str(folder)).save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m justrl_min.tools.export", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT")
    p.add_argument("--out", required=True, help="folder to write the merged Hugging Face model into")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="cast the weights (default: as stored)")
    args = p.parse_args(argv)
    try:
        out = export(args.checkpoint, args.out, args.dtype)
    except ConfigError as e:
        print(f"export: error: {e}", file=sys.stderr)
        return 2
    print(f"merged Hugging Face model written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
