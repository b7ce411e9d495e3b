"""LoRA fine-tuning of the policy through `peft` (`model.lora.rank > 0`).

The adapters are peft's own layers, injected into the Hugging Face model in place, so the trainer's
`TokenScorer`, FSDP sharding and the HF engine see the same module as for full fine-tuning, with
only the adapter parameters trainable. What differs from full fine-tuning, and lives here:

- the reference of the KL term is the same module with the adapters switched off (peft's
  `disable_adapter()`), never a second copy;
- a checkpoint holds the adapters as a PEFT folder (`adapter_config.json`,
  `adapter_model.safetensors`), which names the base model it was trained on;
- the rollout engine gets merged full tensors, W + scaling * B A under the base model's names,
  streamed one layer at a time (`merged_tensors`), so vLLM serves a plain model.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch

from justrl_min import dist
from justrl_min.config import ConfigError, LoraConfig
from justrl_min.model import POLICY_PREFIX, weights_for_engine

ADAPTER = "default"
"""peft's name for the one adapter a model gets when none is named."""
ADAPTER_CONFIG = "adapter_config.json"


def require_peft():
    try:
        import peft
    except ImportError:
        raise ConfigError("model.lora.rank > 0 needs the `peft` package: pip install 'justrl-min[lora]' "
                          "(or set model.lora.rank=0 for full fine-tuning)") from None
    return peft


def is_adapter_folder(folder: str | Path) -> bool:
    return (Path(folder) / ADAPTER_CONFIG).is_file()


def adapter_base_path(folder: str | Path) -> str:
    """The base model a PEFT folder's adapters were trained on (as peft recorded it)."""
    return json.loads((Path(folder) / ADAPTER_CONFIG).read_text())["base_model_name_or_path"]


class LoraFineTuning:
    """The policy with peft LoRA adapters; see the module docstring. Same methods as
    `model.FullFineTuning`; `load_policy` fills `peft_model`, which the other methods use."""

    def __init__(self, settings: LoraConfig, seed: int):
        self.settings = settings
        self.seed = seed
        """Seeds the adapters' initialisation: every rank must start from the same A matrices (FSDP
        shards each rank's own copy), and a rerun from the same ones."""
        self.peft_model = None

    def load_policy(self, load: Callable[[str], torch.nn.Module], base_path: str,
                    resume_from: Path | None) -> torch.nn.Module:
        """The base model from `base_path` with adapters: fresh ones, or those of a checkpoint."""
        peft = require_peft()
        base = load(base_path)
        if resume_from is not None:
            self.peft_model = peft.PeftModel.from_pretrained(base, str(resume_from), is_trainable=True)
        else:
            s = self.settings
            targets = "all-linear" if s.target_modules == ["all-linear"] else list(s.target_modules)
            config = peft.LoraConfig(r=s.rank, lora_alpha=s.alpha, lora_dropout=s.dropout, target_modules=targets,
                                     bias="none", task_type="CAUSAL_LM")
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                try:
                    self.peft_model = peft.get_peft_model(base, config)
                except ValueError as e:  # peft names the modules it could not find
                    raise ConfigError(f"model.lora.target_modules={s.target_modules}: {e}") from None
        # peft injected its layers into `base` in place: the trainer keeps working on the HF model.
        return self.peft_model.get_base_model()

    def reference(self, scorer: torch.nn.Module, frozen_copy: Callable[[], torch.nn.Module]) -> Callable:
        """The base model is the policy's scorer with its adapters off: nothing is loaded (`frozen_copy` unused)."""
        del frozen_copy

        def adapters_disabled(*args, **kwargs):
            with self.peft_model.disable_adapter():
                return scorer(*args, **kwargs)
        return adapters_disabled

    def engine_weights(self, scorer: torch.nn.Module, info: dist.DistInfo,
                       dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
        """Merged full tensors under the base model's names, merged in the stored dtype, then cast."""
        master = next(p for p in scorer.parameters()).dtype
        stored = weights_for_engine(scorer, info, master)
        return ((name, tensor.to(dtype)) for name, tensor in merged_tensors(stored, self.scalings()))

    def scalings(self) -> dict[str, float]:
        """Each adapted layer's name in the base model -> its scaling (alpha / rank)."""
        from peft.tuners.lora import LoraLayer

        return {name: module.scaling[ADAPTER] for name, module in self.peft_model.get_base_model().named_modules()
                if isinstance(module, LoraLayer)}

    def save_policy(self, folder: Path, model_state: dict[str, torch.Tensor]) -> None:
        """The adapters as a PEFT folder (peft keeps the `lora_` entries of the state and drops the rest)."""
        self.peft_model.save_pretrained(folder, state_dict={
            "base_model.model." + name.removeprefix(POLICY_PREFIX): value for name, value in model_state.items()})


def merged_tensors(named_tensors: Iterable[tuple[str, torch.Tensor]],
                   scalings: dict[str, float]) -> Iterator[tuple[str, torch.Tensor]]:
    """A model-with-adapters' tensors (Hugging Face names with peft's `base_layer` / `lora_A` /
    `lora_B` parts) as the base model's, each adapted weight merged: W + scaling * B A.

    Lazy: an adapted layer's three tensors are held only until the last of them arrives, so an FSDP
    trainer gathering one tensor at a time holds one layer's at most.
    """
    pending: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in named_tensors:
        layer, part, leaf = _split(name)
        if layer not in scalings:
            yield name, tensor
        elif part == "base_layer" and leaf != "weight":  # a bias: the adapters leave it alone
            yield f"{layer}.{leaf}", tensor
        else:
            parts = pending.setdefault(layer, {})
            parts[part] = tensor
            if len(parts) == 3:
                del pending[layer]
                weight = parts["base_layer"]
                exact = torch.promote_types(weight.dtype, torch.float32)  # a bf16 merge would round B A away
                delta = parts["lora_B"].to(exact) @ parts["lora_A"].to(exact)
                yield f"{layer}.weight", (weight.to(exact) + scalings[layer] * delta).to(weight.dtype)
    if pending:
        raise RuntimeError(f"adapted layers with missing tensors: {sorted(pending)}")


def _split(name: str) -> tuple[str, str, str]:
    """"a.q_proj.lora_A.default.weight" -> ("a.q_proj", "lora_A", "weight"); "a.q_proj.base_layer.bias"
    -> ("a.q_proj", "base_layer", "bias"); anything else -> (name, "", "")."""
    for part in ("base_layer", "lora_A", "lora_B"):
        layer, found, leaf = name.partition(f".{part}.")
        if found:
            return layer, part, leaf.removeprefix(f"{ADAPTER}.")
    return name, "", ""
