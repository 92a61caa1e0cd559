"""``rws demo``: runs :func:`rws.demo.run_demo` and renders its before/after table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from rws.cli.console import err, out
from rws.cli.options import SeedOpt, choice
from rws.demo import DemoConfig, DemoResult, run_demo
from rws.robustness.corruptions import list_corruptions


def _render(res: DemoResult, folder: Path) -> None:
    rep = res.report
    names = list(rep.base.corruptions)
    t = Table("variant", "clean", *[f"{c} (mean sev.)" for c in names], title="accuracy")
    for v in rep.variants:
        cells = [f"{100 * v.clean:5.1f}"]
        for c in names:
            acc = sum(v.corruptions[c].values()) / len(v.corruptions[c])
            cells.append(f"{100 * acc:5.1f}")
        t.add_row(v.name, *cells)
    out.print(t)
    for k, size in res.sizes.items():
        out.print(
            f"signature {res.signatures[k]}: {size / 1024:.1f} KiB, "
            f"{res.model_bytes / size:.1f}× smaller than the fp32 model ({res.model_bytes / 1024:.1f} KiB)"
        )
    out.print(
        f"wrote {folder / 'report.json'}, {folder / 'report.csv'}, {folder / 'report.png'}, "
        f"{folder / 'signatures-similarity.png'}"
    )
    if res.cached:
        err.print(f"reused from an earlier run: {', '.join(res.cached)}")


def demo_command(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for every output.")] = Path(
        "rws-demo"
    ),
    corruptions: Annotated[
        str,
        choice(
            help="Comma-separated corruptions, one robust model each.",
            kind="corruption",
            names=list_corruptions(),
            listed=True,
            metavar="<NAME,…>",
        ),
    ] = ",".join(DemoConfig.corruptions),
    epochs: Annotated[
        int, typer.Option(help="Fine-tuning epochs per model (the origin trains 1.5× as long).")
    ] = DemoConfig.finetune_epochs,
    seed: SeedOpt = 0,
) -> None:
    """Robust Weight Signatures end to end on the built-in digits data, nothing downloaded.

    A few minutes on 2 CPU cores; a second run reuses every trained checkpoint.

    Trains an origin, a clean model and one robust model per corruption; extracts each corruption's
    signature (fp32 and int8); evaluates the clean model with every robust model, signature,
    scaled signature and the composition of all signatures on the same corrupted inputs.

    Example: rws demo --out rws-demo --corruptions fog,contrast --epochs 2
    """
    cfg = DemoConfig(
        corruptions=tuple(c.strip() for c in corruptions.split(",") if c.strip()),
        finetune_epochs=epochs,
        origin_epochs=max(1, round(1.5 * epochs)),
        seed=seed,
    )
    _render(run_demo(out_dir, cfg, progress=True), out_dir)
