"""powerful-benchmarker's ax dependencies, and the import that does without them.

PB 0.9.33's ``bayes_opt_runner`` imports ax-platform 0.1-era modules (``ax.modelbridge``,
``ax.plot``, ...) that current ax releases no longer have. :data:`AX_NAMES` lists what
it imports at module level, :data:`REPLACED` the ``BayesOptRunner`` methods that use
them (all replaced by :mod:`.optuna_runner`), and :func:`import_bayes_opt_runner`
imports PB's module with those names bound to :class:`AxPlaceholder`\\ s, which raise
if anything still calls them.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Dict, Tuple

__all__ = [
    "AX_NAMES",
    "PB_MODULE",
    "REPLACED",
    "AxPlaceholder",
    "import_bayes_opt_runner",
]

PB_MODULE = "powerful_benchmarker.runners.bayes_opt_runner"

#: What PB's bayes_opt_runner imports from ax at module level: {module: names}.
AX_NAMES: Dict[str, Tuple[str, ...]] = {
    "ax.service.ax_client": ("AxClient",),
    "ax.service.utils.best_point": ("get_best_raw_objective_point",),
    "ax.plot.render": ("plot_config_to_html",),
    "ax.utils.report.render": ("render_report_elements",),
    "ax.plot.contour": ("interact_contour",),
    "ax.modelbridge.registry": ("Models",),
    "ax.core.base_trial": ("TrialStatus",),
    "ax.plot.slice": ("interact_slice",),
    "ax.plot.helper": ("get_range_parameters",),
    "ax.core.parameter": ("RangeParameter", "ParameterType"),
}

#: BayesOptRunner methods that use ax (or its files), replaced in :mod:`.optuna_runner`.
REPLACED = (
    "run",
    "get_ax_client",
    "get_parameters_and_trial_index",
    "get_all_log_paths",
    "save_new_log",
    "update_records",
    "update_bayes_opt_search_space",
    "save_best_parameters",
    "plot_progress",
)


class AxPlaceholder:
    """Stands for an ax name PB imports; any use says why it is gone."""

    def __init__(self, name: str):
        self._name = name

    def _fail(self, *args, **kwargs):
        raise RuntimeError(
            f"powerful-benchmarker's BayesOptRunner reached ax's {self._name}, which "
            "pml_soproxy.benchmarker.bayes_opt replaces (Optuna); please report this"
        )

    __call__ = _fail

    def __getattr__(self, attribute):
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        self._fail()


def import_bayes_opt_runner():
    """PB's ``bayes_opt_runner`` module, imported with its ax names bound to
    :class:`AxPlaceholder`\\ s (whether or not some ax is installed: none of them is
    used by :mod:`.optuna_runner`'s subclass). ``sys.modules`` is left as it was,
    but for the PB module itself."""
    if PB_MODULE in sys.modules:
        return sys.modules[PB_MODULE]
    saved = {name: sys.modules[name] for name in AX_NAMES if name in sys.modules}
    try:
        for name, attributes in AX_NAMES.items():
            stub = types.ModuleType(name)
            stub.__dict__.update({a: AxPlaceholder(f"{name}.{a}") for a in attributes})
            sys.modules[name] = stub
        return importlib.import_module(PB_MODULE)
    finally:
        for name in AX_NAMES:
            sys.modules.pop(name, None)
        sys.modules.update(saved)
