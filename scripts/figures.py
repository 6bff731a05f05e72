#!/usr/bin/env python3
"""Figures of "The Fall of ROME" from rome-collapse's JSON outputs (PNG and PDF).

  denominators CHECK.json...   (a) |denominator| of ROME vs C-ROME, subject first vs later
                                   (check reports, or edit/batch results that carry "denominator")
  pca KEYS.json                (b) 2-D PCA projection of the key clouds (from `keys --json`)
  ppl RESULTS.json[l]...       (c) perplexity after the edit against ||dW|| (edit/batch results)
  auto FILE...                 picks (a), (b) or (c) per file from its content

Every subcommand takes --out PREFIX (PREFIX.png and PREFIX.pdf are written); auto takes --out-dir.
Needs matplotlib (Debian: python3-matplotlib). Runs headless.
"""
import argparse
import json
import math
import os
import re
import sys

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: E402
    from matplotlib import ticker  # noqa: E402
    from matplotlib.lines import Line2D  # noqa: E402
except ImportError:
    sys.stderr.write(
        "figures.py: matplotlib is missing for %s.\n"
        "  Debian/Ubuntu: apt-get install python3-matplotlib   (then run it with /usr/bin/python3)\n"
        "  elsewhere:     python3 -m pip install matplotlib\n" % sys.executable)
    sys.exit(3)

COLORS = {"rome": "#d62728", "c-rome": "#1f77b4", "c-rome-prefix": "#2ca02c"}
NAMES = {"rome": "ROME", "c-rome": "C-ROME", "c-rome-prefix": "C-ROME + prefix"}
# Distinct shapes and fills, so that series with equal values (C-ROME and C-ROME + prefix share
# ΔW, hence perplexity) stay visible on top of each other: a filled disc, a ring around it, a cross inside.
MARKERS = {"rome": {"marker": "o", "s": 30, "facecolors": COLORS["rome"], "edgecolors": "black", "linewidths": 0.4},
           "c-rome": {"marker": "o", "s": 90, "facecolors": "none", "edgecolors": COLORS["c-rome"], "linewidths": 1.4},
           "c-rome-prefix": {"marker": "+", "s": 45, "c": COLORS["c-rome-prefix"], "linewidths": 1.2}}


def fail(message):
    sys.stderr.write("figures.py: error: %s\n" % message)
    sys.exit(2)


def load_records(path):
    """A JSON document, or JSON Lines (one object per line)."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as error:
        fail("%s: %s" % (path, error))
    try:
        return json.loads(text)
    except ValueError:
        pass
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except ValueError as error:
                fail("%s: line %d: malformed JSON (%s)" % (path, number, error))
    if not records:
        fail("%s: no JSON records" % path)
    return records


def result_rows(document):
    """Edit/batch results as a flat list: a single result, {"results": [...]}, {"cases": [...]}, a list, JSONL."""
    if isinstance(document, dict):
        for key in ("results", "cases", "edits"):
            if isinstance(document.get(key), list):
                return result_rows(document[key])
        return [document]
    rows = []
    for item in document:
        rows.extend(result_rows(item) if isinstance(item, (dict, list)) and not _is_result(item) else [item])
    return rows


def _is_result(item):
    return isinstance(item, dict) and ("update_norm" in item or "denominator" in item)


def _subject_first(row):
    if "subject_first" in row:
        return bool(row["subject_first"])
    request = row.get("request") or {}
    return str(request.get("prompt", "")).startswith("{}")


def _ppl(value):
    if isinstance(value, dict):
        value = value.get("mean")
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def model_name(path):
    """A readable model name from the provenance's path: "builtin:demo-gpt2" -> "demo-gpt2",
    ".../models--openai-community--gpt2/snapshots/<hash>" -> "openai-community/gpt2", "x/stories260K.bin" -> "stories260K"."""
    if not path:
        return "?"
    path = str(path)
    if path.startswith("builtin:"):
        return path[len("builtin:"):]
    parts = [p for p in path.replace("\\", "/").split("/") if p]
    for part in parts:
        if part.startswith("models--"):
            return part[len("models--"):].replace("--", "/")
    name = parts[-1] if parts else path
    if re.fullmatch(r"[0-9a-f]{40}", name) and len(parts) > 1:
        name = parts[-2]
    return re.sub(r"\.(bin|safetensors|gguf)$", "", name)


def run_facts(document):
    """(model, architecture, layer) from a check/keys report or an edit/batch result."""
    rows = [document] if isinstance(document, dict) else []
    if not rows or "provenance" not in rows[0]:
        rows = [r for r in result_rows(document) if isinstance(r, dict) and "provenance" in r][:1] or rows
    if not rows:
        return "?", "", None
    row = rows[0]
    provenance = row.get("provenance") or {}
    layer = row.get("layer", (provenance.get("hparams") or {}).get("layer"))
    return model_name(provenance.get("model")), provenance.get("architecture") or "", layer


def describe(document):
    model, architecture, layer = run_facts(document)
    text = model + (" (%s)" % architecture if architecture and architecture not in model else "")
    return text + (", layer %s" % layer if layer is not None else "")


def readable_log_axis(axis, which, values):
    """Log scale with ticks a reader can use: within about half a decade every 1..9 × 10^k is a
    labelled tick ("4", "5", "6", "7" instead of one "6×10⁰"), within 1.6 decades 1, 2, 5 × 10^k,
    beyond that the decades; plain numbers, never 10^k notation."""
    getattr(axis, "set_%sscale" % which)("log")
    target = axis.yaxis if which == "y" else axis.xaxis
    values = [v for v in values if v and v > 0 and math.isfinite(v)]
    span = math.log10(max(values) / min(values)) if values else 2
    if span < 0.6:
        target.set_major_locator(ticker.LogLocator(base=10, subs=range(1, 10), numticks=30))
        target.set_minor_locator(ticker.NullLocator())
    elif span < 1.6:
        target.set_major_locator(ticker.LogLocator(base=10, subs=(1, 2, 5), numticks=30))
        target.set_minor_locator(ticker.LogLocator(base=10, subs=range(1, 10), numticks=30))
        target.set_minor_formatter(ticker.NullFormatter())
    else:
        target.set_major_locator(ticker.LogLocator(base=10, numticks=30))
        target.set_minor_locator(ticker.LogLocator(base=10, subs=range(2, 10), numticks=30))
        target.set_minor_formatter(ticker.NullFormatter())
    target.set_major_formatter(ticker.FuncFormatter(lambda v, _: "%g" % v))


def save(figure, prefix, bottom_legend=False):
    directory = os.path.dirname(prefix)
    if directory:
        os.makedirs(directory, exist_ok=True)
    figure.tight_layout(rect=(0, 0.08 if bottom_legend else 0, 1, 1))
    outputs = []
    for extension in ("png", "pdf"):
        path = "%s.%s" % (prefix, extension)
        tmp = path + ".tmp"
        figure.savefig(tmp, dpi=110, format=extension, bbox_inches="tight")
        os.replace(tmp, path)  # atomic: a reader never sees half an image
        outputs.append(path)
    plt.close(figure)
    print("wrote " + " ".join(outputs))


def denominator_groups(document):
    """{(method, subject_first): [|denominator|, ...]} from a check report or edit results."""
    groups = {}
    if isinstance(document, dict) and document.get("command") == "check":
        for row in document["requests"]:
            for method, key in (("rome", "rome_denominator"), ("c-rome", "c_rome_denominator")):
                if row.get(key) is not None:
                    groups.setdefault((method, bool(row["subject_first"])), []).append(abs(row[key]))
        return groups
    for row in result_rows(document):
        if not isinstance(row, dict) or row.get("denominator") is None:
            continue
        method = row.get("method") or row.get("mode") or "?"
        if method == "c-rome-prefix":
            continue  # the same denominator as c-rome
        groups.setdefault((method, _subject_first(row)), []).append(abs(float(row["denominator"])))
    return groups


def figure_denominators(paths, prefix, titles=None):
    documents = [(path, load_records(path)) for path in paths]
    panels = [(path, document, denominator_groups(document)) for path, document in documents]
    panels = [panel for panel in panels if panel[2]]
    if not panels:
        fail("no denominators in %s" % ", ".join(paths))
    figure, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 4.2), squeeze=False)
    order = [("rome", True), ("rome", False), ("c-rome", True), ("c-rome", False)]
    for index, (path, document, groups) in enumerate(panels):
        axis = axes[0][index]
        labels, everything = [], []
        for position, key in enumerate(order):
            values = [v for v in groups.get(key, []) if v > 0]
            everything.extend(values)
            # The x labels name every group (method, subject position, count): no legend over the points.
            labels.append("%s\nsubject %s\n(n=%d)" % (NAMES[key[0]], "first" if key[1] else "later", len(values)))
            if not values:
                continue
            if len(values) >= 5:
                axis.boxplot(values, positions=[position], widths=0.5, showfliers=False,
                             medianprops={"color": "black"})
            jitter = [position + 0.18 * (((i * 7919) % 11) / 10.0 - 0.5) for i in range(len(values))]
            axis.scatter(jitter, values, s=24, color=COLORS[key[0]], alpha=0.8, edgecolors="black", linewidths=0.3,
                         marker="o" if key[1] else "s", zorder=3)
        readable_log_axis(axis, "y", everything)
        axis.set_xticks(range(len(order)))
        axis.set_xticklabels(labels, fontsize=8)
        axis.set_xlim(-0.6, len(order) - 0.4)
        axis.set_ylabel("|denominator|  (k · u, log scale)")
        count = sum(len(v) for k, v in groups.items() if k[0] == "rome")
        title = titles[index] if titles and index < len(titles) else "%s: %d requests" % (describe(document), count)
        axis.set_title(title, fontsize=10)
        axis.grid(axis="y", alpha=0.3)
    figure.suptitle("ROME's denominator kᵘ·u vs C-ROME's k̄·u (C-ROME + prefix has C-ROME's)", fontsize=10)
    save(figure, prefix)


def figure_pca(path, prefix, max_requests=0, title=None):
    document = load_records(path)
    if not isinstance(document, dict) or not document.get("pca"):
        fail("%s: no \"pca\" block (expected the JSON of `rome-collapse keys --json`)" % path)
    pca = document["pca"]
    every = pca["requests"]
    # Subject-first requests first: they are the ones that show the anomaly.
    rows = sorted(every, key=lambda r: (not r["subject_first"], r["index"]))
    if max_requests and max_requests < len(rows):
        rows = rows[:max_requests]
    first_total = sum(1 for r in every if r["subject_first"])
    first_shown = sum(1 for r in rows if r["subject_first"])
    ratio = pca.get("explained_variance_ratio") or [float("nan")] * 2
    figure, axis = plt.subplots(figsize=(10.4, 5.4))
    # One colour per request: tab10, else tab20 + tab20b (40 distinct colours).
    palette = list(plt.get_cmap("tab10").colors) if len(rows) <= 10 else \
        list(plt.get_cmap("tab20").colors) + list(plt.get_cmap("tab20b").colors)
    for number, row in enumerate(rows):
        color = palette[number % len(palette)]
        cloud = row["prefixed"]
        label = row["label"] if len(row["label"]) <= 38 else row["label"][:35] + "..."
        axis.scatter([p[0] for p in cloud], [p[1] for p in cloud], s=14, color=color, alpha=0.45,
                     edgecolors="none", label="%s%s" % (label, " (subject first)" if row["subject_first"] else ""))
        axis.scatter(*row["prefixed_mean"], s=90, color=color, marker="o", edgecolors="black", linewidths=0.8)
        axis.scatter(*row["unprefixed"], s=110, color=color, marker="X", edgecolors="black", linewidths=0.8)
        axis.annotate("", xy=row["unprefixed"], xytext=row["prefixed_mean"],
                      arrowprops={"arrowstyle": "->", "color": color, "lw": 0.8, "alpha": 0.8})
        for k, point in sorted((row.get("shifted") or {}).items(), key=lambda item: int(item[0])):
            axis.scatter(*point, s=40, color=color, marker="^", edgecolors="black", linewidths=0.4)
        for k, point in sorted((row.get("template_prefix_mean") or {}).items(), key=lambda item: int(item[0])):
            axis.scatter(*point, s=40, color=color, marker="D", edgecolors="black", linewidths=0.4)
    # Marker legend (shapes), separate from the request colours; both outside the axes.
    shapes = [Line2D([], [], linestyle="", marker="o", color="grey", alpha=0.5, markersize=4,
                     label="prefixed keys (templates)"),
              Line2D([], [], linestyle="", marker="o", color="grey", markeredgecolor="black", markersize=8,
                     label="k̄ (prefixed mean)"),
              Line2D([], [], linestyle="", marker="X", color="grey", markeredgecolor="black", markersize=9,
                     label="kᵘ (bare prompt)"),
              Line2D([], [], linestyle="", marker="^", color="grey", markeredgecolor="black", markersize=6,
                     label="bare prompt, positions + k"),
              Line2D([], [], linestyle="", marker="D", color="grey", markeredgecolor="black", markersize=6,
                     label="last k template tokens + prompt")]
    first = axis.legend(handles=shapes, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axis.add_artist(first)
    shown = "all %d requests" % len(every) if len(rows) == len(every) else \
        "%d of %d requests (%d of %d subject first; --max-requests 0 shows all)" % (
            len(rows), len(every), first_shown, first_total)
    axis.legend(fontsize=7, loc="lower left", bbox_to_anchor=(1.01, 0.0), title="request (%s)" % shown,
                title_fontsize=7, ncol=1 if len(rows) <= 12 else 2)
    axis.set_xlabel("PC 1 (%.1f%% of variance)" % (100 * ratio[0]))
    axis.set_ylabel("PC 2 (%.1f%% of variance)" % (100 * ratio[1]))
    axis.set_title(title or "%s: bare-prompt key kᵘ (X) vs the templates' keys; %s" % (describe(document), shown),
                   fontsize=10)
    axis.grid(alpha=0.3)
    save(figure, prefix)


def figure_ppl(paths, prefix, title=None):
    points = {True: {}, False: {}}  # subject first -> method -> [(norm, ppl)]
    before = []
    documents = [load_records(path) for path in paths]
    for document in documents:
        for row in result_rows(document):
            if not isinstance(row, dict):
                continue
            norm = row.get("update_norm")
            after = _ppl(row.get("perplexity_after", row.get("ppl_after")))
            if norm is None or after is None or not norm > 0:
                continue
            ppl_before = _ppl(row.get("perplexity_before", row.get("ppl_before")))
            if ppl_before is not None:
                before.append(ppl_before)
            method = row.get("method") or row.get("mode") or "?"
            points[_subject_first(row)].setdefault(method, []).append((float(norm), after))
        if isinstance(document, dict) and _ppl(document.get("ppl_before")) is not None:
            before.append(_ppl(document["ppl_before"]))
    total = sum(len(v) for side in points.values() for v in side.values())
    if total == 0:
        fail("no results with update_norm and perplexity_after in %s" % ", ".join(paths))
    panels = [first for first in (True, False) if points[first]]
    figure, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.4), squeeze=False, sharey=True)
    all_norms = [n for side in points.values() for v in side.values() for n, _ in v]
    all_ppl = [p for side in points.values() for v in side.values() for _, p in v] + before
    order = ["rome", "c-rome", "c-rome-prefix"]
    for index, first in enumerate(panels):
        axis = axes[0][index]
        methods = sorted(points[first], key=lambda m: order.index(m) if m in order else len(order))
        for method in methods:
            style = dict(MARKERS.get(method, {"marker": "s", "s": 30, "c": "grey"}))
            values = points[first][method]
            axis.scatter([n for n, _ in values], [p for _, p in values], zorder=3 + methods.index(method), **style)
        if before:
            axis.axhline(sum(before) / len(before), color="black", linestyle="--", linewidth=0.8)
        readable_log_axis(axis, "x", all_norms)
        readable_log_axis(axis, "y", all_ppl)
        axis.set_xlabel("‖ΔW‖  (update norm, log scale)")
        if index == 0:
            axis.set_ylabel("perplexity after the edit (log scale)")
        axis.set_title("subject %s (%d edits)" % ("first" if first else "later",
                                                  sum(len(v) for v in points[first].values())), fontsize=9)
        axis.grid(alpha=0.3, which="both")
    # One legend for the figure, below the panels: never over a point.
    present = [m for m in order if any(m in points[f] for f in panels)]
    present += sorted({m for f in panels for m in points[f]} - set(present))
    handles = []
    for method in present:
        style = MARKERS.get(method, {"marker": "s", "c": "grey"})
        handles.append(Line2D([], [], linestyle="", marker=style["marker"], markersize=8 if method == "c-rome" else 6,
                              markerfacecolor=style.get("facecolors", style.get("c")) if style["marker"] != "+" else None,
                              markeredgecolor=style.get("edgecolors", style.get("c")),
                              markeredgewidth=style.get("linewidths", 1.0),
                              label=NAMES.get(method, method) + (" (C-ROME's ΔW: the + inside the ring)"
                                                                 if method == "c-rome-prefix" else "")))
    if before:
        handles.append(Line2D([], [], color="black", linestyle="--", linewidth=0.8, label="before the edit"))
    figure.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    figure.suptitle(title or "%s: perplexity after one edit vs ‖ΔW‖ (%d edits)" % (describe(documents[0]), total),
                    fontsize=10)
    save(figure, prefix, bottom_legend=True)


def detect(path):
    document = load_records(path)
    if isinstance(document, dict) and document.get("command") == "check":
        return "denominators"
    if isinstance(document, dict) and document.get("command") == "keys":
        return "pca"
    if any(isinstance(r, dict) and _ppl(r.get("perplexity_after", r.get("ppl_after"))) is not None
           for r in result_rows(document)):
        return "ppl"
    if any(isinstance(r, dict) and r.get("denominator") is not None for r in result_rows(document)):
        return "denominators"
    fail("%s: cannot tell which figure this file is for (a check report, keys analysis or edit results)" % path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="figure")
    a = sub.add_parser("denominators", help="(a) |denominator| distributions")
    a.add_argument("inputs", nargs="+")
    a.add_argument("--out", required=True, help="output prefix (PREFIX.png, PREFIX.pdf)")
    a.add_argument("--titles", nargs="*", help="one panel title per input")
    b = sub.add_parser("pca", help="(b) PCA projection of the key clouds")
    b.add_argument("input")
    b.add_argument("--out", required=True)
    b.add_argument("--max-requests", type=int, default=0,
                   help="draw only the first N requests, subject-first ones first (default 0: all; the title says how many)")
    b.add_argument("--title")
    c = sub.add_parser("ppl", help="(c) perplexity after the edit vs ||dW||")
    c.add_argument("inputs", nargs="+")
    c.add_argument("--out", required=True)
    c.add_argument("--title")
    d = sub.add_parser("auto", help="one figure per input, chosen from its content")
    d.add_argument("inputs", nargs="+")
    d.add_argument("--out-dir", required=True)
    args = parser.parse_args(argv)
    if args.figure == "denominators":
        figure_denominators(args.inputs, args.out, args.titles)
    elif args.figure == "pca":
        figure_pca(args.input, args.out, args.max_requests, args.title)
    elif args.figure == "ppl":
        figure_ppl(args.inputs, args.out, args.title)
    elif args.figure == "auto":
        for path in args.inputs:
            kind = detect(path)
            stem = os.path.splitext(os.path.basename(path))[0]
            prefix = os.path.join(args.out_dir, "%s-%s" % (stem, kind))
            if kind == "denominators":
                figure_denominators([path], prefix)
            elif kind == "pca":
                figure_pca(path, prefix)
            else:
                figure_ppl([path], prefix)
    else:
        parser.print_help()
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
