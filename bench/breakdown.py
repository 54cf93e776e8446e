"""Where a training step's time goes: one profiled step, its operators' self times by category,
as a markdown table and a stacked-bar PNG (drawn with Pillow; matplotlib is not a dependency).

Categories come from operator names (torch.profiler, CPU, self time, so nothing is counted twice).
"python/dispatch" is the profiled step's wall time less every operator's self time: the Python
of the modules, autograd's engine and the per-op dispatch between kernels. The profiler adds a
few microseconds per operator, so a profiled step is slower than a timed one; the table gives
each category's share and milliseconds of the profiled step.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

# (category, operator-name fragments), first match wins; names are lower-cased. The native conv ops
# also run the dense models' thin convs (ebsparse.nn.thin_conv, every weight kept: ~1-2 ms a U-Net
# step), which therefore land in the "sparse" columns; the goal table counts all conv/linear work alike.
CATEGORIES = [
    ("sparse fwd", ("ebsparse::csr_conv2d", "ebsparse::csr_linear", "ebsparse::csr_mlp", "ebsparse::bsr_conv2d",
                    "ebsparse::bsr_linear")),
    ("sparse grad-input", ("csr_conv2d_grad_input", "csr_linear_grad_input")),
    # csr_linear_backward, the fused GELU layer's and MLP's backward and the block ops' backward make
    # both gradients in one call
    ("sparse grad-weight", ("csr_conv2d_grad_weight", "csr_linear_grad_weight", "csr_linear_backward",
                            "csr_linear_gelu_tanh_backward", "csr_mlp_gelu_tanh_backward", "bsr_conv2d_backward",
                            "bsr_linear_backward")),
    # the Python bodies of ebsparse's autograd Functions (`_EagerSparseConv2dBackward`, ...), which by
    # the rest of their names read as convolutions
    ("ebsparse python", ("_eager",)),
    ("dense conv/linear", ("convolution", "conv2d", "addmm", "aten::mm", "aten::linear", "aten::matmul")),
    ("groupnorm+silu", ("group_norm", "silu", "ebsparse::group_norm")),
    ("attention", ("bmm", "softmax", "attention")),
    ("optimizer", ("adam", "_foreach", "optimizer")),
    ("autograd engine", ("autograd::", "backward0", "backward1", "evaluate_function")),
    ("elementwise/other ops", ("",)),
]
PHASE_ORDER = [name for name, _ in CATEGORIES] + ["python/dispatch"]
# Profiler scopes (record_function names) whose operators belong to one category whatever their
# names: the dense path's 1x1 convolutions run as batched products (`bmm`), which are not attention.
SCOPES = {"ebsparse::pointwise_conv2d": "dense conv/linear"}
COLOURS = {"sparse fwd": (31, 119, 180), "sparse grad-input": (100, 160, 220), "sparse grad-weight": (174, 199, 232),
           "ebsparse python": (199, 199, 199), "dense conv/linear": (255, 127, 14), "groupnorm+silu": (44, 160, 44),
           "attention": (214, 39, 40), "optimizer": (148, 103, 189), "autograd engine": (140, 86, 75),
           "elementwise/other ops": (188, 189, 34), "python/dispatch": (127, 127, 127)}
# The categories a model's sparsity or pruning shrinks: its convolutions and linears.
KERNEL_CATEGORIES = ("sparse fwd", "sparse grad-input", "sparse grad-weight", "dense conv/linear")


def category(name: str) -> str:
    lowered = name.lower()
    if lowered.startswith(("ebsparse::csr_conv2d_grad", "ebsparse::csr_linear_", "ebsparse::csr_mlp",
                           "ebsparse::bsr_")):
        # the phase is in the suffix; checked before the forward's prefix
        for cat, fragments in CATEGORIES[1:3]:
            if any(f in lowered for f in fragments):
                return cat
    if lowered.startswith("autograd::"):  # the engine's own time around a node, e.g. "...: ConvolutionBackward0"
        return "autograd engine"
    for cat, fragments in CATEGORIES:
        if any(f in lowered for f in fragments):
            return cat
    return CATEGORIES[-1][0]


def _scope(event) -> str | None:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name in SCOPES:
            return SCOPES[parent.name]
        parent = parent.cpu_parent
    return None


def profile_step(step, warmup: int = 1) -> dict[str, float]:
    """Seconds per category of one profiled call of `step` (after `warmup` plain calls)."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(warmup):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        step()
        wall = time.perf_counter() - start
    seconds = dict.fromkeys(PHASE_ORDER, 0.0)
    for event in prof.events():
        seconds[_scope(event) or category(event.name)] += event.self_cpu_time_total / 1e6
    ops = sum(seconds.values())
    seconds["python/dispatch"] = max(wall - ops, 0.0)
    return seconds


def table(rows: dict[str, dict[str, float]], timed: dict[str, float] | None = None) -> str:
    """Markdown: one line per model, ms per category of its profiled step (share in brackets)."""
    cats = [c for c in PHASE_ORDER if any(r.get(c, 0) > 0 for r in rows.values())]
    head = "| model | " + (" timed ms (min) |" if timed else "") + " profiled ms | " + " | ".join(cats) + " |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, r in rows.items():
        total = sum(r.values())
        cells = [f"{1e3 * r.get(c, 0):.0f} ({100 * r.get(c, 0) / total:.0f}%)" for c in cats]
        timed_cell = f" {1e3 * timed[name]:.0f} |" if timed else ""
        lines.append(f"| {name} |{timed_cell} {1e3 * total:.0f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def goal_table(rows: dict[str, dict[str, float]], weight_fraction: dict[str, float], goals: dict[str, float],
               dense: str = "dense") -> str:
    """Markdown: what each model's speed-up goal asks of its convolutions and linears, from the
    profiled steps of `table` (so the rest of a step is what it is, profiler overhead included).

    A step is split into its conv/linear kernels (KERNEL_CATEGORIES, sparse or dense) and the rest.
    `weight_fraction` is each model's conv/linear weight FLOPs over the dense model's (FlopsReport's
    weight_ratio: the work its kernels do, without attention products and norms). "At dense's rate"
    is the time that work would take at the dense model's conv/linear rate; the step would then be
    the rest plus that time. The goal leaves the kernels its step (dense's / goal) less the rest; the
    last column is the rate that asks for, as a share of dense's. Above 100% a goal needs kernels that
    beat dense's FLOP rate, or a smaller rest."""
    def kernel(r):
        return sum(r.get(c, 0.0) for c in KERNEL_CATEGORIES)

    dense_kernel, dense_step = kernel(rows[dense]), sum(rows[dense].values())
    lines = ["| model | goal | weight FLOPs of dense's | conv/linear ms | rest ms | conv/linear at dense's rate, ms | "
             "speed-up at dense's rate | conv/linear rate now, % of dense's | rate the goal needs, % of dense's |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, goal in goals.items():
        r = rows[name]
        k = kernel(r)
        rest = sum(r.values()) - k
        ideal = dense_kernel * weight_fraction[name]
        budget = dense_step / goal - rest
        needs = f"{100 * ideal / budget:.0f}%" if budget > 0 else "beyond reach: the rest alone is slower"
        lines.append(f"| {name} | {goal:.1f}x | {100 * weight_fraction[name]:.1f}% | {1e3 * k:.0f} | "
                     f"{1e3 * rest:.0f} | {1e3 * ideal:.0f} | {dense_step / (rest + ideal):.2f}x | "
                     f"{100 * ideal / k:.0f}% | {needs} |")
    return "\n".join(lines)


def stacked_bars(rows: dict[str, dict[str, float]], path: str | Path, title: str = "") -> Path:
    """A horizontal stacked bar per model (ms of its profiled step by category), with a legend."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    cats = [c for c in PHASE_ORDER if any(r.get(c, 0) > 0 for r in rows.values())]
    longest = max((sum(r.values()) for r in rows.values()), default=1.0) or 1.0
    left, bar_h, gap, plot_w, top = 150, 22, 10, 640, 30
    legend_top = top + len(rows) * (bar_h + gap) + 30
    height = legend_top + 18 * ((len(cats) + 2) // 3) + 10
    img = Image.new("RGB", (left + plot_w + 90, height), "white")
    draw = ImageDraw.Draw(img)
    if title:
        draw.text((10, 8), title, fill="black", font=font)
    scale = plot_w / longest
    for i, (name, r) in enumerate(rows.items()):
        y = top + i * (bar_h + gap)
        draw.text((10, y + 6), name, fill="black", font=font)
        x = left
        for c in cats:
            w = r.get(c, 0) * scale
            if w > 0:
                draw.rectangle([x, y, x + w, y + bar_h], fill=COLOURS[c])
            x += w
        draw.text((x + 6, y + 6), f"{1e3 * sum(r.values()):.0f} ms", fill="black", font=font)
    axis_y = top + len(rows) * (bar_h + gap)
    draw.line([left, axis_y, left + plot_w, axis_y], fill="black")
    for k in range(5):
        x = left + k * plot_w / 4
        draw.text((x - 10, axis_y + 4), f"{1e3 * longest * k / 4:.0f}", fill="black", font=font)
    for k, c in enumerate(cats):
        x, y = 10 + (k % 3) * 260, legend_top + (k // 3) * 18
        draw.rectangle([x, y, x + 12, y + 12], fill=COLOURS[c])
        draw.text((x + 18, y), c, fill="black", font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path
