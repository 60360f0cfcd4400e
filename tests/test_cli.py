"""The ``entropy-attn`` command: each subcommand run through ``main(argv)`` (one in a subprocess),
checking the files it writes and the numbers it prints against the library's own."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import importlib.util
import io
import logging
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
from entropy_attn import cli, configs
from entropy_attn._quiet import quiet_library_logs
from entropy_attn.cli import bench, common, models, output
from entropy_attn.science import analysis
from entropy_attn.tiny.pipelines import tiny_sd_pipeline

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


def help_text(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*argv, "--help"])
    assert exit_info.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines


def pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    return tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())


DEFAULT_OUT = {
    "demo": "entropy-attn-demo",
    "generate": "entropy-attn-out",
    "entropy": "entropy-attn-entropy",
    "eval": "entropy-attn-eval",
}


@pytest.mark.parametrize("command", ["demo", "generate", "layers", "entropy", "eval", "bench"])
def test_help_of_every_command(command, capsys):
    text = help_text([command], capsys)
    assert f"usage: entropy-attn {command}" in text
    if command in DEFAULT_OUT:  # where it writes, before anyone runs it
        assert f"output folder (default: ./{DEFAULT_OUT[command]})" in text
    if command != "bench":  # every name --model accepts is listed
        assert all(name in text.replace("- ", "-") for name in models.MODELS)


def test_help_states_the_size_order(capsys):
    text = help_text([], capsys)
    assert "Sizes are WIDTHxHEIGHT in pixels (the Python API takes (height, width))" in text
    assert "WIDTHxHEIGHT or S (square) in pixels" in help_text(["generate"], capsys)


def test_layers_help_lists_every_shipped_model(capsys):
    text = help_text(["layers"], capsys).replace("- ", "-")  # argparse breaks at hyphens
    assert len(configs.ARCHITECTURES) == 19
    assert all(name in text for name in configs.ARCHITECTURES)
    assert all(name in text for name in ("tiny-sd", "tiny-ldm"))


def test_module_runs_as_script_and_console_entry_point():
    out = subprocess.run(
        [sys.executable, "-m", "entropy_attn.cli", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "usage: entropy-attn" in out.stdout
    project = pyproject()
    assert project["project"]["scripts"]["entropy-attn"] == "entropy_attn.cli:main"
    assert "entropy_attn.cli" in project["tool"]["setuptools"]["packages"]
    # One module per command, each with add_parser and run.
    for command in cli.COMMANDS:
        assert callable(command.add_parser) and callable(command.run)
    assert [c.__name__.rsplit(".", 1)[1] for c in cli.COMMANDS] == [
        "demo", "generate", "layers", "entropy", "eval", "bench"
    ]  # fmt: skip


def test_pandas_comes_with_the_recording_extra():
    """``handle.entropy_dataframe()`` needs pandas: the diffusers extra (recording) installs it."""
    project = pyproject()
    extra = project["project"]["optional-dependencies"]["diffusers"]
    assert any(requirement.startswith("pandas") for requirement in extra)


# ---------------------------------------------------------------------------------------------
# demo


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """One tiny-sd demo run, started with 2 torch threads; also returns the thread count each
    generation ran with and the count after the command."""
    from entropy_attn.cli import demo

    out = tmp_path_factory.mktemp("demo")
    stdout, stderr = io.StringIO(), io.StringIO()
    generate, threads_seen = demo.generate_image, []

    def counting_generate(*args, **kwargs):
        threads_seen.append(torch.get_num_threads())
        return generate(*args, **kwargs)

    threads, omp = torch.get_num_threads(), os.environ.pop("OMP_NUM_THREADS", None)
    torch.set_num_threads(2)
    demo.generate_image = counting_generate
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = cli.main(["demo", "--model", "tiny-sd", "--out", str(out), "--steps", "2"])
        threads_after = torch.get_num_threads()
    finally:
        demo.generate_image = generate
        torch.set_num_threads(threads)
        if omp is not None:
            os.environ["OMP_NUM_THREADS"] = omp
    return code, out, stdout.getvalue(), stderr.getvalue(), threads_seen, threads_after


@pytest.mark.xdist_group("demo")  # the three demo tests share one demo run
def test_demo_writes_grid_plot_and_images(demo_run):
    code, out, stdout, _, _, _ = demo_run
    assert code == 0
    sizes = [64, 128, 192]  # half, training (128 px) and 1.5x for tiny-sd
    grid = png(out / "grid.png")
    assert grid.size == output.grid_size(sizes, [192, 192])
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
    x0 = output.GRID_LABEL_WIDTH + output.GRID_PAD  # column 0 is 64 px wide
    y0 = output.GRID_HEADER_HEIGHT + output.GRID_PAD + (192 - 64) // 2  # row 0 is 192 px tall
    cell = np.asarray(grid)[y0 : y0 + 64, x0 : x0 + 64]
    assert np.array_equal(cell, np.asarray(png(out / "stock-64x64.png")))


@pytest.mark.xdist_group("demo")
def test_demo_entropy_csv_and_printed_tables(demo_run, tiny_sd):
    _, out, stdout, _, _, _ = demo_run
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
    table = entropy_attn.layer_table(tiny_sd, 192)
    for info in table:
        line = next(line for line in stdout.splitlines() if line.startswith(info.name + " "))
        assert line.split()[-2:] == [str(info.n_tokens), f"{info.scale:.6f}"]
    assert "seconds" in stdout and "mean self-attn entropy" in stdout
    timing_lines = [line for line in stdout.splitlines() if line.startswith(("64x64", "192x192"))]
    assert len(timing_lines) == 4 and all(float(line.split()[2]) > 0 for line in timing_lines)


@pytest.mark.xdist_group("demo")
def test_demo_says_where_it_writes_and_shows_progress(demo_run):
    _, out, stdout, stderr, _, _ = demo_run
    assert stdout.splitlines()[0] == f"writing to {out.resolve()}/"
    # One progress bar per generation (diffusers' own, labelled), each to its last step.
    for size in ("64x64", "128x128", "192x192"):
        for method in ("stock", "entropy-attn"):
            line = next(
                chunk
                for chunk in stderr.replace("\r", "\n").splitlines()
                if chunk.startswith(f"{method} {size}:") and "100%" in chunk
            )
            assert "2/2" in line


@pytest.mark.xdist_group("demo")
def test_demo_of_a_tiny_pipeline_samples_with_one_thread(demo_run):
    """Built-in demos sample with one CPU thread (thread contention made them 8x slower) and
    give the caller's setting back."""
    *_, threads_seen, threads_after = demo_run
    assert threads_seen == [1] * 6 and threads_after == 2


# ---------------------------------------------------------------------------------------------
# The trained digits models (entropy_attn.zoo): demo's default, eval's quality table, layers


@pytest.fixture(scope="module")
def digits_unet():
    pytest.importorskip("sklearn")
    from entropy_attn import zoo

    return zoo.load_pipeline("digits-unet")


def test_demo_default_is_the_trained_digits_grid(tmp_path, capsys, digits_unet, monkeypatch):
    from entropy_attn import zoo

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)

    threads = torch.get_num_threads()
    code, out, err = run(["demo", "--steps", "1", "--out", tmp_path / "cli"], capsys)
    assert code == 0, err
    assert torch.get_num_threads() == threads  # one thread while sampling, then restored
    lines = out.splitlines()
    assert lines[0] == f"writing to {(tmp_path / 'cli').resolve()}/"  # before it starts
    assert lines[1].startswith("model digits-unet: trained on scikit-learn's 8x8")
    assert "8x8 (training size), 4x4, 12x12, 16x16, 16x8; DDIM 1 steps, seed 0" in lines[1]
    assert "16x16 is 2x" in out and "entropy-attn eval --model digits-unet" in out
    assert sorted(p.name for p in (tmp_path / "cli").iterdir()) == ["demo-digits-unet.png"]
    # Progress: one bar over the denoiser calls (5 sizes x 3 rows x 1 step), to the end.
    bars = [c for c in err.replace("\r", "\n").splitlines() if c.startswith("demo:")]
    assert bars and "100%" in bars[-1] and "15/15" in bars[-1]
    assert "re-dilation + scale (the combination of size fix and scale that measured best" in out
    # The very picture zoo.demo_grid draws (the progress hook leaves the outputs alone).
    torch.set_num_threads(1)  # as the command samples (unless OMP_NUM_THREADS is set)
    try:
        reference = zoo.demo_grid("digits-unet", tmp_path / "ref", steps=1, pipe=digits_unet)
    finally:
        torch.set_num_threads(threads)
    got = np.asarray(png(tmp_path / "cli" / "demo-digits-unet.png"))
    assert np.array_equal(got, np.asarray(png(reference)))
    assert not digits_unet.unet._forward_hooks


@pytest.mark.parametrize(
    "argv,pattern",
    [
        (["demo", "--prompt", "a cat"], "--prompt: --model 'digits-unet' takes class labels"),
        (["demo", "--guidance-scale", "3"], "--guidance-scale: --model 'digits-unet' takes"),
        (["demo", "--positions", "extend"], "--positions extend applies to digits-dit"),
        (["demo", "--model", "tiny-sd", "--positions", "extend"], "--positions applies to"),
        (
            ["generate", "--model", "digits-unet", "--prompt", "x", "--size", "16"],
            "--model 'digits-unet' takes class labels (digits 0-9), not prompts: `entropy-attn "
            "generate` needs a text-to-image model",
        ),
        (["entropy", "--model", "digits-dit", "--random-weights"], "needs a shipped architecture"),
        (["entropy", "--model", "digits-unet", "--sizes", "6x9"], "digits-unet needs even"),
        (
            ["entropy", "--model", "digits-unet", "--guidance-scale", "3"],
            "--guidance-scale: --model",
        ),
        (["eval", "--model", "digits-unet", "--prompts", "p.txt"], "--prompts: --model"),
        (["eval", "--model", "digits-dit", "--metrics", "--n", "3"], "--metrics, --n: --model"),
        (["eval", "--model", "digits-unet", "--n-per-cell", "1"], "--n-per-cell must be >= 2"),
        (["eval", "--model", "digits-unet", "--sizes", "9"], "digits-unet needs even width"),
        (["eval", "--model", "digits-unet", "--positions", "extend"], "applies to digits-dit"),
        (["eval", "--model", "tiny-sd", "--sizes", "64"], "--model 'tiny-sd' needs --prompts"),
        (["eval", "--model", "tiny-sd", "--prompts", "p.txt"], "needs --sizes"),
        (["eval", "--model", "tiny-sd", "--n-per-cell", "4"], "--n-per-cell applies to the"),
    ],  # fmt: skip
)
def test_digits_models_refuse_prompt_options_before_loading(
    argv, pattern, no_loading, monkeypatch, tmp_path, capsys
):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(argv, capsys)
    assert code == 2 and pattern in err, err
    assert "Traceback" not in err and "tried to load" not in err
    assert not list(tmp_path.iterdir())  # nothing written


def test_entropy_digits_writes_trained_and_random_init_curves(tmp_path, capsys):
    pytest.importorskip("sklearn")
    argv = [
        "entropy",
        "--model",
        "digits-unet",
        "--sizes",
        "2",
        "8",
        "16",
        "--steps",
        "1",
        "--out",
        tmp_path,
    ]  # fmt: skip (2x2: the 4x4 level sees N = 1, no entropy / ln N)
    threads = torch.get_num_threads()
    code, out, err = run(argv, capsys)
    assert code == 0, err
    assert torch.get_num_threads() == threads
    assert "then the same architecture at random initialisation" in out.splitlines()[1]
    # Progress: one bar per model over its denoiser calls, to the end (3 sizes x 2 methods x
    # 1 step for the trained model, x 2 steps at random initialisation).
    chunks = err.replace("\r", "\n").splitlines()
    for label, calls in (("digits-unet:", 6), ("digits-unet-random-init:", 12)):
        bars = [c for c in chunks if c.startswith(label)]
        assert bars and "100%" in bars[-1] and f"{calls}/{calls}" in bars[-1], bars
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{kind}-digits-unet{suffix}.{ext}"
        for suffix in ("", "-random-init")
        for kind, ext in (("attention", "csv"), ("fig5", "png"), ("fig6", "png"))
    )
    for suffix in ("", "-random-init"):
        rows = [r for r in read_csv(tmp_path / f"attention-digits-unet{suffix}.csv")]
        entropy = {
            (r["height"], r["method"], r["layer"]): float(r["entropy"])
            for r in rows
            if r["kind"] == "self"
        }
        layers = {layer for _, _, layer in entropy}
        assert len(layers) == 7  # 2 + 1 + 2 + 2 self-attention layers
        for layer in layers:  # N == T at 8x8: the stock scale; at 16x16 a larger one
            assert entropy[("8", "stock", layer)] == entropy[("8", "entropy-attn", layer)]
            assert entropy[("16", "entropy-attn", layer)] < entropy[("16", "stock", layer)]
        ratios = [float(r["entropy_over_ln_n"]) for r in rows if r["entropy_over_ln_n"]]
        if suffix:  # random weights attend almost uniformly; the trained model does not
            assert min(ratios) > 0.97
        else:
            assert min(ratios) < 0.9


def test_entropy_digits_refuses_prompts(tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\n")
    argv = ["entropy", "--model", "digits-dit", "--prompts", prompts, "--out", tmp_path / "o"]
    code, _, err = run(argv, capsys)
    assert code == 2 and "--prompts: --model 'digits-dit' takes class labels" in err, err
    assert not (tmp_path / "o").exists()


def test_eval_digits_writes_the_quality_table(tmp_path, capsys):
    pytest.importorskip("sklearn")
    argv = ["eval", "--model", "digits-unet", "--n-per-cell", "3", "--sizes", "8", "16x8",
            "--steps", "1", "--out", tmp_path]  # fmt: skip
    code, out, err = run(argv, capsys)
    assert code == 0, err
    assert out.splitlines()[0] == f"writing to {tmp_path.resolve()}/"
    assert "model digits-unet: 2 sizes x 1 positions x 2 methods x 3 samples" in out
    rows = read_csv(tmp_path / "quality-digits-unet.csv")
    # --sizes is WIDTHxHEIGHT: 16x8 is 8 high and 16 wide.
    assert [(r["height"], r["width"], r["method"]) for r in rows] == [
        ("8", "8", "stock"), ("8", "8", "entropy-attn"),
        ("8", "16", "stock"), ("8", "16", "entropy-attn"),
    ]  # fmt: skip
    for r in rows:
        assert r["model"] == "digits-unet" and r["n"] == "3" and r["positions"] == "interpolate"
        assert int(r["correct"]) == round(float(r["accuracy"]) * 3)
    # At the training size N == T: entropy-attn is the stock scale, the same samples.
    assert rows[1]["mcnemar_b"] == rows[1]["mcnemar_c"] == "0"
    assert rows[0]["correct"] == rows[1]["correct"] and rows[0]["frechet"] == rows[1]["frechet"]
    md = (tmp_path / "quality-digits-unet.md").read_text()
    assert "3 samples per cell" in md and "DDIM 1 steps, seed 0" in md and md in out
    # The table prints each size as --sizes took it (WIDTHxHEIGHT), and its header says so.
    table_sizes = [line.split("|")[1].strip() for line in md.splitlines() if line.startswith("| 1")]
    assert "| size (W x H) |" in md and table_sizes == ["16x8", "16x8"], table_sizes
    assert any(c.startswith("eval digits-unet: 100%") for c in err.replace("\r", "\n").split("\n"))


def test_layers_of_the_digits_model(capsys, digits_unet):
    code, out, _ = run(
        ["layers", "--model", "digits-unet", "--size", "16x8", "--format", "csv"], capsys
    )
    assert code == 0
    table = entropy_attn.layer_table(digits_unet, (8, 16), vae_scale_factor=1)
    rows = read_csv(out)
    assert [(r["name"], int(r["N"]), int(r["T"]), float(r["lambda"])) for r in rows] == [
        (i.name, i.n_tokens, i.train_tokens, i.scale) for i in table
    ]
    first = rows[0]  # top level: 16x8 (W x H) pixels = 128 tokens vs 8x8 = 64 at training
    assert (first["kind"], first["N"], first["T"]) == ("self", "128", "64")
    assert float(first["lambda"]) == pytest.approx(entropy_attn.log_scale(128, 64, 8), abs=1e-12)


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
    assert list(rows[0]) == list(output.LAYER_COLUMNS)
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
    assert lines[0].split() == list(output.LAYER_COLUMNS)
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
    assert md_lines[0] == "| " + " | ".join(output.LAYER_COLUMNS) + " |"
    body = md_lines[2:]
    assert len(body) == len(
        entropy_attn.layer_table(configs.build_denoiser("ldm-256", device="meta"), 256)
    )
    assert all(line.endswith("| no |") for line in body)  # training size: nothing changes


def test_layers_of_a_pipeline_folder_reads_configs_only(tmp_path, capsys, tiny_sd):
    pipe = tiny_sd
    pipe.save_pretrained(tmp_path / "tiny")
    code, out, _ = run(
        ["layers", "--model", tmp_path / "tiny", "--size", "96x64", "--format", "csv"], capsys
    )
    assert code == 0
    expected = output.layer_rows(entropy_attn.layer_table(pipe, (64, 96)))
    got = read_csv(out)
    assert [(r["name"], int(r["N"]), int(r["T"]), float(r["lambda"])) for r in got] == [
        (r["name"], r["N"], r["T"], r["lambda"]) for r in expected
    ]
    code, tiny_out, _ = run(
        ["layers", "--model", "tiny-sd", "--size", "96x64", "--format", "csv"], capsys
    )
    assert tiny_out == out


def test_layers_of_a_pixel_space_folder(tmp_path, capsys):
    """A pipeline folder with no autoencoder (DDPM) counts tokens in pixels, as the library."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from test_pipelines import tiny_ddpm_pipeline

    pipe = tiny_ddpm_pipeline()
    pipe.save_pretrained(tmp_path / "ddpm")
    code, out, err = run(
        ["layers", "--model", tmp_path / "ddpm", "--size", "24x16", "--format", "csv"], capsys
    )
    assert code == 0, err
    expected = output.layer_rows(entropy_attn.layer_table(pipe, (16, 24)))
    got = [(r["name"], int(r["N"]), int(r["T"])) for r in read_csv(out)]
    assert got == [(r["name"], r["N"], r["T"]) for r in expected]
    assert {(n, t) for _, n, t in got} == {(96, 64)}


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
    """--size is WIDTHxHEIGHT: 96x64 gives images 96 wide and 64 high."""
    code, out, err = run(
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
    assert png(Path(f"{stem}-compare.png")).size == output.grid_size([96], [64, 64])
    assert "entropy-attn:" in out and "side by side:" in out
    assert out.splitlines()[0] == f"writing to {tmp_path.resolve()}/"
    for method in ("stock", "entropy-attn"):  # a labelled progress bar per generation
        assert any(
            line.startswith(f"{method} 96x64:") and "2/2" in line
            for line in err.replace("\r", "\n").splitlines()
        )


def test_generate_from_a_local_pipeline_folder(tmp_path, capsys, tiny_sd):
    tiny_sd.save_pretrained(tmp_path / "model")
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


@pytest.mark.slow  # a fresh interpreter, offline Hub look-up
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
    code, out, err = run(
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
    assert list(rows[0]) == list(output.ENTROPY_COLUMNS)
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
    assert out.splitlines()[0] == f"writing to {tmp_path.resolve()}/"
    bars = err.replace("\r", "\n").splitlines()
    assert any(line.startswith("entropy: 100%") and "6/6" in line for line in bars)  # 3 x 2
    assert png(tmp_path / "fig5_entropy_vs_log_n.png").size == (640, 440)
    assert png(tmp_path / "fig6_layer_entropy.png").size == (720, 640)


# ---------------------------------------------------------------------------------------------
# bench


def test_bench_forwards_arguments_to_run_py(capfd):
    if not bench.benchmarks_runner().is_file():
        pytest.skip("benchmarks/run.py is not in this checkout")
    code = cli.main(["bench", "--", "--help"])
    out = capfd.readouterr().out
    assert code == 0
    assert "running: " in out and "run.py --help" in out
    assert "usage: run.py" in out  # run.py's own help: the argument reached it


def test_bench_smoke_selection_is_a_cpu_subset():
    if not bench.benchmarks_runner().is_file():
        pytest.skip("benchmarks/run.py is not in this checkout")
    # By its path: `pytest tests` does not put the repository root on sys.path (run.py adds
    # it for its own imports).
    spec = importlib.util.spec_from_file_location("bench_run", bench.benchmarks_runner())
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)

    command = runner.pytest_command(runner.parse_args(["--smoke"]), Path("x.json"))
    assert command[command.index("-m", 2) + 1] == "cpu_bench"  # after `python -m pytest`
    assert command[command.index("-n") + 1] == "0"  # pytest-benchmark is off under xdist
    assert command[command.index("-k") + 1] == runner.SMOKE_SELECTION
    plain = runner.pytest_command(runner.parse_args(["--cpu"]), Path("x.json"))
    assert "-k" not in plain


def test_bench_without_the_repository(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(bench, "benchmarks_runner", lambda: tmp_path / "benchmarks" / "run.py")
    code, _, err = run(["bench", "--cpu"], capsys)
    assert code == 2
    assert "benchmarks/ folder" in err and "Clone the repository" in err


def test_analysis_training_size_of_tiny_pipeline(tiny_sd):
    assert analysis.training_size(tiny_sd) == (128, 128)
    assert common.sizes_around((128, 128)) == [(64, 64), (128, 128), (192, 192)]
    assert common.sizes_around((512, 512)) == [(256, 256), (512, 512), (768, 768)]
    assert common.sizes_around((1024, 1024)) == [(512, 512), (1024, 1024), (1536, 1536)]


# ---------------------------------------------------------------------------------------------
# Mistakes caught before they cost: missing libraries, typos, sizes, cheap checks first


@pytest.fixture
def no_loading(monkeypatch):
    """Any model load or Hub look-up fails the test (the CLI must refuse before it)."""
    import diffusers

    def refuse(*args, **kwargs):
        raise AssertionError("the command tried to load a model")

    monkeypatch.setattr(diffusers.DiffusionPipeline, "from_pretrained", refuse)
    monkeypatch.setattr(diffusers.DiffusionPipeline, "load_config", refuse)
    for name, entry in list(models.MODELS.items()):
        if entry.builtin:
            monkeypatch.setitem(models.MODELS, name, dataclasses.replace(entry, build=refuse))


@pytest.mark.parametrize(
    "argv",
    [
        ["demo"],
        ["layers", "--model", "sd21-base", "--size", "512"],
        ["generate", "--model", "tiny-sd", "--prompt", "x", "--size", "64"],
    ],  # fmt: skip
    ids=["demo", "layers", "generate"],
)
def test_missing_diffusers_extra_prints_the_install_line(argv, monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # as after `pip install entropy-attn`
    monkeypatch.chdir(tmp_path)
    code, out, err = run(argv, capsys)
    assert code == 2
    assert 'needs diffusers, which is not installed: pip install "entropy-attn[diffusers]"' in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())  # nothing written


def test_missing_extra_comes_after_the_cheap_argument_checks(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "diffusers", None)
    code, _, err = run(["generate", "--model", "tiny-sd", "--prompt", "x", "--size", "60"], capsys)
    assert code == 2 and "multiples of 8" in err and "pip install" not in err


@pytest.mark.parametrize("command", ["demo", "generate", "layers", "entropy", "eval"])
def test_model_name_typo_suggests_the_closest_name(command, no_loading, tmp_path, capsys):
    (tmp_path / "prompts.txt").write_text("a cat\n")
    extra = {
        "generate": ["--prompt", "x", "--size", "64"],
        "layers": ["--size", "64"],
        "eval": ["--prompts", tmp_path / "prompts.txt", "--sizes", "64", "--metrics"],
    }.get(command, [])
    code, _, err = run([command, "--model", "tiny-sdd", *extra, "--out", tmp_path / "o"], capsys)
    assert code == 2
    assert "--model 'tiny-sdd': did you mean tiny-sd?" in err
    assert "Known names: " + ", ".join(models.MODELS) + "." in err
    assert "Could not load" not in err and "Traceback" not in err  # nothing was looked up
    assert not (tmp_path / "o").exists()


def test_model_name_far_from_every_name_lists_them(no_loading, capsys):
    code, _, err = run(["layers", "--model", "qwertyuiop", "--size", "64"], capsys)
    assert code == 2 and "did you mean" not in err and "Known names: tiny-sd, " in err


def test_a_registered_name_works_in_every_listing(monkeypatch, capsys):
    """The registry is the one place to add a model name: help, checks and loading follow it."""
    monkeypatch.setattr(models, "MODELS", dict(models.MODELS))
    models.register(
        models.ModelName("my-tiny", "a test model", build=tiny_sd_pipeline, vae_scale_factor=8)
    )
    assert "my-tiny" in help_text(["layers"], capsys)
    assert "my-tiny" in help_text(["generate"], capsys)
    code, mine, _ = run(
        ["layers", "--model", "my-tiny", "--size", "96x64", "--format", "csv"], capsys
    )
    assert code == 0
    assert (
        run(["layers", "--model", "tiny-sd", "--size", "96x64", "--format", "csv"], capsys)[1]
        == mine
    )
    code, _, err = run(["layers", "--model", "my-tiy", "--size", "64"], capsys)
    assert code == 2 and "did you mean my-tiny?" in err
    assert models.default_steps("my-tiny", None) == models.REAL_STEPS
    with pytest.raises(ValueError, match="registered already"):
        models.register(models.ModelName("my-tiny", "again", build=tiny_sd_pipeline))
    with pytest.raises(ValueError, match="exactly one of build= or hub_id="):
        models.register(models.ModelName("both", "x", build=tiny_sd_pipeline, hub_id="a/b"))


def test_activation_floor_is_the_full_resolution_vae_level():
    # 2 live tensors x height x width x channels x bytes per element
    assert common.activation_floor_bytes((512, 768), 128, torch.float16) == 2 * 512 * 768 * 128 * 2
    assert common.activation_floor_bytes((20000, 20000), 16, torch.float32) == 51_200_000_000
    free = common.available_memory(torch.device("cpu"))
    assert free is None or free > 0


def test_size_beyond_memory_is_refused_before_running(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(common, "available_memory", lambda device: 8 * 10**9)
    out = tmp_path / "o"
    argv = ["generate", "--model", "tiny-sd", "--prompt", "x", "--size", "20000x20000"]
    code, _, err = run([*argv, "--out", out], capsys)
    assert code == 2
    assert "--size 20000x20000: the VAE decoder alone needs at least 51.2 GB" in err
    assert "16 channels" in err and "8.0 GB free on cpu" in err and "--force" in err
    assert not out.exists()


def test_size_beyond_memory_of_a_shipped_model_is_refused_before_loading(
    monkeypatch, no_loading, tmp_path, capsys
):
    monkeypatch.setattr(common, "available_memory", lambda device: 8 * 10**9)
    argv = ["generate", "--model", "sd21-base", "--prompt", "x", "--size", "4096x4096"]
    code, _, err = run([*argv, "--out", tmp_path / "o"], capsys)
    assert code == 2  # SD's VAE: 128 channels at full resolution, from the shipped vae.json
    assert f"needs at least {2 * 4096 * 4096 * 128 * 4 / 1e9:.1f} GB" in err
    assert "Could not load" not in err


def test_force_runs_a_size_the_estimate_refuses(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(common, "available_memory", lambda device: 1000)  # bytes
    argv = ["generate", "--model", "tiny-sd", "--prompt", "x", "--size", "64", "--steps", "1"]
    code, _, err = run([*argv, "--out", tmp_path], capsys)
    assert code == 2 and "--force" in err
    code, _, _ = run([*argv, "--out", tmp_path, "--force"], capsys)
    assert code == 0
    assert png(tmp_path / "x-64x64-seed0-entropy-attn.png").size == (64, 64)


@pytest.mark.parametrize(
    "argv,pattern",
    [
        (["generate", "--model", "tiny-sd", "--prompt", "x", "--size", "60"], "multiples of 8"),
        (["entropy", "--model", "tiny-sd", "--sizes", "64", "100"], "--sizes 100x100"),
        (["demo", "--steps", "0"], "--steps must be >= 1"),
        (["generate", "--model", "sd21-base", "--prompt", "x", "--size", "500"], "multiples of 8"),
        (
            ["eval", "--model", "tiny-sd", "--prompts", "missing.txt", "--sizes", "64"],
            "prompts file 'missing.txt' does not exist",
        ),
        (
            [
                "eval",
                "--model",
                "tiny-sd",
                "--prompts",
                "missing.txt",
                "--sizes",
                "64",
                "--metrics",
            ],
            "prompts file 'missing.txt' does not exist",
        ),
    ],  # fmt: skip
)
def test_cheap_checks_come_before_loading_and_optional_libraries(
    argv, pattern, no_loading, monkeypatch, tmp_path, capsys
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "torchmetrics", None)  # the eval extra is not installed
    code, _, err = run(argv, capsys)
    assert code == 2 and pattern in err
    assert "entropy-attn[eval]" not in err and "tried to load" not in err
    assert not list(tmp_path.iterdir())


def test_eval_without_metrics_shows_generation_progress_only(tmp_path, capsys):
    (tmp_path / "prompts.txt").write_text("a cat\n")
    argv = ["eval", "--model", "tiny-sd", "--prompts", tmp_path / "prompts.txt", "--sizes", "64",
            "--metrics", "--steps", "1", "--out", tmp_path / "run"]  # fmt: skip
    code, out, err = run(argv, capsys)
    assert code == 0
    assert out.splitlines()[0] == f"writing to {(tmp_path / 'run').resolve()}/"
    bars = err.replace("\r", "\n").splitlines()
    assert any(line.startswith("stock 64x64: 100%") for line in bars)
    assert any(line.startswith("entropy-attn 64x64: 100%") for line in bars)
    assert "metrics" not in err


# ---------------------------------------------------------------------------------------------
# Noise: our own calls do not print library chatter; the user's own warnings still show


def test_known_library_lines_are_dropped_only_inside_our_calls():
    logger = logging.getLogger("diffusers.models.modeling_utils")
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger.addHandler(handler)
    noise = "There are modules in UNet2DConditionModel that should be kept in float32: []. ..."
    try:
        with quiet_library_logs():
            logger.warning(noise)
            logger.warning("There are modules in UNet2DConditionModel that should be kept in "
                           "float32: ['norm']")  # fmt: skip  # a real list: not ours to hide
            logger.warning("something else")
        logger.warning(noise)  # outside our call: shown
    finally:
        logger.removeHandler(handler)
    assert seen == [
        "There are modules in UNet2DConditionModel that should be kept in float32: ['norm']",
        "something else",
        noise,
    ]


@pytest.mark.slow  # a fresh interpreter: the library lines are printed once per process
def test_tiny_models_and_built_pipelines_run_quietly(tmp_path):
    script = f"""
import torch
from entropy_attn import configs
from entropy_attn.cli import main
from entropy_attn.tiny.pipelines import tiny_sd_pipeline
tiny_sd_pipeline()
assert main(["generate", "--model", "tiny-ldm", "--prompt", "a cat", "--size", "64",
             "--steps", "1", "--out", {str(tmp_path)!r}]) == 0
configs.build_pipeline("sd15", device="meta", dtype=torch.float16)
configs.build_denoiser("sd15", device="meta").to(torch.float16)  # the user's own cast
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "requires torchvision" not in result.stderr
    assert "use_return_dict" not in result.stderr
    # build_pipeline's casts are quiet; the user's own cast still gets diffusers' warning.
    assert result.stderr.count("should be kept in float32") == 1, result.stderr


# ---------------------------------------------------------------------------------------------
# Issue 19 item 9: damaged shipped weights give one line and exit code 2


def damage(folder: Path, how: str) -> Path:
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    if how == "truncated-safetensors":
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2])
        return weights
    if how == "missing-weight-file":
        weights.unlink()
        return weights
    (folder / "model_index.json").unlink()
    return folder / "model_index.json"


@pytest.mark.parametrize(
    "how", ["truncated-safetensors", "missing-weight-file", "missing-model-index"]
)
@pytest.mark.parametrize(
    "argv",
    [["layers", "--model", "digits-unet", "--size", "16"], ["demo", "--steps", "1"]],
    ids=["layers", "demo"],
)
def test_r2_item9_damaged_zoo_weights_give_one_line_and_exit_2(
    how, argv, tmp_path, capsys, monkeypatch
):
    import shutil

    from entropy_attn.zoo import load

    shutil.copytree(load.WEIGHTS / "digits-unet", tmp_path / "weights" / "digits-unet")
    damaged = damage(tmp_path / "weights" / "digits-unet", how)
    monkeypatch.setattr(load, "WEIGHTS", tmp_path / "weights")
    code, out, err = run([*argv, "--out", tmp_path / "out"] if argv[0] == "demo" else argv, capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"entropy-attn {argv[0]}: ") and "Traceback" not in err
    assert "'digits-unet'" in lines[0] and str(damaged) in lines[0], lines[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_generate_with_the_size_fixes(tmp_path, capsys):
    """--redilate / --positions / --no-scale are enable's options: the method's file says which,
    re-dilation changes the image at 2x, and a fix the model has not is refused up front."""
    # 4 DDIM steps: timesteps 751, 501, 251, 1 (re-dilation acts at >= 600, the first one)
    common = ["generate", "--model", "tiny-sd", "--prompt", "a cat", "--steps", "4"]
    code, out, _ = run(
        [*common, "--size", "256", "--redilate", "--compare", "--out", tmp_path / "a"], capsys
    )
    assert code == 0, out
    stem = tmp_path / "a" / "a-cat-256x256-seed0"
    fixed = np.asarray(png(Path(f"{stem}-entropy-attn-redilate.png")), dtype=int)
    assert np.abs(fixed - np.asarray(png(Path(f"{stem}-stock.png")), dtype=int)).max() > 0
    code, out, _ = run([*common, "--size", "256", "--out", tmp_path / "b"], capsys)
    assert code == 0
    plain = np.asarray(png(tmp_path / "b" / "a-cat-256x256-seed0-entropy-attn.png"), dtype=int)
    assert np.abs(fixed - plain).max() > 0, "re-dilation changed nothing at 2x"
    code, _, err = run(
        [*common, "--size", "256", "--positions", "yarn", "--out", tmp_path / "c"], capsys
    )
    assert code == 2 and "positions='yarn' does not apply to UNet2DConditionModel" in err
    assert not (tmp_path / "c").exists() or not list((tmp_path / "c").glob("*.png"))
    code, _, err = run([*common, "--size", "64", "--no-scale", "--out", tmp_path / "d"], capsys)
    assert code == 2 and "--no-scale without --positions or --redilate" in err
