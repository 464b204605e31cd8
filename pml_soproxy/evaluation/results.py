"""Query-vs-gallery evaluation and the metrics table."""

from typing import Mapping, Sequence, Union

from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

from .metrics import _RECALL_PREFIX


def evaluate_query_gallery(
    calculator: AccuracyCalculator,
    query,
    query_labels,
    gallery,
    gallery_labels,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> dict:
    """Query-vs-gallery evaluation (In-Shop): the gallery is the reference set and
    no item is excluded (a gallery copy of a query counts as a neighbour)."""
    return calculator.get_accuracy(
        query,
        query_labels,
        gallery,
        gallery_labels,
        ref_includes_query=False,
        include=include,
        exclude=exclude,
    )


def _sort_key(item):
    i, name = item
    if name.startswith(_RECALL_PREFIX) and name[len(_RECALL_PREFIX) :].isdigit():
        return (0, int(name[len(_RECALL_PREFIX) :]), i)
    return (1, 0, i)


def format_accuracies(
    accuracies: Mapping[str, Union[float, Sequence[float]]], digits: int = 2
) -> str:
    """Two-column text table, values in percent; recall_at_* first, sorted by K.

    Per-class lists (``return_per_class``) are shown as their mean over classes
    with a finite value.
    """
    names = [n for _, n in sorted(enumerate(accuracies), key=_sort_key)]
    rows = []
    for name in names:
        value = accuracies[name]
        if isinstance(value, (list, tuple)):
            finite = [float(v) for v in value if v == v]
            mean = sum(finite) / len(finite) if finite else float("nan")
            text = f"{100 * mean:.{digits}f} (mean of {len(finite)} classes)"
        else:
            text = f"{100 * float(value):.{digits}f}"
        rows.append((name, text))
    width = max([len("metric")] + [len(n) for n, _ in rows])
    lines = [f"{'metric':<{width}}  value (%)", f"{'-' * width}  ---------"]
    lines += [f"{n:<{width}}  {t}" for n, t in rows]
    return "\n".join(lines)
