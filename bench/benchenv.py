"""What every deediff-vs-PyTorch benchmark prints first, and its refusal to record on a busy machine.

A loaded machine flatters us (PyTorch's OpenMP threads collapse under oversubscription, rayon's do
not), so a result is only recorded when the 1-minute load average is at most 0.5 before the run.
"""
import os
import subprocess
import sys
import time

MAX_LOAD = 0.5


def cpu_model():
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return next((l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Model name")), "?")


def header(force):
    """Prints date, CPU and load; exits (status 3) when the load is too high unless `force`.
    Returns the line to print above a result table."""
    load = os.getloadavg()[0]
    line = (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} | CPU: {cpu_model()} "
            f"({os.cpu_count()} logical CPUs) | 1-min load average before the run: {load:.2f}")
    print(line, flush=True)
    if load > MAX_LOAD:
        if not force:
            sys.exit(f"load average {load:.2f} > {MAX_LOAD}: refusing to record; run on an idle machine "
                     "(or pass --force for a number that must not be recorded)")
        line += f" — NOT FOR RECORDING (load {load:.2f} > {MAX_LOAD}, --force)"
        print("WARNING: " + line, flush=True)
    return line


def rust_env(threads):
    """Environment for the Rust side: the same thread count as PyTorch's."""
    return dict(os.environ, RAYON_NUM_THREADS=str(threads))
