"""Writing the results: ``results.md`` (tables), ``results.json`` (everything) and
``msgs_per_s.png`` (a bar chart per scenario, both systems; needs matplotlib, the ``bench``
extra — without it the chart is skipped and the Markdown says so).

The input is the dict the runner builds (see :func:`bench.run.run_benchmarks`): a
``header`` (date, machine, versions), ``throughput`` rows (one per scenario and load, with
per-system medians), ``connections`` (per system) and ``parser``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["chart", "markdown", "write_results"]

SYSTEMS = ("mta", "postfix")


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _pair(a: Any, b: Any, digits: int = 1) -> str:
    if a is None and b is None:
        return "-"
    return f"{_fmt(a, digits)} / {_fmt(b, digits)}"


def _header_lines(header: dict[str, Any]) -> list[str]:
    lines = ["# mta vs Postfix", ""]
    for key, value in header.items():
        lines.append(f"- **{key}**: {value}")
    return [*lines, ""]


def _throughput_table(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    out = [
        "## Throughput",
        "",
        "Medians over the runs. *accept*: first connect to last `250` (the relay delivers to "
        "its sink meanwhile); *end-to-end*: first connect until the sink counted every "
        "message. Latency: the final `250` after end-of-data, p50 / p99, median over runs. "
        "CPU: user+system CPU of the whole process tree per message, ms (the generator's "
        "own CPU in the last column, mta / postfix).",
        "",
        "| scenario | load | mta msgs/s | postfix msgs/s | mta/postfix | mta p50 / p99 ms "
        "| postfix p50 / p99 ms | mta CPU ms/msg | postfix CPU ms/msg | generator CPU ms/msg |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        m, p = row["systems"].get("mta", {}), row["systems"].get("postfix", {})
        latency = row["scenario"] == "accept"
        out.append(
            "| "
            + " | ".join(
                [
                    row["scenario"],
                    row["load"],
                    _fmt(m.get("msgs_per_s")),
                    _fmt(p.get("msgs_per_s")),
                    _fmt(row.get("ratio"), 2) + ("x" if row.get("ratio") else ""),
                    _pair(m.get("p50_ms"), m.get("p99_ms")) if latency and m else "-",
                    _pair(p.get("p50_ms"), p.get("p99_ms")) if latency and p else "-",
                    _fmt(m.get("cpu_ms_per_msg"), 3),
                    _fmt(p.get("cpu_ms_per_msg"), 3),
                    _pair(m.get("generator_cpu_ms_per_msg"), p.get("generator_cpu_ms_per_msg"), 3),
                ]
            )
            + " |"
        )
    failures = [
        f"- {row['scenario']} {row['load']} {name}: {err}"
        for row in rows
        for name, data in row["systems"].items()
        for err in data.get("errors", [])
    ]
    if failures:
        out += ["", "Failed or incomplete runs (left out of the medians):", "", *failures]
    return [*out, ""]


def _connections_table(rows: dict[str, Any]) -> list[str]:
    if not rows:
        return []
    out = [
        "## Idle sessions",
        "",
        "Sessions opened (greeting + EHLO) and held idle; memory of the relay's whole process "
        "tree while holding them (RSS counts shared pages once per process; PSS shares "
        "them out), and the time a new session waited for its greeting meanwhile.",
        "",
        "| system | held / wanted (open at end) | set-up s | processes | RSS MB (idle → held) "
        "| PSS MB (idle → held) | RSS KiB/session | PSS KiB/session | new greeting p50 / max ms "
        "| CPU s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    mb = 1024 * 1024
    for name, r in rows.items():
        if "error" in r:
            out.append(f"| {name} | failed: {r['error']} |||||||||")
            continue
        g = r["greeting_ms"]
        out.append(
            f"| {name} | {r['established']:,} / {r['sessions']:,} ({r['still_open']:,}) "
            f"| {r['setup_s']} "
            f"| {r['held']['processes']:,} "
            f"| {r['base']['rss'] / mb:,.0f} → {r['held']['rss'] / mb:,.0f} "
            f"| {r['base']['pss'] / mb:,.0f} → {r['held']['pss'] / mb:,.0f} "
            f"| {r['rss_per_session_kb']:,} | {r['pss_per_session_kb']:,} "
            f"| {g['p50']} / {g['max']} | {r['cpu_s']} |"
        )
    return [*out, ""]


def _parser_table(parser: dict[str, Any] | None) -> list[str]:
    if not parser:
        return []
    out = [
        "## DATA parser alone",
        "",
        f"`DataScanner` on {parser['corpus_messages']} messages "
        f"({parser['corpus_bytes'] / 1e6:.1f} MB, 1/10/100 KiB, dot-stuffed lines) "
        f"fed in {parser['chunk']}-byte chunks.",
        "",
        "| backend | MB/s | msgs/s |",
        "|---|---:|---:|",
    ]
    for name in ("c", "python"):
        r = parser[name]
        out.append(f"| {r['module']} | {r['mb_per_s']:,} | {r['msgs_per_s']:,} |")
    return [*out, "", f"C / Python: **{parser['ratio']}x**", ""]


def markdown(results: dict[str, Any], chart_note: str = "") -> str:
    lines = _header_lines(results.get("header", {}))
    lines += _throughput_table(results.get("throughput", []))
    lines += _connections_table(results.get("connections", {}))
    lines += _parser_table(results.get("parser"))
    if chart_note:
        lines += [chart_note, ""]
    return "\n".join(lines)


def chart(rows: list[dict[str, Any]], path: Path) -> bool:
    """Grouped bars of msgs/s per scenario; False when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["scenario"] + "\n" + r["load"].replace(", ", "\n") for r in rows]
    width = 0.4
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(rows)), 5.0))
    for i, name in enumerate(SYSTEMS):
        values = [r["systems"].get(name, {}).get("msgs_per_s") or 0 for r in rows]
        xs = [x + (i - 0.5) * width for x in range(len(rows))]
        bars = ax.bar(xs, values, width, label=name)
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_xticks(range(len(rows)), labels, fontsize=7)
    ax.set_xlim(-0.6, len(rows) - 0.4)
    ax.set_ylabel("messages / s (median)")
    ax.set_title("mta vs Postfix")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_results(results: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write results.json, msgs_per_s.png (if possible) and results.md into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "results.json", "md": out_dir / "results.md"}
    paths["json"].write_text(json.dumps(results, indent=2, default=str) + "\n")
    png = out_dir / "msgs_per_s.png"
    note = ""
    if results.get("throughput") and chart(results["throughput"], png):
        paths["png"] = png
        note = "![msgs/s per scenario](msgs_per_s.png)"
    elif results.get("throughput"):
        note = "(No chart: matplotlib is not installed; `pip install -e '.[bench]'`.)"
    paths["md"].write_text(markdown(results, note))
    return paths
