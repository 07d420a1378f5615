"""Peak memory of one forward + backward of a distillation divergence over a large vocabulary, four ways:

* naive:   full student logits ``h_s @ W_s.T`` (teacher logits likewise, under no_grad), then the dense
           ``hf_distill.losses`` function (``kl_div`` for ``--divergence kl``);
* chunked: the same full logits, then ``hf_distill.chunked_losses.chunked_divergence``;
* fused:   ``hf_distill.chunked_losses.fused_linear_divergence`` on the hidden states and LM-head weights;
* fused_teacher_logits: ``fused_linear_divergence_ce`` (CE weight 0) on the student's hidden states and head and the
           teacher's full logits, as the trainer's ``fused: true`` runs it with a live teacher.

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/chunked_memory.py [--vocab 32000 128000] [--tokens 1024]
        [--hidden 512] [--chunk-size 128] [--divergence kl]

Every (variant, vocabulary) runs in a fresh subprocess. On CPU the peak is the peak resident set size
(``ru_maxrss``) after the loss and its backward minus the resident set size right after building (and touching)
the inputs; on CUDA it is ``max_memory_allocated`` minus the memory allocated for the inputs. Both include the
weight and hidden-state gradients, which every variant produces. The script checks that the losses agree to
1e-5 and prints their gradient norms. A benchmark, not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import subprocess
import sys
import time

import torch

from hf_distill import losses
from hf_distill.chunked_losses import chunked_divergence, fused_linear_divergence, fused_linear_divergence_ce

VARIANTS = ("naive", "chunked", "fused", "fused_teacher_logits")
BETA = 0.5  # the JSD mixture weight, when --divergence jsd


def current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_rss_mib() -> float:
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def make_inputs(tokens: int, hidden: int, vocab: int, device: str, seed: int = 0):
    """Student and teacher hidden states and LM heads; logits come out with a standard deviation of about 2."""
    g = torch.Generator().manual_seed(seed)
    student_hidden = torch.randn(tokens, hidden, generator=g).to(device)
    teacher_hidden = torch.randn(tokens, hidden, generator=g).to(device)
    student_weight = torch.randn(vocab, hidden, generator=g).mul_(2 / math.sqrt(hidden)).to(device)
    teacher_weight = torch.randn(vocab, hidden, generator=g).mul_(2 / math.sqrt(hidden)).to(device)
    student_hidden.requires_grad_(True)
    student_weight.requires_grad_(True)
    return student_hidden, student_weight, teacher_hidden, teacher_weight


def dense(divergence: str, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    if divergence == "kl":
        return losses.kl_div(student_logits, teacher_logits)
    if divergence == "reverse_kl":
        return losses.reverse_kl(student_logits, teacher_logits)
    return losses.jsd(student_logits, teacher_logits, beta=BETA)


def step(variant: str, inputs, divergence: str, chunk_size: int) -> torch.Tensor:
    """One loss + backward; returns the loss."""
    student_hidden, student_weight, teacher_hidden, teacher_weight = inputs
    if variant == "fused":
        loss = fused_linear_divergence(student_hidden, student_weight, teacher_hidden, teacher_weight, divergence,
                                       beta=BETA, chunk_size=chunk_size)
    elif variant == "fused_teacher_logits":  # what the trainer's `fused: true` runs: the live teacher's logits exist
        with torch.no_grad():
            teacher_logits = teacher_hidden @ teacher_weight.T
        no_labels = torch.full(teacher_logits.shape[:-1], -100, dtype=torch.long, device=teacher_logits.device)
        loss = fused_linear_divergence_ce(student_hidden, student_weight, teacher_logits, no_labels, divergence,
                                          beta=BETA, ce_weight=0.0, chunk_size=chunk_size).total
    else:
        student_logits = student_hidden @ student_weight.T
        with torch.no_grad():
            teacher_logits = teacher_hidden @ teacher_weight.T
        if variant == "naive":
            loss = dense(divergence, student_logits, teacher_logits)
        else:
            loss = chunked_divergence(student_logits, teacher_logits, divergence, beta=BETA, chunk_size=chunk_size)
    loss.backward()
    return loss.detach()


def worker(args: argparse.Namespace) -> None:
    """Measure one variant at one vocabulary size in this (fresh) process; print one JSON line."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # Warm-up on tiny inputs: thread pools, kernels and allocator bookkeeping are not what we measure.
    step(args.worker, make_inputs(8, 16, 64, device), args.divergence, 4)
    inputs = make_inputs(args.tokens, args.hidden, args.vocab[0], device)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = current_rss_mib()
    start = time.perf_counter()
    loss = step(args.worker, inputs, args.divergence, args.chunk_size)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if device == "cuda" else peak_rss_mib() - base
    student_hidden, student_weight = inputs[:2]
    print(json.dumps({
        "peak_mib": peak, "seconds": seconds, "loss": loss.item(),
        "grad_hidden_norm": student_hidden.grad.double().norm().item(),
        "grad_weight_norm": student_weight.grad.double().norm().item(),
    }))


def run_worker(args: argparse.Namespace, variant: str, vocab: int) -> dict:
    command = [sys.executable, __file__, "--worker", variant, "--vocab", str(vocab), "--tokens", str(args.tokens),
               "--hidden", str(args.hidden), "--chunk-size", str(args.chunk_size), "--divergence", args.divergence]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"worker {variant} V={vocab} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, nargs="+", default=[32000, 128000])
    parser.add_argument("--tokens", type=int, default=1024, help="N, the counted positions (batch × length)")
    parser.add_argument("--hidden", type=int, default=512, help="hidden size of both models")
    parser.add_argument("--chunk-size", type=int, default=128, help="rows per chunk (chunked and fused)")
    parser.add_argument("--divergence", choices=["kl", "reverse_kl", "jsd"], default="kl")
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    print("command:", " ".join([sys.executable, *sys.argv]))
    cuda = torch.cuda.is_available()
    print(f"machine: {platform.machine()} {platform.processor()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, cuda={cuda}"
          + (f" ({torch.cuda.get_device_name()})" if cuda else ""))
    measure = "CUDA max_memory_allocated" if cuda else "peak RSS (ru_maxrss)"
    print(f"N = {args.tokens} tokens, hidden {args.hidden}, chunk size {args.chunk_size}, divergence "
          f"{args.divergence}, float32; memory = {measure} minus the inputs, each variant in a fresh process")
    print("one float32 [N, V] tensor: " + ", ".join(f"{args.tokens * v * 4 / 2**20:.0f} MiB at V={v}"
                                                     for v in args.vocab))
    print()
    print(f"{'V':>8} {'variant':<21}{'peak MiB':>10}{'time s':>9}{'vs naive':>10}{'loss':>14}"
          f"{'|grad h|':>13}{'|grad W|':>13}")
    agree = True
    for vocab in args.vocab:
        results = {variant: run_worker(args, variant, vocab) for variant in VARIANTS}
        naive = results["naive"]
        for variant, r in results.items():
            print(f"{vocab:>8} {variant:<21}{r['peak_mib']:>10.0f}{r['seconds']:>9.2f}"
                  f"{r['peak_mib'] / naive['peak_mib']:>9.2f}x{r['loss']:>14.7f}"
                  f"{r['grad_hidden_norm']:>13.6g}{r['grad_weight_norm']:>13.6g}")
        others = VARIANTS[1:]
        diffs = {v: abs(results[v]["loss"] - naive["loss"]) for v in others}
        grads = {v: max(abs(results[v][k] / naive[k] - 1) for k in ("grad_hidden_norm", "grad_weight_norm"))
                 for v in others}
        ok = all(d <= 1e-5 for d in diffs.values())
        agree &= ok
        print(f"{'':>8} ratios: chunked/naive {results['chunked']['peak_mib'] / naive['peak_mib']:.2f}x, "
              f"fused/naive {results['fused']['peak_mib'] / naive['peak_mib']:.2f}x, fused_teacher_logits/naive "
              f"{results['fused_teacher_logits']['peak_mib'] / naive['peak_mib']:.2f}x; |loss - naive|: "
              + ", ".join(f"{v} {diffs[v]:.1e}" for v in others)
              + f" ({'agree to 1e-5' if ok else 'DISAGREE beyond 1e-5'}); gradient norms within "
              + ", ".join(f"{grads[v]:.1e} ({v})" for v in others) + " relative")
    print()
    print("losses agree to 1e-5" if agree else "LOSSES DISAGREE beyond 1e-5")


if __name__ == "__main__":
    main()
