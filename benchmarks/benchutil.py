"""Helpers shared by the benchmark scripts: run metadata, peak memory, tables."""

import json
import os
import platform
import resource
import time

import torch


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def meta(args, **extra):
    """Date, machine, library versions and thread count of this run."""
    import pytorch_metric_learning
    import timm

    device = torch.device(getattr(args, "device", "cpu"))
    info = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": cpu_name(),
        "arch": platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "device": str(device),
        "gpu": (
            torch.cuda.get_device_name(device)
            if device.type == "cuda" and torch.cuda.is_available()
            else None
        ),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "pytorch_metric_learning": pytorch_metric_learning.__version__,
        "load_average_1min_at_start": os.getloadavg()[0],
    }
    try:
        import faiss

        info["faiss"] = faiss.__version__
    except ImportError:
        pass
    info.update(extra)
    return info


def write_json(path, payload):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1)
    os.replace(tmp, path)
    print(f"wrote {path}")


def rss_bytes():
    """Current resident set size of this process."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes():
    """Peak resident set size of this process so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def high_water_rss_bytes():
    """Peak resident set size of this process's own memory (VmHWM). Unlike
    ``ru_maxrss``, which a child started by subprocess inherits from its parent's
    size at the fork (Linux keeps it across exec), this starts afresh at exec, so
    ``high_water_rss_bytes() - rss_bytes()`` measures the child's work alone."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return peak_rss_bytes()


def synchronize(device):
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def table(headers, rows):
    """Plain-text table (also valid Markdown)."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells
    ]
    return "\n".join([line, rule] + body)
