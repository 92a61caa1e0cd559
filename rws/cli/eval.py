"""``rws eval``: parse the options, call :func:`rws.robustness.evaluate.evaluate`, render the report.

Registered by ``rws/cli.py`` as ``app.command("eval")(eval_command)``; errors reach its one error
boundary (``RwsError`` → ``error: …`` and the class's exit code).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rws.errors import UsageError

DataOpt = Annotated[
    str,
    typer.Option(
        help="digits, cifar10:DIR, cifar100:DIR, folder:DIR or cifar10c:DIR (released -C arrays)."
    ),
]
DeviceOpt = Annotated[str, typer.Option(help="cpu, cuda[:n] or auto.")]


def parse_severities(text: str) -> list[int]:
    """``"1-5"`` → ``[1, 2, 3, 4, 5]``; ``"1,3,5"`` → ``[1, 3, 5]``; mixed ``"1-2,5"`` works too.

    Raises:
        UsageError: not integers and ranges, or a severity outside 1–5.
    """
    out: list[int] = []
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        try:
            first, last = int(lo), int(hi if sep else lo)
        except ValueError:
            raise UsageError(
                f"--severities {text!r}: use a range like 1-5 or a list like 1,3,5"
            ) from None
        if not (1 <= first <= 5 and 1 <= last <= 5) or first > last:
            raise UsageError(f"--severities {text!r}: severities run from 1 to 5")
        out += [s for s in range(first, last + 1) if s not in out]
    return out


def parse_corruptions(text: str) -> list[str] | str | None:
    """``"all"`` → ``"all"``, ``"none"`` → None, ``"fog,snow"`` → ``["fog", "snow"]``."""
    text = text.strip()
    if text in ("all", "none"):
        return None if text == "none" else "all"
    return [c.strip() for c in text.split(",") if c.strip()]


def eval_command(
    arch: Annotated[str, typer.Option(help="Registered model, module.path:factory or timm:NAME.")],
    weights: Annotated[str, typer.Option(help="Checkpoint of the unpatched model.")],
    patch: Annotated[
        list[str] | None, typer.Option(help="Patch file PATH[:α]; one variant each (repeatable).")
    ] = None,
    data: DataOpt = "digits",
    corruptions: Annotated[str, typer.Option(help="all, none or a list: fog,snow.")] = "all",
    severities: Annotated[str, typer.Option(help="Range 1-5 or list 1,3,5.")] = "1-5",
    attack: Annotated[str, typer.Option(help="pgd, apgd, pma, autoattack-lite or none.")] = "none",
    eps: Annotated[str, typer.Option(help="Attack radius, e.g. 8/255 or 0.03.")] = "8/255",
    steps: Annotated[
        int | None, typer.Option(help="Attack iterations (its default if unset).")
    ] = None,
    n_examples: Annotated[int | None, typer.Option(help="First N test examples.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 256,
    device: DeviceOpt = "auto",
    amp: Annotated[bool, typer.Option("--amp", help="Mixed precision forwards on CUDA.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of corruptions and attacks.")] = 0,
    baseline: Annotated[
        str | None, typer.Option(help="Baseline report.json for mCE, or 'alexnet'.")
    ] = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="Refuse (exit 7) when gradient masking is suspected.")
    ] = False,
    out: Annotated[Path | None, typer.Option("--out", help="JSON report (atomic).")] = None,
    csv: Annotated[
        Path | None, typer.Option("--csv", help="CSV, one row per variant × metric.")
    ] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="PNG heatmaps and bars.")] = None,
) -> None:
    """Evaluate a model before and after each patch on the same corrupted and attacked inputs.

    Example: rws eval --arch resnet20 --weights clean.pt --patch fog.rws.safetensors:0.8 --attack pgd

    Distributed: torchrun --nproc-per-node 4 -m rws eval … (rank 0 prints and writes).
    """
    import rws
    from rws.cli.app import err, parse_patch_arg
    from rws.cli.app import out as stdout
    from rws.data import resolve_data
    from rws.io.checkpoint import check_output_path
    from rws.models import load_model
    from rws.robustness import distributed
    from rws.robustness.attacks import parse_eps
    from rws.robustness.evaluate import evaluate

    sevs = parse_severities(severities)
    eps_value = parse_eps(eps)
    outputs = [p for p in (out, csv, plot) if p is not None]
    specs = [parse_patch_arg(p) for p in patch or []]
    for o in outputs:
        check_output_path(o, [weights, *(p for p, _ in specs)])
    started = distributed.init_from_env(device)
    try:
        dataset, source = resolve_data(data)
        model = load_model(arch, weights, dataset.num_classes)
        patches = [rws.load(p) if a is None else (rws.load(p), a) for p, a in specs]
        report = evaluate(
            model, dataset, corruptions=parse_corruptions(corruptions), severities=sevs,
            attack=None if attack == "none" else attack, eps=eps_value, steps=steps,
            patches=patches, n_examples=n_examples, batch_size=batch_size, device=device, amp=amp,
            seed=seed, baseline=baseline, corruption_source=source, strict=strict, progress=True,
        )  # fmt: skip
        main = distributed.is_main()
    finally:
        if started:
            import torch.distributed

            torch.distributed.destroy_process_group()
    if not main:
        return
    for w in report.settings["warnings"]:
        err.print(f"warning: {w}", markup=False, soft_wrap=True)
    stdout.print(report.table())
    s = report.settings
    stdout.print(
        f"{s['n_examples']} examples of {s['data']}, seed {s['seed']}, {s['device']}, "
        f"inputs sha256 {s['inputs_sha256'][:12]}…, {s['timing']['elapsed_s']:.1f} s",
        markup=False,
    )
    for path, save in ((out, report.save_json), (csv, report.save_csv), (plot, report.save_plots)):
        if path is not None:
            save(path)
            stdout.print(f"wrote {path}", markup=False)
