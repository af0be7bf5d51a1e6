"""The bound-finding numbers of Nsight Compute reports, one table row per
kernel (scripts/ncu-rows).

  python benchmarks/ncu_summary.py NAME:RAW.csv... > summary.md

Each RAW.csv is `ncu --import REP --page raw --csv` of a `--set full`
report (a header row of metric names, a row of units, a row per kernel).
Per kernel: duration (us), the issue slots' and the pipes' use (tensor,
MUFU = XU, FMA, ALU; % of peak over active cycles), L1, L2 and DRAM
throughput (% of peak), local-memory sectors loaded / stored (spills and
stack arrays), L2 reduction requests and sectors (the backward's dQ), and
the three largest warp stall reasons in warps per issued instruction.
A metric missing from a report prints as "-".
"""
import csv
import io
import sys

COLUMNS = [
    ("us", "gpu__time_duration.sum"),
    ("issue %", "sm__issue_active.avg.pct_of_peak_sustained_elapsed"),
    ("tensor %", "sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_active"),
    ("MUFU %", "sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active"),
    ("FMA %", "sm__pipe_fma_cycles_active.avg.pct_of_peak_sustained_active"),
    ("ALU %", "sm__pipe_alu_cycles_active.avg.pct_of_peak_sustained_active"),
    ("L1 %", "l1tex__throughput.avg.pct_of_peak_sustained_elapsed"),
    ("L2 %", "lts__throughput.avg.pct_of_peak_sustained_elapsed"),
    ("DRAM %", "gpu__dram_throughput.avg.pct_of_peak_sustained_elapsed"),
]
LOCAL = ("l1tex__t_sectors_pipe_lsu_mem_local_op_ld.sum", "l1tex__t_sectors_pipe_lsu_mem_local_op_st.sum")
RED = ("lts__t_requests_srcunit_tex_op_red.sum", "lts__t_sectors_srcunit_tex_op_red.sum")
STALL_PREFIX = "smsp__average_warps_issue_stalled_"
STALL_SUFFIX = "_per_issue_active.ratio"
TIME_UNITS = {"ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3, "nsecond": 1e-3}


def number(text):
    """A report's number ("1,234.5", "12.3"), or None for an empty or non-numeric cell."""
    try:
        return float(text.replace(",", ""))
    except (AttributeError, ValueError):
        return None


def kernels(csv_text):
    """(name, {metric: value}, {metric: unit}) for each kernel row of a raw CSV."""
    rows = list(csv.reader(io.StringIO(csv_text)))
    if len(rows) < 3:
        return []
    header, units = rows[0], rows[1]
    unit = dict(zip(header, units))
    out = []
    for r in rows[2:]:
        if len(r) != len(header):
            continue
        d = dict(zip(header, r))
        out.append((d.get("Kernel Name", "?"), d, unit))
    return out


def short_name(name):
    """void forward_kernel<__nv_bfloat16, 64, ...>(Params, ...) -> forward_kernel<__nv_bfloat16, 64, ...>"""
    name = name.removeprefix("void ")
    depth = 0
    for i, ch in enumerate(name):
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "(" and depth == 0:
            return name[:i]
    return name


def stalls(d, top=3):
    found = []
    for key, value in d.items():
        if key.startswith(STALL_PREFIX) and key.endswith(STALL_SUFFIX):
            reason = key[len(STALL_PREFIX):-len(STALL_SUFFIX)]
            v = number(value)
            if reason != "selected" and v is not None:
                found.append((reason, v))
    found.sort(key=lambda x: -x[1])
    return found[:top]


def row(label, name, d, unit):
    cells = [label, short_name(name)]
    for col, metric in COLUMNS:
        v = number(d.get(metric))
        if v is not None and col == "us":
            v *= TIME_UNITS.get(unit.get(metric, "us"), 1.0)
        cells.append("-" if v is None else f"{v:.0f}")
    for pair in (LOCAL, RED):
        a, b = (number(d.get(m)) for m in pair)
        cells.append("-" if a is None or b is None else f"{a / 1e6:.2f} / {b / 1e6:.2f}")
    cells.append(", ".join(f"{r} {v:.2f}" for r, v in stalls(d)) or "-")
    return "| " + " | ".join(cells) + " |"


def table(named_csvs):
    lines = ["| profile | kernel | us | " + " | ".join(c for c, _ in COLUMNS[1:]) +
             " | local ld / st (M sectors) | L2 red requests / sectors (M) | top stalls (warps per issue) |",
             "| --- | --- | " + " | ".join("---:" for _ in COLUMNS) + " | ---: | ---: | --- |"]
    for label, text in named_csvs:
        for name, d, unit in kernels(text):
            lines.append(row(label, name, d, unit))
    return "\n".join(lines) + "\n"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        raise SystemExit(__doc__)
    named = []
    for arg in argv:
        label, sep, path = arg.partition(":")
        if not sep:
            raise SystemExit(f"ncu_summary.py: expected NAME:RAW.csv, got {arg!r}")
        with open(path) as f:
            named.append((label, f.read()))
    sys.stdout.write(table(named))


if __name__ == "__main__":
    main()
