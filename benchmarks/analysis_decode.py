"""Which FFmpeg options the detector's decoder can take: CPU saved against QR reads kept.

    python benchmarks/analysis_decode.py [--repeat 3] [videos...]     (default: the sample videos)

For each option set (media.ANALYSIS_OPTIONS swapped in), replays each video through the real pipeline
in this process (fast replay: every frame detector.rate_hz picks is analysed, none dropped) and prints
the process CPU seconds (median of --repeat runs), the reads (frames x codes read as valid CIDs) and the
events' CIDs. An option set is usable only if its reads and CIDs equal the baseline's (no options) on
every video; the script exits 1 when the committed ANALYSIS_OPTIONS are not.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_agent.capture import media  # noqa: E402
from edge_agent.config import parse_config  # noqa: E402
from edge_agent.delivery.sinks import FolderSink  # noqa: E402
from edge_agent.pipeline.wiring import Pipeline  # noqa: E402

VARIANTS: dict[str, dict[str, str]] = {
    "none": {},
    "skip_loop_filter=all": {"skip_loop_filter": "all"},
    "skip_loop_filter=all flags2=fast": {"skip_loop_filter": "all", "flags2": "fast"},
    "skip_idct=all": {"skip_idct": "all"},  # FFmpeg's H.264 decoder ignores it: a control
}
MIN_READS = 0.99  # of the baseline's frame reads (a label is in view for many frames: its CID is what counts)
SAMPLES = ["conveyor_720p30.mp4", "conveyor_1080p30.mp4", "invalid_payload_720p30.mp4", "hard_codes_720p30.mp4"]


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def replay(video: Path, work: Path) -> tuple[float, int, list[str]]:
    cfg = parse_config(f"source:\n  kind: file\n  path: {video}\nspool:\n  dir: {work / 'spool'}\n", env={})
    events: list = []
    p = Pipeline(cfg, FolderSink(work / "clips"), videos=[str(video)], on_event=events.append)
    before = cpu_s()
    p.start()
    p.wait()
    spent = cpu_s() - before
    return spent, p.status().detect.sightings, sorted(e.cid for e in events)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("videos", nargs="*", type=Path)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    videos = args.videos or [ROOT / "sample_media" / s for s in SAMPLES]
    committed = dict(media.ANALYSIS_OPTIONS)
    results: dict[str, dict[str, tuple[float, int, list[str]]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, opts in VARIANTS.items():
            media.ANALYSIS_OPTIONS.clear()
            media.ANALYSIS_OPTIONS.update(opts)
            for v in videos:
                runs = [replay(v, Path(tmp) / f"{name}-{v.stem}-{i}") for i in range(args.repeat)]
                cpu = statistics.median(r[0] for r in runs)
                results.setdefault(name, {})[v.name] = (cpu, runs[0][1], runs[0][2])
                same = {(r[1], tuple(r[2])) for r in runs}
                print(f"{name:<34} {v.name:<28} cpu {cpu:6.2f} s (runs {' '.join(f'{r[0]:.2f}' for r in runs)})  "
                      f"reads {runs[0][1]:4d}  cids {len(runs[0][2])}{'' if len(same) == 1 else '  UNSTABLE'}",
                      flush=True)
    media.ANALYSIS_OPTIONS.clear()
    media.ANALYSIS_OPTIONS.update(committed)
    base = results["none"]
    print("\nagainst no options (CPU ratio, reads kept):")
    ok = True
    for name, per in results.items():
        same_cids = all(per[v][2] == base[v][2] for v in base)
        reads = sum(per[v][1] for v in base)
        base_reads = sum(base[v][1] for v in base)
        ratio = sum(per[v][0] for v in base) / sum(base[v][0] for v in base)
        print(f"  {name:<34} cpu x{ratio:.2f}  {'same CIDs' if same_cids else 'CIDS DIFFER'}, "
              f"frame reads {reads}/{base_reads}")
        if VARIANTS[name] == committed and (not same_cids or reads < MIN_READS * base_reads):
            ok = False
    print("committed ANALYSIS_OPTIONS keep every read" if ok else "MISS: ANALYSIS_OPTIONS lose reads")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
