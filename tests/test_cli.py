"""The ``entropy-attn`` command: each subcommand run through ``main(argv)`` (one in a subprocess),
checking the files it writes and the numbers it prints against the library's own."""

from __future__ import annotations

import csv
import io
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import entropy_attn
from entropy_attn import analysis, cli, configs
from entropy_attn.tiny import tiny_sd_pipeline

pytest.importorskip("diffusers")
pytest.importorskip("matplotlib")

TINY_LAYERS = 14  # attention layers of the tiny UNet: 7 self + 7 cross


def run(argv, capsys) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def read_csv(path_or_text) -> list[dict]:
    text = Path(path_or_text).read_text() if isinstance(path_or_text, Path) else path_or_text
    return list(csv.DictReader(io.StringIO(text)))


def png(path: Path) -> Image.Image:
    with Image.open(path) as image:
        image.load()
        return image.convert("RGB")


@pytest.mark.parametrize("command", ["demo", "generate", "layers", "entropy", "eval", "bench"])
def test_help_of_every_command(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: entropy-attn {command}" in capsys.readouterr().out


def test_module_runs_as_script_and_console_entry_point():
    out = subprocess.run(
        [sys.executable, "-m", "entropy_attn.cli", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "usage: entropy-attn" in out.stdout
    text = (Path(__file__).parent.parent / "pyproject.toml").read_text()
    assert 'entropy-attn = "entropy_attn.cli:main"' in text


# ---------------------------------------------------------------------------------------------
# demo


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    stdout = io.StringIO()
    from contextlib import redirect_stdout

    with redirect_stdout(stdout):
        code = cli.main(["demo", "--out", str(out), "--steps", "2"])
    return code, out, stdout.getvalue()


def test_demo_writes_grid_plot_and_images(demo_run):
    code, out, stdout = demo_run
    assert code == 0
    sizes = [64, 128, 192]  # half, training (128 px) and 1.5x for tiny-sd
    grid = png(out / "grid.png")
    assert grid.size == cli.grid_size(sizes, [192, 192])
    assert grid.size == (120 + 384 + 4 * 8, 24 + 384 + 3 * 8)
    assert png(out / "entropy.png").size == (720, 640)
    for method in ("stock", "entropy-attn"):
        for size in sizes:
            assert png(out / f"{method}-{size}x{size}.png").size == (size, size)
    # At the training size N == T: same numbers; elsewhere the scale changes the image.
    same = np.asarray(png(out / "stock-128x128.png"))
    assert np.array_equal(same, np.asarray(png(out / "entropy-attn-128x128.png")))
    for size in (64, 192):
        a = np.asarray(png(out / f"stock-{size}x{size}.png"), dtype=int)
        b = np.asarray(png(out / f"entropy-attn-{size}x{size}.png"), dtype=int)
        assert np.abs(a - b).max() > 0
    # The grid holds the very images: the stock 64 px image sits centred in its cell.
    x0 = cli.GRID_LABEL_WIDTH + cli.GRID_PAD  # column 0 is 64 px wide
    y0 = cli.GRID_HEADER_HEIGHT + cli.GRID_PAD + (192 - 64) // 2  # row 0 is 192 px tall
    cell = np.asarray(grid)[y0 : y0 + 64, x0 : x0 + 64]
    assert np.array_equal(cell, np.asarray(png(out / "stock-64x64.png")))


def test_demo_entropy_csv_and_printed_tables(demo_run):
    _, out, stdout = demo_run
    rows = read_csv(out / "entropy.csv")
    assert len(rows) == 3 * 2 * TINY_LAYERS
    selfs = [r for r in rows if r["kind"] == "self"]
    by_key = {(r["method"], r["height"], r["layer"]): float(r["entropy"]) for r in selfs}
    for r in selfs:
        if r["method"] != "stock":
            continue
        ours = by_key[("entropy-attn", r["height"], r["layer"])]
        stock = float(r["entropy"])
        if r["height"] == "128":
            assert ours == stock
        elif r["height"] == "64":
            assert ours > stock
        else:
            assert ours < stock
    # Printed layer table: one row per attention layer with N and lambda at each size.
    table = entropy_attn.layer_table(tiny_sd_pipeline(), 192)
    for info in table:
        line = next(line for line in stdout.splitlines() if line.startswith(info.name + " "))
        assert line.split()[-2:] == [str(info.n_tokens), f"{info.scale:.6f}"]
    assert "seconds" in stdout and "mean self-attn entropy" in stdout
    timing_lines = [line for line in stdout.splitlines() if line.startswith(("64x64", "192x192"))]
    assert len(timing_lines) == 4 and all(float(line.split()[2]) > 0 for line in timing_lines)


# ---------------------------------------------------------------------------------------------
# layers


@pytest.mark.parametrize(
    "name,size",
    [("sd21-base", "768"), ("sd21-base", "512x288"), ("ldm-256", "384"), ("sdxl-base", "768x1344")],
)
def test_layers_csv_equals_layer_table(name, size, capsys):
    code, out, _ = run(["layers", "--model", name, "--size", size, "--format", "csv"], capsys)
    assert code == 0
    rows = read_csv(out)
    width, height = (int(v) for v in (size.split("x") if "x" in size else (size, size)))
    unet = configs.build_denoiser(name, device="meta")
    table = entropy_attn.layer_table(unet, (height, width))
    assert list(rows[0]) == list(cli.LAYER_COLUMNS)
    assert len(rows) == len(table)
    for row, info in zip(rows, table, strict=True):
        assert row["name"] == info.name and row["kind"] == info.kind
        assert int(row["heads"]) == info.heads and int(row["head_dim"]) == info.head_dim
        assert int(row["N"]) == info.n_tokens and int(row["T"]) == info.train_tokens
        assert float(row["lambda"]) == info.scale  # repr round-trips exactly
        assert row["changed"] == str(info.changed)


def test_layers_text_and_markdown(capsys):
    code, text, _ = run(["layers", "--model", "sd21-base", "--size", "224"], capsys)
    assert code == 0
    lines = text.splitlines()
    assert lines[0].split() == list(cli.LAYER_COLUMNS)
    table = entropy_attn.layer_table(configs.build_denoiser("sd21-base", device="meta"), 224)
    assert len(lines) == 2 + len(table) == 2 + 32
    first = lines[2].split()
    # Paper numbers: 224 px, top level N = 28*28 = 784, T = 4096, d = 64.
    assert first[:7] == [table[0].name, "self", "5", "64", "784", "4096", "0.111889"]
    assert float(first[6]) == pytest.approx(entropy_attn.log_scale(784, 4096, 64), abs=5e-7)
    assert first[7] == "yes" and lines[3].split()[-1] == "no"  # cross-attention unchanged

    code, md, _ = run(
        ["layers", "--model", "ldm-256", "--size", "256", "--format", "markdown"], capsys
    )
    assert code == 0
    md_lines = md.splitlines()
    assert md_lines[0] == "| " + " | ".join(cli.LAYER_COLUMNS) + " |"
    body = md_lines[2:]
    assert len(body) == len(
        entropy_attn.layer_table(configs.build_denoiser("ldm-256", device="meta"), 256)
    )
    assert all(line.endswith("| no |") for line in body)  # training size: nothing changes


def test_layers_of_a_pipeline_folder_reads_configs_only(tmp_path, capsys):
    pipe = tiny_sd_pipeline()
    pipe.save_pretrained(tmp_path / "tiny")
    code, out, _ = run(
        ["layers", "--model", tmp_path / "tiny", "--size", "96x64", "--format", "csv"], capsys
    )
    assert code == 0
    expected = cli.layer_rows(entropy_attn.layer_table(pipe, (64, 96)))
    got = read_csv(out)
    assert [(r["name"], int(r["N"]), int(r["T"]), float(r["lambda"])) for r in got] == [
        (r["name"], r["N"], r["T"], r["lambda"]) for r in expected
    ]
    code, tiny_out, _ = run(
        ["layers", "--model", "tiny-sd", "--size", "96x64", "--format", "csv"], capsys
    )
    assert tiny_out == out


@pytest.mark.parametrize(
    "argv,pattern",
    [
        (["layers", "--model", "sd21-base", "--size", "100"], "multiples of 8"),
        (["layers", "--model", "sd21-base", "--size", "big"], "--size"),
        (["layers", "--model", "sd21-base", "--size", "512", "--train-size", "100"], "train_size"),
        (["generate", "--model", "tiny-sd", "--prompt", "x", "--size", "60"], "--size 60x60"),
        (["entropy", "--model", "tiny-sd", "--random-weights"], "--random-weights needs"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(argv, pattern, capsys):
    code, _, err = run(argv, capsys)
    assert code == 2
    assert pattern in err
    assert "Traceback" not in err


def test_cuda_device_without_cuda(capsys):
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    argv = ["generate", "--model", "tiny-sd", "--prompt", "x", "--size", "64", "--device", "cuda"]
    code, _, err = run(argv, capsys)
    assert code == 2 and "CUDA is not available" in err


# ---------------------------------------------------------------------------------------------
# generate and missing models


def test_generate_compare(tmp_path, capsys):
    code, out, _ = run(
        [
            "generate",
            "--model",
            "tiny-ldm",
            "--prompt",
            "a red cat",
            "--size",
            "96x64",
            "--compare",
            "--steps",
            "2",
            "--out",
            tmp_path,
        ],
        capsys,
    )
    assert code == 0
    stem = tmp_path / "a-red-cat-96x64-seed0"
    stock = png(Path(f"{stem}-stock.png"))
    ours = png(Path(f"{stem}-entropy-attn.png"))
    assert stock.size == ours.size == (96, 64)
    assert np.abs(np.asarray(stock, dtype=int) - np.asarray(ours, dtype=int)).max() > 0
    assert png(Path(f"{stem}-compare.png")).size == cli.grid_size([96], [64, 64])
    assert "entropy-attn:" in out and "side by side:" in out


def test_generate_from_a_local_pipeline_folder(tmp_path, capsys):
    tiny_sd_pipeline().save_pretrained(tmp_path / "model")
    code, out, _ = run(
        [
            "generate",
            "--model",
            tmp_path / "model",
            "--prompt",
            "a dog",
            "--size",
            "64",
            "--steps",
            "2",
            "--out",
            tmp_path / "out",
        ],
        capsys,
    )
    assert code == 0
    from_folder = png(tmp_path / "out" / "a-dog-64x64-seed0-entropy-attn.png")
    code, _, _ = run(
        [
            "generate",
            "--model",
            "tiny-sd",
            "--prompt",
            "a dog",
            "--size",
            "64",
            "--steps",
            "2",
            "--out",
            tmp_path / "built",
        ],
        capsys,
    )
    built = png(tmp_path / "built" / "a-dog-64x64-seed0-entropy-attn.png")
    assert np.array_equal(np.asarray(from_folder), np.asarray(built))


@pytest.mark.parametrize("command", ["demo", "layers"])
def test_missing_local_model_message(command, tmp_path, capsys):
    argv = [command, "--model", tmp_path / "no-such-model"]
    if command == "layers":
        argv += ["--size", "512"]
    code, _, err = run(argv, capsys)
    assert code == 2
    assert "no such folder" in err and "hf download" in err and "--model ./model" in err
    assert len(err.strip().splitlines()) == 1  # one paragraph


def test_missing_hub_model_in_a_subprocess_has_no_traceback(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "entropy_attn.cli",
            "demo",
            "--model",
            "sd21-base",
            "--out",
            tmp_path,
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert "Could not load the diffusers pipeline 'sd21-base'" in out.stderr
    assert "hf download stabilityai/stable-diffusion-2-1-base" in out.stderr


# ---------------------------------------------------------------------------------------------
# entropy


def test_entropy_command_csv_fits_and_figures(tmp_path, capsys):
    code, out, _ = run(
        [
            "entropy",
            "--model",
            "tiny-sd",
            "--sizes",
            "64",
            "128",
            "192",
            "--steps",
            "1",
            "--out",
            tmp_path,
        ],
        capsys,
    )
    assert code == 0
    rows = read_csv(tmp_path / "entropy.csv")
    assert list(rows[0]) == list(cli._ENTROPY_COLUMNS)
    assert len(rows) == 3 * 2 * TINY_LAYERS
    assert {(r["method"], r["height"]) for r in rows} == {
        (m, s) for m in ("stock", "entropy-attn") for s in ("64", "128", "192")
    }
    for r in rows:
        assert float(r["ln_n"]) == pytest.approx(math.log(int(r["n_tokens"])), abs=1e-12)
    fits = read_csv(tmp_path / "fits.csv")
    assert [(f["method"], f["train_tokens"]) for f in fits] == [
        ("stock", "256"),
        ("stock", "64"),
        ("entropy-attn", "256"),
        ("entropy-attn", "64"),
    ]
    # Each slope is the least-squares line through the level means written in entropy.csv.
    for fit in fits:
        level = [
            r
            for r in rows
            if r["kind"] == "self"
            and r["method"] == fit["method"]
            and r["train_tokens"] == fit["train_tokens"]
        ]
        by_n: dict[int, list[float]] = {}
        for r in level:
            by_n.setdefault(int(r["n_tokens"]), []).append(float(r["entropy"]))
        n_values = sorted(by_n)
        slope, intercept = np.polyfit(
            [math.log(n) for n in n_values], [np.mean(by_n[n]) for n in n_values], 1
        )
        assert float(fit["slope"]) == pytest.approx(slope, abs=1e-9)
        assert float(fit["intercept"]) == pytest.approx(intercept, abs=1e-9)
        assert int(fit["points"]) == 3
        assert f"{float(fit['slope']):.6f}" in out  # printed
    assert png(tmp_path / "fig5_entropy_vs_log_n.png").size == (640, 440)
    assert png(tmp_path / "fig6_layer_entropy.png").size == (720, 640)


# ---------------------------------------------------------------------------------------------
# bench


def test_bench_forwards_arguments_to_run_py(capfd):
    if not cli.benchmarks_runner().is_file():
        pytest.skip("benchmarks/run.py is not in this checkout")
    code = cli.main(["bench", "--", "--help"])
    out = capfd.readouterr().out
    assert code == 0
    assert "running: " in out and "run.py --help" in out
    assert "usage: run.py" in out  # run.py's own help: the argument reached it


def test_bench_without_the_repository(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(cli, "benchmarks_runner", lambda: tmp_path / "benchmarks" / "run.py")
    code, _, err = run(["bench", "--cpu"], capsys)
    assert code == 2
    assert "benchmarks/ folder" in err and "Clone the repository" in err


def test_analysis_training_size_of_tiny_pipeline():
    assert analysis.training_size(tiny_sd_pipeline()) == (128, 128)
    assert cli.sizes_around((128, 128)) == [(64, 64), (128, 128), (192, 192)]
    assert cli.sizes_around((512, 512)) == [(256, 256), (512, 512), (768, 768)]
    assert cli.sizes_around((1024, 1024)) == [(512, 512), (1024, 1024), (1536, 1536)]
