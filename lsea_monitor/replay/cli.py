"""``lsea-replay-eval``: evaluate the monitor on a recorded drive (rosbag2, sqlite3 or mcap).

Examples::

    lsea-replay-eval drive_bag --artefact det.safetensors --checkpoint best.ckpt \\
        --image-topic /camera/image_raw --gt-topic /ground_truth/ood --mode offline --out eval/
    lsea-replay-eval drive_bag --params-file config/lsea_monitor.params.yaml --params-file config/demo.params.yaml \\
        --image-topic /camera/image_raw --gt-file drive_bag/ground_truth.yaml --mode both --rate 1.0 \\
        --out eval/ --output-bag eval/verdicts.mcap

Exit codes: 0 complete and every check passed; 1 internal error; 2 bad input (no such bag, missing
topic, empty bag, unsupported encoding, bad ground truth or parameters); 3 corrupted or truncated
bag (the report, if any, says INCOMPLETE); 4 offline and live scores disagree (``--mode both``);
5 live mode failed (node did not start or answer, or exited non-zero); 6 nothing to evaluate (a mode
got no valid verdict, or live verdicts could not be matched to repeated header stamps).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lsea_monitor.errors import LseaError
from lsea_monitor.replay import decode, evaluate, ground_truth
from lsea_monitor.replay import report as rep
from lsea_monitor.replay.bag_io import BagReader, OutputMessage, check_output_bag_path, write_bag
from lsea_monitor.replay.errors import (
    EXIT_CORRUPT,
    EXIT_DISAGREE,
    EXIT_INTERNAL,
    EXIT_LIVE,
    EXIT_OK,
    EXIT_UNJUDGED,
    EXIT_USAGE,
    LiveModeError,
    ReplayError,
)
from lsea_monitor.replay.offline import (
    DEFAULT_NODE_NAME,
    ModeResult,
    MonitorConfig,
    load_params_files,
    check_image_topic,
    load_scorer,
    monitor_config,
    run_offline,
)
from lsea_monitor.replay.records import BagInfo, GroundTruth


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lsea-replay-eval", description=__doc__.split("\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bag", help="rosbag2 folder (with metadata.yaml) or a .db3 / .mcap file")
    p.add_argument("--image-topic", required=True, help="sensor_msgs/Image or sensor_msgs/CompressedImage topic")
    gt = p.add_mutually_exclusive_group()
    gt.add_argument("--gt-topic", help="std_msgs/Bool ground-truth topic in the bag (True = OoD)")
    gt.add_argument("--gt-file", help="YAML or CSV sidecar of OoD intervals (see lsea_monitor.replay.ground_truth)")
    p.add_argument("--mode", choices=("offline", "live", "both"), default="offline")
    p.add_argument("--out", required=True, help="output folder for report.json, report.md, timeline.png, frames CSV")
    m = p.add_argument_group("monitor (as the node's parameters; the command line overrides --params-file)")
    m.add_argument("--artefact", help="detector artefact (.safetensors)")
    m.add_argument("--checkpoint", help="model checkpoint the artefact was calibrated with")
    m.add_argument("--model-class", help="'package.module:Class'; default: the artefact's")
    m.add_argument("--layer", help="hooked layer; default: the artefact's")
    m.add_argument("--trust-checkpoint", action="store_true", default=None,
                   help="unpickle the checkpoint fully (as the node's trust_checkpoint): only the file whose "
                        "SHA-256 the artefact records; only for files you trust")
    m.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the params file's, else auto)")
    m.add_argument("--params-file", action="append", default=[],
                   help="the node's parameters YAML (repeatable, later wins); also given to a node started in live mode")
    m.add_argument("--node-name", default=DEFAULT_NODE_NAME, help="node name (default lsea_monitor)")
    m.add_argument("--namespace", default="", help="node namespace (default: none)")
    o = p.add_argument_group("offline mode")
    o.add_argument("--batch-size", type=int, default=1,
                   help="frames per model call (default 1: one seed per frame, comparable with the node)")
    o.add_argument("--unseeded", action="store_true", help="do not seed MC draws per frame (not deterministic)")
    lv = p.add_argument_group("live mode")
    lv.add_argument("--rate", type=float, default=1.0, help="playback speed, x bag time (default 1.0)")
    lv.add_argument("--attach", action="store_true",
                    help="use an already running node (same ROS_DOMAIN_ID, 'image' remapped to --image-topic) "
                         "instead of starting one")
    lv.add_argument("--startup-timeout", type=float, default=180.0, help="seconds to wait for the node (default 180)")
    lv.add_argument("--idle-timeout", type=float, default=3.0,
                    help="after the last frame, stop when no verdict came for this long (default 3 s)")
    lv.add_argument("--no-sim-time", action="store_true", help="do not start the node with use_sim_time:=true")
    p.add_argument("--restamp", action="store_true",
                   help="use bag time as the header stamp of every frame (bags with zero or repeated header stamps)")
    p.add_argument("--agreement-tol", type=float, default=1e-5, help="--mode both: max |offline - live| score")
    p.add_argument("--output-bag", help="write the bag with the verdicts added (.mcap: one file; else a bag folder)")
    p.add_argument("--no-verify", action="store_true", help="skip the mcap CRC check before reading")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return p


def _log(args: argparse.Namespace, text: str) -> None:
    if not args.quiet:
        print(text, file=sys.stderr, flush=True)


def _summarize(res: ModeResult, *, gt: GroundTruth, threshold: float, info: BagInfo, n_frames: int) -> dict[str, Any]:
    v = res.verdicts
    s = evaluate.summarize(stamps_ns=[x.stamp_ns for x in v], scores=[x.score for x in v], valid=[x.valid for x in v],
                           flags=[x.flag for x in v], latencies_ms=[x.latency_ms for x in v], n_frames=n_frames,
                           frame_stamps_ns=[f.stamp_ns for f in res.frames],
                           intervals=gt.intervals if gt.available else None, threshold=threshold,
                           origin_ns=info.start_ns)
    s["complete"] = res.complete
    s["dropped"] = n_frames - len(v)
    if res.error:
        s["error"] = res.error
    nl = [x.node_latency_ms for x in v]
    if res.mode == "live":
        s["node_latency"] = evaluate.latency_summary(nl)
    s["run"] = {k: val for k, val in res.extra.items()}
    s["wall_s"] = res.wall_s
    return s


def _agreement(off: ModeResult, live: ModeResult, tol: float) -> dict[str, Any]:
    a = {v.frame_index: v.score for v in off.verdicts if v.valid}
    b = {v.frame_index: v.score for v in live.verdicts if v.valid}
    out = evaluate.score_agreement(a, b, tolerance=tol)
    fo = {v.frame_index: v.flag for v in off.verdicts}
    fl = {v.frame_index: v.flag for v in live.verdicts}
    common = fo.keys() & fl.keys()
    out["flag_agreement"] = sum(fo[k] == fl[k] for k in common) / len(common) if common else math.nan
    if not out["ok"] and out["n_common"]:
        out["note"] = ("The node's scores differ from offline mode's. Agreement to 1e-5 needs the same MC draws "
                       "(both seed a frame through FrameScorer.frame_seed: the artefact's common seed, else the "
                       "frame's header stamp; --unseeded turns that off) and the same torch thread count in both "
                       "processes (OMP_NUM_THREADS): another count rounds the latent samples differently, and the "
                       "entropy of near-identical MC samples amplifies that. Flags may also differ at the start: "
                       "the node's watchdog raises its flag before the first frame arrives.")
    elif not out["n_common"]:
        out["note"] = "No frame was judged validly by both modes: nothing to compare."
    return out


def _output_messages(res: ModeResult, *, prefix: str, frame_ids: dict[int, str], threshold: float,
                     mc_samples: int, name: str) -> list[OutputMessage]:
    out = []
    for v in res.verdicts:
        out.append(OutputMessage(f"{prefix}/verdict", decode.DIAGNOSTIC_ARRAY, v.stamp_ns,
                                 decode.verdict_cdr(v, frame_id=frame_ids.get(v.frame_index, ""), threshold=threshold,
                                                    mc_samples=mc_samples, name=name)))
        out.append(OutputMessage(f"{prefix}/ood", decode.BOOL, v.stamp_ns, decode.bool_cdr(v.flag)))
    return out


def run(args: argparse.Namespace) -> int:
    out_dir = Path(args.out)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # a file of that name, no permission: nowhere to write the report
        print(f"error: cannot use --out {out_dir} as the report folder: {err.strerror or err}; choose another "
              "path.", file=sys.stderr)
        return EXIT_USAGE
    t0 = time.perf_counter()
    problems: list[str] = []
    report: dict[str, Any] = {"tool": "lsea-replay-eval", "report_version": rep.REPORT_VERSION,
                              "created": rep.now_iso(), "command": " ".join(sys.argv),
                              "status": {"complete": False, "exit_code": EXIT_INTERNAL, "problems": problems},
                              "bag": {"path": str(args.bag), "image_topic": args.image_topic},
                              "ground_truth": {"source": "none", "intervals": []}, "modes": {},
                              "definitions": rep.DEFINITIONS}
    try:
        return _run(args, out_dir, report, problems, t0)
    except ReplayError as err:
        problems.append(f"{type(err).__name__}: {err}")
        report["status"].update({"complete": False, "exit_code": err.exit_code, "error": str(err),
                                 "error_type": type(err).__name__})
        _write(out_dir, report)
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except LseaError as err:  # artefact/checkpoint/model problems from the core
        problems.append(f"{type(err).__name__}: {err}")
        report["status"].update({"complete": False, "exit_code": EXIT_USAGE, "error": str(err),
                                 "error_type": type(err).__name__})
        _write(out_dir, report)
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE


def _write(out_dir: Path, report: dict[str, Any]) -> None:
    report.setdefault("files", {})
    report["files"].update({"report_json": str(out_dir / "report.json"), "report_md": str(out_dir / "report.md")})
    rep.write_json(out_dir / "report.json", report)
    (out_dir / "report.md").write_text(rep.markdown(rep.clean_json(report)))


def _run(args: argparse.Namespace, out_dir: Path, report: dict[str, Any], problems: list[str], t0: float) -> int:
    params = load_params_files(args.params_file, node_name=args.node_name, namespace=args.namespace)
    overrides = {"checkpoint": args.checkpoint, "artefact": args.artefact, "model_class": args.model_class,
                 "layer": args.layer, "device": args.device, "trust_checkpoint": args.trust_checkpoint}
    cfg: MonitorConfig = monitor_config(params, overrides)
    if args.mode == "both" and args.batch_size != 1:
        raise ReplayError("--mode both compares frame by frame with the node, which scores one frame at a time: "
                          "use --batch-size 1.")
    if args.batch_size < 1:
        raise ReplayError(f"--batch-size must be >= 1, got {args.batch_size}.")
    scorer = None
    with BagReader(args.bag) as bag:
        # everything about the input is checked before the model is loaded
        if not args.no_verify:
            bag.verify()
        bag.require_messages()
        info = bag.info()
        topic_info = bag.require_topic(args.image_topic, decode.IMAGE_TYPES, what="image topic")
        check_image_topic(bag, args.image_topic)
        gt = ground_truth.load(bag, topic=args.gt_topic, file=args.gt_file)
        if args.output_bag:  # before hours of scoring, not after
            check_output_bag_path(args.output_bag)
        if args.mode in ("offline", "both"):
            _log(args, "[replay] loading the model and the artefact ...")
            scorer = load_scorer(cfg)
        report["bag"].update({"storage": info.storage, "start_ns": info.start_ns, "end_ns": info.end_ns,
                              "duration_s": info.duration_s, "message_count": info.message_count,
                              "msgtype": topic_info.msgtype, "n_frames": topic_info.count,
                              "topics": {t.name: {"type": t.msgtype, "count": t.count} for t in info.topics.values()}})
        report["ground_truth"] = {"source": gt.source, "intervals": [
            {"start_s": (iv.start_ns - info.start_ns) / 1e9, "end_s": (iv.end_ns - info.start_ns) / 1e9,
             "label": iv.label} for iv in gt.intervals]}
        threshold = float(scorer.threshold) if scorer is not None else math.nan
        report["monitor"] = {"checkpoint": cfg.checkpoint, "artefact": cfg.artefact, "threshold": threshold,
                             "mc_samples": getattr(scorer, "mc_samples", cfg.mc_samples or None),
                             "hysteresis": cfg.hysteresis(), "device": str(getattr(scorer, "device", cfg.device)),
                             "model_id": getattr(scorer, "model_id", ""),
                             "artefact_id": getattr(scorer, "artefact_id", ""), "params_files": args.params_file}
        results: dict[str, ModeResult] = {}
        live_error: LiveModeError | None = None
        if scorer is not None:
            _log(args, f"[offline] scoring {topic_info.count} frames of {args.image_topic} ...")
            step = max(1, topic_info.count // 10)

            def progress(n: int) -> None:
                if n % step == 0:
                    _log(args, f"[offline] {n}/{topic_info.count} frames")

            results["offline"] = run_offline(bag, args.image_topic, scorer, cfg, seeded=not args.unseeded,
                                             batch_size=args.batch_size, restamp=args.restamp, progress=progress)
            if not results["offline"].complete:
                problems.append(f"offline: {results['offline'].error}")
        if args.mode in ("live", "both") and ("offline" not in results or results["offline"].complete):
            from lsea_monitor.replay.live import LiveConfig, run_live

            node_params = {k: v for k, v in (("checkpoint", cfg.checkpoint), ("artefact", cfg.artefact),
                                             ("model_class", cfg.model_class), ("layer", cfg.layer),
                                             ("device", cfg.device), ("trust_checkpoint", cfg.trust_checkpoint))
                           if v and overrides.get(k)}
            lcfg = LiveConfig(rate=args.rate, node_name=args.node_name, namespace=args.namespace,
                              start_node=not args.attach, params_files=tuple(args.params_file), node_params=node_params,
                              startup_timeout_s=args.startup_timeout, idle_timeout_s=args.idle_timeout,
                              use_sim_time=not args.no_sim_time, restamp=args.restamp,
                              log_path=str(out_dir / "node.log"))
            _log(args, f"[live] playing {topic_info.count} frames at {args.rate:g}x against {lcfg.node_fqn()} ...")
            try:
                results["live"] = run_live(bag, args.image_topic, lcfg, log=lambda s: _log(args, s))
            except LiveModeError as err:
                if "offline" not in results:
                    raise
                live_error = err  # keep the offline figures; the report says live failed
                problems.append(f"live: {err}")
                report["status"]["error_type"] = type(err).__name__
            else:
                if not results["live"].complete:
                    problems.append(f"live: {results['live'].error}")
                if math.isnan(threshold):
                    threshold = float(results["live"].extra.get("threshold", math.nan))
                    report["monitor"]["threshold"] = threshold
        elif args.mode in ("live", "both"):
            problems.append("live: not run, the bag could not be read to the end offline")
        # frames in the bag: its index says how many were recorded, even where a truncated file lets
        # fewer be read (those count as not judged, not as absent)
        n_frames = max([topic_info.count, *(len(r.frames) for r in results.values())])
        for name, res in results.items():
            report["modes"][name] = _summarize(res, gt=gt, threshold=threshold, info=info, n_frames=n_frames)
        unjudged = [name for name, m in report["modes"].items() if m["n_valid"] == 0]
        for name in unjudged:  # fail closed: no metric of a mode that judged nothing may read as a result
            problems.append(f"{name}: no frame got a valid verdict ({report['modes'][name]['n_judged']} judged, all "
                            "invalid); its figures say nothing about the monitor")
        live = results.get("live")
        duplicates = live.extra.get("duplicate_header_stamps", 0) if live is not None else 0
        unmatchable = bool(duplicates) and not args.restamp  # live verdicts are matched to frames by header stamp
        if unmatchable:
            problems.append(f"live: {duplicates} frame(s) repeat a header stamp, so live verdicts cannot be matched "
                            "to their frames; rerun with --restamp")
        read_through = bool(results) and all(r.complete for r in results.values()) and len(results) == (
            2 if args.mode == "both" else 1)
        complete = read_through and not unjudged and not unmatchable
        code = EXIT_OK if complete else EXIT_UNJUDGED if read_through else EXIT_CORRUPT
        if live is not None and live.extra.get("error_type") == LiveModeError.__name__:
            code = EXIT_LIVE  # the node failed (e.g. died while its last verdicts were awaited)
        if live_error is not None:
            code = live_error.exit_code
        if "offline" in results and "live" in results:
            ag = _agreement(results["offline"], results["live"], args.agreement_tol)
            report["agreement"] = ag
            if not ag["ok"]:
                problems.append(f"offline and live scores disagree (max |diff| {ag['max_abs_diff']}, tolerance "
                                f"{args.agreement_tol:g})")
                if code == EXIT_OK:
                    code = EXIT_DISAGREE
        # files
        frames = max(results.values(), key=lambda r: len(r.frames)).frames if results else []
        labels = None
        if gt.available:
            flags = ground_truth.labels_for([f.stamp_ns for f in frames], gt.intervals)
            labels = {f.index: bool(x) for f, x in zip(frames, flags)}
        files: dict[str, str] = {}
        for name, res in results.items():
            path = out_dir / f"frames_{name}.csv"
            rep.write_frames_csv(path, res.frames, res.verdicts, labels, info.start_ns)
            files[f"frames_{name}"] = str(path)
        if results:
            plot = out_dir / "timeline.png"
            rep.plot_timeline(plot, modes={n: r.verdicts for n, r in results.items()}, gt=gt, threshold=threshold,
                              origin_ns=info.start_ns,
                              title=f"{Path(args.bag).name}: {args.image_topic} ({', '.join(results)})"
                                    + ("" if complete else " - INCOMPLETE"))
            files["timeline"] = str(plot)
        if args.output_bag and results:
            fqn = ("/" + args.namespace.strip("/") if args.namespace.strip("/") else "") + f"/{args.node_name}"
            ids = {f.index: f.frame_id for f in frames}
            mc = int(report["monitor"].get("mc_samples") or 0)
            added: list[OutputMessage] = []
            primary = "offline" if "offline" in results else "live"
            added += _output_messages(results[primary], prefix=fqn, frame_ids=ids, threshold=threshold, mc_samples=mc,
                                      name=f"{args.node_name}: ood verdict ({primary} replay)")
            if primary == "offline" and "live" in results:
                added += _output_messages(results["live"], prefix=f"{fqn}/live", frame_ids=ids, threshold=threshold,
                                          mc_samples=mc, name=f"{args.node_name}: ood verdict (live replay)")
            try:
                written = write_bag(args.output_bag, source=bag, added=added)
                files["output_bag"] = written["path"]
                report["output_bag"] = {**written, "verdicts_from": primary,
                                        "topics": [f"{fqn}/verdict", f"{fqn}/ood"]
                                        + ([f"{fqn}/live/verdict", f"{fqn}/live/ood"] if primary == "offline"
                                           and "live" in results else [])}
            except ReplayError as err:
                problems.append(f"output bag: {err}")
                if code == EXIT_OK:
                    code = err.exit_code
                complete = complete and err.exit_code != EXIT_CORRUPT
    report["files"] = files
    report["status"].update({"complete": complete, "exit_code": code, "wall_s": round(time.perf_counter() - t0, 3)})
    _write(out_dir, report)
    _print_summary(report)
    return code


def _print_summary(report: dict[str, Any]) -> None:
    st = report["status"]
    print(f"lsea-replay-eval: {'COMPLETE' if st['complete'] else 'INCOMPLETE'} (exit {st['exit_code']}) "
          f"{report['bag']['path']} {report['bag'].get('image_topic')}: {report['bag'].get('n_frames')} frames, "
          f"ground truth {report['ground_truth']['source']}")
    for name, m in report["modes"].items():
        parts = [f"judged {m['n_judged']}/{m['n_frames']} ({rep._f(m['judged_fraction'], '.3f')})",
                 f"latency p50 {rep._f(m['latency']['p50_ms'], '.1f')} ms p99 {rep._f(m['latency']['p99_ms'], '.1f')} ms"]
        dq = m.get("detection_quality")
        if dq and dq.get("available"):
            parts.append(f"AUROC {rep._f(dq['auroc'])} FPR95(OoD+) {rep._f(dq['fpr_at_95_tpr_ood_positive'])} "
                         f"FPR95(InD+) {rep._f(dq['fpr_at_95_tpr_ind_positive'])}")
        dd = m.get("detection_delay")
        if dd:
            s = dd["summary"]
            parts.append(f"detected {s['n_detected']}/{s['n_judged_intervals']}"
                         + (f" ({s['n_not_judged']} not judged)" if s["n_not_judged"] else "")
                         + f" mean delay {rep._f(s['delay_s_mean'], '.2f')} s"
                         + ("" if s["armed_at_s"] is not None else "; the flag was NEVER lowered"))
        fa = m.get("false_alarms")
        if fa:
            parts.append(f"false alarms {fa['false_alarms']} ({rep._f(fa['false_alarms_per_hour'], '.1f')}/h InD, "
                         f"flag raised on {rep._f(fa['ind_frames_flagged'], '.3f')} of InD frames)")
        print(f"  {name}: " + "; ".join(parts))
    ag = report.get("agreement")
    if ag:
        print(f"  offline vs live: {'agree' if ag['ok'] else 'DISAGREE'} on {ag['n_common']} frames "
              f"(max |diff| {rep._f(ag['max_abs_diff'], '.3g')}, tolerance {ag['tolerance']:g})")
    for p in st["problems"]:
        print(f"  problem: {p}")
    print(f"  report: {report['files'].get('report_md')}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception:  # noqa: BLE001 - an unexpected failure is a bug: show it, exit 1
        traceback.print_exc()
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
