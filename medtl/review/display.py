"""Showing figures in a notebook whatever matplotlib backend is active (medtl's modules select ``Agg``)."""
from __future__ import annotations

import io

from matplotlib import pyplot as plt
from matplotlib.figure import Figure

__all__ = ["show"]


def show(figure: Figure, dpi: int = 110) -> None:
    """Display ``figure`` as a PNG in the notebook (and so in its HTML report), then close it."""
    from IPython.display import Image, display

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(figure)
    display(Image(data=buffer.getvalue(), format="png"))
