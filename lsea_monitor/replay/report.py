"""Report files of a replay evaluation: ``report.json``, ``report.md``, ``timeline.png``, ``frames_<mode>.csv``.

``report.json`` is strict JSON (NaN written as null). Its ``status.complete`` is False whenever a bag
could not be read to the end or a mode failed; ``report.md`` then starts with INCOMPLETE.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from lsea_monitor.replay.records import Frame, GroundTruth, Verdict

REPORT_VERSION = 1


def clean_json(obj: Any) -> Any:
    """NaN/inf -> None, numpy scalars -> Python, tuples -> lists, Paths -> str (strict JSON)."""
    if isinstance(obj, Mapping):
        return {str(k): clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, os.PathLike):
        return str(obj)
    return obj


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(clean_json(data), indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)


def write_frames_csv(path: Path, frames: Sequence[Frame], verdicts: Sequence[Verdict], labels: Mapping[int, bool] | None,
                     origin_ns: int) -> None:
    """One row per frame of the bag (frames without a verdict have empty verdict columns)."""
    by_index = {v.frame_index: v for v in verdicts}
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["frame", "t_s", "stamp_ns", "header_stamp_ns", "gt_ood", "judged", "valid", "score", "raw_is_ood",
                    "flag", "latency_ms", "node_latency_ms", "reason"])
        for f in frames:
            v = by_index.get(f.index)
            gt = "" if labels is None else int(labels.get(f.index, False))
            if v is None:
                w.writerow([f.index, f"{(f.stamp_ns - origin_ns) / 1e9:.6f}", f.stamp_ns, f.header_stamp_ns, gt, 0,
                            "", "", "", "", "", "", ""])
            else:
                w.writerow([f.index, f"{(f.stamp_ns - origin_ns) / 1e9:.6f}", f.stamp_ns, f.header_stamp_ns, gt, 1,
                            int(v.valid), repr(v.score), int(v.raw_is_ood), int(v.flag), f"{v.latency_ms:.3f}",
                            "" if math.isnan(v.node_latency_ms) else f"{v.node_latency_ms:.3f}", v.reason])


def plot_timeline(path: Path, *, modes: Mapping[str, Sequence[Verdict]], gt: GroundTruth, threshold: float,
                  origin_ns: int, title: str) -> None:
    """Score and flag over bag time per mode, ground-truth OoD shaded, threshold line."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 5.5), dpi=110)
    ax, axf = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    styles = {"offline": {"color": "tab:blue", "lw": 1.2, "marker": "", "ls": "-"},
              "live": {"color": "tab:orange", "lw": 0, "marker": ".", "ls": "none"}}
    for a in (ax, axf):
        for i, iv in enumerate(gt.intervals):
            a.axvspan((iv.start_ns - origin_ns) / 1e9, (iv.end_ns - origin_ns) / 1e9, color="tab:red", alpha=0.15,
                      lw=0, label="ground truth OoD" if (i == 0 and a is ax) else None)
    for k, (mode, verdicts) in enumerate(modes.items()):
        if not verdicts:
            continue
        t = np.array([(v.stamp_ns - origin_ns) / 1e9 for v in verdicts])
        s = np.array([v.score for v in verdicts], dtype=float)
        st = styles.get(mode, {"color": f"C{k + 2}", "lw": 1, "marker": "", "ls": "-"})
        ax.plot(t, s, label=f"score ({mode})", color=st["color"], lw=st["lw"], marker=st["marker"], ls=st["ls"],
                ms=4)
        bad = np.array([not v.valid for v in verdicts])
        if bad.any():
            ax.plot(t[bad], np.full(bad.sum(), np.nanmax(s) if np.isfinite(s).any() else 1.0), "x", color="k",
                    label=f"no verdict possible ({mode})")
        flags = np.array([v.flag for v in verdicts], dtype=float)
        axf.step(t, flags * (1.0 - 0.08 * k), where="post", color=st["color"], label=f"flag ({mode})")
    if math.isfinite(threshold):
        ax.axhline(threshold, color="k", ls="--", lw=1, label=f"threshold {threshold:.4g}")
    ax.set_ylabel("detector score (higher = less safe)")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper left", fontsize=8, ncol=3)
    axf.set_ylim(-0.1, 1.15)
    axf.set_yticks([0, 1], ["InD", "OoD"])
    axf.set_ylabel("flag")
    axf.set_xlabel("bag time [s] from the bag start")
    axf.legend(loc="upper left", fontsize=8, ncol=3)
    fig.tight_layout()
    fig.savefig(path)


def _f(x: Any, fmt: str = ".4f") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return format(x, fmt) if isinstance(x, (int, float)) else str(x)


def markdown(report: Mapping[str, Any]) -> str:
    """The readable report."""
    st = report["status"]
    bag = report["bag"]
    lines = []
    head = "COMPLETE" if st["complete"] else "INCOMPLETE"
    lines.append(f"# Replay evaluation: {Path(bag['path']).name} ({head})\n")
    if not st["complete"]:
        lines.append("> **INCOMPLETE**: " + "; ".join(st["problems"]) + "\n")
    elif st["problems"]:
        lines.append("> Problems: " + "; ".join(st["problems"]) + "\n")
    lines.append(f"- bag: `{bag['path']}` ({bag.get('storage')}, {_f(bag.get('duration_s'), '.1f')} s, "
                 f"{bag.get('n_frames')} frames on `{bag.get('image_topic')}` [{bag.get('msgtype')}])")
    gt = report["ground_truth"]
    lines.append(f"- ground truth: {gt['source']} ({len(gt['intervals'])} OoD interval(s))")
    mon = report.get("monitor", {})
    lines.append(f"- monitor: threshold {_f(mon.get('threshold'), '.6g')}, M={mon.get('mc_samples')}, hysteresis "
                 f"{mon.get('hysteresis')}, model {mon.get('model_id', '')}, artefact {mon.get('artefact_id', '')}")
    lines.append(f"- exit code {st['exit_code']}\n")
    modes = report.get("modes", {})
    if modes:
        names = list(modes)
        lines.append("| metric | " + " | ".join(names) + " |")
        lines.append("|---|" + "---|" * len(names))

        def row(label: str, get: Any, fmt: str = ".4f") -> None:
            vals = []
            for n in names:
                try:
                    vals.append(_f(get(modes[n]), fmt))
                except (KeyError, TypeError):
                    vals.append("n/a")
            lines.append(f"| {label} | " + " | ".join(vals) + " |")

        row("complete", lambda m: str(m["complete"]), "")
        row("frames judged / in bag", lambda m: f"{m['n_judged']} / {m['n_frames']}", "")
        row("fraction judged", lambda m: m["judged_fraction"])
        row("valid verdicts", lambda m: m["n_valid"], "d")
        row("AUROC", lambda m: m["detection_quality"]["auroc"])
        row("AUPR-In", lambda m: m["detection_quality"]["aupr_in"])
        row("AUPR-Out", lambda m: m["detection_quality"]["aupr_out"])
        row("FPR@95TPR (OoD positive)", lambda m: m["detection_quality"]["fpr_at_95_tpr_ood_positive"])
        row("FPR@95TPR (InD positive)", lambda m: m["detection_quality"]["fpr_at_95_tpr_ind_positive"])
        row("OoD intervals detected / judged", lambda m: f"{m['detection_delay']['summary']['n_detected']} / "
            f"{m['detection_delay']['summary']['n_judged_intervals']}", "")
        row("OoD intervals not judged", lambda m: m["detection_delay"]["summary"]["n_not_judged"], "d")
        row("armed at [s] (flag first lowered)", lambda m: m["detection_delay"]["summary"]["armed_at_s"]
            if m["detection_delay"]["summary"]["armed_at_s"] is not None else "NEVER", ".2f")
        row("detection delay mean [s]", lambda m: m["detection_delay"]["summary"]["delay_s_mean"], ".3f")
        row("detection delay max [s]", lambda m: m["detection_delay"]["summary"]["delay_s_max"], ".3f")
        row("false alarms", lambda m: m["false_alarms"]["false_alarms"], "d")
        row("false alarms / h InD", lambda m: m["false_alarms"]["false_alarms_per_hour"], ".1f")
        row("InD frames with the flag raised", lambda m: m["false_alarms"]["ind_frames_flagged"], ".3f")
        row("latency p50 [ms]", lambda m: m["latency"]["p50_ms"], ".1f")
        row("latency p99 [ms]", lambda m: m["latency"]["p99_ms"], ".1f")
        row("dropped frames", lambda m: m["dropped"], "d")
        lines.append("")
        for n in names:
            dd = modes[n].get("detection_delay")
            if not dd or not dd["intervals"]:
                continue
            lines.append(f"## Detection delay per OoD interval ({n})\n")
            lines.append("| # | label | start [s] | end [s] | frames | detected | delay [s] | frames to detect |")
            lines.append("|---|---|---|---|---|---|---|---|")
            for i, r in enumerate(dd["intervals"]):
                lines.append(f"| {i} | {r['label'] or '-'} | {_f(r['start_s'], '.2f')} | {_f(r['end_s'], '.2f')} | "
                             f"{r['n_frames']} | {'yes' if r['detected'] else r['status'].upper()} | {_f(r['delay_s'], '.3f')} | "
                             f"{_f(r['frames_to_detect'], 'd')} |")
            lines.append("")
    ag = report.get("agreement")
    if ag:
        verdict = "AGREE" if ag["ok"] else "DISAGREE"
        lines.append(f"## Offline vs live: {verdict}\n")
        lines.append(f"Scores on the {ag['n_common']} frame(s) both modes judged validly: max |offline - live| = "
                     f"{_f(ag['max_abs_diff'], '.3g')} (tolerance {ag['tolerance']:g}); {ag['n_exceeding']} frame(s) "
                     f"beyond it. Flags equal on {_f(ag.get('flag_agreement'), '.3f')} of the common frames.")
        if ag.get("note"):
            lines.append(f"\n{ag['note']}")
        lines.append("")
    lines.append("## Definitions\n")
    for k, v in report.get("definitions", {}).items():
        lines.append(f"- **{k}**: {v}")
    files = report.get("files", {})
    if files:
        lines.append("\n## Files\n")
        for k, v in files.items():
            lines.append(f"- {k}: `{v}`")
    return "\n".join(lines) + "\n"


DEFINITIONS = {
    "bag time": "rosbag2 log timestamps; t = 0 is the bag's earliest message",
    "armed": "from the first judged frame after which the flag is lowered: the flag starts raised (fail closed) "
             "and that start-up raise neither detects nor alarms",
    "detection delay": "bag time from an OoD interval's onset to the first armed judged frame inside it with the "
                       "flag raised; none before the interval ends = missed; no armed judged frame inside it = not "
                       "judged (left out of the detection rate, counted apart)",
    "false alarm": "a rising edge of the flag at a frame outside every OoD interval; per hour of InD driving = "
                   "divided by the driving span (first frame to last frame + one median period) minus its OoD part",
    "fraction judged": "frames with a verdict / frames on the image topic (ERROR verdicts count as judged; valid "
                       "verdicts are counted apart)",
    "latency": "offline: wall time to score a frame in this process; live: image published -> verdict received "
               "(end to end, same machine); p50/p99 by numpy.percentile",
    "AUROC, AUPR, FPR@95TPR": "lsea_monitor.metrics.ood_metrics on the valid frames' scores against the "
                              "ground-truth label of each frame (OoD iff its bag time lies in an interval); "
                              "FPR@95TPR in both conventions (OoD positive; InD positive)",
}


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
