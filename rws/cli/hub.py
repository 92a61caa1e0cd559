"""``rws push`` and ``rws pull``: patches to and from a Hugging Face Hub model repo."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rws.cli.console import out
from rws.hub.client import pull, push

EndpointOpt = Annotated[
    str | None,
    typer.Option(
        "--endpoint",
        help="Hub URL (default: $RWS_HF_ENDPOINT, else $HF_ENDPOINT, else https://huggingface.co).",
    ),
]


def push_command(
    patches: Annotated[list[str], typer.Argument(help="Patch files (local or hf://).")],
    repo: Annotated[str, typer.Option("--repo", help="Model repo ORG/NAME (created if needed).")],
    private: Annotated[
        bool, typer.Option("--private", help="Create the repo private (new repos only).")
    ] = False,
    revision: Annotated[
        str | None, typer.Option("--revision", help="Branch to commit to (default main).")
    ] = None,
    message: Annotated[str | None, typer.Option("--message", "-m", help="Commit message.")] = None,
    report: Annotated[
        Path | None,
        typer.Option("--report", help="`rws eval --out` JSON: results for the model card."),
    ] = None,
    endpoint: EndpointOpt = None,
    create_pr: Annotated[
        bool, typer.Option("--create-pr", help="Open a pull request instead of committing.")
    ] = False,
    base_model: Annotated[
        str | None,
        typer.Option("--base-model", help="Hub repo ORG/NAME of the model the patches apply to."),
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            "--dataset",
            help="Hub dataset id of the evaluation data, ORG/NAME[:TASK] (model-index).",
        ),
    ] = None,
    license: Annotated[
        str | None, typer.Option("--license", help="Hub license id (apache-2.0, mit, other …).")
    ] = None,
    eval_results: Annotated[
        bool,
        typer.Option(
            "--eval-results",
            help="Also write .eval_results/ for --dataset, a benchmark's leaderboard (opt-in).",
        ),
    ] = False,
) -> None:
    """Upload patches, a model card (README.md) and config.json to a Hub model repo, in one commit.

    A second push to the same repo updates the card: earlier patches keep their rows and results.
    The token comes from `hf auth login` or $HF_TOKEN, never from rws.

    Example: rws push fog.rws.safetensors --repo org/resnet20-fog --report eval.json
    """
    res = push(
        patches, repo, private=private, revision=revision, message=message, report=report,
        endpoint=endpoint, create_pr=create_pr, base_model=base_model, dataset=dataset,
        license=license, eval_results=eval_results,
    )  # fmt: skip
    where = f"pull request {res.pr_url}" if res.pr_url else f"{res.repo_id}@{res.revision}"
    out.print(
        f"pushed {', '.join(res.files)} to {where}: commit {res.commit[:12]} ({res.url})",
        markup=False,
        soft_wrap=True,
    )


def pull_command(
    ref: Annotated[str, typer.Argument(help="ORG/NAME[/FILE][@REV], with or without hf://.")],
    revision: Annotated[
        str | None, typer.Option("--revision", help="Branch, tag or commit.")
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Also copy the files into this folder (atomically)."),
    ] = None,
    endpoint: EndpointOpt = None,
) -> None:
    """Download a file or a whole repo through the Hugging Face cache; print the local paths.

    HF_HUB_OFFLINE=1 reads the cache only.

    Example: rws pull org/resnet20-fog/fog.rws.safetensors -o patches/
    """
    for path in pull(ref, revision=revision, output_dir=output, endpoint=endpoint):
        out.print(str(path), markup=False, soft_wrap=True)
