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
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"rome": "#d62728", "c-rome": "#1f77b4", "c-rome-prefix": "#2ca02c"}


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


def save(figure, prefix):
    directory = os.path.dirname(prefix)
    if directory:
        os.makedirs(directory, exist_ok=True)
    figure.tight_layout()
    outputs = []
    for extension in ("png", "pdf"):
        path = "%s.%s" % (prefix, extension)
        tmp = path + ".tmp"
        figure.savefig(tmp, dpi=110, format=extension)
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
    panels = [(path, denominator_groups(load_records(path))) for path in paths]
    panels = [(path, groups) for path, groups in panels if groups]
    if not panels:
        fail("no denominators in %s" % ", ".join(paths))
    figure, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 4.0), squeeze=False)
    order = [("rome", True), ("rome", False), ("c-rome", True), ("c-rome", False)]
    for index, (path, groups) in enumerate(panels):
        axis = axes[0][index]
        labels = []
        for position, key in enumerate(order):
            values = [v for v in groups.get(key, []) if v > 0]
            labels.append("%s\nsubject %s\n(n=%d)" % ("ROME" if key[0] == "rome" else "C-ROME",
                                                      "first" if key[1] else "later", len(values)))
            if not values:
                continue
            if len(values) >= 5:
                axis.boxplot(values, positions=[position], widths=0.5, showfliers=False)
            jitter = [position + 0.18 * (((i * 7919) % 11) / 10.0 - 0.5) for i in range(len(values))]
            axis.scatter(jitter, values, s=22, color=COLORS[key[0]], alpha=0.75, edgecolors="none",
                         marker="o" if key[1] else "s",
                         label="%s, subject %s" % ("ROME" if key[0] == "rome" else "C-ROME",
                                                   "first" if key[1] else "later"))
        axis.set_yscale("log")
        axis.set_xticks(range(len(order)))
        axis.set_xticklabels(labels, fontsize=8)
        axis.set_ylabel("|denominator|  (key · u)")
        title = titles[index] if titles and index < len(titles) else os.path.basename(path)
        axis.set_title(title, fontsize=10)
        axis.legend(fontsize=7, loc="best")
        axis.grid(axis="y", alpha=0.3)
    save(figure, prefix)


def figure_pca(path, prefix, max_requests=8, title=None):
    document = load_records(path)
    if not isinstance(document, dict) or not document.get("pca"):
        fail("%s: no \"pca\" block (expected the JSON of `rome-collapse keys --json`)" % path)
    pca = document["pca"]
    rows = pca["requests"]
    # Subject-first requests first: they are the ones that show the anomaly.
    rows = sorted(rows, key=lambda r: (not r["subject_first"], r["index"]))[:max_requests]
    ratio = pca.get("explained_variance_ratio") or [float("nan")] * 2
    figure, axis = plt.subplots(figsize=(9.6, 5.0))
    cmap = plt.get_cmap("tab10")
    for number, row in enumerate(rows):
        color = cmap(number % 10)
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
    # Marker legend (shapes), separate from the request colours.
    from matplotlib.lines import Line2D
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
    axis.legend(fontsize=7, loc="lower left", bbox_to_anchor=(1.01, 0.0), title="request", title_fontsize=7)
    axis.set_xlabel("PC 1 (%.1f%% of variance)" % (100 * ratio[0]))
    axis.set_ylabel("PC 2 (%.1f%% of variance)" % (100 * ratio[1]))
    axis.set_title(title or "Keys at layer %s: bare prompt vs prefixed templates" % document.get("layer", "?"),
                   fontsize=10)
    axis.grid(alpha=0.3)
    save(figure, prefix)


def figure_ppl(paths, prefix, title=None):
    figure, axis = plt.subplots(figsize=(6.4, 4.6))
    plotted = 0
    before = []
    for path in paths:
        for row in result_rows(load_records(path)):
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
            first = _subject_first(row)
            axis.scatter(norm, after, s=36, color=COLORS.get(method, "grey"), marker="o" if first else "s",
                         alpha=0.8, edgecolors="black", linewidths=0.4,
                         label="%s, subject %s" % (method, "first" if first else "later"))
            plotted += 1
    if plotted == 0:
        fail("no results with update_norm and perplexity_after in %s" % ", ".join(paths))
    if isinstance(load_records(paths[0]), dict) and _ppl(load_records(paths[0]).get("ppl_before")) is not None:
        before.append(_ppl(load_records(paths[0])["ppl_before"]))
    if before:
        axis.axhline(sum(before) / len(before), color="black", linestyle="--", linewidth=0.8,
                     label="perplexity before the edit")
    handles, labels = axis.get_legend_handles_labels()
    unique = dict(zip(labels, handles))  # one legend entry per (method, subject position)
    axis.legend(unique.values(), unique.keys(), fontsize=7, loc="best")
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("‖ΔW‖  (update norm)")
    axis.set_ylabel("perplexity after the edit")
    axis.set_title(title or "Perplexity after one edit vs the size of the update", fontsize=10)
    axis.grid(alpha=0.3, which="both")
    save(figure, prefix)


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
    b.add_argument("--max-requests", type=int, default=8)
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
