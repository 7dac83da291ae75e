"""Runtime-side CLI commands (torch-free): verify."""

from __future__ import annotations

from pathlib import Path

import click

from avemo.contract import PARITY_FILE, PRECISION_DIRS


@click.command()
@click.argument("models", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--threads", type=int, default=None, help="ONNX Runtime intra-op threads.")
def verify(models: Path, threads: int | None) -> None:
    """Re-hash every file of an exported model directory and re-run its parity checks.

    Needs only the runtime (no torch): the reference inputs and probabilities
    were stored at export time in parity.npz.

    \b
    Example:
      avemo verify models/
    """
    from avemo.runtime.manifest import load_manifest
    from avemo.runtime.parity import check_parity, load_references, parity_samples

    manifest = load_manifest(models, verify=True)
    click.echo(f"{models}: {len(manifest.data['files'])} files match manifest.json")
    click.echo("| precision | graph | max abs diff | tolerance | label agreement |\n|---|---|---|---|---|")
    samples = parity_samples(manifest.features, manifest.modalities)
    references = load_references(models / PARITY_FILE)
    for precision in manifest.precisions:
        d = models / PRECISION_DIRS[precision]
        report = check_parity(d, samples, references, precision, threads)
        tol = manifest.data["precisions"][precision]["parity_tolerance"]
        for modality, r in report.items():
            click.echo(
                f"| {precision} | {modality.upper()} | {r['max_abs_diff']:.2e} | {tol:.0e} | "
                f"{100 * r['label_agreement']:.1f}% |"
            )
    click.echo("verified")
