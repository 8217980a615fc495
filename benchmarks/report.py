"""latest.json → the Markdown table and the PNG plots."""

from __future__ import annotations

from pathlib import Path


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}" if value >= 10 else f"{value:.2f}"


def ratio(a: float | None, b: float | None) -> str:
    return "-" if not a or not b else f"{a / b:.2f}×"


def latency_table(rows: list[dict]) -> list[str]:
    out = ["| system | jobs/s | ticks | missed | dups | p50 ms | p99 ms | p99.9 ms | max ms "
           "| p99 zcron ÷ this |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    zcron = {r["jobs"]: r for r in rows if r["system"] == "zcron"}
    for r in rows:
        z = zcron.get(r["jobs"], {})
        out.append(
            f"| {r['system']} | {r['jobs']:,} | {r['expected_ticks']:,} | {r['missed']:,} "
            f"| {r['duplicates']} | {ms(r['p50_ms'])} | {ms(r['p99_ms'])} | {ms(r['p999_ms'])} "
            f"| {ms(r['max_ms'])} | {ratio(z.get('p99_ms'), r['p99_ms'])} |"
        )
    cpu = [r for r in rows if r["system"] == "zcron" and r.get("cpu_s")]
    if cpu:
        out += ["", "zcron CPU seconds during the window, by process:", "",
                "| jobs/s | scheduler | worker | spawners | sink | all, ms per tick "
                "| scheduler CPU ms per 1,000 ticks |",
                "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
        for r in cpu:
            c = r["cpu_s"]
            per = c.get("scheduler", 0) / max(1, r["ran"]) * 1e6
            every = sum(c.values()) / max(1, r["ran"]) * 1000
            out.append(f"| {r['jobs']:,} | {c.get('scheduler', 0):.2f} | {c.get('worker', 0):.2f} "
                       f"| {c.get('spawners', 0):.2f} | {c.get('sink', 0):.2f} | {every:.2f} "
                       f"| {per:,.0f} |")  # fmt: skip
    return out


LABELS = {
    "floor": "bare posix_spawn loop",
    "floor_parked": "bare loop, shells parked ahead, one write each at the tick",
    "zcron": "zcron",
    "apscheduler": "APScheduler 3, 20 threads",
    "celery": "Celery beat + prefork worker (-c 8), Redis",
}
PART_LABELS = {
    "push": {"zcron": "zcron, one client, one connection (each push in LMDB before its reply)",
             "zcron_cli": "zcron, `zcron push` per job (a Python start-up each)",
             "zcron_pipelined": "zcron, one client, one connection, pipelined (a commit per "
                                "loop turn, each push in LMDB before its reply)",
             "apscheduler": "APScheduler 3, add_job(trigger=None) in its process, 20 threads",
             "celery": "Celery, .delay() from one client, prefork worker (-c 8), Redis"},
    "failover": {"apscheduler": "APScheduler 3 (its one process)",
                 "celery": "celery beat (its worker and Redis live on)"},
    "scale": {"apscheduler": "APScheduler 3 (its process)",
              "celery": "celery beat (Redis running, no worker)"},
}  # fmt: skip


def label(part: str, system: str) -> str:
    return PART_LABELS.get(part, {}).get(system) or LABELS[system]


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:,.2f}"


def failed(row: dict) -> str | None:
    """The one-line reason a measurement has no numbers, or None."""
    return row["error"] if "error" in row else None


def burst_section(burst: dict) -> list[str]:
    floor, zcron = burst.get("floor", {}), burst.get("zcron", {})
    out = ["## Burst (jobs due at one instant, `/bin/sh -c true`)", "",
           "| system | jobs | ran | all started s | all finished s | jobs/s | this ÷ floor "
           "| zcron ÷ this |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for system, r in burst.items():
        name = label("burst", system)
        if reason := failed(r):
            out.append(f"| {name} | - | failed: {reason} | | | | | |")
            continue
        if system == "zcron":
            name += f", 2 workers ({r.get('recorded', 0):,} records {r.get('statuses')})"
        if r.get("ready_before_tick") is False:
            name += " (not ready before the tick)"
        finished = r.get("all_finished_s")
        out.append(f"| {name} | {r['jobs']:,} | {r.get('ran', r['jobs']):,} "
                   f"| {seconds(r.get('all_started_s'))} | {seconds(finished)} "
                   f"| {r.get('jobs_per_s', 0):,.0f} "
                   f"| {ratio(finished, floor.get('all_finished_s'))} "
                   f"| {ratio(zcron.get('all_finished_s'), finished)} |")  # fmt: skip
    return [*out, "", "Times from the tick; ratios of all finished.", ""]


def push_section(push: dict) -> list[str]:
    zcron = push.get("zcron", {})
    out = ["## Ad-hoc push (`/bin/sh -c true` pushed one after another, until all have run)", "",
           "| system | pushes | submitted in s | all finished s | pushes/s "
           "| pushes/s zcron ÷ this |",
           "| --- | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    notes = []
    for system, r in push.items():
        name = label("push", system)
        if reason := failed(r):
            out.append(f"| {name} | - | - | - | - | failed: {reason} |")
            continue
        out.append(f"| {name} | {r['jobs']:,} | {seconds(r.get('submit_s'))} "
                   f"| {seconds(r['all_finished_s'])} | {r.get('jobs_per_s', 0):,.0f} "
                   f"| {ratio(zcron.get('jobs_per_s'), r.get('jobs_per_s'))} |")  # fmt: skip
        if "recorded_s" in r:
            notes.append(f"{name}: {r['ran']:,} of {r['jobs']:,} recorded {r['statuses']} "
                         f"after {r['recorded_s']:.2f} s (the sink polled every 0.5 s); "
                         f"{r['submit_s'] / r['jobs'] * 1000:.1f} ms per push.")  # fmt: skip
    return [*out, "", *[f"- {note}" for note in notes], ""]


def failover_row(system: str, f: dict) -> str:
    setup = label("failover", system)
    if reason := failed(f):
        return f"| {setup} | failed: {reason} | | | | | |"
    if system == "zcron":
        setup = f"zcron, 3 schedulers, killed {f['victim']} (owned {f['owned']})"
    return (f"| {setup} | {f['missed']:,} / {f['expected_ticks']:,} | {f['duplicates']} "
            f"| {ms(f['first_tick_max_ms'])} | {seconds(f['restart_to_first_run_s'])} "
            f"| {ms(f['first_tick_after_restart_max_ms'])} | {ms(f['max_ms'])} |")  # fmt: skip


def failover_section(failover: dict) -> list[str]:
    row = next((f for f in failover.values() if not failed(f)), {"jobs": "-", "window_s": "-"})
    out = [f"## Failover ({row['jobs']} per-second jobs; SIGKILL of the scheduler, "
           f"restarted 6 s later; window {row['window_s']} s)", "",
           "zcron's successors take over the killed scheduler's jobs; APScheduler (its one "
           "process) and celery beat have no failover: their ticks stop until the restart.", "",
           "| system | missed / expected | dups | first tick after the kill: worst ms "
           "| restart → first run s | its worst lateness ms | worst ms |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    out += [failover_row(system, f) for system, f in failover.items()]
    return [*out, ""]


def scale_section(rows: list[dict]) -> list[str]:
    out = ["## Scale (one scheduler process, mixed schedules, idle)", "",
           "| system | jobs | start-up s | start-up CPU s | RSS MB | idle CPU % "
           "| start-up zcron ÷ this | RSS zcron ÷ this |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    zcron = {r["jobs"]: r for r in rows if r.get("system", "zcron") == "zcron"}
    for r in rows:
        system = r.get("system", "zcron")
        if reason := failed(r):
            out.append(f"| {label('scale', system)} | {r['jobs']:,} | not measured: "
                       f"{reason.splitlines()[0][:120]} | | | | | |")  # fmt: skip
            continue
        z = zcron.get(r["jobs"], {})
        out.append(f"| {label('scale', system)} | {r['jobs']:,} | {r['startup_s']:.1f} "
                   f"| {r['startup_cpu_s']:.1f} | {r['rss_mb']:.0f} | {r['idle_cpu_pct']:.1f} "
                   f"| {ratio(z.get('startup_s'), r['startup_s'])} "
                   f"| {ratio(z.get('rss_mb'), r['rss_mb'])} |")  # fmt: skip
    return [*out, ""]


def ingest_section(i: dict) -> list[str]:
    return ["## Sink ingest", "", "| path | records | records/s |", "| --- | ---: | ---: |",
            f"| 4 clients → sink → LMDB → ack | {i['end_to_end']['records']:,} "
            f"| {i['end_to_end']['per_s']:,.0f} |",
            f"| store only, 100 per txn | {i['store_only']['records']:,} "
            f"| {i['store_only']['per_s']:,.0f} |", ""]  # fmt: skip


def pool_name(r: dict) -> str:
    """A row's system and its pool: zcron's slots, APScheduler's processes, Celery's -c."""
    pools = {"zcron": "slots {}", "apscheduler": "ProcessPoolExecutor({})", "celery": "-c {}"}
    return f"{r['system']}, {pools[r['system']].format(r['slots'])}"


def mib(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def pool_latency_rows(rows: list[dict]) -> list[str]:
    out = ["| system | jobs/s | ticks | started | not started | missed, as recorded "
           "| unaccounted | dups | p50 ms | p99 ms | peak PSS MiB |",
           "| --- |" + " ---: |" * 10]  # fmt: skip
    for r in rows:
        if reason := failed(r):
            out.append(f"| {pool_name(r)} | - | - | - | - | - | - | - | - | - | failed: {reason} |")
            continue
        recorded = r.get("missed_recorded")
        left = "-" if recorded is None else f"{r['expected_ticks'] - r['ran'] - recorded:,}"
        out.append(f"| {pool_name(r)} | {r['jobs']:,} | {r['expected_ticks']:,} | {r['ran']:,} "
                   f"| {r['missed']:,} | {'none' if recorded is None else f'{recorded:,}'} "
                   f"| {left} | {r['duplicates']} | {ms(r['p50_ms'])} | {ms(r['p99_ms'])} "
                   f"| {mib(r.get('peak_pss_mib'))} |")  # fmt: skip
    return out


def pool_burst_rows(rows: list[dict]) -> list[str]:
    out = [
        "| system | jobs | ran | all started s | started/s | all finished s | peak PSS MiB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        if reason := failed(r):
            out.append(f"| {pool_name(r)} | - | - | - | - | - | failed: {reason} |")
            continue
        rate = r["jobs"] / r["all_started_s"] if r.get("all_started_s") else None
        pss = mib(r.get("peak_pss_mib"))
        out.append(f"| {pool_name(r)} | {r['jobs']:,} | {r['ran']:,} "
                   f"| {seconds(r['all_started_s'])} | {mib(rate)} "
                   f"| {seconds(r['all_finished_s'])} | {pss} |")  # fmt: skip
    return out


def pool_push_rows(rows: list[dict]) -> list[str]:
    out = ["| system | pushes | acknowledged/s | all finished s | run/s | peak PSS MiB "
           "| CLI push / status / runs ms |",
           "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]  # fmt: skip
    for r in rows:
        if reason := failed(r):
            out.append(f"| {pool_name(r)} | - | - | - | - | - | failed: {reason} |")
            continue
        acked = r.get("acknowledged_per_s") or (r["jobs"] / r["submit_s"] if r.get("submit_s")
                                                 else None)  # fmt: skip
        cli = r.get("cli_ms")
        cli_text = " / ".join(f"{cli[c]:.0f}" for c in ("push", "status", "runs")) if cli else "-"
        out.append(f"| {pool_name(r)} | {r['jobs']:,} | {mib(acked)} "
                   f"| {seconds(r['all_finished_s'])} | {mib(r.get('jobs_per_s'))} "
                   f"| {mib(r.get('peak_pss_mib'))} | {cli_text} |")  # fmt: skip
    return out


def pool_section(pool: dict) -> list[str]:
    slots = pool["slots"]
    return [f"## Pools of {slots} (zcron at --slots {slots} and its default 4, APScheduler "
            f"ProcessPoolExecutor({slots}), Celery -c {slots})", "",
            "Not started = expected − started in the window (+1.5 s); missed, as recorded: "
            "zcron's `missed` records for the window's ticks, APScheduler's logged skips, "
            "Celery none; unaccounted = neither started nor recorded.", "",
            *pool_latency_rows(pool["latency"]), "",
            "Jobs due at one instant (`/bin/sh -c true`), times from the tick:", "",
            *pool_burst_rows(pool["burst"]), "",
            "Ad-hoc pushes from one client (zcron: pipelined on one connection, every "
            "acknowledged push in LMDB; APScheduler add_job in its process; Celery .delay()), "
            "until all have run:", "",
            *pool_push_rows(pool["push"]), ""]  # fmt: skip


SECTIONS = {"burst": burst_section, "push": push_section, "ingest": ingest_section,
            "failover": failover_section, "scale": scale_section,
            "pool": pool_section}  # fmt: skip


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"# zcron benchmarks, {report['measured_at']}", "",
             f"Machine: {m['nproc']} cores, {m['ram_gib']} GiB, Linux {m['kernel']}, "
             f"Python {m['python']}. Latency window {report['seconds']} s per row"
             f"{' (--quick)' if report['quick'] else ''}.", ""]  # fmt: skip
    if "latency" in report:
        title = "## Tick lateness (from the job's own clock)"
        lines += [title, "", *latency_table(report["latency"]), ""]
    for part, section in SECTIONS.items():
        if report.get(part):
            lines += section(report[part])
    return "\n".join(lines)


def timeline_plot(results: dict, title: str, xlabel: str, path: Path) -> None:
    """Runs started (dashed) and finished (solid) over time, one colour per system."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for system, r in results.items():
        if "finished_offsets_s" in r:
            line = ax.plot(r["finished_offsets_s"], range(1, len(r["finished_offsets_s"]) + 1),
                           label=f"{system} finished")  # fmt: skip
            ax.plot(r["started_offsets_s"], range(1, len(r["started_offsets_s"]) + 1), ls="--",
                    c=line[0].get_color(), label=f"{system} started")  # fmt: skip
        elif "all_finished_s" in r:  # the bare loop: no per-run times
            ax.axvline(r["all_finished_s"], ls=":", c="black", label=f"{system}: all finished")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("runs")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plots(report: dict, where: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if "latency" in report:
        jobs = sorted({r["jobs"] for r in report["latency"]})
        fig, axes = plt.subplots(1, len(jobs), figsize=(5 * len(jobs), 4), squeeze=False)
        for ax, n in zip(axes[0], jobs, strict=True):
            for r in (r for r in report["latency"] if r["jobs"] == n and r["lateness_ms"]):
                values = [max(v, 0.01) for v in r["lateness_ms"]]
                ax.plot(values, [(i + 1) / r["expected_ticks"] for i in range(len(values))],
                        label=f"{r['system']} (missed {r['missed']})")  # fmt: skip
            ax.set_xscale("log")
            ax.set_title(f"{n} jobs/s")
            ax.set_xlabel("lateness ms (job's own clock)")
            ax.set_ylabel("fraction of expected ticks started")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(where / "lateness_cdf.png", dpi=100)
        plt.close(fig)
    if report.get("burst"):
        jobs = max(r.get("jobs", 0) for r in report["burst"].values())
        timeline_plot(report["burst"], f"{jobs:,} jobs due at one instant",
                      "seconds after the tick", where / "burst_timeline.png")  # fmt: skip
    if report.get("push"):
        jobs = report["push"].get("zcron", {}).get("jobs", 0)
        timeline_plot(report["push"], f"{jobs:,} ad-hoc pushes, one after another",
                      "seconds after the first push", where / "push_timeline.png")  # fmt: skip
