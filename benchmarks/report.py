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


def ablation(r):
    meta = r["meta"]
    base = r["baseline_raw_features"]
    print(
        f"\n**5. CUB-100 ablation** (`ablation_cub100.py`; {machine(meta)}):\n\n"
        "Frozen-feature baseline, cosine kNN on raw EfficientNet-Lite0 features:\n"
    )
    print(
        table(
            ["species", "R@1", "R@2", "R@4", "R@8", "MAP@R"],
            [
                [
                    f"{s} ({'10 held-out species of the first 50' if s == 'val' else '50 unseen species'})"
                ]
                + [f"{100 * base[s][f'recall_at_{k}']:.2f}" for k in (1, 2, 4, 8)]
                + [f"{100 * base[s]['mean_average_precision_at_r']:.2f}"]
                for s in ("val", "test")
            ],
        )
    )
    for regime, summary in r["summary"].items():
        config = r["regimes"][regime]["config"]
        seeds = len(config["seeds"])
        print(
            f"\nRegime `{regime}` ({config['epochs']} epochs, lr {config['lr']:g}, "
            f"{seeds} paired seeds): test R@K (%), mean ± std over seeds; "
            "proxy |cos| at that epoch:\n"
        )
        rows = []
        for w, e in summary["by_so_weight"].items():
            for when in ("selected", "final"):
                rows.append(
                    [f"{float(w):g}", when]
                    + [
                        f"{100 * e[f'{when}_recall_at_{k}']['mean']:.2f} ± "
                        f"{100 * e[f'{when}_recall_at_{k}']['std']:.2f}"
                        for k in (1, 2, 4, 8)
                    ]
                    + [
                        f"{e[f'{when}_proxy_mean_abs_cos']['mean']:.3f}",
                        f"{e[f'{when}_proxy_max_abs_cos']['mean']:.3f}",
                    ]
                )
        print(
            table(
                ["so_weight", "epoch", "R@1", "R@2", "R@4", "R@8"]
                + ["mean abs cos", "max abs cos"],
                rows,
            )
        )
        rows = []
        for w, e in summary["by_so_weight"].items():
            d = e.get("paired_vs_pa")
            if not d:
                continue

            def c(key, scale=100, digits=2):
                x = d[key]
                return f"{scale * x['mean']:+.{digits}f} (t={x['t']:+.1f})"

            thresholds = summary["reach_thresholds_val_r1"]
            base_runs = summary["by_so_weight"]["0.0"]["epochs_to"]
            reach_cells = []
            for t in thresholds:
                key = f"{t:.4f}"
                reached = sum(v is not None for v in e["epochs_to"][key])
                base_reached = sum(v is not None for v in base_runs[key])
                x = d["epochs_to"][key]
                t_text = "n/a" if x["t"] != x["t"] else f"{x['t']:+.1f}"
                reach_cells.append(
                    f"{x['mean']:+.1f} (t={t_text}); {reached} vs {base_reached} of "
                    f"{seeds} reached"
                )
            rows.append(
                [
                    f"{float(w):g}",
                    c("selected_recall_at_1"),
                    c("selected_recall_at_8"),
                    c("final_recall_at_1"),
                    c("final_recall_at_8"),
                    c("final_mean_average_precision_at_r"),
                    c("final_proxy_mean_abs_cos", 1, 3),
                ]
                + reach_cells
            )
        print(
            f"\nPaired differences SO - PA (R@K, MAP@R in points of %, t over {seeds} "
            "seeds); epochs to reach validation R@1 (SO - PA; never = epochs + 1):\n"
        )
        print(
            table(
                [
                    "so_weight",
                    "sel. R@1",
                    "sel. R@8",
                    "final R@1",
                    "final R@8",
                    "final MAP@R",
                    "final mean abs cos",
                ]
                + [
                    f"epochs to val R@1 >= {100 * t:.2f}"
                    for t in summary["reach_thresholds_val_r1"]
                ],
                rows,
            )
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=os.path.join(HERE, "results"))
    args = parser.parse_args()
    for name, fn in (
        ("regularizer.json", regularizer),
        ("training_step.json", training_step),
        ("evaluation.json", evaluation),
        ("throughput.json", throughput),
        ("ablation_cub100.json", ablation),
    ):
        r = load(name, args.results)
        if r is not None:
            fn(r)


if __name__ == "__main__":
    main()
