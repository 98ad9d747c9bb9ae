"""Writing an evaluation: ``metrics.json`` (every number) and ``index.html``.

The HTML page is self-contained (plots are PNGs embedded as data URLs) and
names studies by Study Instance UID only: no patient names or IDs.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from dicomnode.monitoring.evaluate import Evaluation

__all__ = ["write_report"]

WORST_CASES = 3


def _png(figure: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape(str(value))


def _ci(entry: dict[str, Any], key: str = "ci95") -> str:
    ci = entry.get(key)
    return f"{ci[0]:.3f} to {ci[1]:.3f}" if ci else "-"


def _figures_segmentation(evaluation: Evaluation) -> list[str]:
    import matplotlib.pyplot as plt

    parts: list[str] = []
    summary = evaluation.metrics["segmentation"]
    cases = evaluation.metrics["cases"]
    if not summary:
        return parts
    names = sorted(summary)
    dice = [
        [c["structures"][n]["dice"] or 0.0 for c in cases if n in c.get("structures", {})]
        for n in names
    ]
    figure, axes = plt.subplots(figsize=(1.6 + 1.4 * len(names), 3.2))
    axes.boxplot(dice, tick_labels=names)
    for i, values in enumerate(dice, start=1):
        axes.scatter(np.full(len(values), i), values, s=10, alpha=0.6)
    axes.set_ylabel("Dice")
    axes.set_ylim(0, 1.02)
    axes.set_title("Dice per structure")
    parts.append(f'<h2>Dice distribution</h2><img alt="Dice per structure" src="{_png(figure)}">')
    rows = []
    for name in names:
        entry = summary[name]
        for key in (
            "dice",
            "hd95_mm",
            "asd_mm",
            "surface_dice",
            "volume_error_ml",
            "volume_error_pct",
        ):
            rows.append(
                f"<tr><td>{html.escape(name)}</td><td>{key}</td><td>{_fmt(entry[key]['mean'])}</td>"
                f"<td>{_ci(entry[key])}</td><td>{entry[key]['n']}</td></tr>"
            )
    parts.append(
        "<h2>Segmentation</h2><table><tr><th>structure</th><th>metric</th><th>mean</th>"
        "<th>95 % CI</th><th>n</th></tr>" + "".join(rows) + "</table>"
    )
    strata_rows = []
    for name in names:
        for keyword, groups in summary[name]["strata"].items():
            for value, entry in groups.items():
                strata_rows.append(
                    f"<tr><td>{html.escape(name)}</td><td>{keyword}</td><td>{_fmt(value)}</td>"
                    f"<td>{_fmt(entry['dice']['mean'])}</td><td>{_ci(entry['dice'])}</td>"
                    f"<td>{entry['dice']['n']}</td></tr>"
                )
    parts.append(
        "<h2>Dice per stratum</h2><table><tr><th>structure</th><th>attribute</th><th>value</th>"
        "<th>mean Dice</th><th>95 % CI</th><th>n</th></tr>" + "".join(strata_rows) + "</table>"
    )
    worst = sorted(
        (c["structures"][n]["dice"] or 0.0, c["study_uid"], n)
        for c in cases
        for n in c.get("structures", {})
    )[:WORST_CASES]
    tiles = []
    for score, uid, name in worst:
        found = evaluation.key_slices.get((uid, name))
        if found is None:
            continue
        figure, axes = plt.subplots(figsize=(3, 3))
        axes.imshow(found.image, cmap="gray")
        axes.contour(found.reference, levels=[0.5], colors="lime", linewidths=1)
        axes.contour(found.prediction, levels=[0.5], colors="red", linewidths=1)
        axes.set_axis_off()
        axes.set_title(f"slice {found.index + 1}", fontsize=8)
        tiles.append(
            f'<figure><img alt="prediction vs reference" src="{_png(figure)}"><figcaption>'
            f"{html.escape(name)}, Dice {score:.3f}<br><small>{html.escape(uid)}</small>"
            "</figcaption></figure>"
        )
    parts.append(
        "<h2>Worst cases</h2><p>Reference in green, prediction in red, on the slice where "
        'they disagree most.</p><div class="tiles">' + "".join(tiles) + "</div>"
    )
    return parts


def _figures_classification(evaluation: Evaluation) -> list[str]:
    import matplotlib.pyplot as plt

    parts: list[str] = []
    for name, entry in evaluation.metrics["classification"].items():
        title = html.escape(name)
        rows = "".join(
            f"<tr><td>{key}</td><td>{_fmt(entry[key]['value'])}</td><td>{_ci(entry[key])}</td></tr>"
            for key in ("auc", "sensitivity", "specificity", "ppv", "npv", "brier")
        )
        parts.append(
            f"<h2>{title}</h2><p>{entry['n']} studies, {entry['positives']} positive; "
            f"threshold {entry['threshold']:g}</p><table><tr><th>metric</th><th>value</th>"
            f"<th>95 % CI</th></tr>{rows}</table>"
        )
        roc = entry.get("roc")
        if roc:
            figure, axes = plt.subplots(figsize=(3.4, 3.4))
            axes.fill_between(
                roc["fpr"], roc["tpr_low"], roc["tpr_high"], alpha=0.3, label="95 % CI"
            )
            axes.plot(roc["fpr"], roc["tpr"], label=f"AUC {entry['auc']['value']:.3f}")
            axes.plot([0, 1], [0, 1], "k:", linewidth=0.8)
            axes.set_xlabel("1 - specificity")
            axes.set_ylabel("sensitivity")
            axes.legend(loc="lower right", fontsize=8)
            parts.append(f'<img alt="ROC {title}" src="{_png(figure)}">')
        reliability = entry.get("reliability")
        if reliability:
            figure, axes = plt.subplots(figsize=(3.4, 3.4))
            axes.plot([0, 1], [0, 1], "k:", linewidth=0.8)
            axes.plot(reliability["mean_predicted"], reliability["observed_fraction"], "o-")
            axes.set_xlabel("mean predicted probability")
            axes.set_ylabel("observed fraction positive")
            axes.set_title(f"Reliability (Brier {entry['brier']['value']:.3f})", fontsize=9)
            parts.append(f'<img alt="reliability {title}" src="{_png(figure)}">')
    return parts


def write_report(evaluation: Evaluation, out: Path) -> Path:
    """Write ``metrics.json`` and ``index.html`` under ``out``; return the page's path."""
    import matplotlib

    matplotlib.use("Agg")
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(
        json.dumps(evaluation.metrics, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    metrics = evaluation.metrics
    pipeline = metrics["pipeline"]
    errors = [c for c in metrics["cases"] if "error" in c]
    body = [
        f"<h1>Evaluation of {html.escape(pipeline['name'])} "
        f"{html.escape(pipeline['version'])}</h1>",
        f"<p>{metrics['set']['studies']} studies, {metrics['set']['scored']} scored, "
        f"{metrics['set']['errors']} not scored. Every number is in "
        '<a href="metrics.json">metrics.json</a>.</p>',
        *_figures_segmentation(evaluation),
        *_figures_classification(evaluation),
    ]
    if errors:
        body.append(
            "<h2>Not scored</h2><ul>"
            + "".join(
                f"<li>{html.escape(c['study_uid'])}: {html.escape(c['error'])}</li>" for c in errors
            )
            + "</ul>"
        )
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>Evaluation of {html.escape(pipeline['name'])}</title><style>"
        "body{font-family:sans-serif;margin:1.5em;max-width:70em}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #bbb;padding:2px 6px}"
        ".tiles{display:flex;gap:1em;flex-wrap:wrap}figure{margin:0}"
        "</style></head><body>" + "".join(body) + "</body></html>\n"
    )
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index
