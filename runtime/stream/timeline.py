"""A windowed run's timeline as a picture: the six emotion probabilities over time (`avemo infer --plot`)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from avemo.contract import LABELS
from avemo.deps import require
from avemo.errors import AvemoError
from avemo.io import atomic_write_bytes, cannot_write


def plot_timeline(results: list[Any], path: Path, title: str) -> None:
    """The six emotion probabilities of ``results`` (Recognitions) over time (window centres), as a PNG (or
    the format ``path``'s suffix names), written atomically; AvemoError (one line) if it cannot be written."""
    matplotlib = require("matplotlib", "pip install matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centres = [(r.start + r.end) / 2 for r in results]
    fig, ax = plt.subplots(figsize=(9, 3.5))
    for name in LABELS:
        ax.plot(centres, [r.probs[name] for r in results], marker="o", label=name)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set(xlabel="time (s)", ylabel="probability", ylim=(0, 1), title=title)
    ax.legend(ncol=6, fontsize=8, loc="upper center")
    fig.tight_layout()
    image = io.BytesIO()
    try:
        fig.savefig(image, dpi=100, format=Path(path).suffix[1:].lower() or "png")
    except ValueError as exc:  # a format matplotlib does not write
        raise AvemoError(f"{path}: {exc}") from None
    finally:
        plt.close(fig)
    try:
        atomic_write_bytes(path, image.getvalue())  # a full disk leaves no half or empty picture
    except OSError as exc:
        raise cannot_write(path, exc) from None
