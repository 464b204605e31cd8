"""``pml-soproxy embed | index | search | export``: arguments and dispatch."""

import argparse
import json
import os
import sys
from typing import List, Sequence

from .embeddings import EMBEDDINGS_FORMAT, SUFFIXES, manifest_path

MODEL_HELP = ("a run folder of `pml-soproxy train` (or its weights_best.safetensors "
              "/ checkpoint_latest.pt), or an export folder")  # fmt: skip


def _warn(message: str):
    print(f"pml-soproxy: warning: {message}", file=sys.stderr)


# fmt: off
def _model_arguments(parser, batch: bool = True):
    parser.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda:1, ...")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                        help="the trunk's precision (auto: bf16/fp16 on a GPU, fp32 on CPU)")
    if batch:
        parser.add_argument("--batch-size", type=int, default=64)
        parser.add_argument("--num-workers", type=int, default=None,
                            help="image-decoding processes (default: from the CPU count)")
# fmt: on


def _workers(args) -> int:
    if args.num_workers is not None:
        if args.num_workers < 0:
            raise ValueError(f"--num-workers must be >= 0, got {args.num_workers}")
        return args.num_workers
    from ..training.loading import auto_num_workers

    return auto_num_workers()  # the training loader's rule, one source


def is_embeddings_file(path: str) -> bool:
    if not (path.endswith(SUFFIXES) and os.path.isfile(manifest_path(path))):
        return False
    try:
        with open(manifest_path(path), encoding="utf-8") as f:
            return json.load(f).get("format") == EMBEDDINGS_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _split_sources(sources: Sequence[str], what: str):
    embedded = [s for s in sources if is_embeddings_file(s)]
    if embedded and len(embedded) != len(sources):
        raise ValueError(
            f"{what} mixes embedding files ({embedded[0]}) with images: pass one kind"
        )
    return bool(embedded)


def _report_failed(failed, where: str):
    if failed:
        path, reason = failed[0]
        _warn(f"{len(failed)} image(s) could not be read and were left out (listed in "
              f"{where}); first: {path}: {reason}")  # fmt: skip


def _retriever(model: str, args, index=None):
    from .model import load_model
    from .retriever import Retriever

    loaded = load_model(model, args.device, args.precision)
    return Retriever(loaded, index, batch_size=args.batch_size,
                     num_workers=_workers(args))  # fmt: skip


def _save(saved, failed, out: str, summary) -> int:
    """Save embeddings or an index to ``out`` (manifest beside it), warn about the
    images left out, then print ``summary()``."""
    saved.save(out)
    _report_failed(failed, manifest_path(out))
    print(summary())
    return 0


def _check_out(path: str, overwrite: bool):
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(
            f"{path} exists; pass --overwrite to replace it (or --add to extend an index)"
        )


def _embeddings_of(sources: List[str], model, args, what: str):
    from .embeddings import concatenate, load_embeddings

    if _split_sources(sources, what):
        return concatenate([load_embeddings(s) for s in sources])
    if model is None:
        raise ValueError(f"{what} are images: pass --model RUN to embed them")
    return model.embed(sources)


# ------------------------------------------------------------------ commands
def cmd_embed(args) -> int:
    _check_out(args.out, args.overwrite)
    embeddings = _retriever(args.model, args).embed(args.images)
    if len(embeddings) == 0:
        raise ValueError(f"none of the {len(embeddings.failed)} images could be read")
    return _save(embeddings, embeddings.failed, args.out, lambda: (
        f"embedded {len(embeddings)} images ({embeddings.dim}-d): {args.out} "
        f"+ {manifest_path(args.out)}"))  # fmt: skip


def cmd_index(args) -> int:
    from .index import Index

    existing = None
    if args.add:
        existing = Index.load(args.out)
    else:
        _check_out(args.out, args.overwrite)
    model_source = args.model or (existing.model.get("source") if existing else None)
    needs_model = not _split_sources(args.sources, "the sources")
    model = (
        _retriever(model_source, args, existing)
        if needs_model and model_source
        else None
    )
    embeddings = _embeddings_of(args.sources, model, args, "the sources")
    if existing is not None:
        added = existing.add(embeddings)
        index = existing
        print(f"added {added} new images ({len(embeddings) - added} already indexed)")
    else:
        index = Index.build(embeddings, args.factory, args.train_size,
                            args.search_params, device=args.device)  # fmt: skip
    return _save(index, embeddings.failed, args.out, lambda: (
        f"index: {args.out} ({len(index)} images, {index.dim}-d, "
        f"{index.manifest['factory']})"))  # fmt: skip


def cmd_search(args) -> int:
    from .index import Index
    from .retriever import results_of

    index = Index.load(args.index)
    if args.search_params:
        index.set_search_params(args.search_params)
    embedded = _split_sources(args.queries, "the queries")
    model = None
    if not embedded:
        source = args.model or index.model.get("source")
        if not source or not os.path.exists(source):
            raise FileNotFoundError(
                f"the model that built {args.index} is no longer at {source}: pass "
                "--model RUN (the same weights)"
            )
        model = _retriever(source, args, index)
    queries = _embeddings_of(args.queries, model, args, "the queries")
    if embedded:
        index.check_model({**queries.model, "embedding_size": queries.dim},
                          "the query embeddings")  # fmt: skip
    if len(queries) == 0:
        raise ValueError("none of the query images could be read")
    similarities, ids = index.search(queries.vectors, args.k, device=args.device)
    results = results_of(queries, similarities, ids, index)
    _report_failed(queries.failed, "the queries")
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=1))
    else:
        print("\n\n".join(format_result(r) for r in results))
    if args.grid:
        from ..datasets.base import load_rgb
        from .grid import retrieval_grid

        shown = min(len(results), args.grid_queries)
        retrieval_grid(
            lambda i: load_rgb(index.paths[i], "image", None),
            [load_rgb(p, "image", None) for p in queries.paths[:shown]],
            queries.labels[:shown], ids[:shown], similarities[:shown], index.labels,
            args.grid, query_names=[_caption(p, lab) for p, lab in zip(queries.paths, queries.labels)],
        )  # fmt: skip
        print(f"grid: {args.grid}", file=sys.stderr if args.json else sys.stdout)
    return 0


def _caption(path: str, label) -> str:
    name = os.path.basename(path)
    return name if label is None else f"{label}: {name}"


def format_result(result) -> str:
    label = f" (label {result.label})" if result.label is not None else ""
    lines = [f"query {result.query}{label}", f"{'rank':>5}  {'similarity':>10}  "
             f"{'label':<12}  path"]  # fmt: skip
    for hit in result.hits:
        mark = "" if hit.label is None or result.label is None else (
            " ✓" if hit.label == result.label else " ✗")  # fmt: skip
        lines.append(f"{hit.rank:>5}  {hit.similarity:>10.6f}  "
                     f"{str(hit.label) + mark:<12}  {hit.path}")  # fmt: skip
    return "\n".join(lines)


def cmd_export(args) -> int:
    from .export import export_model

    card = export_model(args.model, args.format, args.out_dir)
    check = card["check"]
    detail = (f", max |difference| vs torch {check['max_abs_diff']:.1e} "
              f"({check['against']})" if check.get("checked") else "")  # fmt: skip
    print(f"exported: {card['path']}{detail}")
    print(f"model card: {os.path.join(os.path.dirname(card['path']), 'MODEL_CARD.md')}")
    return 0


# -------------------------------------------------------------------- parsers
# fmt: off
def add_parsers(sub: argparse._SubParsersAction):
    embed = sub.add_parser("embed", help="embed image files and folders with a trained model")
    embed.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    embed.add_argument("images", nargs="+", metavar="IMAGES", help="image files and folders (recursive; a folder's subfolders name the classes)")
    embed.add_argument("--out", required=True, metavar="FILE", help=".safetensors or .npy; the manifest goes to FILE.json")
    embed.add_argument("--overwrite", action="store_true", help="replace FILE if it exists")
    _model_arguments(embed)
    embed.set_defaults(func=cmd_embed)

    index = sub.add_parser("index", help="build (or --add to) a faiss index from images or embedding files")
    index.add_argument("sources", nargs="+", metavar="SOURCES", help="image files/folders (with --model) or files of `pml-soproxy embed`")
    index.add_argument("--out", required=True, metavar="INDEX", help="the index file (manifest: INDEX.json)")
    index.add_argument("--model", metavar="MODEL", help=MODEL_HELP + "; needed for images unless --add (then the index's own)")
    index.add_argument("--factory", default="Flat", help="faiss index_factory string: Flat (exact, default), IVF4096,Flat, HNSW32, IVF4096,PQ64, ...")
    index.add_argument("--train-size", type=int, default=200_000, help="vectors sampled to train IVF/PQ indexes")
    index.add_argument("--search-params", default="", help="faiss ParameterSpace string stored with the index, e.g. nprobe=16 or efSearch=128")
    index.add_argument("--add", action="store_true", help="extend the existing INDEX instead of building a new one")
    index.add_argument("--overwrite", action="store_true", help="replace INDEX if it exists")
    _model_arguments(index)
    index.set_defaults(func=cmd_index)

    search = sub.add_parser("search", help="the k most similar indexed images of each query")
    search.add_argument("index", metavar="INDEX")
    search.add_argument("queries", nargs="+", metavar="QUERY", help="image files/folders, or files of `pml-soproxy embed`")
    search.add_argument("--k", type=int, default=10)
    search.add_argument("--model", metavar="MODEL", help="default: the model that built the index (same weights required)")
    search.add_argument("--json", action="store_true", help="print the results as JSON")
    search.add_argument("--grid", metavar="FILE.png", help="write each query with its top-k thumbnails (green: same class, red: other)")
    search.add_argument("--grid-queries", type=int, default=8, help="queries shown in the grid")
    search.add_argument("--search-params", default="", help="override the index's faiss search parameters")
    _model_arguments(search)
    search.set_defaults(func=cmd_search)

    export = sub.add_parser("export", help="export a run's model (images -> L2-normalised embeddings) with a model card")
    export.add_argument("model", metavar="RUN", help="a run folder of `pml-soproxy train` or its weights file")
    export.add_argument("--format", default="safetensors", choices=("safetensors", "onnx", "torchscript"))
    export.add_argument("--out-dir", metavar="DIR", help="default: RUN/export")
    export.set_defaults(func=cmd_export)
# fmt: on
