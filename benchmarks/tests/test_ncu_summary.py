"""ncu_summary's table from a raw Nsight Compute CSV (header, units, one
row per kernel), without a GPU."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import ncu_summary  # noqa: E402

METRICS = ["Kernel Name", "gpu__time_duration.sum", "sm__issue_active.avg.pct_of_peak_sustained_elapsed",
           "sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_active",
           "sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active",
           "l1tex__t_sectors_pipe_lsu_mem_local_op_ld.sum", "l1tex__t_sectors_pipe_lsu_mem_local_op_st.sum",
           "lts__t_requests_srcunit_tex_op_red.sum", "lts__t_sectors_srcunit_tex_op_red.sum",
           "smsp__average_warps_issue_stalled_wait_per_issue_active.ratio",
           "smsp__average_warps_issue_stalled_selected_per_issue_active.ratio",
           "smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio",
           "smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio",
           "smsp__average_warps_issue_stalled_mio_throttle_per_issue_active.ratio"]
UNITS = ["", "ms", "%", "%", "%", "sector", "sector", "request", "sector", "", "", "", "", ""]


def csv_text(rows):
    def line(cells):
        return ",".join(f'"{c}"' for c in cells)
    return "\n".join([line(METRICS), line(UNITS)] + [line(r) for r in rows]) + "\n"


def test_one_row_per_kernel_with_units_and_stalls():
    text = csv_text([
        ["void backward_kernel<__nv_bfloat16, 128, 0, 0>(Params, CUtensorMap_st)", "6.582752", "24.1", "55.4",
         "11.1", "131,048", "720,844", "268435456", "268435456", "1.69", "1.0", "2.31", "1.23", "0.80"],
        ["void dot_do_o_kernel<__nv_bfloat16, 128>(Params)", "0.0881", "10", "0", "0", "0", "0", "", "", "0.5",
         "1.0", "3.0", "0", "0.1"],
    ])
    lines = ncu_summary.table([("bwd-d128", text)]).splitlines()
    assert len(lines) == 4
    # Milliseconds become microseconds; local memory and reductions in millions.
    assert lines[2] == ("| bwd-d128 | backward_kernel<__nv_bfloat16, 128, 0, 0> | 6583 | 24 | 55 | 11 | - | - | - | - | - "
                        "| 0.13 / 0.72 | 268.44 / 268.44 | long_scoreboard 2.31, wait 1.69, barrier 1.23 |")
    # "selected" is not a stall; a missing metric prints as "-".
    assert lines[3].endswith("| 0.00 / 0.00 | - | long_scoreboard 3.00, wait 0.50, mio_throttle 0.10 |")
    assert "| 88 |" in lines[3]


def test_names_keep_template_arguments_and_drop_parameters():
    assert ncu_summary.short_name("void f<a, b<c>>(int, float)") == "f<a, b<c>>"
    assert ncu_summary.short_name("cudnn_generated_kernel0") == "cudnn_generated_kernel0"


def test_a_report_without_kernels_gives_only_the_header():
    assert len(ncu_summary.table([("x", csv_text([]))]).splitlines()) == 2
