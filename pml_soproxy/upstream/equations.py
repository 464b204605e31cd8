"""The docs' equation images, which PML keeps as PNGs under docs/imgs/.

The PNGs in ``templates/imgs/`` are committed; after editing an equation here,
regenerate them (needs matplotlib) with::

    python -m pml_soproxy.upstream.equations
"""

from pathlib import Path

TEMPLATES = Path(__file__).resolve().parent / "templates"

EQUATIONS = {
    "soft_orthogonality_regularizer_equation.png": (
        r"$L_{so} = \dfrac{1}{C}\,\sum_{i=1}^{C}\,\sum_{j=1}^{C}"
        r"\left(\langle w_i, w_j\rangle - \delta_{ij}\right)^2"
        r" = \dfrac{1}{C}\,\Vert W W^{T} - I\,\Vert_F^2$"
    ),
    "soft_orthogonal_proxy_anchor_loss_equation.png": (
        r"$L = L_{\mathrm{ProxyAnchor}} + \lambda\,\dfrac{1}{C}\,\sum_{i=1}^{C}"
        r"\,\sum_{j=1}^{C}\left(\langle \hat{p}_i, \hat{p}_j\rangle"
        r" - \delta_{ij}\right)^2$"
    ),
}


def render(out_dir: Path = TEMPLATES / "imgs") -> list:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with plt.rc_context({"mathtext.fontset": "cm"}):
        for name, tex in EQUATIONS.items():
            fig = plt.figure()
            fig.text(0, 0, tex, fontsize=28)
            fig.savefig(
                out_dir / name,
                dpi=100,
                bbox_inches="tight",
                pad_inches=0.08,
                facecolor="white",
                metadata={"Software": None},
            )
            plt.close(fig)
            written.append(out_dir / name)
    return written


if __name__ == "__main__":
    for path in render():
        print(path)
