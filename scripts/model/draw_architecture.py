"""Draw the MSA²Net architecture as built by this bundle (variant-aware) to a PNG.

Example::

    python scripts/model/draw_architecture.py --variant paper --out docs/architecture.png
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display here
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

from bundle.errors import run_script  # noqa: E402
from bundle.networks import VARIANTS  # noqa: E402

COLORS = {"enc": "#9ecae1", "dae": "#fdae6b", "lka": "#a1d99b", "masag": "#e377c2", "add": "#dddddd", "pe": "#fff2a8"}


def _box(ax, x, y, w, h, text, color, size=8):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02", fc=color, ec="black", lw=0.8))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=size)


def _arrow(ax, a, b, color="black", style="-|>"):
    ax.add_patch(FancyArrowPatch(a, b, arrowstyle=style, mutation_scale=9, color=color, lw=0.9))


def main(variant: str = "paper", out: str = "docs/architecture.png") -> None:
    """Render ``variant`` (see bundle.networks.VARIANTS) to ``out``."""
    cfg = VARIANTS[variant]
    fig, ax = plt.subplots(figsize=(11, 6.2), dpi=130)
    ax.set_xlim(0, 11)
    ax.set_ylim(0, 6.2)
    ax.axis("off")
    ax.set_title(f"MSA²Net ({variant} variant): MaxViT-S encoder, MASAG skips, hybrid decoder", fontsize=11)

    _box(ax, 0.2, 5.35, 1.6, 0.6, "input 1×224² CT\n(repeated to RGB)", "#ffffff")
    enc = [
        ("MaxViT stage 1\n96×56²", 4.3),
        ("MaxViT stage 2\n192×28²", 3.2),
        ("MaxViT stage 3\n384×14²", 2.1),
        ("MaxViT stage 4\n768×7² + norm", 1.0),
    ]
    _box(ax, 0.2, 4.55, 1.6, 0.45, "stem (stride 2)", COLORS["enc"])
    _arrow(ax, (1.0, 5.35), (1.0, 5.0))
    prev = (1.0, 4.55)
    for text, y in enc:
        _box(ax, 0.2, y - 0.55, 1.6, 0.6, text, COLORS["enc"])
        _arrow(ax, prev, (1.0, y + 0.05))
        prev = (1.0, y - 0.55)

    # decoder, bottom-up
    _box(ax, 8.6, 0.45, 1.9, 0.6, "Patch expanding ×2\n768 → 384 (7² → 14²)", COLORS["pe"])
    _arrow(ax, (1.8, 0.75), (8.6, 0.75))
    ys = [1.55, 2.65, 3.75]
    chans = [384, 192, 96]
    prev = (9.55, 1.05)
    for i, (y, c, block, masag) in enumerate(zip(ys, chans, cfg.stage_blocks, cfg.stage_masag)):
        skip_y = enc[2 - i][1] - 0.25
        gate = "MASAG" if masag else "G + X"
        _box(ax, 4.0, y, 1.5, 0.7, f"{gate}\nC={c}", COLORS["masag"] if masag else COLORS["add"])
        _arrow(ax, (1.8, skip_y), (4.0, y + 0.35), color="#555555")
        name = "DAE-Former ×2" if block == "dae" else "LKA ×2"
        _box(ax, 6.1, y, 1.9, 0.7, f"LN → {name}", COLORS[block])
        _arrow(ax, (5.5, y + 0.35), (6.1, y + 0.35))
        up = "Patch expanding ×4\n→ 96×224²" if i == 2 else f"Patch expanding ×2\n{c} → {c // 2}"
        _box(ax, 8.6, y, 1.9, 0.7, up, COLORS["pe"])
        _arrow(ax, (8.0, y + 0.35), (8.6, y + 0.35))
        # decoder tokens G: from the patch expanding below into this stage's gate
        _arrow(ax, prev, (9.55, y - 0.15), color="#1f77b4", style="-")
        _arrow(ax, (9.55, y - 0.15), (4.75, y - 0.15), color="#1f77b4", style="-")
        _arrow(ax, (4.75, y - 0.15), (4.75, y), color="#1f77b4")
        prev = (9.55, y + 0.7)
    _box(ax, 8.6, 5.2, 1.9, 0.6, "1×1 conv head\nlogits 9×224²", "#ffffff")
    _arrow(ax, (9.55, 4.45), (9.55, 5.2))
    ax.text(
        2.3,
        5.75,
        "grey arrows: encoder skip X    blue: decoder tokens G (linear-projected in each stage)",
        fontsize=7.5,
        color="#333333",
    )
    ax.text(
        2.3, 5.45, "skip stages use the official raw-view layout (docs/fidelity.md §4)", fontsize=7.5, color="#333333"
    )
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, bbox_inches="tight")
    plt.close(fig)
    print(f"wrote {out}")


if __name__ == "__main__":
    run_script(main)
