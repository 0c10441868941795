"""The report's learning-curve PNGs: one per preset, one line per group (mean over runs) with a +- std band."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Optional

from covr_ray.io import atomic_write_bytes
from covr_ray.report.runs import RunRecord
from covr_ray.report.summary import align_curves


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "preset"


def save_png(fig, path: Path) -> Path:
    """Lay out ``fig`` and write it as a PNG at ``path`` atomically; returns ``path``."""
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())
    return path


def plot_curves(runs: list[RunRecord], out_dir: Path, group_by: Optional[str],
                fields_by_preset: Optional[dict[str, list[str]]] = None) -> list[Path]:
    """One PNG per preset: mean +- std band over runs of ``eval/return_mean`` vs env steps, one line per group
    (labelled by group, the title naming the fields that define the groups)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    paths = []
    for preset in sorted({r.preset for r in runs}):
        fig = Figure(figsize=(6.0, 4.0), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        drawn = False
        for group in sorted({r.group for r in runs if r.preset == preset}):
            members = [r for r in runs if r.preset == preset and r.group == group]
            steps, mean, std, _count = align_curves([r.curve for r in members])
            if steps.size == 0:
                continue
            name = f"{group_by}={group}" if group_by else (group or "all runs")
            label = f"{name} (n={len(members)})"
            line, = ax.plot(steps, mean, marker="o" if steps.size < 3 else None, label=label)
            ax.fill_between(steps, mean - std, mean + std, alpha=0.2, color=line.get_color())
            drawn = True
        if not drawn:
            continue
        fields = [group_by] if group_by else (fields_by_preset or {}).get(preset, [])
        ax.set_title(preset + (f"\ngroups by {', '.join(fields)}" if fields else ""), fontsize=9)
        ax.set_xlabel("env steps")
        ax.set_ylabel("eval episode return")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize=8)
        paths.append(save_png(fig, out_dir / "curves" / f"{safe_name(preset)}.png"))
    return paths
