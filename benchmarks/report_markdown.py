"""The Markdown report of one result file: environment, targets, and one section per comparison.

``render_markdown`` puts together, from one ``ResultFile``: the environment, the targets table,
the kernel vs SDPA backends, entropy on vs off, fused vs materialising entropy, fused vs the LSE
identity, host cost per call, UNet steps, whole generations, and the parity and host-cost tables
``benchmarks/gpu_check.py`` records.
"""

from __future__ import annotations

from benchmarks.report_attention import entropy_lines, fused_lines, kernel_lines, lse_lines
from benchmarks.report_format import fmt_mib, fmt_ratio, fmt_time, mark, markdown_table
from benchmarks.report_gpu_check import gpu_check_lines
from benchmarks.report_results import ResultFile, UnetRow, shape_rows, unet_rows
from benchmarks.report_targets import Target, evaluate_targets, host_entries, is_sd21_768


def _environment_lines(result: ResultFile) -> list[str]:
    env = result.environment
    versions = env.get("versions") or {}
    gpu = env.get("gpu") or {}
    pairs = [
        ("device", result.device_name),
        ("devices used", ", ".join(env.get("devices_used") or []) or "—"),
        ("date", env.get("date") or result.datetime or "—"),
        ("CPU", f"{env.get('cpu_model', '—')} ({env.get('cpu_count', '?')} logical CPUs)"),
        ("torch threads", str(env.get("torch_num_threads", "—"))),
        (
            "load average at start / end",
            f"{env.get('load_average_start')} / {env.get('load_average_end')}",
        ),
        (
            "GPU",
            f"{gpu.get('name')}, sm {gpu.get('compute_capability')}, "
            f"{fmt_mib(gpu.get('total_memory_bytes'))} MiB"
            if gpu
            else "—",
        ),
        ("NVIDIA driver", str(env.get("nvidia_driver") or "—")),
        ("CUDA runtime (torch)", str(env.get("cuda_runtime") or "—")),
        ("cuDNN", str(env.get("cudnn") or "—")),
        ("TRITON_INTERPRET", str(env.get("triton_interpret", "—"))),
    ]
    pairs += [(name, str(version)) for name, version in versions.items()]
    return markdown_table(["", ""], [[k, v] for k, v in pairs])


def _target_lines(targets: list[Target]) -> list[str]:
    rows = []
    for t in targets:
        worst = t.worst
        rows.append(
            [
                t.name,
                t.threshold,
                t.scope,
                fmt_ratio(worst.ratio) if worst else "—",
                worst.where if worst else "—",
                f"{sum(c.met for c in t.checks)}/{len(t.checks)}",
                t.status,
            ]
        )
    header = ["target", "threshold", "scope", "measured (worst)", "where", "checks met", "status"]
    return markdown_table(header, rows)


def _unet_lines(rows: list[UnetRow]) -> list[str]:
    header = [
        "device",
        "dtype",
        "model",
        "image",
        "stock",
        "enable",
        "enable/stock",
        "record entropy",
        "record/stock",
        "peak MiB stock / enable / record",
        "target",
    ]
    table = []
    for row in rows:
        stock = row.modes.get("stock")
        enable = row.modes.get("enable")
        record = row.modes.get("enable-record-entropy")
        r_enable, r_record = row.ratio("enable"), row.ratio("enable-record-entropy")
        target = "—"
        if is_sd21_768(row):
            parts = []
            if r_enable is not None:
                parts.append(f"enable <= 1.02x: {mark(r_enable <= 1.02)}")
            if r_record is not None:
                parts.append(f"record <= 1.08x: {mark(r_record <= 1.08)}")
            target = "; ".join(parts) or "—"
        elif row.impl == "unet" and row.device == "cpu" and r_enable is not None:
            target = f"enable <= 1.05x: {mark(r_enable <= 1.05)}"
        peaks = " / ".join(
            fmt_mib(e.get("peak_mem_bytes") if e else None) for e in (stock, enable, record)
        )
        table.append(
            [
                str(row.device),
                str(row.dtype),
                str(row.model),
                f"{row.image_size}px",
                fmt_time(stock.median_s if stock else None),
                fmt_time(enable.median_s if enable else None),
                fmt_ratio(r_enable),
                fmt_time(record.median_s if record else None),
                fmt_ratio(r_record),
                peaks,
                target,
            ]
        )
    return markdown_table(header, table)


def render_markdown(result: ResultFile, plot_name: str | None = None) -> str:
    """The whole report of one result file as Markdown."""
    rows = shape_rows(result)
    unet = unet_rows(result)
    generation = unet_rows(result, "generation")
    targets = evaluate_targets(result)
    lines = [
        f"# Benchmark report: {result.path.name}",
        "",
        f"Device: **{result.device_name}**. Every number below comes from `{result.path.name}` "
        "(median seconds per call over the timed rounds; TFLOP/s = 4·B·H·Lq·Lk·D / median), so "
        "every ratio compares measurements from the same run on this device.",
        "",
        "## Environment",
        "",
        *_environment_lines(result),
        "",
        "## Targets",
        "",
        *_target_lines(targets),
        "",
    ]
    if rows:
        lines += [
            "## Attention: entropy-attn vs PyTorch SDPA",
            "",
            "entropy-attn with entropy off; `speed vs fastest SDPA` = fastest SDPA time / "
            "entropy-attn time (> 1: entropy-attn is faster). Peak memory is "
            "`torch.cuda.max_memory_allocated` for one call, inputs included (CUDA only).",
            "",
            *kernel_lines(rows),
            "",
            "## Entropy on vs off",
            "",
            *entropy_lines(rows),
            "",
            "## Fused vs materialising entropy",
            "",
            "`extra MiB`: peak memory of the call minus memory allocated before it.",
            "",
            *fused_lines(rows),
            "",
        ]
        lse_table = lse_lines(rows)
        if lse_table:
            lines += [
                "## Fused vs the LSE identity (stock SDPA)",
                "",
                "The strongest unfused entropy: one SDPA call with values `[V | K]` and its "
                "log-sum-exp, `H = LSE - scale <q, mean key>` (O(N) memory, like the kernel).",
                "",
                *lse_table,
                "",
            ]
    if host_entries(result) or host_entries(result, "host-processor"):
        lines += [
            "## Host cost per call",
            "",
            "CPU time of the calling thread per call (`time.thread_time`), Triton's launch stubbed "
            "out: the Python between the caller and the kernel.",
            "",
            *_host_lines(result),
            "",
        ]
    if unet:
        lines += ["## UNet step", "", *_unet_lines(unet), ""]
    if generation:
        steps = sorted({e.get("steps") for r in generation for e in r.modes.values()}, key=str)
        lines += [
            "## Whole generation",
            "",
            f"`pipe(prompt, ...)` with {', '.join(map(str, steps))} steps and classifier-free "
            "guidance: text encoding, every denoising step, the autoencoder's decode. No target "
            "covers it; it shows what the UNet-step ratios mean for a user's call.",
            "",
            *_unet_lines(generation),
            "",
        ]
    lines += gpu_check_lines(result)
    if plot_name:
        lines += ["## TFLOP/s vs N", "", f"![TFLOP/s vs N per head dim]({plot_name})", ""]
    if result.skipped:
        lines += [
            "## Skipped",
            "",
            *markdown_table(["test", "reason"], [[s["test"], s["reason"]] for s in result.skipped]),
            "",
        ]
    return "\n".join(lines)


def _host_lines(result: ResultFile) -> list[str]:
    """One table of the host-cost entries: per-call time and the ratio to the bare SDPA call."""
    host = host_entries(result)
    bare = host.get("sdpa-tiny")
    rows = []
    for variant, entry in sorted(host.items(), key=lambda item: str(item[0])):
        ratio = entry.median_s / bare.median_s if bare else None
        rows.append([str(variant), str(entry.get("baseline")), fmt_time(entry.median_s),
                     fmt_ratio(ratio)])  # fmt: skip
    processors = host_entries(result, "host-processor")
    stock = processors.get("AttnProcessor2_0")
    for variant, entry in sorted(processors.items(), key=lambda item: str(item[0])):
        ratio = entry.median_s / stock.median_s if stock else None
        rows.append([str(variant), str(entry.get("baseline")), fmt_time(entry.median_s),
                     f"{fmt_ratio(ratio)} of AttnProcessor2_0"])  # fmt: skip
    return markdown_table(["call", "what", "median per call", "vs bare SDPA"], rows)
