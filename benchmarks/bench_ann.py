"""Approximate nearest-neighbour indexes: build time, memory, queries/s and recall@10.

Data: --sizes base sets (default SOP's test-split size 60,502, then 1,000,000) of
--dims (512) synthetic L2-normalised vectors from a two-level Gaussian mixture,
like trained embeddings (classes within super-classes): group centres g uniform on
the sphere; cluster centres c = normalise(g + --cluster-noise * z / sqrt(d)), about
--clusters-per-group clusters per group; points x = normalise(c + --point-noise *
z / sqrt(d)), cluster of each point drawn uniformly, --cluster-size points per
cluster on average (default 60,502 / 11,316, SOP's mean test class size, so the
SOP-size set has SOP's 11,316 classes). --queries (1,000) query vectors from the
same distribution, held out from the base. The vectors are searched by inner
product (= cosine), as the retrieval door searches normalised embeddings.

Ground truth: exact top-10 by a brute-force torch matmul + topk over the base in
chunks (independent of faiss). recall@10 = mean over queries of |returned top-10 ∩
exact top-10| / 10.

Indexes: faiss.index_factory strings with METRIC_INNER_PRODUCT (--indexes, ';'
between them, {nlist} = a power of two near 4 sqrt(n)): "Flat" (exact; its
queries/s is the reference: timed first and again after every other index, as
the machine is shared), "IVF{nlist},Flat" and "IVF{nlist},SQ8" (k-means on --train-per-list x nlist
sampled base vectors, nprobe swept over --nprobe), "HNSW32" (efConstruction
--ef-construction, default 100: faiss's 40 left recall@10 below 0.97 at any efSearch
on 100k of these vectors; efSearch swept over --ef-search; --hnsw-max-size skips it
on larger bases). Every setting is reported.
Per index: train time, add time, serialised size (faiss.write_index through a
byte-counting writer), resident-memory growth of the process, and per setting
queries/s (all --queries in one search call, median over --repeats calls / at
least --min-time s), recall@10, and queries/s relative to Flat's median and to the
fastest exact call of the run (any Flat call or the torch brute force), all in the
same run. The JSON is written after each base size (``complete`` false until the
last); --report JSON prints the Markdown summary of a results file.

faiss is called directly, with the calls of pml_soproxy.retrieval.Index.build
(index_factory with METRIC_INNER_PRODUCT, train on a seeded sample, add): Index.build
does train and add in one call and keeps a path per vector, and the figures here
need the two timed apart and one index searched at many settings.

Target (issue 8): at 1M vectors an IVF or HNSW setting reaches recall@10 >= 0.95
at >= 20x the fastest exact call's queries/s.

    python benchmarks/bench_ann.py --threads 2
    python benchmarks/bench_ann.py --quick            # 100k vectors, minutes
    python benchmarks/bench_ann.py --device cuda      # faiss GPU indexes (faiss-gpu)
"""

import argparse
import ctypes
import gc
import json
import math
import os
import statistics
import sys
import time

import faiss
import numpy as np
import torch
from benchutil import meta, rss_bytes, table, write_json
from tqdm import tqdm

# Stanford Online Products' test split (Ebay_test.txt): images and classes.
SOP_TEST_IMAGES = 60502
SOP_TEST_CLASSES = 11316
K = 10
TARGET_RECALL = 0.95
TARGET_SPEEDUP = 20.0
TARGET_SIZE = 1_000_000
DEFAULT_INDEXES = "Flat;IVF{nlist},Flat;IVF{nlist},SQ8;HNSW32"
CHUNK = 65536


def make_vectors(
    n, dims, cluster_size, clusters_per_group, cluster_noise, point_noise, seed
):
    """``n`` unit vectors from the two-level mixture of the module docstring
    (float32, generated in chunks so that 1M x 512 needs no float64 copy)."""
    rng = np.random.default_rng(seed)
    clusters = max(1, round(n / cluster_size))
    groups = max(1, round(clusters / clusters_per_group))

    def unit(a):
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    def noise(rows, scale):
        return (scale / math.sqrt(dims)) * rng.standard_normal(
            (rows, dims), dtype=np.float32
        )

    g = unit(rng.standard_normal((groups, dims), dtype=np.float32))
    centres = unit(
        g[rng.integers(groups, size=clusters)] + noise(clusters, cluster_noise)
    )
    x = np.empty((n, dims), dtype=np.float32)
    for s in tqdm(range(0, n, CHUNK), desc=f"vectors {n:,}", leave=False):
        rows = min(CHUNK, n - s)
        which = rng.integers(clusters, size=rows)
        x[s : s + rows] = unit(centres[which] + noise(rows, point_noise))
    return x, clusters, groups


def exact_topk(base, queries, k, device):
    """Brute-force inner-product top-k with torch, chunked over the base (the
    reference the recall is measured against; faiss is not used here)."""
    q = torch.from_numpy(queries).to(device)
    best_s = torch.full((len(q), k), -math.inf, device=device)
    best_i = torch.zeros((len(q), k), dtype=torch.long, device=device)
    for s in range(0, len(base), CHUNK):
        chunk = torch.from_numpy(base[s : s + CHUNK]).to(device)
        scores = q @ chunk.T
        top_s, top_i = scores.topk(min(k, scores.shape[1]), dim=1)
        cat_s = torch.cat([best_s, top_s], 1)
        cat_i = torch.cat([best_i, top_i + s], 1)
        best_s, pos = cat_s.topk(k, dim=1)
        best_i = cat_i.gather(1, pos)
    return best_i.cpu().numpy()


def recall_at_k(found, truth):
    """Mean fraction of each query's exact top-k ids found in its returned top-k."""
    k = truth.shape[1]
    hits = [len(np.intersect1d(f[:k], t)) for f, t in zip(found, truth)]
    return float(np.mean(hits)) / k


def serialized_bytes(index):
    """Size of faiss.write_index(index), counted without keeping the bytes."""
    count = [0]

    def write(chunk):
        count[0] += len(chunk)
        return len(chunk)

    if "Gpu" in type(index).__name__:
        index = faiss.index_gpu_to_cpu(index)
    faiss.write_index(index, faiss.PyCallbackIOWriter(write))
    return count[0]


def release_freed_memory():
    """Return the previous index's freed heap to the OS (glibc's malloc_trim), so
    that the next index's resident-memory growth is not hidden by reused pages."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def time_search(index, queries, k, repeats, min_time):
    """Median seconds of ``index.search(queries, k)`` over at least ``repeats``
    calls and ``min_time`` seconds; also the first call's ids."""
    times, ids = [], None
    while len(times) < repeats or (sum(times) < min_time and len(times) < 100):
        start = time.perf_counter()
        _, found = index.search(queries, k)
        times.append(time.perf_counter() - start)
        if ids is None:
            ids = found
    return statistics.median(times), times, ids


def default_nlist(n):
    return 2 ** round(math.log2(4 * math.sqrt(n)))


class Builder:
    """faiss.index_factory(dims, spec, METRIC_INNER_PRODUCT), trained and filled;
    moved to the GPU before training on --device cuda."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.resources = None
        if self.device.type == "cuda":
            self.resources = faiss.StandardGpuResources()
        self.params = (
            faiss.GpuParameterSpace() if self.resources else faiss.ParameterSpace()
        )

    def supported(self, spec):
        if self.resources is not None and "HNSW" in spec:
            return "faiss has no GPU HNSW index"
        return None

    def create(self, spec, dims, ef_construction):
        index = faiss.index_factory(dims, spec, faiss.METRIC_INNER_PRODUCT)
        if "HNSW" in spec and hasattr(index, "hnsw"):
            index.hnsw.efConstruction = ef_construction
        if self.resources is not None:
            index = faiss.index_cpu_to_gpu(
                self.resources, self.device.index or 0, index
            )
        return index

    def build(self, spec, args, train, base):
        """The trained, filled index and its build figures."""
        release_freed_memory()
        rss0 = rss_bytes()
        start = time.perf_counter()
        index = self.create(spec, args.dims, args.ef_construction)
        trained = not index.is_trained
        if trained:
            index.train(train)
        train_s = time.perf_counter() - start
        start = time.perf_counter()
        step = CHUNK * 4
        for s in tqdm(range(0, len(base), step), desc=f"add {spec}", leave=False):
            index.add(base[s : s + step])
        add_s = time.perf_counter() - start
        rss_delta = rss_bytes() - rss0
        size = serialized_bytes(index)
        entry = {
            "index": spec,
            "train_s": train_s,
            "train_vectors": len(train) if trained else 0,
            "add_s": add_s,
            "serialized_bytes": size,
            "bytes_per_vector": size / len(base),
            "rss_delta_bytes": rss_delta,
            "settings": [],
        }
        if "HNSW" in spec:
            entry["ef_construction"] = args.ef_construction
        return index, entry

    def set(self, index, name, value):
        self.params.set_index_parameter(index, name, value)


def sweep_of(spec, args, nlist):
    """(parameter name, values) swept at query time for this index."""
    if "IVF" in spec:
        return "nprobe", [p for p in args.nprobe if p <= nlist]
    if "HNSW" in spec:
        return "efSearch", [e for e in args.ef_search if e >= K]
    return None, [None]


def bench_size(n, args, builder):
    nlist = args.nlist or default_nlist(n)
    print(f"\n== {n:,} x {args.dims}, nlist {nlist} ==", flush=True)
    start = time.perf_counter()
    data, clusters, groups = make_vectors(
        n + args.queries,
        args.dims,
        args.cluster_size,
        args.clusters_per_group,
        args.cluster_noise,
        args.point_noise,
        args.seed,
    )
    queries = np.ascontiguousarray(data[n:])
    base = data[:n]  # a contiguous view: no copy
    print(
        f"  data {time.perf_counter() - start:.1f} s, {clusters:,} clusters in {groups:,} groups",
        flush=True,
    )

    start = time.perf_counter()
    truth = exact_topk(base, queries, K, args.device if builder.resources else "cpu")
    truth_s = time.perf_counter() - start
    print(
        f"  exact top-{K} by torch: {truth_s:.1f} s "
        f"({len(queries) / truth_s:,.0f} q/s)",
        flush=True,
    )

    rng = np.random.default_rng(args.seed + 1)
    train_size = min(n, args.train_per_list * nlist)
    train = base[np.sort(rng.choice(n, size=train_size, replace=False))]

    specs = [
        s.strip().format(nlist=nlist) for s in args.indexes.split(";") if s.strip()
    ]
    if "Flat" in specs:
        specs.remove("Flat")
    # Flat first, then timed again after every other index: the machine is shared,
    # so the exact reference is sampled across the whole run
    specs = ["Flat"] + [x for spec in specs for x in (spec, "Flat")]
    results, flat_times, flat_index, flat_entry = [], [], None, None
    flat_loads = []
    for spec in specs:
        if spec == "Flat" and flat_index is not None:
            median, times, found = time_search(flat_index, queries, K, 1, args.min_time)
            flat_times += times
            flat_loads.append(os.getloadavg()[0])
            flat_entry["settings"][0]["times_s"] += times
            flat_entry["settings"][0]["recall_after"] = recall_at_k(found, truth)
            print(
                f"  Flat again: {len(queries) / median:,.0f} q/s "
                f"(load {flat_loads[-1]:.1f})",
                flush=True,
            )
            continue
        reason = builder.supported(spec)
        if "HNSW" in spec and args.hnsw_max_size and n > args.hnsw_max_size:
            reason = f"base over --hnsw-max-size {args.hnsw_max_size:,}"
        if reason:
            print(f"  {spec}: skipped ({reason})", flush=True)
            results.append({"index": spec, "skipped": reason})
            continue
        index, entry = builder.build(spec, args, train, base)
        print(
            f"  {spec}: train {entry['train_s']:.1f} s, add {entry['add_s']:.1f} s, "
            f"{entry['serialized_bytes'] / 2**20:,.0f} MiB serialised, "
            f"RSS +{entry['rss_delta_bytes'] / 2**20:,.0f} MiB",
            flush=True,
        )
        name, values = sweep_of(spec, args, nlist)
        for value in values:
            if name:
                builder.set(index, name, value)
            # Flat: one call per turn (it is timed again after the others)
            repeats = 1 if spec == "Flat" else args.repeats
            median, times, found = time_search(
                index, queries, K, repeats, args.min_time
            )
            setting = {
                "param": name,
                "value": value,
                "median_s": median,
                "times_s": times,
                "recall_at_10": recall_at_k(found, truth),
                "load_1min": os.getloadavg()[0],
            }
            entry["settings"].append(setting)
            if spec == "Flat":
                flat_times += times
                flat_loads.append(setting["load_1min"])
            print(
                f"    {name or '-'}={value if value is not None else '-'}: "
                f"{len(queries) / median:,.0f} q/s, "
                f"recall@10 {setting['recall_at_10']:.4f}",
                flush=True,
            )
        results.append(entry)
        if spec == "Flat":
            flat_index, flat_entry = index, entry
        else:
            del index

    del flat_index
    flat_s = statistics.median(flat_times)
    flat_qps = len(queries) / flat_s
    torch_qps = len(queries) / truth_s
    # the fastest exact search seen in this run (any Flat call or the torch brute
    # force): a ratio against it can only understate an index's speed-up
    fastest_exact_qps = max(len(queries) / min(flat_times), torch_qps)
    for entry in results:
        for setting in entry.get("settings", []):
            if entry["index"] == "Flat":
                setting["median_s"] = flat_s
            setting["qps"] = len(queries) / setting["median_s"]
            setting["speedup_vs_flat"] = setting["qps"] / flat_qps
            setting["speedup_vs_fastest_exact"] = setting["qps"] / fastest_exact_qps

    candidates = [
        (entry["index"], setting)
        for entry in results
        if entry["index"] != "Flat"
        for setting in entry.get("settings", [])
        if setting["recall_at_10"] >= TARGET_RECALL
    ]
    best = max(candidates, key=lambda c: c[1]["speedup_vs_fastest_exact"], default=None)
    target = {
        "recall_at_10": TARGET_RECALL,
        "speedup": TARGET_SPEEDUP,
        "judged_on": "speedup_vs_fastest_exact",
        "applies": n >= TARGET_SIZE,
        "best_index": best[0] if best else None,
        "best_setting": f"{best[1]['param']}={best[1]['value']}" if best else None,
        "best_speedup_vs_flat": best[1]["speedup_vs_flat"] if best else None,
        "best_speedup_vs_fastest_exact": (
            best[1]["speedup_vs_fastest_exact"] if best else None
        ),
        "met": bool(best and best[1]["speedup_vs_fastest_exact"] >= TARGET_SPEEDUP),
    }
    return {
        "size": n,
        "dims": args.dims,
        "queries": len(queries),
        "nlist": nlist,
        "clusters": clusters,
        "groups": groups,
        "train_vectors": train_size,
        "exact_torch_s": truth_s,
        "exact_torch_qps": torch_qps,
        "flat_qps": flat_qps,
        "flat_times_s": flat_times,
        "flat_load_1min": flat_loads,
        "fastest_exact_qps": fastest_exact_qps,
        "indexes": results,
        "target": target,
    }


def rows_of(run):
    rows = []
    for entry in run["indexes"]:
        if "skipped" in entry:
            rows.append(
                [f"{run['size']:,}", entry["index"], "skipped: " + entry["skipped"]]
                + [""] * 8
            )
            continue
        for i, setting in enumerate(entry["settings"]):
            first = i == 0
            rows.append(
                [
                    f"{run['size']:,}" if first else "",
                    entry["index"] if first else "",
                    (
                        f"{setting['param']}={setting['value']}"
                        if setting["param"]
                        else "-"
                    ),
                    f"{entry['train_s']:.1f}" if first else "",
                    f"{entry['add_s']:.1f}" if first else "",
                    f"{entry['serialized_bytes'] / 2**20:,.0f}" if first else "",
                    f"{entry['rss_delta_bytes'] / 2**20:,.0f}" if first else "",
                    f"{setting['qps']:,.0f}",
                    f"{setting['recall_at_10']:.4f}",
                    f"{setting['speedup_vs_flat']:.1f}x",
                    f"{setting['speedup_vs_fastest_exact']:.1f}x",
                ]
            )
    return rows


HEADERS = [
    "base",
    "index",
    "setting",
    "train s",
    "add s",
    "size MiB",
    "RSS +MiB",
    "queries/s",
    "recall@10",
    "vs Flat median",
    "vs fastest exact",
]


def summary(payload):
    """The run's table and verdicts as Markdown (also printed after a run)."""
    m, runs = payload["meta"], payload["runs"]
    lines = [
        f"{m['machine']}, {m['cpu_count']} cores, {m['faiss_threads']} faiss threads, "
        f"{m['device']}; faiss {m['faiss']}, torch {m['torch']}; {m['date']}; "
        f"load average {m['load_average_1min_at_start']:.1f} at start, "
        f"{m['load_average_1min_at_end']:.1f} at end; {runs[0]['dims']}-d unit "
        f"vectors ({m['data']}), inner product, {runs[0]['queries']:,} queries per "
        f"search call, HNSW efConstruction {m['ef_construction']}:",
        "",
        table(HEADERS, [row for run in runs for row in rows_of(run)]),
        "",
    ]
    for run in runs:
        t = run["target"]
        flat = ", ".join(f"{run['queries'] / x:,.0f}" for x in run["flat_times_s"])
        lines.append(
            f"- {run['size']:,}: exact queries/s, Flat calls in run order: {flat}; "
            f"torch brute force {run['exact_torch_qps']:,.0f}."
        )
        scope = "" if t["applies"] else f" (the target is set at {TARGET_SIZE:,})"
        if t["best_index"]:
            lines.append(
                f"  Fastest setting with recall@10 >= {t['recall_at_10']}: "
                f"{t['best_index']} {t['best_setting']}, "
                f"{t['best_speedup_vs_fastest_exact']:.1f}x the fastest exact call "
                f"({t['best_speedup_vs_flat']:.1f}x Flat's median): target "
                f"{t['speedup']:.0f}x {'met' if t['met'] else 'missed'}{scope}."
            )
        else:
            lines.append(
                f"  No setting reached recall@10 >= {t['recall_at_10']}{scope}."
            )
    return "\n".join(lines)


def values(text, name):
    try:
        out = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        out = []
    if not out or min(out) < 1:
        sys.exit(
            f"bench_ann.py: error: {name} {text!r} must be a comma-separated list of positive integers"
        )
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--quick", action="store_true", help="100k base vectors, 1 repeat"
    )
    parser.add_argument(
        "--sizes", default=None, help=f"default {SOP_TEST_IMAGES},{TARGET_SIZE}"
    )
    parser.add_argument("--dims", type=int, default=512)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument(
        "--cluster-size", type=float, default=SOP_TEST_IMAGES / SOP_TEST_CLASSES
    )
    parser.add_argument("--clusters-per-group", type=float, default=100.0)
    parser.add_argument("--cluster-noise", type=float, default=1.0)
    parser.add_argument("--point-noise", type=float, default=1.0)
    parser.add_argument(
        "--indexes", default=DEFAULT_INDEXES, help="';'-separated faiss factory strings"
    )
    parser.add_argument(
        "--nlist", type=int, default=None, help="default: power of 2 near 4 sqrt(n)"
    )
    parser.add_argument("--train-per-list", type=int, default=39)
    parser.add_argument("--nprobe", default="1,2,4,8,16,32,64")
    parser.add_argument("--ef-search", default="16,32,64,128,256")
    parser.add_argument("--ef-construction", type=int, default=100)
    parser.add_argument(
        "--hnsw-max-size",
        type=int,
        default=None,
        help="skip HNSW indexes on larger bases (their build is the slowest part)",
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="default 3 (1 with --quick)"
    )
    parser.add_argument(
        "--min-time", type=float, default=None, help="default 1 s (0.2 with --quick)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="benchmarks/results/ann.json")
    parser.add_argument(
        "--report", metavar="JSON", help="print the Markdown summary of a results file"
    )
    args = parser.parse_args(argv)
    if args.report:
        try:
            with open(args.report) as f:
                print(summary(json.load(f)))
        except (OSError, ValueError, KeyError) as err:
            sys.exit(f"bench_ann.py: error: cannot read results {args.report}: {err}")
        return

    args.nprobe = values(args.nprobe, "--nprobe")
    args.ef_search = values(args.ef_search, "--ef-search")
    default_sizes = "100000" if args.quick else f"{SOP_TEST_IMAGES},{TARGET_SIZE}"
    sizes = values(args.sizes or default_sizes, "--sizes")
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.min_time is None:
        args.min_time = 0.2 if args.quick else 1.0
    device = args.device
    if device == "cpu" or device.startswith("cuda"):
        pass
    else:
        sys.exit(f"bench_ann.py: error: --device {device!r} is not 'cpu' or 'cuda[:N]'")
    if device.startswith("cuda") and faiss.get_num_gpus() == 0:
        sys.exit(
            "bench_ann.py: error: --device cuda needs faiss with GPU support "
            "(faiss.get_num_gpus() is 0 here: install faiss-gpu, or use --device cpu)"
        )
    if min(sizes) <= K or args.queries < 1:
        sys.exit(
            f"bench_ann.py: error: --sizes must exceed {K} and --queries be positive"
        )

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    builder = Builder(device)

    info = meta(
        args,
        faiss_threads=faiss.omp_get_max_threads(),
        faiss_gpus=faiss.get_num_gpus(),
        k=K,
        data=(
            "two-level Gaussian mixture on the unit sphere "
            f"(cluster_size {args.cluster_size:.4f}, clusters_per_group "
            f"{args.clusters_per_group}, cluster_noise {args.cluster_noise}, "
            f"point_noise {args.point_noise}, seed {args.seed})"
        ),
        ef_construction=args.ef_construction,
        hnsw_max_size=args.hnsw_max_size,
        train_per_list=args.train_per_list,
        repeats=args.repeats,
        min_time_s=args.min_time,
        quick=args.quick,
    )

    def payload(runs, complete):
        info["load_average_1min_at_end"] = os.getloadavg()[0]
        return {"meta": info, "runs": runs, "complete": complete}

    runs = []
    for n in sizes:
        runs.append(bench_size(n, args, builder))
        if len(runs) < len(sizes):  # keep the finished sizes if the run is cut short
            write_json(args.output, payload(runs, False))
    print("\n" + summary(payload(runs, True)))
    write_json(args.output, payload(runs, True))


if __name__ == "__main__":
    main()
