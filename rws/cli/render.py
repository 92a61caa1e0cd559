"""Rich tables and one-line summaries shared by the commands (rendering only, no computation)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.table import Column, Table
from rich.text import Text

from rws.cli.console import safe_text


def size(n: float | None) -> str:
    """``1536`` → ``"1.5 KiB"``; None → ``"n/a"``."""
    if n is None:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _ratio(x: float | None) -> str:
    return f"{x:.1f}×" if x else "n/a"


def patch_summary(desc: Mapping[str, Any]) -> str:
    """One line on a described patch: tensors, size and compression."""
    fixed = desc.get("tensors_fixed") or 0
    fixed_note = f"{fixed} fixed: replaced at full weight whatever α; " if fixed else ""
    return (
        f"{desc['tensors_stored']} tensors stored ({fixed_note}{desc['tensors_skipped_zero']} "
        f"zero deltas skipped), {size(desc['file_bytes'] or desc['stored_bytes'])}: "
        f"{_ratio(desc['ratio_vs_model_fp32'])} smaller than the full fp32 model, "
        f"{_ratio(desc['ratio_vs_touched_fp32'])} smaller than its tensors in fp32"
    )


def _name(header: str) -> Column:
    """A table's name column: folded onto more lines where it must, never cut with "…"."""
    return Column(header, overflow="fold")


def _shape(shape: Sequence[int]) -> str:
    return "×".join(map(str, shape))


def print_patch(console: Console, d: Mapping[str, Any]) -> None:
    """``rws inspect`` of a patch: header, summary, per-tensor table, provenance, labels."""
    head = f" {d['path']}  kind={d['kind']} scale={d['scale']:g} name={d['name']!r}"
    console.print(Text.assemble(("patch", "bold"), safe_text(head)))
    console.print(patch_summary(d), markup=False)
    t = Table(_name("tensor"), "shape", "codec", "bytes", "rel. error", "‖δ‖/‖w‖")
    for r in d["tensors"]:
        rel, error = r["relative_delta"], r["rel_error"]
        t.add_row(
            r["name"] + (" (fixed)" if r.get("fixed") else ""), _shape(r["shape"]), r["codec"],
            size(r["bytes"]),
            f"{error:.4f}" if error is not None else "", f"{rel:.4f}" if rel is not None else "",
        )  # fmt: skip
    console.print(t)
    prov = {k: v for k, v in d["provenance"].items() if k != "selection"}
    console.print("provenance: " + json.dumps(prov), markup=False, soft_wrap=True)
    if d["tags"] or d["description"]:
        console.print(f"tags: {d['tags']}  description: {d['description']}", markup=False)


MAX_ROWS = 1000  # tensors shown in a checkpoint's table


def print_checkpoint(console: Console, d: Mapping[str, Any]) -> None:
    """``rws inspect`` of a checkpoint: header, tensor table, applied stack."""
    head = (
        f" {d['path']}: {d['tensors_total']} tensors, {d['numel']:,} elements, "
        f"{size(d['file_bytes'])}"
    )
    console.print(Text.assemble(("checkpoint", "bold"), safe_text(head)))
    if d.get("unwrapped"):
        console.print(Text.assemble("weights reached by taking off: ",
                                    safe_text(", ".join(d["unwrapped"]))))  # fmt: skip
    t = Table(_name("tensor"), "shape", "dtype")
    for r in d["tensors"][:MAX_ROWS]:  # a crafted header may list 200,000 (empty) tensors
        t.add_row(r["name"], _shape(r["shape"]), r["dtype"])
    console.print(t)
    if len(d["tensors"]) > MAX_ROWS:
        console.print(f"… {len(d['tensors']) - MAX_ROWS:,} more tensors (--json lists them all)")
    if not d["applied"]:
        console.print("applied stack: empty")
        return
    console.print("applied stack (oldest first):")
    for e in d["applied"]:
        console.print(
            f"  {e.get('name')}  scale={e.get('scale')}  sha256={str(e.get('sha256'))[:12]}"
        )


def layer_table(rows: Sequence[Mapping[str, Any]]) -> Table:
    """``rws diff``: one row per layer, in depth order; weights and running statistics apart
    (``–``: a layer without running statistics)."""
    t = Table("#", _name("layer"), "tensors", "weights ‖δ‖", "weights ‖w‖", "weights ‖δ‖/‖w‖",
              "run. stats ‖δ‖", "run. stats ‖δ‖/‖w‖")  # fmt: skip
    for i, r in enumerate(rows):
        w, s = r["weights"], r["running_stats"]
        has = s["base_l2"] > 0
        t.add_row(
            str(i), r["layer"], str(r["tensors"]), f"{w['delta_l2']:.4g}", f"{w['base_l2']:.4g}",
            f"{w['relative']:.4g}", f"{s['delta_l2']:.4g}" if has else "–",
            f"{s['relative']:.4g}" if has else "–",
        )  # fmt: skip
    return t


def alpha_table(curve: Any) -> Table:
    """An α curve (:class:`rws.recipes.alpha.AlphaCurve`), the chosen row in bold."""

    def pct(v: float) -> str:
        return "–" if math.isnan(v) else f"{100 * v:.2f}"

    t = Table("α", "clean", "corrupted", "robust (PGD)")
    for p in curve.points:
        t.add_row(f"{p.alpha:g}", pct(p.clean), pct(p.corrupted), pct(p.robust),
                  style="bold" if p.alpha == curve.chosen.alpha else None)  # fmt: skip
    return t


def composition_table(res: dict[str, Any], labels: list[str]) -> Table:
    """A composition search (``provenance["composition_search"]``): the chosen coefficients
    (bold) against nothing, the uniform 1/|K| and each patch alone."""
    t = Table(_name("composition"), *labels, "clean", "corrupted (mean)")
    rows = [("none", res["base"]), ("uniform 1/|K|", res["uniform"])]
    rows += [(f"{labels[k]} alone", p) for k, p in enumerate(res["singles"])]
    rows.append(("searched", res["chosen"]))
    for name, p in rows:
        t.add_row(name, *(f"{c:g}" for c in p["coefficients"]), f"{100 * p['clean']:.2f}",
                  f"{100 * p['corrupted']:.2f}", style="bold" if name == "searched" else None)  # fmt: skip
    return t


def mrc_table(res: Any) -> Table:
    """Module robust criticality (:class:`rws.recipes.criticality.MrcResult`), least critical in bold."""
    least = res.least_critical.module
    t = Table(_name("module"), "‖W‖", "MRC", "adv. loss", "robust acc", "drop (pt)")
    for m in res.modules:
        t.add_row(m.module, f"{m.weight_l2:.3g}", f"{m.mrc:.4f}", f"{m.loss:.4f}",
                  f"{m.robust_acc:.4f}", f"{100 * m.robust_drop:.2f}",
                  style="bold" if m.module == least else None)  # fmt: skip
    return t


class EpochRows:
    """A training run's epochs printed one row each as they finish (``on_epoch`` of
    :func:`rws.training.loop.finetune`), under a header printed before the first; columns of
    fixed widths, so the rows line up in a terminal, a pipe and a log alike."""

    def __init__(self, console: Console, config: Any) -> None:
        self.console = console
        extra = "val acc (PGD)" if config.attack else "val acc (corrupted)"
        self.corrupted = bool(config.corruptions or config.attack)
        heads = ["epoch", "lr", "train loss", "train acc", "val acc (clean)",
                 *([extra] if self.corrupted else []), "time (s)"]  # fmt: skip
        self.widths = [max(len(h), 7) for h in heads]
        self.header = "  ".join(h.rjust(w) for h, w in zip(heads, self.widths, strict=True))
        self.printed = 0

    def __call__(self, h: Any) -> None:
        """Print the row of one finished epoch (:class:`rws.training.config.EpochStats`)."""
        if not self.printed:
            self.console.print(self.header, style="bold")
        cells = [str(h.epoch), f"{h.lr:.3g}", f"{h.train_loss:.4f}", f"{h.train_acc:.4f}",
                 f"{h.val_clean_acc:.4f}", *([f"{h.val_acc:.4f}"] if self.corrupted else []),
                 f"{h.seconds:.1f}"]  # fmt: skip
        self.console.print("  ".join(c.rjust(w) for c, w in zip(cells, self.widths, strict=True)))
        self.printed += 1
