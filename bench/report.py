"""Markdown tables from the benchmark's results (a list of dicts, one per measured run)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

Result = dict[str, Any]

# Targets shown next to the numbers (information only: nothing is asserted).
TARGET_VS_DIRECT = 0.85  # gateway calls/s >= 0.85 x direct gRPC (A2, same concurrency)
TARGET_VS_TRAEFIK = 1.6  # gateway calls/s >= 1.6 x Traefik (T)
TARGET_GATEWAY_CPU_US = 90.0  # gateway process CPU per unary call
TARGET_ADDED_P50_MS = 0.5  # gateway p50 minus direct p50 at 32 in flight (G vs A2)

GROUPS = {
    "unary": ("Unary calls", "calls/s", "call"),
    "stream": ("Server streaming", "msgs/s", "msg"),
    "mib": ("1 MiB messages (unary echo: 1 MiB request + 1 MiB response)", "MiB/s", "MiB"),
}


def _runs(values: Iterable[float], fmt: str) -> str:
    return " / ".join(format(v, fmt) for v in values)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _index(results: Sequence[Result]) -> dict[tuple[str, str, int], Result]:
    return {(r["id"], r["workload"], r["round"]): r for r in results}


def _ratio(
    index: dict[tuple[str, str, int], Result], r: Result, other: str, key: Callable[[Result], float]
) -> float | None:
    base = index.get((other, r["workload"], r["round"]))
    if base is None or not key(base):
        return None
    return key(r) / key(base)


def _payload(r: Result) -> str:
    if r["group"] == "stream":
        return f"{r['stream_count']} x {r['size']} B"
    if r["size"] >= 1024 * 1024:
        return f"{r['size'] // (1024 * 1024)} MiB"
    return f"{r['size']} B"


def group_table(results: Sequence[Result], group: str, order: Sequence[str]) -> list[str]:
    rows = [r for r in results if r["group"] == group]
    if not rows:
        return []
    title, rate, unit = GROUPS[group]
    index = _index(results)
    by: dict[tuple[str, str], list[Result]] = {}
    for r in rows:
        by.setdefault((r["workload"], r["id"]), []).append(r)
    lines = [
        f"### {title}",
        "",
        f"| cfg | what | payload | {rate} (runs) | "
        + ("" if group == "unary" else "calls/s | ")
        + f"p50 ms | p99 ms | server CPU us/{unit} | per process, us/{unit} (mean) | loadgen us/{unit} | "
        "vs direct | vs Traefik | load errors | warm-up responses checked (bad) | other load, cores |",
        "|---|---|---|---|" + ("" if group == "unary" else "---|") + "---|---|---|---|---|---|---|---|---|---|",
    ]
    workloads = sorted({r["workload"] for r in rows}, key=lambda w: min(r["size"] for r in rows if r["workload"] == w))
    for workload in workloads:
        for cid in order:
            rs = sorted(by.get((workload, cid), []), key=lambda r: r["round"])
            if not rs:
                continue
            first = rs[0]
            per_unit = first["units_per_call"]
            split = " + ".join(
                f"{name} {_mean([r['cpu_us_per_call'][name] / per_unit for r in rs]):.0f}"
                for name in first["cpu_us_per_call"]
            )
            base = first.get("base")
            vs_direct = [_ratio(index, r, base, lambda x: x["calls_per_s"]) for r in rs] if base else []
            vs_traefik = (
                [_ratio(index, r, _traefik_of(cid), lambda x: x["calls_per_s"]) for r in rs]
                if _traefik_of(cid) and cid != _traefik_of(cid)
                else []
            )
            checked = sum(r["warmup_checked"] for r in rs)
            bad = sum(r["warmup_bad"] for r in rs)
            first_bad = next((r["warmup_first_bad"] for r in rs if r["warmup_first_bad"]), "")
            cells = [
                cid,
                first["label"],
                _payload(first),
                _runs((r["units_per_s"] for r in rs), ",.0f" if group != "mib" else ".1f"),
            ]
            if group != "unary":
                cells.append(_runs((r["calls_per_s"] for r in rs), ",.0f"))
            cells += [
                _runs((r["p50_ms"] for r in rs), ".2f"),
                _runs((r["p99_ms"] for r in rs), ".2f"),
                _runs((r["server_cpu_us_per_call"] / per_unit for r in rs), ".0f" if group != "stream" else ".1f"),
                split,
                _runs((r["loadgen_cpu_us_per_call"] / per_unit for r in rs), ".0f" if group != "stream" else ".1f"),
                f"{_runs((v for v in vs_direct if v is not None), '.2f')} (vs {base})" if vs_direct else "",
                f"{_runs((v for v in vs_traefik if v is not None), '.2f')}" if vs_traefik else "",
                str(sum(r["errors"] for r in rs)),
                (f"{checked} ({bad}{': ' + first_bad if first_bad else ''})" if first["tool"] == "wrk" else "n/a"),
                _runs((r.get("other_cores", math.nan) for r in rs), ".2f"),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def _traefik_of(cid: str) -> str:
    # the Traefik row to compare a gateway gRPC-Web row with: G -> T, SG -> ST, MG -> MT
    return {"G": "T", "SG": "ST", "MG": "MT"}.get(cid, "")


def targets_table(results: Sequence[Result]) -> list[str]:
    index = _index(results)
    workloads = sorted({r["workload"] for r in results if r["id"] == "G"}, key=lambda w: int(w.split("-")[1]))
    if not workloads:
        return []

    def verdict(values: list[float], ok: Callable[[float], bool], fmt: str) -> str:
        if not values:
            return "n/a"
        mean = _mean(values)
        return f"{_runs(values, fmt)} (mean {mean:{fmt}}: {'met' if ok(mean) else 'MISSED'})"

    lines = [
        "### Targets (information only, not asserted; each ratio within one round)",
        "",
        f"| payload | G / A2 calls/s (target >= {TARGET_VS_DIRECT}) | G / T calls/s (>= {TARGET_VS_TRAEFIK}) | "
        f"gateway CPU us per G call (<= {TARGET_GATEWAY_CPU_US:.0f}) | "
        f"added p50 ms, G - A2 (<= {TARGET_ADDED_P50_MS}) | "
        "N2 / A2 calls/s | gateway CPU us per N2 call | added p50 ms, N2 - A2 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for workload in workloads:
        g = sorted((r for r in results if r["id"] == "G" and r["workload"] == workload), key=lambda r: r["round"])
        n2 = sorted((r for r in results if r["id"] == "N2" and r["workload"] == workload), key=lambda r: r["round"])

        def ratios(rows: list[Result], other: str) -> list[float]:
            vals = [_ratio(index, r, other, lambda x: x["calls_per_s"]) for r in rows]
            return [v for v in vals if v is not None]

        def added(rows: list[Result]) -> list[float]:
            out = []
            for r in rows:
                base = index.get(("A2", r["workload"], r["round"]))
                if base is not None:
                    out.append(r["p50_ms"] - base["p50_ms"])
            return out

        gw_cpu = [r["cpu_us_per_call"]["gateway"] for r in g]
        n2_cpu = [r["cpu_us_per_call"]["gateway"] for r in n2]
        lines.append(
            "| "
            + " | ".join(
                [
                    _payload(g[0]),
                    verdict(ratios(g, "A2"), lambda v: v >= TARGET_VS_DIRECT, ".2f"),
                    verdict(ratios(g, "T"), lambda v: v >= TARGET_VS_TRAEFIK, ".2f"),
                    verdict(gw_cpu, lambda v: v <= TARGET_GATEWAY_CPU_US, ".0f"),
                    verdict(added(g), lambda v: v <= TARGET_ADDED_P50_MS, ".2f"),
                    _runs(ratios(n2, "A2"), ".2f") or "n/a",
                    _runs(n2_cpu, ".0f") or "n/a",
                    _runs(added(n2), ".2f") or "n/a",
                ]
            )
            + " |"
        )
    return [*lines, ""]


def render(results: Sequence[Result], order: Sequence[str]) -> str:
    lines = [*targets_table(results)]
    for group in GROUPS:
        lines += group_table(results, group, order)
    return "\n".join(lines)
