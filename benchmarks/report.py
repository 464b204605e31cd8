"""Markdown tables for the README, read from benchmarks/results/*.json only.

python benchmarks/report.py > /tmp/tables.md
"""

import argparse
import json
import os

from benchutil import table

HERE = os.path.dirname(os.path.abspath(__file__))


def load(name, results):
    path = os.path.join(results, name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def machine(meta):
    return (
        f"{meta.get('machine', '?')}, {meta.get('cpu_count', '?')} cores, "
        f"{meta.get('threads', '?')} threads, {meta.get('device', 'cpu')}; torch "
        f"{meta.get('torch', '?')}, timm {meta.get('timm', '?')}, PML "
        f"{meta.get('pytorch_metric_learning', '?')}; {meta.get('date', '?')}"
    )


def mib(x):
    return f"{x / 2**20:,.0f} MiB"


def regularizer(r):
    meta = r["meta"]
    threads = meta.get("threads")
    threads = threads if isinstance(threads, list) else [threads]
    ratio_keys = [f"steady_{t}_threads" for t in threads]
    ratio_keys.append(f"per_process_{max(threads)}_threads")
    rows = []
    for row in r["rows"]:
        cells = [f"{row['classes']:,} x {row['dims']}"]
        for v in ("ours", "naive", "autograd", "floor"):
            if v in row:
                cells.append(f"{row[v]['median_s']:.4f} s, {mib(row[v]['peak_bytes'])}")
            else:
                cells.append("-")
        if "ours" in row and "naive" in row:
            cells.append(
                f"{row['naive']['median_s'] / row['ours']['median_s']:.1f}x / "
                f"{row['naive']['peak_bytes'] / max(row['ours']['peak_bytes'], 1):.1f}x"
            )
        ratios = row.get("ours_over_floor")
        if ratios is None and "ours" in row and "floor" in row:  # older JSON
            ratios = {ratio_keys[0]: row["ours"]["median_s"] / row["floor"]["median_s"]}
        cells += [f"{ratios[k]:.2f}x" if ratios and k in ratios else "-"
                  for k in ratio_keys]  # fmt: skip
        rows.append(cells)
    print(
        f"**1. SO regulariser**, forward+backward, float32 (`bench_regularizer.py`; "
        f"{machine(dict(meta, threads='/'.join(str(t) for t in threads)))}; "
        f"times: medians of {meta.get('rounds', meta.get('repeats'))} warmed, "
        f"interleaved calls at {max(threads)} threads (naive: "
        f"{meta.get('naive_repeats', meta.get('repeats'))}); memory: each variant in "
        "its own process, peak above the inputs):\n"
    )
    print(
        table(
            ["C x D", "ours", "naive C x C", "per-row autograd", "floor",
             "naive/ours time / memory"]
            + [f"ours/floor, steady, {t} thread{'s' * (t > 1)}" for t in threads]
            + [f"ours/floor, process per variant, {max(threads)} threads"],
            rows,
        )  # fmt: skip
    )
    from bench_regularizer import TARGETS

    lines = []
    for row in r["rows"]:
        if row["classes"] <= row["dims"] or not {"ours", "naive", "floor"} <= set(row):
            continue
        ours, naive = row["ours"], row["naive"]
        speed = naive["median_s"] / ours["median_s"]
        memory = naive["peak_bytes"] / max(ours["peak_bytes"], 1)
        floors = [v for k, v in (row.get("ours_over_floor") or {}).items()
                  if k.startswith("steady")]  # fmt: skip
        floor = max(floors) if floors else ours["median_s"] / row["floor"]["median_s"]
        checks = [
            (f"{speed:.1f}x faster than C x C", speed >= TARGETS["speed_vs_naive"],
             f">= {TARGETS['speed_vs_naive']:g}x"),
            (f"{memory:.1f}x less memory", memory >= TARGETS["memory_vs_naive"],
             f">= {TARGETS['memory_vs_naive']:g}x"),
            (f"{floor:.2f}x its floor (worst thread count)",
             floor <= TARGETS["floor_ratio"], f"<= {TARGETS['floor_ratio']:g}x"),
        ]  # fmt: skip
        lines.append(
            f"- {row['classes']:,} x {row['dims']}: "
            + "; ".join(f"{text} (target {target}): **{'met' if ok else 'missed'}**"
                        for text, ok, target in checks)  # fmt: skip
        )
    if lines:
        print("\n" + "\n".join(lines))


def training_step(r):
    meta = r["meta"]
    print(
        f"\n**2. SO in a training step** (`bench_training_step.py`; {machine(meta)}; "
        f"{meta['model']} random init, batch {meta['batch_size']}, 224 px; medians of "
        f"{meta['trunk_repeats']} trunk steps and "
        f"{meta['trunk_repeats'] * meta['loss_repeats_per_trunk_repeat']} loss steps):\n"
    )
    rows = [
        [
            f"{x['classes']:,} x {x['dims']}",
            f"{x['trunk_s']:.2f} s",
            f"{1e3 * x['pa_s']:.2f} ms",
            f"{1e3 * x['so_s']:.2f} ms",
            f"{1e3 * x['pa_plus_so_s']:.2f} ms",
            f"{100 * x['so_added_share']:.3f}%",
            f"{100 * x['so_alone_share']:.3f}%",
            f"{100 * x['target_share']:g}%" if x["target_share"] else "-",
            {True: "met", False: "missed", None: "-"}[x["met"]],
        ]
        for x in r["rows"]
    ]
    print(
        table(
            [
                "C x D",
                "trunk fwd+bwd",
                "PA",
                "SO",
                "PA+SO",
                "SO added / step",
                "SO alone / step",
                "target",
                "",
            ],
            rows,
        )
    )


def evaluation(r):
    meta = r["meta"]
    print(
        f"\n**3. Evaluation at SOP scale** (`bench_evaluation.py`; {machine(meta)}, "
        f"faiss {meta.get('faiss', '?')}; "
        f"{meta['size']:,} x {meta['dims']} embeddings, {meta['classes']:,} classes, "
        f"median of {meta.get('rounds', 1)} round(s); peak = resident memory above "
        "the embeddings, each variant in its own process):\n"
    )
    names = [f"recall_at_{k}" for k in (1, 10, 100, 1000)] + [
        "mean_average_precision_at_r",
        "r_precision",
    ]
    search = r["variants"].get("search", {}).get("median_s")
    rows = []
    for variant, x in r["variants"].items():
        rows.append(
            [variant, f"{x['median_s']:.1f} s"]
            + [f"{x['median_s'] / search:.2f}x" if search else "-"]
            + [mib(x["peak_bytes"])]
            + [
                f"{100 * x['metrics'][n]:.2f}" if n in x["metrics"] else "-"
                for n in names
            ]
        )
    print(
        table(
            ["variant", "time", "vs search", "peak memory", "R@1", "R@10", "R@100"]
            + ["R@1000", "MAP@R", "R-prec"],
            rows,
        )
    )
    checks = r.get("checks", {})
    labels = {
        "time_vs_search": "time / exact search (at most)",
        "pml_vs_ours": "PML time / ours (at least)",
        "peak_mib": "peak memory above the embeddings, MiB (at most)",
    }
    lines = [
        f"- {labels[k]}: {checks[k]['value']:.2f} vs target {checks[k]['target']:g}: "
        f"**{'met' if checks[k]['met'] else 'missed'}**"
        for k in labels
        if k in checks
    ]
    if "time_vs_own_search" in checks:
        lines.append(
            "- ours / the time inside its own search calls (same process, so machine "
            f"load cancels): {checks['time_vs_own_search']:.2f}"
        )
    if "recall_identical_to_unchunked" in checks:
        lines.append(
            "- metrics vs the unchunked path: R@K "
            f"{'identical' if checks['recall_identical_to_unchunked'] else 'DIFFERENT'}"
            f", largest difference {checks['max_abs_difference_vs_unchunked']:.1e}"
        )
    if lines:
        print("\n" + "\n".join(lines))


def throughput(r):
    meta = r["meta"]
    print(
        f"\n**4. Training throughput** (`bench_throughput.py`; {machine(meta)}; digits "
        "data in memory, random init; medians per iteration):\n"
    )
    rows = [
        [
            x["config"],
            f"{x['model']}"
            + "".join(
                f" {k}={v}"
                for k, v in (x.get("trunk_kwargs") or {}).items()
                if k in ("depth", "embed_dim")
            )
            + f", {x['image_size']} px",
            x["batch_size"],
            x["iterations_timed"],
            f"{x['bare_images_per_s']:.1f}",
            f"{x['pipeline_images_per_s']:.1f}",
            f"{1e3 * x['pipeline_get_batch_s']:.1f} ms",
            f"{100 * x['overhead_excluding_loading']:+.1f}%",
            f"{100 * x['overhead_raw']:+.1f}%",
            f"{x['end_of_epoch_s']:.2f} s",
        ]
        for x in r["rows"]
    ]
    print(
        table(
            [
                "config",
                "model",
                "batch",
                "iters",
                "bare img/s",
                "pipeline img/s",
                "data loading / it",
                "overhead excl. loading",
                "overhead incl. loading",
                "end of epoch",
            ],
            rows,
        )
    )


#: the ablation's result files, in the order benchmarks/README.md shows them
ABLATION_FILES = (
    "ablation_cub100.json",
    "ablation_cub100_recipe.json",
    "ablation_cub100_recipe_d32.json",
    "ablation_cub100_gpu.json",
)
ABLATION_FIGURE = os.path.join(HERE, "results", "ablation_paired.png")


def pct(x, sign=False):
    return f"{100 * x:+.2f}" if sign else f"{100 * x:.2f}"


def pm(e):
    return f"{pct(e['mean'])} ± {pct(e['std'])}"


def diff_cell(d, scale=100, digits=2):
    """mean (95% t-interval half-width; t) of a paired difference."""
    if d["n"] < 2:
        return f"{scale * d['mean']:+.{digits}f}"
    t = "n/a" if d["t"] != d["t"] else f"{d['t']:+.1f}"
    return (f"{scale * d['mean']:+.{digits}f} ± {scale * d['ci95_half_width']:.{digits}f}"
            f" (t={t})")  # fmt: skip


def ablation_summary(r):
    """The summaries, recomputed from the runs (one source of truth), with the
    thresholds of the stored summary."""
    from ablation.stats import summarize

    return summarize(dict(r))


def describe_regime(name, config):
    parts = [f"{config['epochs']} epochs", f"lr {config['lr']:g}",
             f"proxies lr {config['proxy_lr']:g}"]  # fmt: skip
    if config.get("stage_blocks"):
        parts.append(f"trained: {config['stage_blocks']}")
    if config.get("sampler"):
        parts.append(config["sampler"])
    parts += [f"batch {config.get('batch_size', config.get('recipe', {}).get('batch_size'))}",
              f"D = {config['embedding_size']}", f"{len(config['seeds'])} paired seeds"]  # fmt: skip
    return f"Regime `{name}` ({', '.join(parts)})"


def regime_metric_table(summary):
    rows = []
    for w, e in summary["by_so_weight"].items():
        for when in ("selected", "final"):
            rows.append([f"{float(w):g}", when, e["n"]]
                        + [pm(e[f"{when}_recall_at_{k}"]) for k in (1, 2, 4, 8)]
                        + [pm(e[f"{when}_mean_average_precision_at_r"]),
                           pm(e[f"val_{when}_recall_at_1"])])  # fmt: skip
    return table(["so_weight", "epoch", "seeds", "R@1", "R@2", "R@4", "R@8", "MAP@R",
                  "val R@1"], rows)  # fmt: skip


def regime_paired_table(summary):
    rows = []
    base_runs = summary["by_so_weight"]["0.0"]["epochs_to"]
    for w, e in summary["by_so_weight"].items():
        d = e.get("paired_vs_pa")
        if not d:
            continue
        cells = [f"{float(w):g}", d["selected_recall_at_1"]["n"]]
        cells += [diff_cell(d[k]) for k in (
            "selected_recall_at_1", "selected_mean_average_precision_at_r",
            "final_recall_at_1", "final_mean_average_precision_at_r",
            "val_selected_recall_at_1")]  # fmt: skip
        for t in summary["reach_thresholds_val_r1"]:
            key = f"{t:.4f}"
            reached = sum(v is not None for v in e["epochs_to"][key])
            base = sum(v is not None for v in base_runs[key])
            cells.append(f"{diff_cell(d['epochs_to'][key], 1, 1)}; {reached} vs {base}")
        rows.append(cells)
    heads = ["so_weight", "pairs", "sel. R@1", "sel. MAP@R", "final R@1",
             "final MAP@R", "val sel. R@1"]  # fmt: skip
    heads += [f"epochs to val R@1 >= {100 * t:.2f} (reached SO vs PA)"
              for t in summary["reach_thresholds_val_r1"]]  # fmt: skip
    return table(heads, rows)


def regime_proxy_table(summary):
    rows = []
    for w, e in summary["by_so_weight"].items():
        cells = [f"{float(w):g}"]
        for when in ("first", "training", "final"):
            for stat, digits in (("mean_abs_cos", 3), ("max_abs_cos", 3),
                                 ("mean_cos", 4)):  # fmt: skip
                x = e.get(f"{when}_proxy_{stat}")
                cells.append("-" if x is None else f"{x['mean']:+.{digits}f}"
                             if stat == "mean_cos" else f"{x['mean']:.{digits}f}")  # fmt: skip
        rows.append(cells)
    whens = ("epoch 1", "mean over epochs", "final")
    stats = ("mean abs cos", "max abs cos", "mean cos")
    heads = ["so_weight"] + [f"{when} {stat}" for when in whens for stat in stats]
    return table(heads, rows)


def selection_line(summary):
    sel = summary["validation_selected"]
    w = sel["so_weight"]
    e = summary["by_so_weight"][str(w)]
    scores = ", ".join(
        f"{k:g}: {pct(v)}" for k, v in sel["val_mean_by_so_weight"].items()
    )
    text = (f"Validation selects so_weight **{w:g}** (mean validation R@1 at each run's "
            f"selected epoch: {scores}). Test there: R@1 {pm(e['selected_recall_at_1'])}, "
            f"MAP@R {pm(e['selected_mean_average_precision_at_r'])}")  # fmt: skip
    d = e.get("paired_vs_pa")
    if d:
        text += (f"; vs Proxy Anchor R@1 {diff_cell(d['selected_recall_at_1'])}, MAP@R "
                 f"{diff_cell(d['selected_mean_average_precision_at_r'])}")  # fmt: skip
    return text + "."


def render_ablation(r, source):
    """The Markdown of one ablation JSON (every regime in it)."""
    summaries = ablation_summary(r)
    out = [f"**CUB-100 ablation** (`{source}`; {machine(r['meta'])})"]
    base = r["baseline_raw_features"]
    out.append("\nFrozen-feature baseline, cosine kNN on raw EfficientNet-Lite0 "
               "features (val: 10 held-out seen species; test: 50 unseen):\n")  # fmt: skip
    out.append(table(["species", "R@1", "R@2", "R@4", "R@8", "MAP@R"],
                     [[s] + [pct(base[s][f"recall_at_{k}"]) for k in (1, 2, 4, 8)]
                      + [pct(base[s]["mean_average_precision_at_r"])]
                      for s in ("val", "test")]))  # fmt: skip
    for regime, summary in summaries.items():
        config = r["regimes"][regime]["config"]
        seconds = sum(x["seconds"] for x in r["regimes"][regime]["runs"])
        out.append(f"\n{describe_regime(regime, config)}; training time of all runs "
                   f"{seconds / 60:.0f} min. Test R@K and MAP@R (%), mean ± std over "
                   "seeds, at the validation-selected and the final epoch:\n")  # fmt: skip
        out.append(regime_metric_table(summary))
        out.append("\nPaired differences SO - PA (points of %): mean ± 95% t-interval "
                   "half-width (t); epochs to reach validation R@1 (SO - PA; never = "
                   "epochs + 1):\n")  # fmt: skip
        out.append(regime_paired_table(summary))
        out.append("\nProxy cosines (mean over seeds): mean and max |cos| between "
                   "distinct proxies and their signed mean cos, after epoch 1, averaged "
                   "over the epochs, and at the end:\n")  # fmt: skip
        out.append(regime_proxy_table(summary))
        out.append("\n" + selection_line(summary))
    return "\n".join(out)


def ablation_figure(results, path):
    """Paired difference SO - PA (test R@1 and MAP@R at the validation-selected
    epoch, 95% t-intervals) per so_weight, one series per regime."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    series = [(regime, s) for r in results for regime, s in ablation_summary(r).items()]
    for i, (regime, summary) in enumerate(series):
        points = [(float(w), e["paired_vs_pa"]) for w, e in summary["by_so_weight"].items()
                  if e.get("paired_vs_pa")]  # fmt: skip
        shift = 1.12 ** (i - (len(series) - 1) / 2)  # side by side on a log axis
        for ax, key in zip(axes, ("selected_recall_at_1",
                                  "selected_mean_average_precision_at_r")):  # fmt: skip
            ax.errorbar([w * shift for w, _ in points],
                        [100 * d[key]["mean"] for _, d in points],
                        yerr=[100 * d[key]["ci95_half_width"] for _, d in points],
                        fmt="o-", capsize=3, label=f"{regime} ({len(points) and points[0][1][key]['n']} seeds)")  # fmt: skip
    for ax, name in zip(axes, ("test R@1", "test MAP@R")):
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("so_weight (log scale; regimes side by side)")
        ax.set_ylabel(f"SO - PA, {name}, points of %")
        ax.set_title(f"{name}, validation-selected epoch, 95% t-CI", fontsize=10)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=os.path.join(HERE, "results"))
    parser.add_argument(
        "--ablation-figure",
        default=None,
        metavar="PNG",
        help=f"also draw the ablation figure (e.g. {ABLATION_FIGURE})",
    )
    args = parser.parse_args()
    for name, fn in (
        ("regularizer.json", regularizer),
        ("training_step.json", training_step),
        ("evaluation.json", evaluation),
        ("throughput.json", throughput),
    ):
        r = load(name, args.results)
        if r is not None:
            fn(r)
    ablations = [(n, load(n, args.results)) for n in ABLATION_FILES]
    ablations = [(n, r) for n, r in ablations if r is not None]
    for name, r in ablations:
        print("\n" + render_ablation(r, f"results/{name}"))
    if args.ablation_figure and ablations:
        ablation_figure([r for _, r in ablations], args.ablation_figure)


if __name__ == "__main__":
    main()
