"""`make bench`: boot-path latency (agent vs the boothook's AWS CLI fallback), a boot storm
against the API quotas, bulk sealing, and the agent's footprint, all on one local stack in
one run. Prints one table with PASS/MISS per target and writes bench/results/<time>.json
and bench/results/latest.json.

Example::

    $ .venv/bin/python bench/run.py                 # the defaults: about 3 minutes
    $ .venv/bin/python bench/run.py --storm 1000    # a bigger storm (about 4 minutes more)
    $ .venv/bin/python bench/run.py --only latency --runs 9
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import procs  # noqa: E402
from bench.artifact import SYSTEM_PYTHON, installed_agent  # noqa: E402
from bench.latency import (  # noqa: E402
    AGENT,
    BIN,
    CLI,
    FLOOR_CODE,
    PerFragment,
    Series,
    aws_cli_version,
    fetch_args,
    run_floor,
    run_footprint,
    run_fragments,
    run_latency,
)
from bench.report import Table, counts, secs, spread, times  # noqa: E402
from bench.sealbulk import BulkSealResult, run_bulk_seal  # noqa: E402
from bench.stack import REAL_QUOTAS, BenchStack  # noqa: E402
from bench.storm import StormResult, run_storm  # noqa: E402

SECTIONS = ("latency", "fragments", "footprint", "storm", "seal")
# The agent boots in these sections: they measure the artifact unless told otherwise.
BOOTING = {"latency", "fragments", "footprint"}
RATIO_TARGET = 10.0
AGENT_WALL_TARGET = 0.5
# Each fragment beyond the first should cost about one round trip, not a thread or a connection.
PER_FRAGMENT_TARGET = 0.020
QUOTA_RATIO_TARGET = 1.5
RSS_TARGET_MB = 80.0
REAL_TIME_STORM_MAX = 200
KB = 1024


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=5, help="boots per mode and size (default 5)")
    p.add_argument(
        "--sizes", default="20,200", help="user data sizes in KB, comma-separated (default 20,200)"
    )
    p.add_argument(
        "--storm", type=int, default=200, help="instances in the boot storm (default 200, <=1000)"
    )
    p.add_argument(
        "--storm-scale",
        type=float,
        default=0.1,
        help="the storm runs at this fraction of the real quotas, time-stretched to match "
        "(default 0.1; see bench/sim.py)",
    )
    p.add_argument(
        "--no-real-quota-storm",
        action="store_true",
        help="skip the extra, unstretched storm at the real quotas (CPU-bound on a small box)",
    )
    p.add_argument("--seal", type=int, default=1000, help="machines to bulk-seal (default 1000)")
    p.add_argument(
        "--seal-workers",
        default="16,64",
        help="controller threads for the bulk seal, one run each (default 16,64)",
    )
    p.add_argument(
        "--fragments",
        default="2,9",
        help="CAPA-sealed fragment counts booted next to the same payload sealed natively "
        "(default 2,9)",
    )
    p.add_argument(
        "--fragment-runs",
        type=int,
        default=11,
        help="boots per format and fragment count (default 11: a few ms per fragment needs "
        "more boots than the latency rows to see through a busy box)",
    )
    p.add_argument("--only", help=f"comma-separated sections to run: {', '.join(SECTIONS)}")
    p.add_argument(
        "--stock-stack",
        action="store_true",
        help="keep the stack's HTTP servers as tests/stack ships them (Nagle + delayed ACK "
        "add ~40 ms to every reused connection); default: TCP_NODELAY, as real endpoints",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="also run one fetch of the venv's agent under pyinstrument (pip install "
        "pyinstrument) and save the report next to the results",
    )
    p.add_argument(
        "--agent",
        choices=("artifact", "venv"),
        default="artifact",
        help="which agent the boots run: 'artifact' (default), this tree built with make dist's "
        "builder behind install.sh's wrapper on /usr/bin/python3, as an image runs it; or "
        "'venv', .venv/bin/sealboot-agent (the editable install)",
    )
    p.add_argument(
        "--agent-bin",
        type=Path,
        help="measure this sealboot-agent executable instead (e.g. a patched copy); the storm "
        "still runs the agent package this Python imports",
    )
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    p.add_argument("--keep-work", action="store_true", help="keep the scratch directory")
    args = p.parse_args(argv)
    args.sections = set(args.only.split(",")) if args.only else set(SECTIONS)
    if not args.sections <= set(SECTIONS):
        p.error(f"--only takes {', '.join(SECTIONS)}")
    args.size_list = [int(s) * KB for s in args.sizes.split(",") if s]
    args.worker_list = [int(w) for w in args.seal_workers.split(",") if w]
    args.fragment_list = [int(n) for n in args.fragments.split(",") if n]
    if any(n < 2 for n in args.fragment_list):
        p.error("--fragments takes counts of 2 or more")
    if not 1 <= args.storm <= 1000:
        p.error("--storm takes 1 to 1000 instances")
    if not 0 < args.storm_scale <= 1:
        p.error("--storm-scale is in (0, 1]")
    if args.runs < 1 or args.fragment_runs < 1:
        p.error("--runs and --fragment-runs must be at least 1")
    return args


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _git(*args: str) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip()


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _system_python() -> str:
    try:
        out = subprocess.run(
            [SYSTEM_PYTHON, "-I", "-S", "-c", "import platform; print(platform.python_version())"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return f"no {SYSTEM_PYTHON}"
    return f"{SYSTEM_PYTHON} {out.stdout.strip()}"


def _agent_label(args: argparse.Namespace) -> str:
    if not args.sections & BOOTING:
        return "in-process only (storm)"
    if args.agent_bin:
        return str(args.agent_bin)
    if args.agent == "venv":
        return "venv (.venv/bin/sealboot-agent)"
    return f"artifact ({_system_python()})"


def meta(args: argparse.Namespace, cli: str | None) -> dict[str, Any]:
    import botocore
    import moto

    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    return {
        "command": " ".join([Path(sys.executable).name, "bench/run.py", *sys.argv[1:]]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": _git("rev-parse", "--short", "HEAD") + ("-dirty" if dirty else ""),
        "cpus": os.cpu_count(),
        "cpu": _cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "botocore": botocore.__version__,
        "moto": moto.__version__,
        "aws_cli": cli,
        "stack": "stock" if args.stock_stack else "TCP_NODELAY",
        "agent": _agent_label(args),
    }


# -- the table -------------------------------------------------------------------------------


def latency_rows(table: Table, series: list[Series], floor: Series | None = None) -> None:
    by = {(s.mode, s.size): s for s in series}
    for size in sorted({s.size for s in series}):
        label = f"{size // KB} KB"
        agent, cli = by.get((AGENT, size)), by.get((CLI, size))
        for s, name in ((agent, "agent"), (cli, "CLI fallback")):
            if s is None:
                continue
            sm = s.summary()
            table.add(
                "1",
                f"boot {label}, {name}: wall, median (min-max) of {sm['runs']}",
                spread(sm["wall_median"], sm["wall_min"], sm["wall_max"]),
                reference=f"per boot: AWS {counts(sm['aws_requests_per_boot'])}, "
                f"IMDS {sm['imds_requests_per_boot']:g}, CPU {sm['cpu_median']:.2f} s",
                target="every boot succeeds" if s.failures else "",
                ok=False if s.failures else None,
            )
        if agent is None:
            continue
        judged = size == 20 * KB
        if cli is not None and not cli.failures and not agent.failures:
            ratio = cli.median / agent.median
            table.add(
                "1",
                f"boot {label}: agent speed-up over the CLI fallback",
                f"{secs(cli.median)} / {secs(agent.median)}",
                reference="CLI median / agent median",
                ratio=times(ratio),
                target=f">= {RATIO_TARGET:g}x" if judged else "",
                ok=ratio >= RATIO_TARGET if judged else None,
            )
        elif judged:
            table.add("1", f"boot {label}: agent speed-up", "not measured", target=">= 10x")
        if judged and floor is not None and not floor.failures:
            sm = floor.summary()
            budget = (
                f"{secs(cli.median / RATIO_TARGET)} = CLI median / {RATIO_TARGET:g}" if cli else ""
            )
            table.add(
                "1",
                f"floor: agent interpreter + import botocore, requests; median of {sm['runs']}",
                spread(sm["wall_median"], sm["wall_min"], sm["wall_max"]),
                reference=f"{RATIO_TARGET:g}x needs a boot under {budget}" if budget else "",
            )
        if judged:
            table.add(
                "1",
                f"boot {label}: agent wall per boot (median)",
                secs(agent.median),
                target=f"< {AGENT_WALL_TARGET:g} s",
                ok=agent.median < AGENT_WALL_TARGET and not agent.failures,
            )


def fragment_rows(table: Table, pairs: list[PerFragment]) -> None:
    for pair in pairs:
        label = f"{pair.native.size // KB} KB"
        for s, name in (
            (pair.native, "native, 1 fragment"),
            (pair.capa, f"CAPA, {pair.fragments}"),
        ):
            sm = s.summary()
            table.add(
                "1",
                f"boot {label}, agent, {name}: wall, median (min-max) of {sm['runs']}",
                spread(sm["wall_median"], sm["wall_min"], sm["wall_max"]),
                reference=f"per boot: AWS {counts(sm['aws_requests_per_boot'])}",
                target="every boot succeeds" if s.failures else "",
                ok=False if s.failures else None,
            )
        if pair.native.failures or pair.capa.failures:
            continue
        each = pair.per_extra_fragment()
        by_wall = pair.per_extra_fragment(lambda b: b.m.wall)
        capa, native = pair.capa.summary(), pair.native.summary()
        table.add(
            "1",
            f"boot {label}: each extra fragment (CAPA {pair.fragments} vs native 1)",
            f"{each * 1000:.1f} ms",
            reference=f"agent work after credentials, medians {capa['agent_work_median']:.3f} s"
            f" vs {native['agent_work_median']:.3f} s, / {pair.fragments - 1}; "
            f"by wall medians {by_wall * 1000:.1f} ms",
            ratio=times(pair.capa.median / pair.native.median),
            target=f"< {PER_FRAGMENT_TARGET * 1000:g} ms",
            ok=each < PER_FRAGMENT_TARGET,
        )


def storm_rows(table: Table, r: StormResult, *, judged: bool) -> None:
    tag = f"storm {r.instances}" + (f" x{r.scale:g}" if r.scale < 1 else " real-time")
    real = f" = {secs(r.t_done * r.scale)} real" if r.scale < 1 else ""
    table.add(
        "2",
        f"{tag}: all instances have their user data",
        secs(r.t_userdata) if r.lost == 0 else f"{r.lost} did not",
        reference=f"bound {secs(r.bound_userdata)}: {r.instances} BatchGet "
        f"/ {r.quotas['BatchGetSecretValue']:g} TPS",
        ratio=times(r.t_userdata / r.bound_userdata) if r.lost == 0 else "",
    )
    table.add(
        "2",
        f"{tag}: all done, every fragment deleted",
        secs(r.t_done) + real,
        reference=f"bound {secs(r.bound_done)}: {r.instances * r.fragments_per_instance} "
        f"Delete / {r.quotas['DeleteSecret']:g} TPS; CPU {r.cpu_bench:.0f} s + moto "
        f"{r.cpu_moto:.0f} s",
        ratio=times(r.ratio),
        target=f"<= {QUOTA_RATIO_TARGET:g}x" if judged else "",
        ok=r.ratio <= QUOTA_RATIO_TARGET if judged else None,
    )
    if not judged:
        table.rows[-1] = replace(table.rows[-1], result="info")
        if r.failures or r.leftover:
            table.add(
                "2",
                f"{tag}: failures / lost user data / leftover fragments",
                f"{len(r.failures)} / {r.lost} / {r.leftover}",
                reference="CPU-starved simulation, not the agent (see the stretched rows)",
            )
        return
    short = {"BatchGetSecretValue": "BatchGet", "DeleteSecret": "Delete"}
    throttled = ", ".join(f"{short.get(k, k)} {v}" for k, v in sorted(r.throttled.items()))
    table.add(
        "2",
        f"{tag}: throttled calls retried",
        str(sum(r.throttled.values())),
        reference=f"{throttled or 'none'}; {sum(r.calls.values())} calls in all",
    )
    table.add(
        "2",
        f"{tag}: failures / lost user data / leftover fragments",
        f"{len(r.failures)} / {r.lost} / {r.leftover}",
        target="0 / 0 / 0",
        ok=not r.failures and r.lost == 0 and r.leftover == 0,
    )


def seal_rows(table: Table, r: BulkSealResult) -> None:
    tag = f"bulk seal {r.machines}, {r.workers} threads"
    table.add(
        "3",
        f"{tag}: all sealed",
        secs(r.seconds),
        reference=f"bound {secs(r.bound)}: {r.fragments} Create / {r.quota:g} TPS; "
        f"{r.throttled} throttled",
        ratio=times(r.ratio),
        target=f"<= {QUOTA_RATIO_TARGET:g}x",
        ok=r.ratio <= QUOTA_RATIO_TARGET,
    )
    table.add(
        "3",
        f"{tag}: failures / orphans / missing",
        f"{len(r.failures)} / {r.orphans} / {r.missing}",
        target="0 / 0 / 0",
        ok=not r.failures and r.orphans == 0 and r.missing == 0,
    )


def footprint_rows(table: Table, s: Series) -> None:
    sm = s.summary()
    tag = f"agent fetch {s.size // KB} KB"
    table.add(
        "4",
        f"{tag}: peak RSS, max of {sm['runs']}",
        f"{sm['peak_rss_mb']:.1f} MB",
        reference="sealboot-agent fetch alone, no bash",
        target=f"< {RSS_TARGET_MB:g} MB",
        ok=sm["peak_rss_mb"] < RSS_TARGET_MB and not s.failures,
    )
    table.add(
        "4",
        f"{tag}: CPU and wall, median",
        f"{sm['cpu_median']:.3f} s, {sm['wall_median']:.3f} s",
        reference=f"AWS {counts(sm['aws_requests_per_boot'])}, "
        f"IMDS {sm['imds_requests_per_boot']:g}",
    )


NOTES = """\
Boots run the rendered boothook with bash, as cloud-init does: 'agent' with sealboot-agent on
PATH (by default the agent as an image runs it: this tree's artifact behind install.sh's wrapper,
on /usr/bin/python3), 'CLI fallback' with only /usr/bin/aws; same payload, fresh root and fresh
fragments each run. 'floor': that agent's interpreter importing botocore and requests, no work.
'CAPA, N': the same payload sealed --format capa (7000-byte fragments) next to native (one
fragment), alternating; each extra fragment = the difference of the medians of the agent's own
work once it holds credentials (its state file's phase times) / (N - 1); by wall beside it.
'storm N xS': S x the real quotas, every agent clock, sleep and deadline stretched 1/S
(bench/sim.py), so the quota and not this machine's CPU is the bottleneck; 'real' = measured x S.
'storm N real-time': the same at the real quotas, unstretched; on a small box it is bound by the
CPU of N in-process agents, not by the quota (informational). Bounds are N calls / quota; the
token bucket's one-second burst is not subtracted, so a perfect client can beat them slightly."""


# -- the run ---------------------------------------------------------------------------------


def profile_agent(stack: BenchStack, work: Path, out: Path) -> Path | None:
    """One bare agent fetch under pyinstrument; returns the text report's path."""
    import importlib.util

    if importlib.util.find_spec("pyinstrument") is None:
        print("--profile: pyinstrument is not installed (.venv/bin/pip install pyinstrument)")
        return None
    from bench.latency import Bench
    from bench.payload import cloud_config

    bench = Bench(stack, work)
    manifest = bench.seal(cloud_config(20 * KB, seed=7))
    root = bench.fresh_root()
    report = out / "profile-agent-latest.txt"
    cmd = [
        str(BIN / "python"),
        "-m",
        "pyinstrument",
        "-o",
        str(report),
        "-m",
        "sealboot_agent",
        *fetch_args(manifest, root),
    ]
    procs.measured(cmd, env=bench.env(root, AGENT), timeout=120)
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Ctrl-C and SIGTERM both unwind through the finally below, which stops every process and
    # server this run started. (A shell starts background jobs with SIGINT ignored; undo that.)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _on_sigterm)
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="sealboot-bench-"))
    cli = aws_cli_version()
    results: dict[str, Any] = {"meta": meta(args, cli)}
    table = Table()
    if args.agent_bin is None and args.agent == "venv":
        args.agent_bin = BIN / "sealboot-agent"
    if args.agent_bin is not None and (
        not os.access(args.agent_bin, os.X_OK) or args.agent_bin.name != "sealboot-agent"
    ):
        print(f"no executable sealboot-agent at {args.agent_bin}", file=sys.stderr)
        return 2
    if cli is None and "latency" in args.sections:
        print(
            "AWS CLI v2 (/usr/bin/aws) not found: the fallback rows are skipped; "
            "`make system-deps` installs it",
            file=sys.stderr,
        )
    args.out.mkdir(parents=True, exist_ok=True)
    stack = BenchStack(work, stock=args.stock_stack)
    try:
        artifact = args.agent_bin is None
        if artifact and args.sections & BOOTING:
            print("building the agent artifact (packaging/build_dist.py) ...", flush=True)
            args.agent_bin = installed_agent(work)
        stack.start()
        # The controller's credentials, for the toolkit's default chain (the bulk seal).
        os.environ.update(stack.controller_env())
        print(f"local stack up: moto {stack.local.moto.url}, proxy {stack.proxy.url}", flush=True)
        if "latency" in args.sections:
            print("1. boot-path latency ...", flush=True)
            series = run_latency(
                stack,
                work,
                sizes=args.size_list,
                runs=args.runs,
                with_cli=cli is not None,
                agent=args.agent_bin,
            )
            results["latency"] = [s.summary() for s in series]
            floor = run_floor(args.agent_bin, args.runs) if artifact else None
            if floor is not None:
                results["floor"] = {"code": FLOOR_CODE, **floor.summary()}
            latency_rows(table, series, floor)
        if "fragments" in args.sections:
            print("1. boot-path latency per fragment: native vs CAPA-sealed ...", flush=True)
            pairs = run_fragments(
                stack, work, args.fragment_list, args.fragment_runs, args.agent_bin
            )
            results["fragments"] = [p.summary() for p in pairs]
            fragment_rows(table, pairs)
        if "storm" in args.sections:
            results["storm"] = []
            print(
                f"2. boot storm: {args.storm} instances, quotas x{args.storm_scale:g} ...",
                flush=True,
            )
            r = run_storm(stack, work, instances=args.storm, scale=args.storm_scale)
            results["storm"].append(r.as_json())
            storm_rows(table, r, judged=True)
            if not args.no_real_quota_storm and args.storm_scale < 1:
                # At most 200: beyond that, unstretched, the box thrashes (1000 in-process
                # agents starve the proxy until their deadlines run out).
                n = min(args.storm, REAL_TIME_STORM_MAX)
                print(f"2. boot storm: {n} instances at the real quotas ...", flush=True)
                raw = run_storm(stack, work, instances=n, scale=1.0)
                results["storm"].append(raw.as_json())
                storm_rows(table, raw, judged=False)
        if "seal" in args.sections:
            results["seal"] = []
            for workers in args.worker_list:
                print(f"3. bulk seal: {args.seal} machines, {workers} threads ...", flush=True)
                r3 = run_bulk_seal(stack, machines=args.seal, workers=workers)
                results["seal"].append(r3.as_json())
                seal_rows(table, r3)
                stack.local.moto.reset()  # drop the sealed secrets; the next run starts empty
                stack.local.provision()
        if "footprint" in args.sections:
            print("4. agent footprint ...", flush=True)
            fp = run_footprint(stack, work, size=20 * KB, runs=args.runs, agent=args.agent_bin)
            results["footprint"] = fp.summary()
            footprint_rows(table, fp)
        if args.profile:
            path = profile_agent(stack, work, args.out)
            if path is not None:
                print(f"agent profile: {path}")
    except KeyboardInterrupt:
        print("\ninterrupted; stopping everything this bench started", file=sys.stderr)
        return 130
    finally:
        procs.kill_all()
        stack.stop()
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    wall = time.monotonic() - started
    results["meta"]["wall_seconds"] = round(wall, 1)
    results["meta"]["server_connection_errors"] = dict(stack.server_errors)
    results["targets"] = table.verdicts
    m = results["meta"]
    print()
    print(
        f"sealboot bench, {m['started']}, commit {m['commit']}: {m['cpus']} CPUs ({m['cpu']}), "
        f"Python {m['python']}, botocore {m['botocore']}, {m['aws_cli'] or 'no AWS CLI'}, "
        f"agent {m['agent']}, "
        f"moto {m['moto']}, stack {m['stack']}; real quotas "
        + ", ".join(f"{k} {v:g}" for k, v in REAL_QUOTAS.items() if "Parameter" not in k)
        + " TPS"
    )
    print(table.render())
    print(NOTES)
    missed = [v for v in table.verdicts if v["result"] == "MISS"]
    print(
        f"\n{len(table.verdicts) - len(missed)} of {len(table.verdicts)} targets met; "
        f"took {wall:.0f} s"
    )
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    text = json.dumps(results, indent=2, sort_keys=True, default=str) + "\n"
    (args.out / f"{stamp}.json").write_text(text)
    (args.out / "latest.json").write_text(text)
    (args.out / "latest.txt").write_text(table.render() + "\n")
    print(f"results: {args.out / (stamp + '.json')}")
    return 0


if __name__ == "__main__":
    code = main()
    if code == 130:
        # Interrupted: every child process and server is already stopped, but simulated agents
        # may sit in a (time-stretched) backoff inside their own thread pools, which the
        # interpreter would wait for at exit. Nothing is left to save: leave now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise SystemExit(code)
