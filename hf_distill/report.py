"""The teacher-vs-student report: parameters, size, latency measured on this machine, task metric, ratios."""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["TeacherEnsemble", "forward_times", "measure_latency", "model_size_mb", "build_report", "format_report",
           "write_report"]

# The task metric the report shows, from `trainer.evaluate()`: (student key, teacher key, higher is better).
_TASK_METRICS = {
    "classification": ("eval_accuracy", "eval_teacher_accuracy", True),
    "vision": ("eval_accuracy", "eval_teacher_accuracy", True),
    "language": ("eval_perplexity", "eval_teacher_perplexity", False),
    # student queries against the teacher's index vs the teacher alone
    "embedding": ("eval_ndcg@10_aligned", "eval_ndcg@10_teacher", True),
    "ranking": ("eval_mrr@10", "eval_teacher_mrr@10", True),
}


class TeacherEnsemble(nn.Module):
    """Several teachers as one model for the report: its parameters and size are their sums, and a forward pass runs
    every teacher in turn on the same inputs (what the ensemble costs per batch)."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, **inputs: Any) -> list[Any]:
        return [member(**inputs) for member in self.members]


def _numel(tensor: torch.Tensor) -> int:
    return getattr(tensor, "ds_numel", tensor.numel())  # a ZeRO-3 partition's placeholder: the whole tensor's


def count_parameters(model: nn.Module) -> int:
    return sum(_numel(p) for p in {id(p): p for p in model.parameters()}.values())


def model_size_mb(model: nn.Module) -> float:
    """Size of the weights as saved (unique tensors, parameters and persistent buffers), in MB (10⁶ bytes); a
    ZeRO-3-partitioned model counts its whole parameters."""
    tensors = {id(t) if hasattr(t, "ds_id") else t.data_ptr(): t
               for t in model.state_dict(keep_vars=True).values() if _numel(t)}
    return sum(_numel(t) * t.element_size() for t in tensors.values()) / 1e6


def forward_times(
    models: list[nn.Module], inputs: list[dict[str, torch.Tensor]], repeats: int = 5, warmup: int = 1
) -> list[list[float]]:
    """Seconds of each of ``repeats`` forward passes of every model on its inputs (``inputs[i]`` for
    ``models[i]``), in eval mode under `torch.inference_mode`, after ``warmup`` untimed passes each.

    The models are timed in turns (model 0, model 1, ..., model 0, ...) so that a change in machine load affects
    all of them alike; CUDA work is synchronised before and after each timed pass. Train/eval modes are restored.
    """
    modes = [m.training for m in models]
    placed = []
    for model, model_inputs in zip(models, inputs, strict=True):
        model.eval()
        device = next(model.parameters()).device
        placed.append((device, {k: v.to(device) for k, v in model_inputs.items()}))
    times: list[list[float]] = [[] for _ in models]
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                for model, (_, model_inputs) in zip(models, placed, strict=True):
                    model(**model_inputs)
            for _ in range(repeats):
                for i, model in enumerate(models):
                    device, model_inputs = placed[i]
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    start = time.perf_counter()
                    model(**model_inputs)
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    times[i].append(time.perf_counter() - start)
    finally:
        for model, mode in zip(models, modes, strict=True):
            model.train(mode)
    return times


def measure_latency(
    models: list[nn.Module], batch: dict[str, torch.Tensor] | list[dict[str, torch.Tensor]], repeats: int = 5
) -> list[float]:
    """Median seconds per forward pass on ``batch`` for each model, in eval mode, after one warm-up pass each.
    ``batch`` may be a list with one batch per model (models whose inputs differ, e.g. a bi- and a cross-encoder).

    The models are timed in turns (teacher, student, teacher, ...) so that a change in machine load affects
    all of them alike (`forward_times`).
    """
    batches = batch if isinstance(batch, list) else [batch] * len(models)
    return [statistics.median(t) for t in forward_times(models, batches, repeats=repeats)]


def _device_name(model: nn.Module) -> str:
    device = next(model.parameters()).device
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def build_report(
    task: str,
    teacher: nn.Module,
    student: nn.Module,
    metrics: dict[str, float],
    batch: dict[str, torch.Tensor] | list[dict[str, torch.Tensor]],
    teacher_name: str,
    student_dir: str,
) -> dict[str, Any]:
    """Measure both models side by side on the same batch and collect the evaluation metrics."""
    student_key, teacher_key, higher_better = _TASK_METRICS.get(task, (None, None, True))
    batch_size = int(next(iter((batch[-1] if isinstance(batch, list) else batch).values())).shape[0])
    latencies = measure_latency([teacher, student], batch)
    rows = {}
    for role, model, key, latency in (
        ("teacher", teacher, teacher_key, latencies[0]),
        ("student", student, student_key, latencies[1]),
    ):
        rows[role] = {
            "parameters": count_parameters(model),
            "size_mb": round(model_size_mb(model), 3),
            "latency_ms_per_batch": round(latency * 1000, 3),
            "metric": metrics.get(key) if key else None,
        }
    rows["teacher"]["model"] = teacher_name
    rows["student"]["model"] = student_dir
    metric_name = student_key.removeprefix("eval_") if student_key else None
    t_metric, s_metric = rows["teacher"]["metric"], rows["student"]["metric"]
    retention = None
    if t_metric and s_metric:
        retention = s_metric / t_metric if higher_better else t_metric / s_metric
    return {
        "task": task,
        "metric": metric_name,
        "metric_higher_is_better": higher_better,
        "device": _device_name(student),
        "latency_batch_size": batch_size,
        "teacher": rows["teacher"],
        "student": rows["student"],
        "ratios": {
            "compression": rows["teacher"]["parameters"] / rows["student"]["parameters"],
            "size": rows["teacher"]["size_mb"] / rows["student"]["size_mb"],
            "speedup": rows["teacher"]["latency_ms_per_batch"] / rows["student"]["latency_ms_per_batch"],
            "metric_retention": retention,
        },
        "eval": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
    }


def format_report(report: dict[str, Any]) -> str:
    """The summary table printed at the end of `hf-distill train`."""
    t, s, r = report["teacher"], report["student"], report["ratios"]
    metric = report["metric"] or "metric"

    def fmt(value: Any, spec: str) -> str:
        return "n/a" if value is None else format(value, spec)

    lines = [
        f"{'':<26}{'teacher':>14}{'student':>14}{'ratio':>10}",
        f"{'parameters':<26}{t['parameters']:>14,}{s['parameters']:>14,}{r['compression']:>9.2f}x",
        f"{'size (MB)':<26}{t['size_mb']:>14.1f}{s['size_mb']:>14.1f}{r['size']:>9.2f}x",
        f"{'latency / batch (ms)':<26}{t['latency_ms_per_batch']:>14.1f}{s['latency_ms_per_batch']:>14.1f}"
        f"{r['speedup']:>9.2f}x",
        f"{metric:<26}{fmt(t['metric'], '>14.4f'):>14}{fmt(s['metric'], '>14.4f'):>14}"
        f"{fmt(r['metric_retention'], '>9.3f'):>9}{'' if r['metric_retention'] is None else 'x'}",
        f"(latency: batch of {report['latency_batch_size']} on {report['device']}; metric ratio = student "
        f"relative to teacher, > 1 is better)",
    ]
    return "\n".join(lines)


def write_report(report: dict[str, Any], output_dir: str | Path) -> None:
    """``report.json`` and a bar-chart ``report.png`` in ``output_dir``."""
    output_dir = Path(output_dir)
    (output_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("parameters (M)", "parameters", 1e-6), ("size (MB)", "size_mb", 1.0),
              ("latency / batch (ms)", "latency_ms_per_batch", 1.0)]
    if report["teacher"]["metric"] is not None and report["student"]["metric"] is not None:
        panels.append((report["metric"], "metric", 1.0))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.2))
    for ax, (title, key, scale) in zip(axes, panels, strict=True):
        values = [report["teacher"][key] * scale, report["student"][key] * scale]
        bars = ax.bar(["teacher", "student"], values, color=["#7f7f7f", "#1f77b4"])
        ax.bar_label(bars, fmt="%.4g")
        ax.set_title(title)
        ax.margins(y=0.15)
    fig.suptitle(f"{report['task']}: teacher vs student ({report['device']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(output_dir / "report.png", dpi=100)
    plt.close(fig)
