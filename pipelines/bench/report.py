"""What the benchmark reports: ratios derived from the measurements, Markdown tables, the chart."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from dali_cutmix.files import write_whole

from .plan import AUGMENTS, MIXES, short_epochs, spec_label

__all__ = ["ceiling_note", "derive", "derive_augment", "format_table", "plot_results"]


def derive(results: dict[str, list[dict[str, Any]]]) -> None:
    """Adds ratios: vs torchvision (same mix), CutMix cost, % of the training ceiling."""
    loaders = [r for r in results["loaders"] if "error" not in r]
    by_key = {(r["loader"], r["device"], r["mix"]): r for r in loaders}
    for r in loaders:
        baseline = by_key.get(("torchvision", "cpu", r["mix"]), {}).get("images_per_s")
        if baseline:
            r["vs_torchvision"] = r["images_per_s"] / baseline
        off = by_key.get((r["loader"], r["device"], "off"), {})
        plain = off.get("images_per_s")
        if plain and r["mix"] != "off":
            r["mix_cost_pct"] = 100.0 * (plain - r["images_per_s"]) / plain
            if _no_spread(r) or _no_spread(off):
                r["mix_cost_note"] = ONE_WINDOW_NOTE
            elif _spreads_overlap(r, off):
                r["mix_cost_note"] = NOISE_NOTE
    training = [r for r in results["training"] if "error" not in r]
    ceiling = next((r for r in training if r["loader"] == "synthetic"), None)
    for r in training:
        if ceiling and ceiling["images_per_s"]:
            r["pct_of_ceiling"] = 100.0 * r["images_per_s"] / ceiling["images_per_s"]
            note = ceiling_note(r, ceiling)
            if note:
                r["ceiling_note"] = note
    derive_augment(results.get("augment", []))


# A mixing cost (or gain) smaller than the windows' spread: a negative cost on a short run
# read as mixing that sped the loader up.
NOISE_NOTE = "within the min-max spreads of the two rows: this run does not resolve it"


# A row of one window has no spread to judge a cost by (--windows 1 printed "-3.1 %" as a
# gain of mixing, unmarked).
ONE_WINDOW_NOTE = "one window per row: no spread to judge it by; this run does not resolve it"


def _of_ceiling(row: dict[str, Any]) -> str:
    """A training row's share of its ceiling to 0.1 % ("97 %" was 96.6 %, under the 97 %
    goal), or "-" where no ceiling was measured (it printed "0 %")."""
    pct = row.get("pct_of_ceiling")
    return "-" if pct is None else f"{pct:.1f} %"


def _no_spread(row: dict[str, Any]) -> bool:
    """Whether a row was timed in fewer than two windows (``--windows 1``)."""
    # "window_rates"; results.json written before it held them as "windows"
    windows = row.get("window_rates", row.get("windows"))
    if isinstance(windows, list):
        return len(windows) < 2
    return "min" in row and row["min"] == row.get("max")


def _spreads_overlap(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether the min-max ranges of the windows of two rows overlap (either lacking one:
    no)."""
    if not all(key in row for row in (a, b) for key in ("min", "max")):
        return False
    return max(a["min"], b["min"]) <= min(a["max"], b["max"])


def ceiling_note(row: dict[str, Any], ceiling: dict[str, Any]) -> str | None:
    """Why a training feed measured faster than its ceiling, or ``None`` when it did not.

    The ceiling (the model fed one batch already on the device) is measured in
    its own process and windows, so a feed can come out above it: within noise
    when the two min-max spreads overlap, else by more than the spread.
    """
    if row is ceiling or row["images_per_s"] <= ceiling["images_per_s"]:
        return None
    low, high = row.get("min", row["images_per_s"]), ceiling.get("max", ceiling["images_per_s"])
    if _no_spread(row) or _no_spread(ceiling):
        spread = "one window each: no spread to judge it by; re-run with more --train-windows"
    elif low <= high:
        spread = "within noise"
    else:
        spread = "beyond the min-max spread; re-run to confirm"
    return f"ceiling measured in another window; {spread}"


def derive_augment(rows: list[dict[str, Any]]) -> None:
    """Adds each row's ms per batch and, against augment "none" on the same loader, its cost.

    ``added_ms_per_batch`` is the time the augmentation adds to a batch and
    ``cost_pct`` that time as a share of the batch's time without it
    (``100 * (plain_rate / rate - 1)``): +100 % means twice as long per batch.
    ``vs_torchvision`` compares with the torchvision loader doing the same.
    """
    ok = [r for r in rows if "error" not in r]
    rates = {(r["loader"], r["device"], r["augment"]): r["images_per_s"] for r in ok}
    for r in ok:
        rate = r["images_per_s"]
        r["ms_per_batch"] = 1000.0 * r["batch_size"] / rate
        plain = rates.get((r["loader"], r["device"], "none"))
        if plain and r["augment"] != "none":
            r["added_ms_per_batch"] = r["ms_per_batch"] - 1000.0 * r["batch_size"] / plain
            r["cost_pct"] = 100.0 * (plain / rate - 1.0)
        baseline = rates.get(("torchvision", "cpu", r["augment"]))
        if baseline:
            r["vs_torchvision"] = rate / baseline


def _figure(rows: list[dict[str, Any]]) -> str:
    """What ``images_per_s`` is: all windows together, or (results written before the
    benchmark kept the median beside it) the windows' median."""
    measured = [r for r in rows if "error" not in r]
    return "median" if any("median" not in r for r in measured) else "all windows"


def _loader_name(r: dict[str, Any]) -> str:
    return r["loader"] if r["loader"] != "dali" else f"DALI {r['device'].upper()}"


def format_table(report: dict[str, Any]) -> str:
    """The run's figures as Markdown tables (the README shows the same), one per section run."""
    env = report["environment"]
    machine = env.get("gpu", "no GPU") + f", {env['cpu_count']} CPU cores"
    lines = [f"Machine: {machine}; DALI {env['dali']}, torch {env['torch']}"]
    if report["loaders"]:
        lines += _loaders_table(report["loaders"])
    if report["training"]:
        lines += ["", "| training feed | images/s | % of ceiling |", "|---|---:|---:|"]
        for r in report["training"]:
            if "error" in r:
                lines.append(f"| {r['loader']} | failed | |")
                continue
            note = f" ({r['ceiling_note']})" if "ceiling_note" in r else ""
            lines.append(
                f"| {r['arch']} on {r['device']} <- {r['loader']} ({r['mix']}) "
                f"| {r['images_per_s']:.1f} | {_of_ceiling(r)}{note} |"
            )
    if report["scaling"]:
        lines += [
            "",
            "| scaling | loader | value | images/s | host PSS MiB | peak host RSS MiB | GPU "
            "MiB in use |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for r in report["scaling"]:
            if "error" in r:
                continue
            name = r["loader"] if r["loader"] != "dali" else f"dali-{r['device']}"
            # the process tree's (DataLoader workers included) where measured, else the main one's
            rate, rss = r["images_per_s"], r.get("tree_peak_rss_mb") or r["peak_rss_mb"]
            # the tree's PSS: shared pages once (results before it: "-")
            pss = f"{r['tree_pss_mb']:.0f}" if r.get("tree_pss_mb") else "-"
            gpu = f"{r['gpu_used_mb']:.0f}" if "gpu_used_mb" in r else "-"
            lines.append(
                f"| {r['sweep']} | {name} | {r[r['sweep']]} | {rate:.1f} | {pss} | {rss:.0f} "
                f"| {gpu} |"
            )
    if report.get("augment"):
        lines += _augment_table(report["augment"])
    short = sorted(
        {
            r["epoch_batches"]
            for section in ("loaders", "training", "scaling", "augment")
            for r in report.get(section, [])
            if short_epochs(r)
        }
    )
    if short:
        # the generated set grows with --per-class; "a larger --data" advised a flag not given
        generated = "config" in report and report["config"].get("data") is None
        larger = "a larger --per-class" if generated else "a larger --data"
        lines += [
            "",
            f"Warning: epochs of {', '.join(map(str, short))} batches, fewer than the warm-up "
            "and windows together: the figures include several epoch starts, which a "
            f"full-size set hides (give {larger}, or fewer --windows/--window-batches).",
        ]
    return "\n".join(lines)


# The characters of an error a table cell shows (results.json holds it whole).
CELL_CHARS = 100


def _cell(error: str) -> str:
    """An error's start, as one Markdown table cell: on one line, and its own "|" would
    open new columns."""
    text = " ".join(error.split()).replace("|", "/")
    return text if len(text) <= CELL_CHARS else text[: CELL_CHARS - 3] + "..."


def _loaders_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "",
        f"| loader | mix | images/s ({_figure(rows)}) | min-max | vs torchvision | mixing cost |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {spec_label(r)} | failed: {_cell(r['error'])} | | | | |")
            continue
        cost = f"{r['mix_cost_pct']:.1f} %" if "mix_cost_pct" in r else "-"
        if r.get("mix_cost_note") == ONE_WINDOW_NOTE:
            cost += " (one window: unresolved)"
        elif "mix_cost_note" in r:
            cost += " (within noise)"
        ratio = f"{r['vs_torchvision']:.2f}x" if "vs_torchvision" in r else "-"
        lines.append(
            f"| {_loader_name(r)} ({r['workers']} w) | {r['mix']} | {r['images_per_s']:.1f} "
            f"| {r['min']:.0f}-{r['max']:.0f} | {ratio} | {cost} |"
        )
    return lines


def _augment_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "",
        f"| loader | augmentation | images/s ({_figure(rows)}) | min-max | ms per batch "
        "| added per batch (share of none) | vs torchvision |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        label = AUGMENTS[r["augment"]].label
        if "error" in r:
            lines.append(f"| {spec_label(r)} | {label} failed: {_cell(r['error'])} | | | | | |")
            continue
        added = (
            f"{r['added_ms_per_batch']:+.1f} ms ({r['cost_pct']:+.0f} %)"
            if "cost_pct" in r
            else "-"
        )
        ratio = f"{r['vs_torchvision']:.2f}x" if "vs_torchvision" in r else "-"
        lines.append(
            f"| {_loader_name(r)} ({r['workers']} w) | {label} | {r['images_per_s']:.1f} "
            f"| {r['min']:.0f}-{r['max']:.0f} | {r['ms_per_batch']:.1f} | {added} | {ratio} |"
        )
    return lines


def plot_results(report: dict[str, Any], path: Path) -> None:
    """One panel per section run: loader and training throughput bars (min-max whiskers),
    the two scaling sweeps, the augmentations' throughput."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        panel
        for panel, section in (
            (_plot_loaders, "loaders"),
            (_plot_training, "training"),
            (functools.partial(_plot_scaling, sweep="workers"), "scaling"),
            (functools.partial(_plot_scaling, sweep="batch_size"), "scaling"),
            (functools.partial(_plot_scaling, sweep="hw_decoder_load"), "scaling"),
            (_plot_augment, "augment"),
        )
        if report.get(section)
        and (
            section != "scaling"
            or any(r.get("sweep") == panel.keywords["sweep"] for r in report["scaling"])
        )
    ]
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(5 * max(len(panels), 1), 4.5))
    for panel, ax in zip(panels, fig.axes):
        panel(ax, report)
    env = report["environment"]
    fig.suptitle(f"{env.get('gpu', 'CPU only')}, {env['cpu_count']} CPU cores, DALI {env['dali']}")
    fig.tight_layout()
    try:
        write_whole(path, lambda part: fig.savefig(part, dpi=100))
    finally:
        plt.close(fig)


def _feeds(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The (loader, device) pairs among ``rows``, torchvision first."""
    return sorted(
        {(r["loader"], r["device"]) for r in rows}, key=lambda k: (k[0] != "torchvision", k)
    )


def _spread(rows: list[dict[str, Any]]) -> list[list[float]]:
    """Matplotlib's ``yerr`` for ``rows``: the distance from each figure down to min, up to max."""
    return [
        [r["images_per_s"] - r.get("min", r["images_per_s"]) for r in rows],
        [r.get("max", r["images_per_s"]) - r["images_per_s"] for r in rows],
    ]


def _grouped_bars(ax, rows: list[dict[str, Any]], field: str, groups: list[str]) -> None:
    """Bars of images/s (min-max whiskers), one group per value of ``field``, one bar per feed."""
    names = _feeds(rows)
    width = 0.8 / max(len(names), 1)
    for k, (loader, device) in enumerate(names):
        found = {r[field]: r for r in rows if (r["loader"], r["device"]) == (loader, device)}
        picked = [(i, found[g]) for i, g in enumerate(groups) if g in found]
        ax.bar(
            [i + k * width for i, _ in picked],
            [r["images_per_s"] for _, r in picked],
            width,
            yerr=_spread([r for _, r in picked]),
            capsize=3,
            label=loader if loader != "dali" else f"DALI {device.upper()}",
        )
    ax.set_xticks([i + width * (len(names) - 1) / 2 for i in range(len(groups))], groups)
    ax.set_ylabel(f"images/s ({_figure(rows)}, min-max)")
    if names:  # every row failed: no bar, and matplotlib warned of a legend of nothing
        ax.legend(fontsize=8)


def _plot_loaders(ax, report: dict[str, Any]) -> None:
    _grouped_bars(ax, [r for r in report["loaders"] if "error" not in r], "mix", list(MIXES))
    ax.set_title("Loader throughput by mixing")


def _plot_training(ax, report: dict[str, Any]) -> None:
    train = [r for r in report["training"] if "error" not in r]
    bars = ax.bar(
        [r["loader"] for r in train],
        [r["images_per_s"] for r in train],
        yerr=_spread(train),
        capsize=3,
        color="tab:green",
    )
    marks = [_of_ceiling(r) + (" *" if "ceiling_note" in r else "") for r in train]
    ax.bar_label(bars, marks, label_type="center")
    notes = sorted({r["ceiling_note"] for r in train if "ceiling_note" in r})
    if notes:  # a bar above 100 % of its ceiling says why, under the axis
        ax.set_xlabel("\n".join(f"* {note}" for note in notes), fontsize=7)
    ax.set_ylabel(f"images/s ({_figure(train)}, min-max)")
    ax.set_title(f"Training {train[0]['arch']} on {train[0]['device']}" if train else "Training")


def _plot_scaling(ax, report: dict[str, Any], *, sweep: str) -> None:
    rows = [r for r in report["scaling"] if "error" not in r and r["sweep"] == sweep]
    for loader, device in _feeds(rows):
        mine = [r for r in rows if (r["loader"], r["device"]) == (loader, device)]
        xs = [r[sweep] for r in mine]
        ys = [r["images_per_s"] for r in mine]
        ax.errorbar(xs, ys, yerr=_spread(mine), fmt="-o", capsize=3, label=f"{loader}-{device}")
    if sweep != "hw_decoder_load":
        ax.set_xscale("log", base=2)
    ax.set_xlabel(
        {
            "workers": "DALI threads / DataLoader workers",
            "batch_size": "batch size",
            "hw_decoder_load": "hw_decoder_load (share of JPEGs on the hardware decoder)",
        }[sweep]
    )
    ax.set_ylabel(f"images/s ({_figure(rows)}, min-max)")
    ax.set_title(f"Scaling with {sweep.replace('_', ' ')} (CutMix on)")
    if rows:
        ax.legend(fontsize=8)


def _plot_augment(ax, report: dict[str, Any]) -> None:
    _grouped_bars(ax, [r for r in report["augment"] if "error" not in r], "augment", list(AUGMENTS))
    ax.tick_params(axis="x", labelrotation=30)
    ax.set_title("Loader throughput by augmentation")
