"""Peak memory and time of chunked vs naive per-token log-prob + entropy, forward and backward.

Shapes are the LM head of the 1.5B Qwen2 models (hidden 1536, vocabulary 151,936) over one
sequence of T = 8192 response tokens, float32. The loss is ``logp.sum() + entropy.sum()`` and the
backward reaches both the hidden states h (T, H) and the head weight W (V, H).

naive    logits = h @ W.T / temperature over all T rows (T x V float32 = 4.6 GiB at T = 8192),
         one log_softmax, gather of the targets, entropy = -(exp(lsm) * lsm).sum(-1), all kept
         by autograd for the backward. Written out by hand here (independent of the project
         code, so the agreement check means something) and sharing one log_softmax between
         log-prob and entropy: the leanest naive form, i.e. a conservative baseline (the
         project's `entropy_from_logits` recomputes log_softmax and would cost more unchunked).
chunked  the project's own code path: `justrl_min.model.TokenScorer.forward`, called on a stand-in
         causal LM whose decoder returns the given hidden states and whose output embeddings are
         an ``nn.Linear(1536, 151936, bias=False)``. TokenScorer splits the rows into chunks of
         ``--chunk-tokens`` and runs `_chunk_logprob_entropy` under ``torch.utils.checkpoint`` per
         chunk, so only one chunk's logits live at a time, in the forward and in the recomputing
         backward. (It also gathers the target rows, a T x H copy: 48 MiB, counted against it.)

How memory is measured. Each measurement runs in a fresh subprocess that creates its inputs
(W, h, target ids: the same seeded values for both variants), then records its resident set size
(RSS, /proc/self/statm) as the baseline, runs forward + backward, and reads the kernel's
high-water mark ``resource.getrusage(RUSAGE_SELF).ru_maxrss``. Peak extra memory = high-water mark
- baseline RSS: every byte of every tensor the computation allocated and touched (logits, saved
activations, gradients, allocator slack), as the operating system saw it. W.grad (0.87 GiB) is
included for both variants. This is valid because the computation sets a new high-water mark (the
script checks it), and because the workers run with glibc's ``MALLOC_MMAP_THRESHOLD_`` fixed at
1 MiB: every tensor of 1 MiB or more gets its own mapping, returned to the OS when freed, so RSS
follows the live tensors instead of ratcheting up with freed heap memory glibc keeps (by default
glibc raises its mmap threshold after frees, up to 32 MiB, and then keeps such blocks on its heap).
With ``--device cuda``, torch.cuda's max_memory_allocated minus memory_allocated before the
computation is used instead.

RAM. The naive variant at T = 8192 needs five T x V float32 buffers alive at once (an op-by-op
RSS trace shows its peak in the backward of exp: log_softmax output and its exp saved by autograd,
the incoming gradients of both, and the new product), 5 x 4.64 = 23 GiB: more than this machine
has free beside other work, and more than this bench may take (``--mem-limit-gib``, default 11).
So the naive variant is measured at two smaller T (``--naive-tokens``), a straight line
peak = a + b*T is fitted (its peak is made of T x V buffers only, so the line is exact up to
allocator noise, and the fitted slope, printed in V-float32 rows per token, shows it), and it is
measured at the full T only if the line predicts it fits the limit; otherwise its value at the full
T is printed as an EXTRAPOLATION, labelled so. The naive peak measured at the largest T that fitted,
divided by the chunked peak at the full T, is printed too: a measured lower bound of the ratio.

Agreement. In the first naive worker, after its measurement, the chunked path is run on the same
inputs (chunks of ``--check-chunk-tokens``, so several chunks and a partial last one) and the max
abs differences of log-probs, entropies, dL/dh and dL/dW against the naive ones are printed.

    python bench/logprob_memory.py [--tokens 8192] [--chunk-tokens 1024] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

try:
    from justrl_min.model import MicroBatch, TokenScorer
except ModuleNotFoundError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from justrl_min.model import MicroBatch, TokenScorer

GIB = 2 ** 30


# --------------------------------------------------------------------------------------------------
# The two variants


class _GivenHidden(torch.nn.Module):
    """Stands in for the decoder: returns the hidden states it was given, whatever the inputs."""

    def __init__(self, hidden: torch.Tensor):
        super().__init__()
        self.hidden = hidden                                      # (1, T, H), a leaf with grad

    def forward(self, input_ids, position_ids, attention_mask, use_cache):  # noqa: ARG002
        return SimpleNamespace(last_hidden_state=self.hidden)


class _HeadOnlyLM(torch.nn.Module):
    """The two accessors TokenScorer uses on a transformers causal LM, and nothing else."""

    def __init__(self, hidden: torch.Tensor, head: torch.nn.Linear):
        super().__init__()
        # Read by attention.prepare_for_packing: no attention here, nothing to switch.
        self.config = SimpleNamespace(_attn_implementation="none")
        self.decoder = _GivenHidden(hidden)
        self.lm_head = head

    def get_decoder(self):
        return self.decoder

    def get_output_embeddings(self):
        return self.lm_head


def chunked(h: torch.Tensor, target_ids: torch.Tensor, head: torch.nn.Linear, temperature: float,
            chunk_tokens: int):
    """The project's TokenScorer.forward over one packed row holding one response of T tokens."""
    tokens = h.shape[0]
    batch = MicroBatch(input_ids=torch.zeros((1, tokens), dtype=torch.long, device=h.device),
                       position_ids=torch.arange(tokens, device=h.device)[None], attention_mask=None,
                       target_index=torch.arange(tokens, device=h.device), target_ids=target_ids,
                       response_lengths=[tokens])
    return TokenScorer(_HeadOnlyLM(h[None], head), temperature=temperature, chunk_tokens=chunk_tokens)(batch)


def naive(h: torch.Tensor, target_ids: torch.Tensor, head: torch.nn.Linear, temperature: float):
    """All T rows of logits at once, kept by autograd for the backward."""
    log_probs = torch.log_softmax(h @ head.weight.T / temperature, dim=-1)       # (T, V)
    logp = log_probs.gather(-1, target_ids[:, None]).squeeze(-1)
    entropy = -(log_probs.exp() * log_probs).sum(dim=-1)
    return logp, entropy


# --------------------------------------------------------------------------------------------------
# One measurement (runs in its own process)


def make_inputs(tokens: int, hidden: int, vocab: int, seed: int, device: str):
    """Seeded W ~ N(0, 0.02) (Qwen2's initializer range), h ~ N(0, 1), uniform target ids."""
    gen = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(hidden, vocab, bias=False, device="meta").to_empty(device="cpu")
    with torch.no_grad():
        head.weight.normal_(0.0, 0.02, generator=gen)
    h = torch.randn(tokens, hidden, generator=gen)
    target_ids = torch.randint(vocab, (tokens,), generator=gen)
    head.to(device)
    return h.to(device).requires_grad_(True), target_ids.to(device), head


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024    # KiB on Linux


class PeakMeter:
    """Peak of memory allocated beyond what is live at `start()` (RSS on CPU, allocator on CUDA)."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def start(self):
        self.sync()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base, self.base_max = _rss_bytes(), _maxrss_bytes()

    def peak(self) -> int:
        self.sync()
        if self.cuda:
            return torch.cuda.max_memory_allocated() - self.base
        high = _maxrss_bytes()
        if high <= self.base_max:
            raise RuntimeError("no new RSS high-water mark: the peak cannot be read from ru_maxrss")
        return high - self.base


def worker(args) -> dict:
    torch.set_grad_enabled(True)
    h, target_ids, head = make_inputs(args.tokens, args.hidden, args.vocab, args.seed, args.device)
    meter = PeakMeter(args.device)
    meter.start()
    t0 = time.perf_counter()
    if args.worker == "naive":
        logp, entropy = naive(h, target_ids, head, args.temperature)
    else:
        logp, entropy = chunked(h, target_ids, head, args.temperature, args.chunk_tokens)
    meter.sync()
    t1 = time.perf_counter()
    forward_peak = meter.peak()
    (logp.sum() + entropy.sum()).backward()
    meter.sync()
    t2 = time.perf_counter()
    result = {"variant": args.worker, "tokens": args.tokens, "chunk_tokens": args.chunk_tokens,
              "forward_peak": forward_peak, "peak": meter.peak(), "forward_s": t1 - t0,
              "backward_s": t2 - t1, "total_s": t2 - t0}
    if args.check_chunk_tokens:
        ref = [logp.detach(), entropy.detach(), h.grad, head.weight.grad]
        h.grad, head.weight.grad = None, None
        del logp, entropy
        logp, entropy = chunked(h, target_ids, head, args.temperature, args.check_chunk_tokens)
        (logp.sum() + entropy.sum()).backward()
        got = [logp.detach(), entropy.detach(), h.grad, head.weight.grad]
        names = ["logp", "entropy", "grad_h", "grad_W"]
        result["check"] = {name: {"max_abs_diff": (a - b).abs().max().item(), "max_abs": a.abs().max().item()}
                           for name, a, b in zip(names, ref, got, strict=True)}
    return result


def run_worker(args, variant: str, tokens: int, check_chunk_tokens: int = 0) -> dict:
    cmd = [sys.executable, __file__, "--worker", variant, "--tokens", str(tokens),
           "--hidden", str(args.hidden), "--vocab", str(args.vocab), "--chunk-tokens", str(args.chunk_tokens),
           "--temperature", str(args.temperature), "--seed", str(args.seed), "--device", args.device,
           "--check-chunk-tokens", str(check_chunk_tokens)]
    # A fixed glibc mmap threshold: every allocation of 1 MiB or more gets its own mapping, returned
    # to the OS when freed, so RSS follows the live tensors (see the module docstring).
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(2 ** 20))
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------------
# Driver


def _gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB"


def _row(r: dict, label: str = "") -> str:
    return (f"  {r['variant']:<8} T={r['tokens']:<5} peak {_gib(r['peak']):>10} (forward {_gib(r['forward_peak'])})"
            f"  time {r['total_s']:6.1f} s (fwd {r['forward_s']:.1f} + bwd {r['backward_s']:.1f}){label}")


SMOKE = ["--tokens", "1024", "--hidden", "128", "--vocab", "8192", "--chunk-tokens", "256",
         "--naive-tokens", "256", "512", "--check-chunk-tokens", "96"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=8192, help="sequence length T")
    parser.add_argument("--hidden", type=int, default=1536)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--chunk-tokens", type=int, default=1024, help="TokenScorer chunk size")
    parser.add_argument("--temperature", type=float, default=1.0, help="rollout temperature (recipes: 1.0)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--naive-tokens", type=int, nargs=2, default=[1024, 2048],
                        help="the two T at which the naive variant is measured to fit a line")
    parser.add_argument("--check-chunk-tokens", type=int, default=384,
                        help="chunk size of the agreement check, run at the first --naive-tokens T")
    parser.add_argument("--mem-limit-gib", type=float, default=11.0,
                        help="measure naive at the full T only if predicted to stay under this")
    parser.add_argument("--worker", choices=["naive", "chunked"], help=argparse.SUPPRESS)
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes, seconds: the check CI runs (tests/tools/test_bench_smoke.py)")
    args = parser.parse_args(argv)
    if args.smoke:
        args = parser.parse_args([*SMOKE, *(sys.argv[1:] if argv is None else argv)])
    if args.worker:
        print(json.dumps(worker(args)))
        return
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("--device cuda: CUDA is not available")

    T, H, V = args.tokens, args.hidden, args.vocab
    print(f"LM head {H} -> {V}, float32, one sequence of T={T}, temperature {args.temperature}, "
          f"device {args.device} ({torch.get_num_threads()} threads), torch {torch.__version__}")
    print(f"  T x V logits: {_gib(T * V * 4)} per copy at T={T}; W and W.grad: {_gib(V * H * 4)} each")
    print("  peak = extra memory allocated during forward+backward beyond the live inputs "
          + ("(torch.cuda.max_memory_allocated)" if args.device.startswith("cuda")
             else "(ru_maxrss high-water mark - RSS before; fresh process per run)"))
    print()

    rows = []
    ch = run_worker(args, "chunked", T)
    rows.append(ch)
    print(_row(ch, f"  [chunk {args.chunk_tokens}, measured]"), flush=True)

    (t_a, t_b) = args.naive_tokens
    na = run_worker(args, "naive", t_a, check_chunk_tokens=args.check_chunk_tokens)
    print(_row(na, "  [measured]"), flush=True)
    nb = run_worker(args, "naive", t_b)
    print(_row(nb, "  [measured]"), flush=True)
    slope = (nb["peak"] - na["peak"]) / (t_b - t_a)
    intercept = na["peak"] - slope * t_a
    t_slope = (nb["total_s"] - na["total_s"]) / (t_b - t_a)
    t_intercept = na["total_s"] - t_slope * t_a
    predicted = intercept + slope * T
    print(f"  naive fit: peak = {_gib(intercept)} + {slope / 2 ** 20:.3f} MiB x T "
          f"(= {slope / (V * 4):.2f} copies of a V-float32 row per token)")

    if predicted <= args.mem_limit_gib * GIB:
        nf = run_worker(args, "naive", T)
        print(_row(nf, "  [measured]"), flush=True)
        naive_peak, naive_time, label, lower = nf["peak"], nf["total_s"], "measured", nf
    else:
        fits = int((args.mem_limit_gib * GIB - intercept) // slope)
        naive_peak, naive_time = predicted, t_intercept + t_slope * T
        label, lower = "EXTRAPOLATED", nb
        print(f"  naive    T={T:<5} NOT RUN: predicted peak {_gib(predicted)} > --mem-limit-gib "
              f"{args.mem_limit_gib} (largest T predicted to fit: ~{fits}; measured up to T={t_b})")
        print(f"  naive    T={T:<5} peak {_gib(predicted):>10}"
              f"                    time {naive_time:6.1f} s  [EXTRAPOLATED linearly from T={t_a}, {t_b}]")

    print()
    print(f"Result at T={T}, chunk {args.chunk_tokens}:")
    print(f"  chunked peak {_gib(ch['peak'])} (measured), time {ch['total_s']:.1f} s (measured)")
    chunk_copy = args.chunk_tokens * V * 4
    print(f"           = one W-sized gradient buffer {_gib(V * H * 4)} + "
          f"{(ch['peak'] - V * H * 4) / chunk_copy:.1f} x one chunk's logits ({_gib(chunk_copy)})")
    print(f"  naive   peak {_gib(naive_peak)} ({label}), time {naive_time:.1f} s ({label})")
    ratio = naive_peak / ch["peak"]
    print(f"  ratio naive/chunked peak: {ratio:.1f}x ({label} naive / measured chunked); "
          f"target >= 8x: {'met' if ratio >= 8 else 'NOT met'}")
    if label != "measured":
        print(f"  measured lower bound: naive at T={lower['tokens']} alone already takes "
              f"{lower['peak'] / ch['peak']:.1f}x the chunked peak at T={T}")
    print(f"  time naive/chunked: {naive_time / ch['total_s']:.2f}x ({label} naive; chunked recomputes each "
          "chunk's logits in the backward)")
    print()
    print(f"Agreement, chunked (chunks of {args.check_chunk_tokens}) vs naive at T={t_a}, same inputs, float32:")
    for name, d in na["check"].items():
        print(f"  {name:<8} max abs diff {d['max_abs_diff']:.3e}   (max abs value {d['max_abs']:.3e})")


if __name__ == "__main__":
    from justrl_min.host_memory import ask_for_huge_pages

    ask_for_huge_pages()  # as the entry points do: before torch's first large allocation
    main()
