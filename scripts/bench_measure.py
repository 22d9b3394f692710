#!/usr/bin/env python3
"""The measuring half of `make bench` (scripts/bench.sh starts the processes).

Runs wrk against each target in turn, several rounds interleaved (a, b, c, a, b, c, ...), so
a noisy stretch of the machine hits every target alike instead of one whole target. It reports
per target the median of the rounds' requests/s, p50 and p99, the proxy's CPU time per request
(user + system of the process and its children, over all rounds), and the ratios per round and
their median.

A target is `key|label|port|path prefix|pid or empty[|auth]`; `auth` makes wrk's script send a
bearer token with each request.
"""

import argparse
import os
import re
import statistics
import subprocess
import sys

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_ticks(pid):
    """User + system ticks of `pid` and its direct children (nginx workers)."""
    pids = [pid]
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            pids += [int(p) for p in f.read().split()]
    except OSError:
        pass
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total


def millis(text):
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(args, port, prefix, seconds, auth=False):
    env = dict(os.environ, BENCH_PREFIX=prefix, BENCH_AUTH_TARGET="1" if auth else "0")
    out = subprocess.run(
        ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{seconds}s", "--latency",
         "-s", args.lua, f"http://127.0.0.1:{port}"],
        env=env, capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        sys.exit(f"errors during the run against :{port}{prefix}\n{out}")
    requests = int(re.search(r"^\s*(\d+) requests in", out, re.M).group(1))
    rps = float(re.search(r"^Requests/sec:\s*([\d.]+)", out, re.M).group(1))
    p50 = millis(re.search(r"^\s*50%\s+(\S+)", out, re.M).group(1))
    p99 = millis(re.search(r"^\s*99%\s+(\S+)", out, re.M).group(1))
    return requests, rps, p50, p99


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--lua", required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--target", action="append", required=True)
    parser.add_argument("--redis-pid", type=int, help="Redis' pid: its CPU per request too")
    args = parser.parse_args()

    targets = []
    for spec in args.target:
        key, label, port, prefix, pid, *flags = spec.split("|")
        targets.append({"key": key, "label": label, "port": port, "prefix": prefix,
                        "auth": "auth" in flags,
                        "pid": int(pid) if pid else None, "runs": [], "ticks": [],
                        "redis_ticks": []})

    for t in targets:  # connections, pools and caches warm; not counted
        wrk(args, t["port"], t["prefix"], args.warmup, t["auth"])
    for _ in range(args.rounds):
        for t in targets:
            before = cpu_ticks(t["pid"]) if t["pid"] else 0
            redis_before = cpu_ticks(args.redis_pid) if args.redis_pid else 0
            t["runs"].append(wrk(args, t["port"], t["prefix"], args.seconds, t["auth"]))
            if t["pid"]:
                t["ticks"].append(cpu_ticks(t["pid"]) - before)
            if args.redis_pid:
                t["redis_ticks"].append(cpu_ticks(args.redis_pid) - redis_before)

    print(f"\n{args.rounds} interleaved rounds of {args.seconds} s per target "
          f"(medians), wrk -t{args.threads} -c{args.connections}, {os.cpu_count()} cores")
    print(f"{'target':<28} {'requests/s':>11} {'p50 ms':>8} {'p99 ms':>8} {'proxy CPU µs/req':>17}"
          f" {'Redis CPU µs/req':>17}")
    by_key = {}
    for t in targets:
        runs = t["runs"]
        rps = statistics.median(r[1] for r in runs)
        p50 = statistics.median(r[2] for r in runs)
        p99 = statistics.median(r[3] for r in runs)
        cpu, cpu_rounds = None, None
        if t["pid"]:
            cpu = sum(t["ticks"]) / TICKS * 1e6 / sum(r[0] for r in runs)
            cpu_rounds = [k / TICKS * 1e6 / r[0] for k, r in zip(t["ticks"], runs)]
        redis_cpu = None
        if t["redis_ticks"]:
            redis_cpu = sum(t["redis_ticks"]) / TICKS * 1e6 / sum(r[0] for r in runs)
        by_key[t["key"]] = {"rps": rps, "cpu": cpu, "rounds": [r[1] for r in runs],
                            "cpu_rounds": cpu_rounds, "redis_cpu": redis_cpu}
        cpu_text = f"{cpu:.1f}" if cpu is not None else "-"
        redis_text = f"{redis_cpu:.1f}" if redis_cpu is not None else "-"
        print(f"{t['label']:<28} {rps:>11.0f} {p50:>8.2f} {p99:>8.2f} {cpu_text:>17}"
              f" {redis_text:>17}")

    def ratio(x, y, what, note=""):
        per_round = [p / q for p, q in zip(by_key[x]["rounds"], by_key[y]["rounds"])]
        rounds = " ".join(f"{r:.2f}" for r in per_round)
        print(f"({x})/({y}) {what}: {statistics.median(per_round):.2f}{note}   rounds: {rounds}")

    def cpu_ratio(x, y, what):
        per_round = [p / q for p, q in zip(by_key[x]["cpu_rounds"], by_key[y]["cpu_rounds"])]
        rounds = " ".join(f"{r:.2f}" for r in per_round)
        total = by_key[x]["cpu"] / by_key[y]["cpu"]
        print(f"({x})/({y}) {what}: {total:.2f}   rounds: {rounds}")

    print()
    ratio("a", "c", "gateway vs nginx throughput", "   (target >= 1.0)")
    ratio("a", "b", "gateway hop vs direct")
    if "a2" in by_key:
        ratio("a", "a2", "the same gateway twice (noise floor; 1.0 on a quiet machine)")
    if "a0" in by_key:
        ratio("a", "a0", "this build vs the baseline build")
    if "b0" in by_key:
        ratio("b", "b0", "users directly, this build vs the baseline build")
        ratio("a", "ab0", "through the gateway, this users vs the baseline users")
    print()
    cpu_ratio("a", "c", "proxy CPU per request, gateway/nginx (lower is leaner)")
    if "a2" in by_key:
        cpu_ratio("a", "a2", "CPU per request, the same gateway twice (noise floor)")
    if "aa" in by_key:
        cpu_ratio("aa", "a", "CPU per request, auth on vs off (target <= 1.15)")
    if "al" in by_key:
        cpu_ratio("al", "a", "CPU per request, local limits on vs off (target <= 1.05)")
    if "ar" in by_key:
        cpu_ratio("ar", "a", "CPU per request, shared limits on vs off (gateway only)")
    if "a0" in by_key:
        cpu_ratio("a", "a0", "CPU per request, this build vs the baseline build")
    if "b0" in by_key:
        cpu_ratio("b", "b0", "users CPU per request, this build vs the baseline build")
        if by_key["b"]["redis_cpu"] and by_key["b0"]["redis_cpu"]:
            for x, y in (("b", "b0"), ("a", "ab0")):
                print(f"({x})/({y}) Redis CPU per request, this users vs the baseline users: "
                      f"{by_key[x]['redis_cpu'] / by_key[y]['redis_cpu']:.2f}")


if __name__ == "__main__":
    main()
