"""``rws demo``: runs :func:`rws.demo.run_demo` and renders its before/after table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from rws.cli.console import err, out
from rws.cli.options import SeedOpt, choice
from rws.demo import ARCHS, DemoConfig, DemoResult, run_demo
from rws.robustness.corruptions import list_corruptions


def _span(sevs: list[int]) -> str:
    """``[1, 2, 3]`` → ``"1–3"``; ``[1, 3, 5]`` → ``"1, 3, 5"``."""
    if sevs == list(range(sevs[0], sevs[-1] + 1)):
        return f"{sevs[0]}–{sevs[-1]}"
    return ", ".join(map(str, sevs))


def _render(res: DemoResult, folder: Path) -> None:
    rep = res.report
    names = list(rep.base.corruptions)
    sevs = sorted({int(s) for c in names for s in rep.base.corruptions[c]})
    what = f"severity {sevs[0]}" if len(sevs) == 1 else f"mean over severities {_span(sevs)}"
    t = Table(title=f"accuracy (%): clean, and each corruption's {what}")
    t.add_column("variant", overflow="fold")
    for name in ("clean", *names):
        t.add_column(name, justify="right", overflow="fold")
    for v in rep.variants:
        cells = [f"{100 * v.clean:5.1f}"]
        for c in names:
            acc = sum(v.corruptions[c].values()) / len(v.corruptions[c])
            cells.append(f"{100 * acc:5.1f}")
        t.add_row(v.name, *cells)
    out.print(t)
    for k, p in res.operating_points.items():
        op = p.provenance["operating_point"]
        pts = {q["alpha"]: q for q in op["curve"]["points"]}
        a, b = pts[0.0], pts[p.scale]
        verdict = "" if op["budget_met"] else " (no α > 0 met the budget: unpatched)"
        out.print(
            f"{k}: operating point α = {p.scale:g}{verdict}; on {op['data']['n_examples']} "
            f"validation digits clean {100 * a['clean']:.1f} → {100 * b['clean']:.1f}, "
            f"{k} {100 * a['corrupted']:.1f} → {100 * b['corrupted']:.1f}",
            markup=False,
            soft_wrap=True,
        )
    if res.composition is not None:
        search = res.composition.provenance["composition_search"]
        coeffs = ", ".join(
            f"{k} {c:g}" for k, c in zip(res.operating_points, search["coefficients"], strict=True)
        )
        ch, un = search["chosen"], search["uniform"]
        out.print(
            f"searched composition: {coeffs}; on validation clean {100 * ch['clean']:.1f}, mean "
            f"corrupted {100 * ch['corrupted']:.1f} (uniform 1/|K|: clean {100 * un['clean']:.1f}, "
            f"corrupted {100 * un['corrupted']:.1f})",
            markup=False,
            soft_wrap=True,
        )
    for k, size in res.sizes.items():
        out.print(
            f"signature {res.signatures[k]}: {size / 1024:.1f} KiB, "
            f"{res.model_bytes / size:.1f}× smaller than the fp32 model ({res.model_bytes / 1024:.1f} KiB)",
            markup=False,
            soft_wrap=True,
        )
    out.print(
        f"wrote {folder / 'report.json'}, {folder / 'report.csv'}, {folder / 'report.png'}, "
        f"{folder / 'summary.png'} (clean vs corrupted accuracy, α curves), "
        f"{folder / 'signatures-similarity.png'}",
        markup=False,
        soft_wrap=True,
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
            "--corruptions",
            "--corruption",
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
    arch: Annotated[
        str,
        choice(
            help="Built-in model: resnet20 (the default: the signature patches its stem and first "
            "stage, 5 % of the parameters) or small-cnn (4 layers, faster).",
            kind="demo model",
            names=ARCHS,
        ),
    ] = DemoConfig.arch,
    search: Annotated[
        bool,
        typer.Option(
            "--search/--no-search",
            help="Choose each signature's α and the composition's coefficients on the validation "
            "split under a 1-point clean budget (about a minute on 2 cores).",
        ),
    ] = True,
    seed: SeedOpt = 0,
) -> None:
    """Robust Weight Signatures end to end on the built-in digits data, nothing downloaded.

    3–4 minutes on 2 CPU cores (ResNet-20); a second run reuses every trained checkpoint.

    Trains an origin, a clean model and one robust model per corruption; extracts each corruption's
    signature (fp32 and int8); chooses each signature's α and the composition's coefficients on
    the validation split; evaluates the clean model with every robust model, signature, scaled
    signature and composition on the same corrupted test inputs.

    Example: rws demo --out rws-demo --arch small-cnn --corruptions fog,contrast --epochs 2
    """
    cfg = DemoConfig(
        arch=arch,
        corruptions=tuple(c.strip() for c in corruptions.split(",") if c.strip()),
        finetune_epochs=epochs,
        origin_epochs=max(1, round(1.5 * epochs)),
        seed=seed,
        search=search,
    )
    _render(run_demo(out_dir, cfg, progress=True), out_dir)
