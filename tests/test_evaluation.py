"""Evaluation harness: generation with resume and sharding, and the FID / CLIP-score plumbing.

The metric tests run the real torchmetrics code with a tiny exported feature network (FID) and
a tiny CLIP model saved to a temporary folder, and check the numbers the command writes against
an independent computation (numpy Frechet distance; cosine similarity from the CLIP model).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from entropy_attn import cli
from entropy_attn.science import evaluation
from entropy_attn.science.evaluation import image_path
from entropy_attn.tiny.pipelines import tiny_clip_tokenizer, tiny_sd_pipeline

pytest.importorskip("diffusers")

PROMPTS = ["a red cat", "a blue car", "a tree", "a house"]


def read_csv(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def prompts_file(tmp_path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(PROMPTS[:2]) + "\n\n" + "\n".join(PROMPTS[2:]) + "\n")
    return path


def test_parse_and_format_size():
    assert evaluation.parse_size("512") == (512, 512)
    assert evaluation.parse_size("768x512") == (512, 768)  # W x H -> (height, width)
    assert evaluation.parse_size(64) == (64, 64)
    assert evaluation.format_size((512, 768)) == "768x512"
    for bad in ("", "0", "12x", "axb", "1x2x3", "-64"):
        with pytest.raises(ValueError, match="size must be"):
            evaluation.parse_size(bad)


def test_read_prompts_and_shard(prompts_file, tmp_path):
    assert evaluation.read_prompts(prompts_file) == PROMPTS  # blank line skipped
    assert evaluation.read_prompts(prompts_file, 3) == PROMPTS[:3]
    with pytest.raises(ValueError, match="does not exist"):
        evaluation.read_prompts(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="no prompts"):
        evaluation.read_prompts(tmp_path / "empty.txt")
    shards = [evaluation.shard(10, rank, 3) for rank in range(3)]
    assert shards == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    with pytest.raises(ValueError, match="bad process index"):
        evaluation.shard(10, 3, 3)


def test_sharded_generation_equals_single_process(tmp_path):
    """Two 'processes' (shards 0 and 1 of 2) write exactly the images one process writes."""
    pipe = tiny_sd_pipeline()
    sizes = [(64, 64)]
    options = {"steps": 1, "progress": False}
    single = evaluation.generate_images(pipe, PROMPTS, sizes, tmp_path / "one", **options)
    assert (single.generated, single.skipped) == (8, 0)
    for rank in range(2):
        report = evaluation.generate_images(
            pipe, PROMPTS, sizes, tmp_path / "two", process_index=rank, num_processes=2, **options
        )
        assert (report.generated, report.skipped) == (4, 0)
    for method in evaluation.METHODS:
        for index in range(len(PROMPTS)):
            a = image_path(tmp_path / "one", method, sizes[0], index)
            b = image_path(tmp_path / "two", method, sizes[0], index)
            assert a.read_bytes() == b.read_bytes()
    # The noise depends on the prompt index only: batching changes nothing either.
    batched = evaluation.generate_images(
        pipe, PROMPTS, sizes, tmp_path / "batched", batch_size=3, **options
    )
    assert batched.generated == 8
    for index in range(len(PROMPTS)):
        a = np.asarray(Image.open(image_path(tmp_path / "one", "stock", sizes[0], index)), int)
        b = np.asarray(Image.open(image_path(tmp_path / "batched", "stock", sizes[0], index)), int)
        assert np.abs(a - b).max() <= 1  # batched convolutions may round differently


def run_eval(argv, capsys) -> tuple[int, str, str]:
    code = cli.main(["eval", *[str(a) for a in argv]])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_eval_resumes_and_regenerates_only_what_is_missing(tmp_path, prompts_file, capsys):
    out = tmp_path / "run"
    argv = ["--model", "tiny-sd", "--prompts", prompts_file, "--sizes", "64", "96x64",
            "--metrics", "--steps", "1", "--out", out, "--no-progress"]  # fmt: skip
    code, stdout, _ = run_eval(argv, capsys)
    assert code == 0, stdout
    assert "generated 16 new images" in stdout and "0 already on disk" in stdout
    files = sorted((out / "images").rglob("*.png"))
    assert len(files) == 2 * 2 * len(PROMPTS)
    assert Image.open(image_path(out, "stock", (64, 96), 0)).size == (96, 64)
    stamps = {path: path.stat().st_mtime_ns for path in files}
    rows = read_csv(out / "results.csv")
    assert [(r["size"], r["method"], r["images"]) for r in rows] == [
        (size, method, "4") for size in ("64x64", "96x64") for method in evaluation.METHODS
    ]
    assert all(r["fid"] == "" and r["clip_score"] == "" for r in rows)

    code, stdout, _ = run_eval(argv, capsys)
    assert code == 0
    assert "generated 0 new images" in stdout and "16 already on disk" in stdout
    assert {path: path.stat().st_mtime_ns for path in files} == stamps

    victim = image_path(out, "entropy-attn", (64, 96), 2)
    original = victim.read_bytes()
    victim.unlink()
    code, stdout, _ = run_eval(argv, capsys)
    assert "generated 1 new images" in stdout and "15 already on disk" in stdout
    assert victim.read_bytes() == original  # seed + prompt index: the same image again

    code, _, err = run_eval([*argv[:-3], "--seed", "1", "--out", out], capsys)
    assert code == 2 and "other settings: seed" in err


@pytest.fixture(scope="module")
def metric_models(tmp_path_factory):
    """A feature net (4 features, saved with torch.export) and a tiny CLIP model folder."""
    pytest.importorskip("torchmetrics")
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    folder = tmp_path_factory.mktemp("metric-models")

    class Features(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 5, stride=4)

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return 10.0 * self.conv(images.float() / 255.0).mean(dim=(2, 3))

    with torch.random.fork_rng():
        torch.manual_seed(0)
        example = (torch.zeros(2, 3, 64, 64, dtype=torch.uint8),)
        batch = torch.export.Dim("batch", min=1)
        program = torch.export.export(Features(), example, dynamic_shapes=({0: batch},))
        torch.export.save(program, str(folder / "features.pt2"))
        tokenizer = tiny_clip_tokenizer()
        text = dict(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        vision = dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        )
        torch.manual_seed(10)  # a seed whose random CLIP scores these images above 0 (no clamp)
        clip = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    clip.save_pretrained(folder / "clip")
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
        ),
        tokenizer=tokenizer,
    )
    processor.save_pretrained(folder / "clip")
    references = folder / "references"
    references.mkdir()
    rng = np.random.default_rng(0)
    for index in range(6):
        pixels = rng.integers(0, 256, (80, 100, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(references / f"{index}.png")
    (references / "notes.txt").write_text("not an image")
    return folder


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)), trace of the root via eigenvalues."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root_trace = np.sqrt(np.linalg.eigvals(cov_a @ cov_b).astype(complex)).real.sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * root_trace)


def test_eval_metrics_match_an_independent_computation(
    tmp_path, prompts_file, metric_models, capsys
):
    out = tmp_path / "run"
    code, stdout, err = run_eval(
        ["--model", "tiny-sd", "--prompts", prompts_file, "--sizes", "64", "128",
         "--reference-images", metric_models / "references", "--metrics", "fid", "clip",
         "--fid-features", metric_models / "features.pt2", "--fid-size", "64",
         "--clip-model", metric_models / "clip", "--steps", "1", "--out", out, "--no-progress"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    rows = read_csv(out / "results.csv")
    assert list(rows[0]) == list(evaluation.RESULT_COLUMNS)
    assert len(rows) == 4
    markdown = (out / "results.md").read_text()
    assert "| 64x64 | stock | 4 |" in markdown and "FID against 6 reference images" in markdown

    features = torch.export.load(str(metric_models / "features.pt2")).module()
    references = sorted((metric_models / "references").glob("*.png"))

    def feats(paths) -> np.ndarray:
        images = torch.stack([evaluation.load_image(p, 64) for p in paths])
        with torch.no_grad():
            return features(images).double().numpy()

    from transformers import CLIPModel, CLIPProcessor

    clip = CLIPModel.from_pretrained(metric_models / "clip").eval()
    processor = CLIPProcessor.from_pretrained(metric_models / "clip")
    real = feats(references)
    scores = []
    for row in rows:
        size = evaluation.parse_size(row["size"])
        paths = [image_path(out, row["method"], size, i) for i in range(len(PROMPTS))]
        expected_fid = frechet_distance(real, feats(paths))
        assert float(row["fid"]) == pytest.approx(expected_fid, rel=1e-6, abs=1e-6)
        assert expected_fid > 0.1  # the test is not comparing zeros
        with torch.no_grad():
            pixel = processor(
                images=[Image.open(p).convert("RGB") for p in paths], return_tensors="pt"
            )
            image_emb = clip.get_image_features(**pixel)
            text = processor(text=PROMPTS, return_tensors="pt", padding=True)
            text_emb = clip.get_text_features(**text)
        image_emb = getattr(image_emb, "pooler_output", image_emb)
        text_emb = getattr(text_emb, "pooler_output", text_emb)
        cosine = torch.nn.functional.cosine_similarity(image_emb, text_emb).mean().item()
        expected_clip = max(100 * cosine, 0.0)
        assert float(row["clip_score"]) == pytest.approx(expected_clip, rel=1e-4, abs=1e-4)
        scores.append(expected_clip)
    assert min(scores) > 1.0  # positive scores: the clamp at 0 is not all that is tested
    # At the training size (128 px) stock and entropy-attn images are identical: same metrics.
    at_train = [r for r in rows if r["size"] == "128x128"]
    assert at_train[0]["fid"] == at_train[1]["fid"]
    assert at_train[0]["clip_score"] == at_train[1]["clip_score"]


def test_missing_metric_weights_are_named(tmp_path, prompts_file, monkeypatch, capsys):
    pytest.importorskip("torchmetrics")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(evaluation.MetricUnavailable) as info:
        evaluation.check_metrics(["fid"])
    message = str(info.value)
    assert "torch-fidelity" in message or (
        "weights-inception-2015-12-05-6726825d.pth" in message and "--inception-weights" in message
    )
    with pytest.raises(evaluation.MetricUnavailable, match="hf download nobody/no-clip"):
        evaluation.check_metrics(["clip"], clip_model="nobody/no-clip")
    code, _, err = run_eval(
        ["--model", "tiny-sd", "--prompts", prompts_file, "--sizes", "64", "--metrics", "clip",
         "--clip-model", "nobody/no-clip", "--out", tmp_path / "run"],
        capsys,
    )  # fmt: skip
    assert code == 2 and "Traceback" not in err and "nobody/no-clip" in err
    assert not (tmp_path / "run" / "images").exists()  # failed before generating anything


def test_fid_needs_reference_images(tmp_path, prompts_file, metric_models, capsys):
    features = metric_models / "features.pt2"
    argv = ["--model", "tiny-sd", "--prompts", prompts_file, "--sizes", "64", "--metrics", "fid",
            "--fid-features", features, "--out", tmp_path / "run"]  # fmt: skip
    code, _, err = run_eval(argv, capsys)
    assert code == 2 and "--reference-images" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run_eval([*argv, "--reference-images", empty], capsys)
    assert code == 2 and "has no images" in err


def test_accelerate_state_is_used_when_available():
    state = evaluation.process_state()
    if state is None:
        pytest.skip("accelerate is not installed")
    assert (state.process_index, state.num_processes) == (0, 1)
    assert os.environ.get("WORLD_SIZE", "1") == "1"


@pytest.mark.slow  # two processes that each import torch, diffusers and accelerate
def test_two_processes_under_torchrun_share_the_prompts(tmp_path, prompts_file):
    """A real 2-process run (gloo on CPU): each process generates its half, one table is written."""
    pytest.importorskip("accelerate")
    import shutil
    import subprocess
    import sys

    if torch.cuda.is_available() or shutil.which("torchrun") is None:
        pytest.skip("CPU process-group test (torchrun, no CUDA)")
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "-m", "entropy_attn.cli", "eval", "--model", "tiny-sd", "--prompts", str(prompts_file),
         "--sizes", "64", "--metrics", "--steps", "1", "--out", str(out), "--no-progress"],
        capture_output=True,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in range(2):
        assert f"[process {rank}/2] generated 4 new images" in result.stdout
    assert result.stdout.count("wrote ") == 1  # only the main process writes the table
    assert len(list((out / "images").rglob("*.png"))) == 2 * len(PROMPTS)
    rows = read_csv(out / "results.csv")
    assert [(r["method"], r["images"]) for r in rows] == [("stock", "4"), ("entropy-attn", "4")]


def test_metrics_without_torchmetrics_say_how_to_install(
    monkeypatch, tmp_path, prompts_file, capsys
):
    import sys

    monkeypatch.setitem(sys.modules, "torchmetrics", None)  # import fails as if not installed
    with pytest.raises(evaluation.MetricUnavailable, match=r"pip install 'entropy-attn\[eval\]'"):
        evaluation.check_metrics(["clip"])
    evaluation.check_metrics([])  # generation only needs no metric library
    code, _, err = run_eval(
        ["--model", "tiny-sd", "--prompts", prompts_file, "--sizes", "64", "--metrics", "fid",
         "--reference-images", tmp_path, "--out", tmp_path / "run"],
        capsys,
    )  # fmt: skip
    assert code == 2 and "entropy-attn[eval]" in err and "Traceback" not in err
