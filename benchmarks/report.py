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
                "| jobs/s | scheduler | worker | sink | scheduler CPU ms per 1,000 ticks |",
                "| ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
        for r in cpu:
            c = r["cpu_s"]
            per = c.get("scheduler", 0) / max(1, r["ran"]) * 1e6
            out.append(f"| {r['jobs']:,} | {c.get('scheduler', 0):.2f} | {c.get('worker', 0):.2f} "
                       f"| {c.get('sink', 0):.2f} | {per:,.0f} |")  # fmt: skip
    return out


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"# zcron benchmarks, {report['measured_at']}", "",
             f"Machine: {m['nproc']} cores, {m['ram_gib']} GiB, Linux {m['kernel']}, "
             f"Python {m['python']}. Latency window {report['seconds']} s per row"
             f"{' (--quick)' if report['quick'] else ''}.", ""]  # fmt: skip
    if "latency" in report:
        title = "## Tick lateness (from the job's own clock)"
        lines += [title, "", *latency_table(report["latency"]), ""]
    if "burst" in report:
        b, z = report["burst"]["posix_spawn"], report["burst"]["zcron"]
        lines += ["## Burst (jobs due at one instant, `/bin/sh -c true`)", "",
                  "| | jobs | all started s | all finished s | jobs/s |",
                  "| --- | ---: | ---: | ---: | ---: |",
                  f"| bare posix_spawn loop | {b['jobs']:,} | {b['all_started_s']:.2f} "
                  f"| {b['all_finished_s']:.2f} | {b['jobs_per_s']:,.0f} |",
                  f"| zcron, 2 workers ({z['recorded']:,} records {z['statuses']}) | {z['jobs']:,} "
                  f"| {z['all_started_s'] or 0:.2f} | {z['all_finished_s'] or 0:.2f} "
                  f"| {z.get('jobs_per_s', 0):,.0f} |",
                  "", f"zcron ÷ floor (all finished): "
                  f"{ratio(z['all_finished_s'], b['all_finished_s'])}", ""]  # fmt: skip
    if "ingest" in report:
        i = report["ingest"]
        lines += ["## Sink ingest", "", "| path | records | records/s |", "| --- | ---: | ---: |",
                  f"| 4 clients → sink → LMDB → ack | {i['end_to_end']['records']:,} "
                  f"| {i['end_to_end']['per_s']:,.0f} |",
                  f"| store only, 100 per txn | {i['store_only']['records']:,} "
                  f"| {i['store_only']['per_s']:,.0f} |", ""]  # fmt: skip
    if "failover" in report:
        f = report["failover"]
        lines += ["## Failover (3 schedulers, SIGKILL of the busiest owner)", "",
                  f"{f['jobs']} per-second jobs; killed {f['victim']} (owned {f['owned']}); "
                  f"the {f['after_s'] if 'after_s' in f else 6} s after: {f['ran']}/"
                  f"{f['expected_ticks']} ticks ran, missed {f['missed']}, duplicates "
                  f"{f['duplicates']}; first tick after the kill: worst lateness "
                  f"{ms(f['first_tick_max_ms'])} ms; worst over the window {ms(f['max_ms'])} ms.",
                  ""]  # fmt: skip
    if "scale" in report:
        lines += ["## Scale (one scheduler, mixed schedules, idle)", "",
                  "| jobs | start-up s | start-up CPU s | RSS MB | idle CPU % |",
                  "| ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
        for s in report["scale"]:
            if "error" in s:
                lines.append(f"| {s['jobs']:,} | failed: see latest.json | | | |")
                continue
            lines.append(f"| {s['jobs']:,} | {s['startup_s']:.1f} | {s['startup_cpu_s']:.1f} "
                         f"| {s['rss_mb']:.0f} | {s['idle_cpu_pct']:.1f} |")  # fmt: skip
        lines.append("")
    return "\n".join(lines)


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
    if "burst" in report:
        z, b = report["burst"]["zcron"], report["burst"]["posix_spawn"]
        fig, ax = plt.subplots(figsize=(7, 4))
        for key, label in (("started_offsets_s", "zcron started"),
                           ("finished_offsets_s", "zcron finished")):  # fmt: skip
            xs = z.get(key, [])
            ax.plot(xs, range(1, len(xs) + 1), label=label)
        ax.axvline(b["all_started_s"], ls="--", c="grey", label="bare loop: all started")
        ax.axvline(b["all_finished_s"], ls=":", c="black", label="bare loop: all finished")
        ax.set_xlabel("seconds after the tick")
        ax.set_ylabel("runs")
        ax.set_title(f"{z['jobs']:,} jobs due at one instant")
        ax.legend()
        fig.tight_layout()
        fig.savefig(where / "burst_timeline.png", dpi=100)
        plt.close(fig)
