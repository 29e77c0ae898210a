#!/usr/bin/env python3
"""Splits relays' CPU profiles into what a side-by-side reading needs.

Usage: perf-buckets.py UNITS SMTPGATE_SCRIPT HAPROXY_SCRIPT

Each SCRIPT is `perf script -F comm,tid,period,ip,sym,dso` of a `perf record -g` run
that carried UNITS messages (or connections). Prints µs of CPU per unit, side by side:
kernel samples by the system call they were in (the innermost `__x64_sys_*` frame;
a send's loopback delivery to its peer counts under `sendto`, io_uring's completions
under `io_uring_enter` or as task work on the way back to user space), then user-space
samples by component (the leaf frame's crate or library).
"""
import collections
import re
import sys

SYSCALL = re.compile(r"__(?:x64|do)_sys_(\w+)")


def user_component(symbol, dso):
    if dso.endswith("/haproxy"):
        return "haproxy"
    if "glommio" in symbol or "io_uring" in symbol:
        return "glommio"
    if "smtpgate_policy" in symbol:
        return "inspector"
    match = re.match(r"<?smtpgate::(\w+)", symbol)
    if match:
        return "smtpgate::" + match.group(1)
    if re.search(r"malloc|free|_int_|unlink_chunk", symbol):
        return "malloc/free"
    if re.search(r"mem(move|cpy|set)", symbol):
        return "memcpy/memset"
    if re.search(r"__send|__libc_recv|^syscall$|clock_gettime|asynccancel|__close|setsockopt", symbol):
        return "libc syscall stubs, clock"
    return "other: " + dso.rsplit("/", 1)[-1]


def samples(path):
    """Yields (period in µs, frames as (symbol, dso)) per sample, innermost first."""
    period, frames = None, []
    for line in open(path, errors="replace"):
        if not line.strip():
            if period is not None and frames:
                yield period, frames
            period, frames = None, []
        elif line[0] in " \t":
            parts = line.strip().split(None, 1)
            if len(parts) == 2:
                symbol, _, dso = parts[1].rpartition(" (")
                frames.append((re.sub(r"\+0x[0-9a-f]+$", "", symbol), dso.rstrip(")")))
        else:
            period = int(line.split()[-1]) / 1000.0
    if period is not None and frames:
        yield period, frames


def split(path):
    kernel, user = collections.Counter(), collections.Counter()
    for period, frames in samples(path):
        symbol, dso = frames[0]
        if "kernel" not in dso:
            user[user_component(symbol, dso)] += period
            continue
        bucket = "irq, softirq, scheduler"
        for name, _ in frames:
            match = SYSCALL.match(name)
            if match:
                bucket = match.group(1)
                break
        else:
            if any(name in ("task_work_run", "io_handle_tw_list") for name, _ in frames):
                bucket = "task work, no system call"
        kernel[bucket] += period
    return kernel, user


def table(title, left, right, units):
    print(f"  {title:<34} {'smtpgate':>9} {'haproxy':>9}")
    for key in sorted(set(left) | set(right), key=lambda k: -(left[k] + right[k])):
        if (left[key] + right[key]) / units >= 0.5:
            print(f"  {key:<34} {left[key] / units:9.1f} {right[key] / units:9.1f}")
    print(f"  {'sum':<34} {sum(left.values()) / units:9.1f} {sum(right.values()) / units:9.1f}")


def main():
    units = float(sys.argv[1])
    (gate_kernel, gate_user), (proxy_kernel, proxy_user) = split(sys.argv[2]), split(sys.argv[3])
    table("kernel, by system call", gate_kernel, proxy_kernel, units)
    table("user space, by component", gate_user, proxy_user, units)
    total = (sum(gate_kernel.values()) + sum(gate_user.values())) / units
    proxy_total = (sum(proxy_kernel.values()) + sum(proxy_user.values())) / units
    print(f"  {'total':<34} {total:9.1f} {proxy_total:9.1f}   ratio {total / proxy_total:.3f}")


if __name__ == "__main__":
    main()
