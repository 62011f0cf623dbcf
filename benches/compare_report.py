#!/usr/bin/env python3
"""Helper for benches/compare.sh (see the comment block at the top of that script).

Subcommands (all output on stdout, one line unless noted):

  ports N              N distinct free TCP ports on 127.0.0.1 (bound to port 0
                       together, so they are distinct; released before return)
  tree PID...          the PIDs and all their live descendants, space-separated
  cpu PID...           summed utime+stime of the PIDs, in clock ticks
                       (vanished PIDs count 0); then CLK_TCK
  mem PID...           summed VmRSS and VmHWM of the PIDs, in KiB
  wrk FILE             parse wrk output: "rps requests p99_ms errors"
  h2load FILE          parse h2load output: "rps requests nan errors"
  report RESULTS META  print the markdown tables from the results TSV
                       (target, metric, round, value) and the meta TSV
                       (key, value)
"""

import math
import os
import re
import socket
import statistics
import sys


def cmd_ports(n):
    socks = []
    try:
        for _ in range(int(n)):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        print(" ".join(str(s.getsockname()[1]) for s in socks))
    finally:
        for s in socks:
            s.close()


def _stat_fields(pid):
    """Fields of /proc/PID/stat after the command name (field 3 onwards)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read().decode("ascii", "replace")
    # The command name is in parentheses and may contain spaces or ')'.
    return data[data.rindex(")") + 2 :].split()


def cmd_tree(pids):
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(_stat_fields(entry)[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    seen = []
    todo = [int(p) for p in pids]
    while todo:
        p = todo.pop()
        if p in seen or not os.path.exists(f"/proc/{p}"):
            continue
        seen.append(p)
        todo.extend(children.get(p, []))
    print(" ".join(str(p) for p in sorted(seen)))


def cmd_cpu(pids):
    ticks = 0
    for pid in pids:
        try:
            fields = _stat_fields(pid)
        except OSError:
            continue
        # utime and stime are fields 14 and 15 of stat (1-based), i.e. index
        # 11 and 12 after the command name.
        ticks += int(fields[11]) + int(fields[12])
    print(ticks, os.sysconf("SC_CLK_TCK"))


def cmd_mem(pids):
    rss = hwm = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1])
                    elif line.startswith("VmHWM:"):
                        hwm += int(line.split()[1])
        except OSError:
            continue
    print(rss, hwm)


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _to_ms(text):
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text)
    if not m:
        return math.nan
    return float(m.group(1)) * _UNITS_MS[m.group(2)]


def cmd_wrk(path):
    text = open(path, errors="replace").read()
    rps = requests = math.nan
    p99 = math.nan
    errors = 0
    m = re.search(r"Requests/sec:\s+([0-9.]+)", text)
    if m:
        rps = float(m.group(1))
    m = re.search(r"(\d+) requests in", text)
    if m:
        requests = int(m.group(1))
    m = re.search(r"^\s+99%\s+(\S+)", text, re.M)
    if m:
        p99 = _to_ms(m.group(1))
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    if m:
        errors += int(m.group(1))
    m = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    if m:
        errors += sum(int(x) for x in m.groups())
    print(rps, requests, p99, errors)


def cmd_h2load(path):
    text = open(path, errors="replace").read()
    rps = requests = math.nan
    errors = 0
    m = re.search(r"finished in [0-9.]+\w+, ([0-9.]+) req/s", text)
    if m:
        rps = float(m.group(1))
    m = re.search(
        r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, "
        r"(\d+) failed, (\d+) errored, (\d+) timeout",
        text,
    )
    if m:
        requests = int(m.group(1))
        errors += int(m.group(3)) + int(m.group(4)) + int(m.group(5))
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    if m:
        errors += int(m.group(2)) + int(m.group(3)) + int(m.group(4))
    print(rps, requests, math.nan, errors)


# --------------------------------------------------------------------------
# report

TARGETS = [
    # (name, label, reference figures from the issue: req/s, p99 ms, download MiB/s)
    ("origin", "origin direct (nginx)", ("~58,000", "0.08", "~2,600")),
    ("sshd-pty", "OpenSSH `sshd -R` raw port, pty client", ("~22,000", "0.3", "~290")),
    ("sshd-N", "OpenSSH `sshd -R` raw port, `-N` client", ("~4,700", "42", "~240")),
    ("nginx-sshd", "nginx → `sshd -R` (pty client)", ("~13,100", "0.4", "~230")),
    ("sandhole", "sandhole 0.10 HTTP (pty client)", ("~6,500", "1–2", "~245")),
    ("burrow-http-pty", "**burrow HTTP**, pty client", None),
    ("burrow-http-N", "**burrow HTTP**, `-N` client", None),
    ("burrow-https", "**burrow HTTPS** (HTTP/1.1, wrk), pty client", None),
    ("burrow-https-N", "**burrow HTTPS** (HTTP/1.1, wrk), `-N` client", None),
    ("burrow-h2", "**burrow HTTPS** (HTTP/2, h2load -m1), pty client", None),
    ("burrow-h2-m10", "**burrow HTTPS** (HTTP/2, h2load -m10), pty client", None),
    ("cluster-owner", "**cluster**: straight to the node holding the tunnel (HTTP, pty client)", None),
    ("cluster-via", "**cluster**: through the other node (cluster link), same tunnel", None),
]
# The other tunnel clients: (name, label); targets sshd-NAME and burrow-https-NAME.
CLIENTS = [
    ("russh", "russh (in-process, benches/russh_tunnel.rs)"),
    ("asyncssh", "asyncssh (tests/scripts/asyncssh_tunnel.py)"),
    ("paramiko", "paramiko (tests/scripts/paramiko_tunnel.py)"),
    ("plink", "PuTTY plink"),
    ("dbclient", "Dropbear dbclient"),
]
for _name, _label in CLIENTS:
    TARGETS.append((f"sshd-{_name}", f"OpenSSH `sshd -R` raw port, {_label} client", None))
    TARGETS.append((f"burrow-https-{_name}", f"**burrow HTTPS**, {_label} client", None))
SANDHOLE_REF_RPS = 6500.0

METRICS = ["rps", "p99_ms", "dl_mibs", "ul_mibs", "cpu_us", "rss_mib", "hwm_mib"]


def _load(results, meta):
    data = {}
    skips = {}
    for line in open(results):
        parts = line.rstrip("\n").split("\t")
        if len(parts) != 4:
            continue
        target, metric, rnd, value = parts
        if metric == "skip":
            skips[target] = value
            continue
        try:
            v = float(value)
        except ValueError:
            continue
        data.setdefault(target, {}).setdefault(metric, []).append(v)
    info = {}
    for line in open(meta):
        k, _, v = line.rstrip("\n").partition("\t")
        info[k] = v
    return data, skips, info


def _median(data, target, metric):
    vals = [v for v in data.get(target, {}).get(metric, []) if not math.isnan(v)]
    return statistics.median(vals) if vals else math.nan


def _fmt(v, kind):
    if v is None or math.isnan(v):
        return "—"
    if kind == "rps":
        return f"{v:,.0f}"
    if kind == "ms":
        return f"{v:.2f}" if v < 10 else f"{v:.1f}"
    if kind == "mibs":
        return f"{v:,.0f}"
    if kind == "us":
        return f"{v:.1f}"
    if kind == "mib":
        return f"{v:.1f}"
    if kind == "ratio":
        return f"{v:.2f}×"
    if kind == "cpu":
        return f"{v:.2f}"
    return str(v)


def _ratio(a, b):
    if a is None or b is None or math.isnan(a) or math.isnan(b) or b == 0:
        return math.nan
    return a / b


def cmd_report(results, meta):
    data, skips, info = _load(results, meta)
    rounds = info.get("rounds", "?")
    selected = info.get("targets", "").split()
    out = []
    w = out.append
    w(f"### Medians of {rounds} alternating round(s)\n")
    w(
        "| path | req/s, 1 KiB, 64 conns | p99 ms, 1 conn | 100 MiB down MiB/s "
        "| 100 MiB up MiB/s | server CPU µs/req | server RSS MiB (peak) | errors "
        "| issue's reference: req/s · p99 ms · down MiB/s |"
    )
    w("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for name, label, ref in TARGETS:
        if name not in selected:
            continue
        ref_s = " · ".join(ref) if ref else ""
        if name in skips:
            if name == "sandhole":
                w(
                    f"| {label} — *not measured: reference figures from the issue* "
                    f"| *{ref[0]}* | *{ref[1]}* | *{ref[2]}* | — | — | — | — | {ref_s} |"
                )
            else:
                w(f"| {label} — *skipped: {skips[name]}* | — | — | — | — | — | — | — | {ref_s} |")
            continue
        errs = data.get(name, {}).get("errors", [])
        errs_s = f"{sum(errs):.0f}" if errs else "—"
        rss = _median(data, name, "rss_mib")
        hwm = _median(data, name, "hwm_mib")
        rss_s = "—" if math.isnan(rss) else f"{rss:.1f} ({hwm:.1f})"
        w(
            f"| {label} | {_fmt(_median(data, name, 'rps'), 'rps')} "
            f"| {_fmt(_median(data, name, 'p99_ms'), 'ms')} "
            f"| {_fmt(_median(data, name, 'dl_mibs'), 'mibs')} "
            f"| {_fmt(_median(data, name, 'ul_mibs'), 'mibs')} "
            f"| {_fmt(_median(data, name, 'cpu_us'), 'us')} "
            f"| {rss_s} | {errs_s} | {ref_s} |"
        )
    w("")
    w(
        "Server CPU = utime+stime of the server process(es) during the 64-connection "
        "run ÷ requests wrk/h2load counted (origin: its nginx; sshd: every sshd process "
        "of the throwaway sshd; nginx → sshd: the front nginx plus those sshd processes; "
        "burrow / sandhole: their one process). Server RSS = VmRSS after that run, "
        "summed over the same processes; in parentheses VmHWM (peak). errors = non-2xx "
        "responses plus socket errors, all rounds."
    )
    w("")

    def m(t, k):
        if t == "sandhole" and "sandhole" in skips and k == "rps":
            return SANDHOLE_REF_RPS
        return _median(data, t, k)

    # burrow / baseline ratios
    pairs = [
        ("burrow-http-pty", "nginx-sshd", "burrow HTTP pty ÷ nginx → sshd -R"),
        ("burrow-http-pty", "sandhole", "burrow HTTP pty ÷ sandhole"),
        ("burrow-http-N", "sshd-N", "burrow HTTP -N ÷ sshd -R -N"),
        ("burrow-https", "burrow-http-pty", "burrow HTTPS ÷ burrow HTTP (pty)"),
        ("burrow-h2", "burrow-http-pty", "burrow HTTPS h2 ÷ burrow HTTP (pty)"),
        ("burrow-h2", "burrow-https", "burrow HTTPS h2 -m1 ÷ burrow HTTPS h1 (pty)"),
        ("burrow-h2-m10", "burrow-https", "burrow HTTPS h2 -m10 ÷ burrow HTTPS h1 (pty)"),
        ("burrow-http-pty", "sshd-pty", "burrow HTTP pty ÷ sshd -R pty"),
        ("burrow-http-pty", "origin", "burrow HTTP pty ÷ origin direct"),
        ("cluster-via", "cluster-owner", "cluster: through another node ÷ straight to the owner"),
    ]
    w("### burrow / baseline ratios (of the medians)\n")
    w("| comparison | req/s | p99 | down | up | CPU/req |")
    w("|---|---:|---:|---:|---:|---:|")
    for a, b, label in pairs:
        if a not in selected or b not in selected or a in skips:
            continue
        if b in skips and b != "sandhole":
            continue
        cells = []
        for k in ["rps", "p99_ms", "dl_mibs", "ul_mibs", "cpu_us"]:
            r = _ratio(m(a, k), m(b, k))
            cells.append(_fmt(r, "ratio"))
        if b == "sandhole" and "sandhole" in skips:
            label += " *(sandhole: issue's reference 6,500 req/s)*"
        w(f"| {label} | " + " | ".join(cells) + " |")
    w("")

    # the targets
    checks = []

    def check(desc, value_s, ok, need):
        if ok is None:
            verdict = "n/a"
        else:
            verdict = "PASS" if ok else "FAIL"
        checks.append(f"| {desc} | {value_s} | {need} | {verdict} |")

    def ratio_check(desc, a, b, k, op, bound):
        if a not in selected or b not in selected or a in skips or (
            b in skips and b != "sandhole"
        ):
            check(desc, "not measured", None, f"{op} {bound}×")
            return
        r = _ratio(m(a, k), m(b, k))
        note = " (vs reference)" if b == "sandhole" and "sandhole" in skips else ""
        ok = None if math.isnan(r) else (r >= bound if op == "≥" else r <= bound)
        check(desc, _fmt(r, "ratio") + note, ok, f"{op} {bound}×")

    bulk_only = info.get("bulk_only") == "1"
    # issue 17: the hot path against the do-it-yourself stack and the byte limit
    if not bulk_only:
        ratio_check("HTTP req/s vs nginx → sshd -R", "burrow-http-pty", "nginx-sshd", "rps", "≥", 1.2)
        ratio_check("HTTP req/s vs raw sshd -R (pty)", "burrow-http-pty", "sshd-pty", "rps", "≥", 0.85)
        ratio_check("HTTPS h1 req/s vs HTTP (pty)", "burrow-https", "burrow-http-pty", "rps", "≥", 0.9)
        ratio_check("HTTP/2 (h2load -m1) req/s vs HTTPS h1", "burrow-h2", "burrow-https", "rps", "≥", 0.9)
        if "burrow-h2-m10" in selected and "burrow-h2-m10" not in skips:
            check("HTTP/2 (h2load -m10) req/s, reported", _fmt(m("burrow-h2-m10", "rps"), "rps"), None, "reported")
        ratio_check("server CPU per request vs raw sshd -R (pty)", "burrow-http-pty", "sshd-pty", "cpu_us", "≤", 1.6)
        ratio_check("server CPU per request vs nginx → sshd -R", "burrow-http-pty", "nginx-sshd", "cpu_us", "≤", 0.7)
        ratio_check("100 MiB download vs raw sshd -R (pty)", "burrow-http-pty", "sshd-pty", "dl_mibs", "≥", 1.0)
        ratio_check("100 MiB upload vs raw sshd -R (pty)", "burrow-http-pty", "sshd-pty", "ul_mibs", "≥", 1.0)
        for t, label in [
            ("burrow-http-pty", "HTTP, pty"),
            ("burrow-http-N", "HTTP, -N"),
            ("burrow-https", "HTTPS, pty"),
            ("burrow-https-N", "HTTPS, -N"),
        ]:
            if t in selected and t not in skips:
                v = _median(data, t, "p99_ms")
                check(f"p99 1 conn, {label} client", _fmt(v, "ms") + " ms",
                      None if math.isnan(v) else v < 2.0, "< 2 ms")
            else:
                check(f"p99 1 conn, {label} client", "not measured", None, "< 2 ms")
        # issue 15: the cluster link
        ratio_check("cluster: req/s through another node vs the owner", "cluster-via", "cluster-owner", "rps", "≥", 0.8)
        if all(t in selected and t not in skips for t in ("cluster-via", "cluster-owner")):
            added = _median(data, "cluster-via", "p99_ms") - _median(data, "cluster-owner", "p99_ms")
            check("cluster: p99 added by another node", _fmt(added, "ms") + " ms",
                  None if math.isnan(added) else added <= 1.0, "≤ 1 ms")
        ratio_check("cluster: 100 MiB down through another node", "cluster-via", "cluster-owner", "dl_mibs", "≥", 0.8)
        ratio_check("cluster: 100 MiB up through another node", "cluster-via", "cluster-owner", "ul_mibs", "≥", 0.8)
    # issue 26: bulk speed per client
    bulk_rows = [("OpenSSH `ssh -N`", "burrow-https-N", "sshd-N")] + [
        (label.split(" (")[0], f"burrow-https-{name}", f"sshd-{name}") for name, label in CLIENTS
    ]
    bulk_rows = [r for r in bulk_rows if r[1] in selected or r[2] in selected]
    if bulk_rows:
        for desc, b, sd in bulk_rows:
            for k, what in (("dl_mibs", "download"), ("ul_mibs", "upload")):
                ratio_check(f"{desc}: 100 MiB {what} vs the same client through sshd -R", b, sd, k, "≥", 0.9)
    if "sandhole" in selected and "sandhole" not in skips:
        for b, desc in (("burrow-https-N", "HTTPS, -N"), ("burrow-https", "HTTPS, pty"), ("burrow-http-pty", "HTTP, pty")):
            if b in selected:
                ratio_check(f"OpenSSH 100 MiB download vs sandhole (HTTP, pty): burrow {desc}", b, "sandhole", "dl_mibs", "≥", 1.0)
    w("### The issue's targets\n")
    w("| target | measured | needed | verdict |")
    w("|---|---:|---|---|")
    out.extend(checks)
    w("")
    if bulk_rows:
        w(_bulk_table(data, skips, selected, bulk_rows, rounds))
    if skips:
        w("Skipped: " + "; ".join(f"`{t}`: {why}" for t, why in skips.items()))
        w("")
    print("\n".join(out))


def _spread(data, target, metric, kind="mibs"):
    """median (min–max) of the rounds."""
    vals = [v for v in data.get(target, {}).get(metric, []) if not math.isnan(v)]
    if not vals:
        return "—"
    med = statistics.median(vals)
    if len(vals) == 1:
        return _fmt(med, kind)
    return f"{_fmt(med, kind)} ({_fmt(min(vals), kind)}–{_fmt(max(vals), kind)})"


def _bulk_table(data, skips, selected, rows, rounds):
    out = []
    w = out.append
    w(f"### Bulk speed per client: one 100 MiB transfer each, MiB/s, median (min–max) of {rounds} round(s)\n")
    w(
        "| client | burrow HTTPS down | burrow HTTPS up | `sshd -R` down | `sshd -R` up "
        "| ratio down | ratio up | CPU s down: burrow · its client / sshd · its client "
        "| CPU s up: burrow · its client / sshd · its client |"
    )
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|")

    def cell(t, k, kind="mibs"):
        if t not in selected:
            return "not run"
        if t in skips:
            return f"*skipped: {skips[t]}*"
        return _spread(data, t, k, kind)

    def cpu(t, d):
        if t not in selected or t in skips:
            return "—"
        srv = _median(data, t, f"{d}_srv_cpu_s")
        cli = _median(data, t, f"{d}_cli_cpu_s")
        return f"{_fmt(srv, 'cpu')} · {_fmt(cli, 'cpu')}"

    for desc, b, sd in rows:
        rd = _ratio(_median(data, b, "dl_mibs"), _median(data, sd, "dl_mibs"))
        ru = _ratio(_median(data, b, "ul_mibs"), _median(data, sd, "ul_mibs"))
        w(
            f"| {desc} | {cell(b, 'dl_mibs')} | {cell(b, 'ul_mibs')} | {cell(sd, 'dl_mibs')} "
            f"| {cell(sd, 'ul_mibs')} | {_fmt(rd, 'ratio')} | {_fmt(ru, 'ratio')} "
            f"| {cpu(b, 'dl')} / {cpu(sd, 'dl')} | {cpu(b, 'ul')} / {cpu(sd, 'ul')} |"
        )
    for t, desc in (
        ("sandhole", "sandhole 0.10 HTTP, OpenSSH pty client"),
        ("burrow-https", "burrow HTTPS, OpenSSH pty client"),
        ("burrow-http-pty", "burrow HTTP, OpenSSH pty client"),
        ("sshd-pty", "`sshd -R`, OpenSSH pty client"),
    ):
        if t in selected:
            w(
                f"| {desc} | {cell(t, 'dl_mibs')} | {cell(t, 'ul_mibs')} | | | | "
                f"| {cpu(t, 'dl')} | {cpu(t, 'ul')} |"
            )
    loads = [v for t in data for v in data[t].get("load1", [])]
    w("")
    w(
        "Ratio = burrow ÷ `sshd -R`, of the medians. CPU s = CPU seconds (utime+stime) "
        "the server process(es) and the tunnel client's processes used during that one "
        "transfer (medians). One curl per transfer (HTTP/1.1; HTTPS with -k to burrow, "
        "plain HTTP to the sshd -R port and sandhole)."
        + (
            f" Load average (1 min) at the measurements: median {statistics.median(loads):.1f}, "
            f"{min(loads):.1f}–{max(loads):.1f}."
            if loads
            else ""
        )
    )
    w("")
    return "\n".join(out)


def main():
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "ports":
        cmd_ports(*args)
    elif cmd == "tree":
        cmd_tree(args)
    elif cmd == "cpu":
        cmd_cpu(args)
    elif cmd == "mem":
        cmd_mem(args)
    elif cmd == "wrk":
        cmd_wrk(*args)
    elif cmd == "h2load":
        cmd_h2load(*args)
    elif cmd == "report":
        cmd_report(*args)
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
