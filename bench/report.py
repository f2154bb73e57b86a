"""Turn the results of ``python -m bench`` into docs/benchmarks.md and docs/benchmarks.png.

Every figure in the report comes from the results dictionary; nothing is typed
by hand. ``python -m bench.report [docs/benchmarks.json]`` re-renders the
report from saved results without measuring again.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .jobs import LABELS
from .long_haul import JOBS as LONG_HAUL_JOBS

PY, NODE = LABELS["python"], LABELS["node"]
TARGET_RATIO = 3.0
# Typographic characters, spelled as escapes so no look-alike hides in the source.
DASH, TIMES, GE, LE, ARROW = "\u2013", "\u00d7", "\u2265", "\u2264", "\u2192"
TARGET_REQUESTS = 5.0
#: The end-to-end throughput sections, each reported against TARGET_RATIO.
THROUGHPUT_SECTIONS = (
    ("throughput", "jobs queued at once"),
    ("throughput_large", "jobs queued at once"),
    ("backlog", "job backlog at start"),
)


# --------------------------------------------------------------- formatting


def _num(value: float, digits: int) -> str:
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def fmt(summary: Mapping[str, Any] | None, digits: int = 0, suffix: str = "") -> str:
    """``median (min-max)`` with an en dash, the value alone for one run, a dash when absent."""
    if not summary:
        return DASH
    median = _num(summary["median"], digits)
    if len(summary.get("runs", [])) <= 1 or summary["min"] == summary["max"]:
        return f"{median}{suffix}"
    return f"{median}{suffix} ({_num(summary['min'], digits)}{DASH}{_num(summary['max'], digits)})"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table."""

    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |"]
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _error(section: Any) -> str | None:
    if isinstance(section, Mapping) and "error" in section:
        return f"**Not measured.** {section['error']}"
    if section is None:
        return "Not run in this invocation."
    return None


def _get(mapping: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(mapping, Mapping):
            return None
        mapping = mapping.get(key)
    return mapping


def _met(value: float | None, ok: bool) -> str:
    if value is None:
        return "not measured"
    return "yes" if ok else "**no**"


# --------------------------------------------------------------- sections


def _summary(results: Mapping[str, Any]) -> str:
    rows = []
    for key, what in THROUGHPUT_SECTIONS:
        section: Any = results.get(key)
        ratio = _get(section, "ratio")
        jobs = _get(section, "jobs")
        label = f"Throughput vs @oada/jobs 1.0.4, {f'{jobs:,} ' if jobs else ''}{what}"
        median = ratio["median"] if ratio else None
        rows.append(
            [
                label,
                f"{GE} {TARGET_RATIO:g}{TIMES}",
                fmt(ratio, 2, TIMES),
                _met(median, median is not None and median >= TARGET_RATIO),
            ]
        )
    requests = _get(results.get("throughput"), "requests_per_job", "python")
    median = requests["median"] if requests else None
    rows.append(
        [
            "OADA requests per job (oada-jobs)",
            f"{LE} {TARGET_REQUESTS:g}",
            fmt(requests, 2),
            _met(median, median is not None and median <= TARGET_REQUESTS),
        ]
    )
    scale = results.get("scale_out")
    if isinstance(scale, list) and scale:
        divided = [row for row in scale if row.get("mode", "divided") == "divided"]
        duplicates = sum(sum(row["duplicates"]) for row in divided)
        replicas = "/".join(str(row["replicas"]) for row in divided)
        rows.append(
            [f"Jobs run twice, {replicas} replicas", "0", str(duplicates), _met(0, duplicates == 0)]
        )
        rows.extend(_scale_goals(divided))
    else:
        rows.append(["Jobs run twice with replicas", "0", DASH, "not measured"])
    return table(["Goal", "Target", f"Measured: median (min{DASH}max)", "Met"], rows)


def _machine(results: Mapping[str, Any]) -> str:
    m = results.get("machine", {})
    load_before = results.get("load_before") or []
    load_after = results.get("load_after") or []

    def load(values: Sequence[float]) -> str:
        return " / ".join(f"{v:.2f}" for v in values) if values else DASH

    rows = [
        ["CPU", f"{m.get('cpu')} ({m.get('cores')} cores)"],
        ["Memory", f"{m.get('memory_gib')} GiB"],
        ["OS", m.get("os")],
        ["Python", m.get("python")],
        ["Node", m.get("node")],
        ["oada-jobs", f"{m.get('oada_jobs')} (commit {m.get('commit')})"],
        [
            "@oada/jobs (original)",
            f"{m.get('oada_jobs_node')} with @oada/client {m.get('oada_client_node')}",
        ],
        [
            f"Load average (1/5/15 min) before {ARROW} after",
            f"{load(load_before)} {ARROW} {load(load_after)}",
        ],
        [
            "Started (UTC), duration",
            f"{results.get('started')}, {results.get('duration_s', 0):.0f} s",
        ],
    ]
    return table(["", ""], rows)


def _frameworks_table(section: Mapping[str, Any]) -> str:
    def row(label: str, key: str, digits: int, ratio: bool = False) -> list[str]:
        values = section.get(key, {})
        out = [label, fmt(values.get("python"), digits), fmt(values.get("node"), digits)]
        if ratio:
            out.append(fmt(section.get("ratio"), 2, TIMES))
        else:
            out.append("")
        return out

    rows = [
        row("Jobs per second", "jobs_per_second", 0, ratio=True),
        row("OADA requests per job (service)", "requests_per_job", 2),
        row("Service CPU per job, ms", "service_cpu_ms_per_job", 2),
        row("Server CPU per job, ms", "server_cpu_ms_per_job", 2),
        row("Peak RSS of the service, MiB", "peak_rss_mib", 0),
    ]
    dup = section.get("duplicates", {})
    rows.append(["Jobs run twice", str(dup.get("python", DASH)), str(dup.get("node", DASH)), ""])
    return table(["", PY, NODE, "oada-jobs / original"], rows)


def _cpu_parts(section: Any) -> dict[str, list[float]] | None:
    """Median service and server CPU ms per job of each framework, if all were measured.

    The kernel counts CPU time in clock ticks, so a short run can show none at all; a zero
    is no measurement, and a ratio of it would be meaningless.
    """
    cpu: dict[str, list[float]] = {}
    for framework in ("python", "node"):
        parts = [
            _get(section, key, framework, "median")
            for key in ("service_cpu_ms_per_job", "server_cpu_ms_per_job")
        ]
        if any(not part for part in parts):
            return None
        cpu[framework] = parts
    return cpu


def _cpu_per_job(section: Any) -> dict[str, float] | None:
    cpu = _cpu_parts(section)
    return {fw: sum(parts) for fw, parts in cpu.items()} if cpu else None


def _cpu_bound(results: Mapping[str, Any], section: Any) -> str | None:
    """What the measured CPU per job allows: the ratio when the cores are the limit."""
    cpu = _cpu_parts(section)
    if cpu is None:
        return None
    (ours, ours_server), (theirs, theirs_server) = cpu["python"], cpu["node"]
    total, their_total = ours + ours_server, theirs + theirs_server
    cores = _get(results, "machine", "cores") or "the"
    return (
        f"Where the ceiling is: the service, the server and the harness share {cores} cores. "
        f"Per job, {PY} took {ours:.2f} ms of CPU in the service and {ours_server:.2f} ms in "
        f"the server ({total:.2f} ms), @oada/jobs {theirs:.2f} + {theirs_server:.2f} ms "
        f"({their_total:.2f} ms). When the cores are the limit, the throughput ratio follows "
        f"the inverse ratio of those totals: about {their_total / total:.2f}{TIMES}. The "
        f"server's share is spent for any client of it: a service using no CPU at all would "
        f"reach about {their_total / ours_server:.2f}{TIMES}, and {TARGET_RATIO:g}{TIMES} needs "
        f"the whole job near {their_total / TARGET_RATIO:.2f} ms."
    )


def _throughput(results: Mapping[str, Any]) -> str:
    parts = []
    burst: Any = results.get("throughput")
    parts.append(f"### {(_get(burst, 'jobs') or 0):,} jobs queued at once on a running service\n")
    parts.append(_error(burst) or _frameworks_table(burst))
    bound = _cpu_bound(results, burst)
    if bound:
        parts.append(f"\n{bound}")
    pending = _get(burst, "pending_layout")
    if pending:
        parts.append(
            "\nThe same measurement with oada-jobs on its `pending` layout (`jobs/pending`, "
            "`jobs/success/day-index/<date>`, as current @oada/jobs lays lists out; 1.0.4 "
            "cannot use it). Its finished lists sit one link closer to the service, so each "
            "filing bumps fewer parent revisions.\n"
        )
        parts.append(
            table(
                ["", f"{PY}, layout pending", "vs @oada/jobs 1.0.4 (classic)"],
                [
                    [
                        "Jobs per second",
                        fmt(pending["jobs_per_second"]),
                        fmt(pending.get("ratio"), 2, TIMES),
                    ],
                    ["OADA requests per job", fmt(pending["requests_per_job"], 2), ""],
                    ["Service CPU per job, ms", fmt(pending["service_cpu_ms_per_job"], 2), ""],
                    ["Server CPU per job, ms", fmt(pending["server_cpu_ms_per_job"], 2), ""],
                    ["Jobs run twice", str(pending["duplicates"]), ""],
                ],
            )
        )
    large: Any = results.get("throughput_large")
    parts.append(f"\n### {(_get(large, 'jobs') or 0):,} jobs queued at once on a running service\n")
    if not _error(large):
        parts.append(
            f"The same measurement with {large['jobs']:,} jobs, still linked 100 a PUT: "
            "the list stays long while the service works through it.\n"
        )
    parts.append(_error(large) or _frameworks_table(large))
    bound = _cpu_bound(results, large)
    if bound:
        parts.append(f"\n{bound}")
        small, big = _cpu_per_job(burst), _cpu_per_job(large)
        if small and big:
            parts.append(
                f"Against the {burst['jobs']:,}-job runs, the original's CPU per job (service "
                f"and server) went from {small['node']:.2f} to {big['node']:.2f} ms, "
                f"{PY}'s from {small['python']:.2f} to {big['python']:.2f} ms."
            )
    backlog: Any = results.get("backlog")
    parts.append(
        f"\n### {(_get(backlog, 'jobs') or 0):,}-job backlog when the service starts "
        "(throughput and memory)\n"
    )
    parts.append(
        "The jobs are queued while the service is stopped; the time runs from starting "
        "the service process (interpreter start-up and connecting included) until the "
        "list is empty. Peak RSS is the service process's, sampled every 20 ms.\n"
    )
    parts.append(_error(backlog) or _frameworks_table(backlog))
    return "\n".join(parts)


def _latency(results: Mapping[str, Any]) -> str:
    section: Any = results.get("latency")
    problem = _error(section)
    if problem:
        return problem
    ms = section["ms"]
    rows = []
    for fw, label in (("python", PY), ("node", NODE)):
        if fw in ms:
            rows.append([label, *(fmt(ms[fw][q], 1) for q in ("p50", "p95", "p99"))])
    intro = (
        f"{section['jobs']} jobs queued one at a time, {section['interval_ms']:.0f} ms apart, "
        "per run. Latency is from just before the link is written to the time in the job's "
        "`started` update (both frameworks write one when they take a job). Median over runs "
        "of each run's percentile, with the range.\n\n"
    )
    return intro + table(["", "p50, ms", "p95, ms", "p99, ms"], rows)


def _work(results: Mapping[str, Any]) -> str:
    section: Any = results.get("work")
    problem = _error(section)
    if problem:
        return problem
    rows = []
    for entry in section:
        frac = entry["fraction_of_ideal"]
        rate = entry["jobs_per_second"]
        rows.append(
            [
                f"{entry['concurrency']} ({entry['jobs']:,} jobs)",
                _num(entry["ideal_jobs_per_second"], 0),
                fmt(rate.get("python"), 0),
                fmt(_pct(frac.get("python")), 0, " %"),
                fmt(rate.get("node"), 0),
                fmt(_pct(frac.get("node")), 0, " %"),
            ]
        )
    intro = (
        f"Each job sleeps {section[0]['sleep_ms']} ms. Ideal throughput is concurrency / "
        f"{section[0]['sleep_ms'] / 1000:g} s. oada-jobs runs with `concurrency=C`; "
        "@oada/jobs 1.0.4 has no job concurrency setting (it starts a runner for every key "
        "of a change, 100 at a time), so its work function takes a semaphore of C and its "
        "Service `concurrency` (in-flight requests) is C too.\n\n"
    )
    return intro + table(
        ["Concurrency", "Ideal jobs/s", f"{PY} jobs/s", "of ideal", f"{NODE} jobs/s", "of ideal"],
        rows,
    )


def _pct(summary: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not summary:
        return None
    return {
        "median": 100 * summary["median"],
        "min": 100 * summary["min"],
        "max": 100 * summary["max"],
        "runs": summary.get("runs", []),
    }


def _scale_goals(divided: list[Mapping[str, Any]]) -> list[list[str]]:
    """Requests and server CPU per job at the most replicas against one replica."""
    by_count = {row["replicas"]: row for row in divided}
    if 1 not in by_count or len(by_count) < 2:
        return []
    most = max(by_count)
    rows = []
    for field, what, limit in (
        ("requests_per_job", "OADA requests per job", 1.10),
        ("server_cpu_ms_per_job", "Server CPU per job", 1.15),
    ):
        one, many = by_count[1].get(field), by_count[most].get(field)
        if not one or not many:
            continue
        ratio = many["median"] / one["median"]
        rows.append(
            [
                f"{what}, {most} replicas / 1",
                f"{LE} {limit:.2f}",
                f"{ratio:.2f}",
                _met(ratio, ratio <= limit),
            ]
        )
    return rows


def _scale(results: Mapping[str, Any]) -> str:
    section: Any = results.get("scale_out")
    problem = _error(section)
    if problem:
        return problem
    rows = [
        [
            str(entry["replicas"]),
            entry.get("mode", "racing"),
            f"{entry['jobs']:,}",
            fmt(entry.get("requests_per_job"), 2),
            fmt(entry.get("server_cpu_ms_per_job"), 2),
            fmt(entry.get("service_cpu_ms_per_job"), 2),
            fmt(entry["jobs_per_second"], 0),
            ", ".join(str(d) for d in entry["duplicates"]),
            "; ".join(f"{a:.1f}/{b:.1f}" for a, b in entry.get("load", [])),
        ]
        for entry in section
    ]
    intro = (
        "Separate `oada-jobs` service processes (concurrency 10 each) on one queue; the "
        "jobs are queued at once. *divided*: each replica reads and claims only the jobs "
        "of its share (docs/replicas.md); *racing*: every replica reads every job and the "
        "claims decide (`divide_work=False`, the behaviour before). The two alternate, "
        "back to back. Every replica reports the job ids its work function ran; a job "
        "counted more than once is a duplicate. Requests per job count every replica's "
        "requests (the server counts them); CPU is the server process's and the sum of "
        "the service processes'. Load is the 1-minute load average before/after each run "
        "(the machine is shared).\n\n"
    )
    return intro + table(
        [
            "Replicas",
            "Mode",
            "Jobs",
            "OADA requests per job",
            "Server CPU ms per job",
            "Services' CPU ms per job",
            "Jobs per second",
            "Jobs run twice, per run",
            "Load before/after",
        ],
        rows,
    )


def _uneven(results: Mapping[str, Any]) -> str:
    section: Any = results.get("uneven")
    problem = _error(section)
    if problem:
        return problem
    rows = [
        [
            str(row["replicas"]),
            f"{row['long_jobs']} x {row['long_ms'] / 1000:g} s",
            str(row["short_jobs"]),
            f"{row['short_done_s']:.2f}",
            f"{row['load']:.1f}",
        ]
        for row in section
    ]
    intro = (
        "One replica is handed the long jobs first (their list keys hash to it) and they "
        "fill its 10 slots; then the short jobs are queued, half of them in its share. "
        "Seconds from queueing the short jobs until none is left in the list. With two "
        "replicas the other one takes the short jobs that waited longer than "
        "`steal_after` (1 s here) in the busy one's share.\n\n"
    )
    return intro + table(
        ["Replicas", "Long jobs", "Short jobs", "Short jobs done after (s)", "Load"], rows
    )


def _takeover(results: Mapping[str, Any]) -> str:
    section: Any = results.get("takeover")
    problem = _error(section)
    if problem:
        return problem
    rows = [
        [
            f"{row['jobs']} x {row['sleep_ms']} ms",
            str(row["share"]),
            str(row["lost"]),
            str(row["run_again"]),
            f"{row['member_lease_s']} s",
            f"{row['takeover_s']:.2f}",
            f"{row['requests_per_job']:.2f}",
            f"{row['load']:.1f}",
        ]
        for row in section
    ]
    intro = (
        "Three replicas (concurrency 5 each); once a third of the jobs "
        "are done one replica is SIGKILLed. *Share*: jobs whose key hashed to it. *Run "
        "again*: jobs started twice (the ones it had in hand, taken over after their "
        "job lease). *Takeover*: seconds from the kill until a job of its share started "
        "on another replica; bounded by its member lease.\n\n"
    )
    return intro + table(
        [
            "Jobs",
            "Share",
            "Lost",
            "Run again",
            "Member lease",
            "Takeover (s)",
            "Requests per job",
            "Load",
        ],
        rows,
    )


def _external(section: Any) -> str:
    problem = _error(section)
    if problem:
        return problem
    if not isinstance(section, Mapping):
        return "```json\n" + json.dumps(section, indent=1, default=str) + "\n```"
    parts = []
    if section.get("description"):
        parts.append(str(section["description"]) + "\n")
    if isinstance(section.get("columns"), list) and isinstance(section.get("rows"), list):
        parts.append(table(section["columns"], section["rows"]))
    for note in section.get("notes") or []:
        parts.append(f"\n- {note}")
    rest = {
        k: v
        for k, v in section.items()
        if k not in {"title", "description", "columns", "rows", "notes"}
    }
    if rest:
        parts.append(
            "\n<details><summary>All figures</summary>\n\n```json\n"
            + json.dumps(rest, indent=1, default=str)
            + "\n```\n\n</details>"
        )
    return "\n".join(parts)


# --------------------------------------------------------------- plot


def plot(results: Mapping[str, Any], path: Path) -> bool:
    """Draw the four job-framework panels into *path*; ``False`` if nothing to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"python": "#1f77b4", "node": "#d62728"}
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    drawn = False

    def bars(ax: Any, groups: list[str], series: dict[str, list[Mapping[str, Any] | None]]) -> None:
        width = 0.8 / max(len(series), 1)
        for i, (fw, values) in enumerate(series.items()):
            xs, ys, lo, hi = [], [], [], []
            for g, summary in enumerate(values):
                if summary:
                    xs.append(g + (i - (len(series) - 1) / 2) * width)
                    ys.append(summary["median"])
                    lo.append(summary["median"] - summary["min"])
                    hi.append(summary["max"] - summary["median"])
            ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=LABELS[fw], color=colors[fw])  # type: ignore[index]
        ax.set_xticks(range(len(groups)), groups)

    fws = ("python", "node")
    groups: list[str] = []
    series: dict[str, list[Any]] = {fw: [] for fw in fws}
    for key, what in THROUGHPUT_SECTIONS:
        section: Any = results.get(key)
        if isinstance(section, Mapping) and "jobs_per_second" in section:
            label = what.replace(" ", "\n", 1)
            groups.append(f"{section['jobs']:,} {label}")
            for fw in fws:
                series[fw].append(section["jobs_per_second"].get(fw))
    ax = axes[0][0]
    if groups:
        bars(ax, groups, {fw: v for fw, v in series.items() if any(v)})
        drawn = True
    ax.set_title("No-op jobs: throughput (jobs/s)")
    ax.set_ylabel("jobs/s")

    ax = axes[0][1]
    latency = results.get("latency")
    if isinstance(latency, Mapping) and "ms" in latency:
        bars(
            ax,
            ["p50", "p95", "p99"],
            {fw: [latency["ms"][fw][q] for q in ("p50", "p95", "p99")] for fw in latency["ms"]},
        )
        drawn = True
    ax.set_title("Pickup latency (ms)")
    ax.set_ylabel("ms")

    ax = axes[1][0]
    work = results.get("work")
    if isinstance(work, list) and work:
        bars(
            ax,
            [f"concurrency {entry['concurrency']}" for entry in work],
            {
                fw: [_pct(entry["fraction_of_ideal"].get(fw)) for entry in work]
                for fw in fws
                if any(fw in entry["fraction_of_ideal"] for entry in work)
            },
        )
        ax.axhline(100, color="grey", linestyle=":", linewidth=1)
        drawn = True
    ax.set_title("100 ms jobs: % of ideal throughput")
    ax.set_ylabel("%")

    ax = axes[1][1]
    scale = results.get("scale_out")
    if isinstance(scale, list) and scale:
        counts = sorted({entry["replicas"] for entry in scale})
        by = {(entry["replicas"], entry.get("mode", "racing")): entry for entry in scale}
        for i, mode in enumerate(("racing", "divided")):
            xs = [g + (i - 0.5) * 0.4 for g in range(len(counts))]
            ys = [by.get((n, mode), {}).get("jobs_per_second", {}).get("median", 0) for n in counts]
            ax.bar(xs, ys, 0.4, label=mode, color=("#d62728", "#1f77b4")[i])
        ax.set_xticks(range(len(counts)), [f"{n} replicas" for n in counts])
        drawn = True
    ax.set_title("oada-jobs scale-out: jobs/s")
    ax.set_ylabel("jobs/s")

    for row in axes:
        for ax in row:
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
            ax.grid(axis="y", alpha=0.3)
    m = results.get("machine", {})
    fig.suptitle(
        f"oada-jobs vs @oada/jobs 1.0.4, {m.get('cpu')}, {m.get('cores')} cores"
        + (" (quick run)" if results.get("quick") else ""),
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawn


# --------------------------------------------------------------- document


def _gc_cpu(s: Mapping[str, Any], key: str) -> str:
    """`` (CPU x)`` for a collection's own CPU time, when the run recorded it."""
    return f" (CPU {s[key]:.0f})" if key in s else ""


def _long_haul(long_haul: Mapping[str, Any] | None, lists: Mapping[str, Any] | None) -> str:
    """The long-haul run (bench/long_haul.py) and list write costs (bench/list_writes.py)."""
    out: list[str] = []
    if long_haul and long_haul.get("rounds"):
        s = long_haul
        command = (
            "python -m bench --only long_haul"
            if s["jobs"] == LONG_HAUL_JOBS
            else f"python -m bench.long_haul --jobs {s['jobs']}"
        )
        out += [
            f"One server, one Python service (concurrency 10), {s['jobs_run']:,} no-op jobs "
            f"in rounds of {s['round']:,}, every one filed into the same `jobs-success` day "
            f"list (`{command}`). Each figure is per round; stalls "
            "come from a probe task in each process (`bench/lag.py`): *wall* is how late a "
            "10 ms timer fired (it includes waiting for a core, or for the disk, which the "
            "server's commits write from its event loop's thread), *busy* "
            "the event-loop thread's own CPU time between two firings, and a collection's own "
            "CPU time is given beside its wall time."
            + (f" The run stopped early: {s['stopped']}." if s.get("stopped") else ""),
            "",
            table(
                ["Figure", "Value"],
                [
                    [
                        "jobs/s, first tenth → last tenth",
                        f"{s['first_tenth_jobs_per_second']:.0f} → "
                        f"{s['last_tenth_jobs_per_second']:.0f} "
                        f"({100 * (s['last_over_first'] - 1):+.0f} %)",
                    ],
                    [
                        "server CPU ms per job, first tenth → last tenth",
                        "{:.2f} → {:.2f}".format(*s["server_cpu_ms_per_job_first_last"]),
                    ],
                    [
                        "server RSS after the first tenth (MiB)",
                        "{:.0f}{}{:.0f}".format(
                            s["server_rss_mib_after_warm_up"][0],
                            DASH,
                            s["server_rss_mib_after_warm_up"][1],
                        ),
                    ],
                    [
                        "service RSS after the first tenth (MiB)",
                        "{:.0f}{}{:.0f}".format(
                            s["service_rss_mib_after_warm_up"][0],
                            DASH,
                            s["service_rss_mib_after_warm_up"][1],
                        ),
                    ],
                    *(
                        [
                            f"after the first tenth, largest busy stretch / GC, {who} (ms)",
                            f"{s.get(f'{who}_max_busy_after_warm_up_ms', 0):.0f} / "
                            f"{s.get(f'{who}_max_gc_after_warm_up_ms', 0):.0f}"
                            f"{_gc_cpu(s, f'{who}_max_gc_cpu_after_warm_up_ms')}",
                        ]
                        for who in ("server", "service")
                    ),
                    *(
                        [
                            f"largest stall, {who}: wall / busy / longest GC (ms)",
                            f"{s[f'{who}_max_stall_ms']:.0f} / {s[f'{who}_max_busy_ms']:.0f} / "
                            f"{s[f'{who}_max_gc_ms']:.0f}{_gc_cpu(s, f'{who}_max_gc_cpu_ms')}",
                        ]
                        for who in ("server", "service")
                    ),
                    [
                        "load average (1 min) during the run",
                        "{:.1f}{}{:.1f}".format(s["load"][0], DASH, s["load"][1]),
                    ],
                ],
            ),
            "",
            "![Long haul](long_haul.png)",
            "",
        ]
        restart = s.get("restart")
        if restart:
            out += [
                f"Then a new server on that database ({restart['db_mib']:,} MiB): ready "
                f"{restart['start_to_ready_ms'] / 1000:.1f} s after its process started "
                "(Python start-up, a certificate, opening the database), its first answer "
                f"(`GET /bookmarks`) took {restart['first_answer_ms']:.0f} ms at "
                f"{restart['rss_first_answer_mib']:.0f} MiB RSS, and its first write into the "
                f"{s['jobs_run']:,}-entry day list {restart['first_write_ms']:.0f} ms "
                f"({restart['rss_first_write_mib']:.0f} MiB RSS). Load {restart['load']:.1f}.",
                "",
            ]
    else:
        out += [
            "No long-haul run beside this page: `python -m bench --only long_haul` makes one.",
            "",
        ]
    if lists and lists.get("sizes"):
        rows = []
        for row in lists["sizes"]:
            if not row.get("measured"):
                rows.append([f"{row['size']:,}", "not measured", "", "", ""])
                continue
            put, delete = row["put"], row["delete"]
            rows.append(
                [
                    f"{row['size']:,}",
                    f"{put['median_ms']:.3f} / {put['p99_ms']:.1f} / {put['max_ms']:.1f}",
                    f"{delete['median_ms']:.3f} / {delete['p99_ms']:.1f} / {delete['max_ms']:.1f}",
                    f"{row['rss_mib']:.0f}",
                    f"{row['load']:.1f}",
                ]
            )
        out += [
            "### What one write into a list costs, by its length",
            "",
            f"`python -m bench.list_writes`: one server core (no transport) fills lists of "
            "each length with versioned links in one database, then, once the fills are "
            f"checkpointed, times {lists['writes']} single-link PUTs and as many DELETEs into "
            "each, one at a time, each answered after its commit, taking the lists in turns "
            "(one write into each, then the next round). RSS is the process's after each "
            "fill.",
            "",
            table(
                [
                    "Entries",
                    "PUT ms (median / p99 / max)",
                    "DELETE ms (median / p99 / max)",
                    "RSS MiB",
                    "Load",
                ],
                rows,
            ),
            "",
        ]
        restart = lists.get("restart")
        if restart:
            out += [
                f"Restart on that database ({restart['db_mib']} MiB, "
                f"{restart['size']:,} links in the largest list): first answer "
                f"(`GET /bookmarks`) after {restart['first_answer_ms']:.0f} ms at "
                f"{restart['rss_first_answer_mib']:.0f} MiB RSS; the first write into the "
                f"largest list took {restart['first_write_ms']:.0f} ms "
                f"({restart['rss_first_write_mib']:.0f} MiB RSS). Load {restart['load']:.1f}.",
                "",
            ]
    return "\n".join(out)


def render(
    results: Mapping[str, Any],
    image: str | None,
    long_haul: Mapping[str, Any] | None = None,
    lists: Mapping[str, Any] | None = None,
) -> str:
    """The Markdown report."""
    quick = results.get("quick")
    sizes = results.get("sizes", {})
    repeats = sizes.get("repeats", 1)
    out = [
        "# Benchmarks",
        "",
        "<!-- Generated by `make bench` (python -m bench); edits are overwritten. -->",
        "",
        f"oada-jobs (Python) against the original TypeScript `@oada/jobs` 1.0.4, both run in "
        f"the same invocation against one embedded OADA server (TLS, SQLite file, loopback). "
        f"Figures are the median of {repeats} run{'s' if repeats != 1 else ''} with the range "
        f"(min{DASH}max) in brackets; the two frameworks alternate run by run.",
        "",
    ]
    if quick:
        out += [
            "> **Quick run** (`python -m bench --quick`): tiny sizes and one repeat, to check that "
            "the benchmarks work. The figures mean little; run `make bench` for real ones.",
            "",
        ]
    if results.get("node_problem"):
        out += [f"> The Node side did not run: {results['node_problem']}.", ""]
    out += ["## Summary", "", _summary(results), ""]
    if image:
        out += [f"![Benchmark plots]({image})", ""]
    out += ["## Machine", "", _machine(results), ""]
    out += [
        "## How the job benchmarks work",
        "",
        "The server is the embedded one (`oada_jobs.server.create_app` under uvicorn with "
        "the settings `oada-jobs serve` uses, HTTPS and WSS with a development CA from "
        "`oada_jobs.server.tls`, SQLite file) in its own process on a free loopback port "
        "(`bench/counted_server.py`). Unlike `oada-jobs serve`, and like the reference "
        "OADA server, it never accepts WebSocket compression (permessage-deflate), which "
        "@oada/client 1.1.4 offers: no framework's messages are compressed. A thin ASGI "
        "layer in "
        "front of it counts requests per bearer token, at the same small cost for every "
        "client. Each framework runs as its own process (`bench/py_service.py`, "
        "`bench/node/oada_jobs_service.cjs`) with a worker for one job type, on the "
        "`classic` job lists that @oada/jobs 1.0.4 uses: jobs are linked into "
        "`/bookmarks/services/<name>/jobs` and filed under "
        "`jobs-success/day-index/<date>`. Every run uses a new service name. Jobs are "
        "created as @oada/jobs does (`POST /resources` with type "
        "`application/vnd.oada.service.jobs.1+json`) before the clock starts and queued by "
        "linking them into the list, 100 keys per PUT. The clock stops at the server's time "
        "of the last job's removal from the list (each framework does that last, after "
        "filing the job; the harness polls the list's `_rev` every 20 ms rather than "
        "watching it, which would cost the measured machine a change message per job, "
        "then reads the list's `_meta/modified`); afterwards every job is checked to be in "
        "`jobs-success`. Requests (HTTP requests and WebSocket request messages) are "
        "counted for the service's token over the timed part only. Each service first runs one "
        "warm-up job, so that its day list exists (see the notes). The server and the "
        "Python service run on uvloop (a dependency of oada-jobs), as uvicorn does by "
        "itself when it is installed.",
        "",
        "Unless a section says otherwise, oada-jobs runs as `Service(name, domain=..., "
        "token=..., concurrency=10)` (10 jobs at once; the client it opens allows "
        "`Service.request_concurrency` requests in flight) and @oada/jobs 1.0.4 with "
        "`new Service(name, domain, token, 10)` (10 requests in flight; it has no limit on "
        "jobs at once).",
        "",
        "Run `make bench` (or `.venv/bin/python -m bench`) to measure again and rewrite this "
        "page; `python -m bench --quick` is a short smoke run, `--only throughput,latency` "
        "picks sections, and `python -m bench.report docs/benchmarks.json` re-renders the "
        "page from saved results.",
        "",
        "## End-to-end throughput (no-op jobs)",
        "",
        _throughput(results),
        "",
        "## Pickup latency",
        "",
        _latency(results),
        "",
        "## Work-bound throughput",
        "",
        _work(results),
        "",
        "## Scale-out (oada-jobs replicas)",
        "",
        _scale(results),
        "",
        "### Uneven work: stealing",
        "",
        _uneven(results),
        "",
        "### A replica killed: takeover",
        "",
        _takeover(results),
        "",
        "## Embedded server (`bench/server.py`)",
        "",
        _external(results.get("server")),
        "",
        "## OADA client (`bench/client.py`)",
        "",
        _external(results.get("client")),
        "",
        "## Long haul",
        "",
        _long_haul(long_haul, lists),
        "",
        "## Notes",
        "",
        f"- {results.get('notes', {}).get('first_filing_race', '')}",
        "- The machine also ran other work during the benchmarks when the load average above "
        "is much higher than the core count; the ranges show how much runs varied.",
        "",
    ]
    return "\n".join(out)


def write(results: Mapping[str, Any], out_dir: Path) -> None:
    """Write ``benchmarks.md`` and ``benchmarks.png`` into *out_dir*."""
    image = out_dir / "benchmarks.png"
    drawn = plot(results, image)
    saved = {}
    # Measured on their own (python -m bench --only long_haul, python -m
    # bench.list_writes --json docs/list_writes.json); shown when present.
    for name in ("long_haul", "list_writes"):
        path = out_dir / f"{name}.json"
        saved[name] = json.loads(path.read_text()) if path.exists() else None
    (out_dir / "benchmarks.md").write_text(
        render(results, image.name if drawn else None, saved["long_haul"], saved["list_writes"])
    )


if __name__ == "__main__":
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/benchmarks.json")
    write(json.loads(source.read_text()), source.parent)
