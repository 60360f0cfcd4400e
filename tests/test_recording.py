"""Entropy recording: detached, thread-honest, bounded (issue #10 items 4, 5, 6).

The tiny SD UNet (random weights, offline) on CPU, at a 64x96 px (8x12 latent) size where every
self-attention scale is changed.
"""

from __future__ import annotations

import gc
import threading
import weakref

import pytest
import torch

import entropy_attn
from entropy_attn.integration.probe import attention_modules
from entropy_attn.tiny.pipelines import tiny_sd_pipeline

pytest.importorskip("diffusers")


def unet_inputs(pipe, latent=(8, 12), batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, 4, *latent, generator=g)
    context = torch.randn(batch, 77, pipe.unet.config.cross_attention_dim, generator=g)
    return latents, torch.tensor(500), context


def run(pipe, inputs):
    with torch.no_grad():
        return pipe.unet(*inputs).sample


def recorded(pipe, inputs_list, **options) -> list[dict]:
    with entropy_attn.enabled(pipe, **options) as handle:
        for inputs in inputs_list:
            run(pipe, inputs)
        return handle.entropy_rows()


def test_item4_recording_with_gradients_keeps_no_graph():
    pipe = tiny_sd_pipeline()
    inputs = unet_inputs(pipe)
    reference = recorded(pipe, [inputs], record_entropy=True)
    activations = []  # weak references to the activations autograd saves for backward

    def pack(tensor):
        # A detached alias lives exactly as long as the graph holds it (and forms no cycle).
        alias = tensor.detach()
        if not tensor.is_leaf:  # activations, not weights or inputs
            activations.append(weakref.ref(alias))
        return alias

    handle = entropy_attn.enable(pipe, record_entropy=True)
    assert any(p.requires_grad for p in pipe.unet.parameters())
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda alias: alias):
        out = pipe.unet(*inputs).sample  # gradients on, as in guidance or training
    assert out.grad_fn is not None and len(activations) > 100
    del out
    gc.collect()
    alive = sum(ref() is not None for ref in activations)
    assert alive == 0, f"{alive} of {len(activations)} saved activations outlive the output"
    values = handle.recorder.scalars()
    assert len(values) == len(attention_modules(pipe.unet))
    assert all(v.grad_fn is None and not v.requires_grad for v in values)
    rows = handle.entropy_rows()
    assert [r["layer"] for r in rows] == [r["layer"] for r in reference]
    for row, ref in zip(rows, reference, strict=True):
        assert row["entropy"] == pytest.approx(ref["entropy"], abs=1e-5)  # another entropy path
    entropy_attn.disable(pipe)


def test_item5_two_threads_get_one_step_per_call():
    pipe = tiny_sd_pipeline()
    inputs = [unet_inputs(pipe, seed=1), unet_inputs(pipe, seed=2)]
    alone = [recorded(pipe, [x], record_entropy=True) for x in inputs]
    layers = [r["layer"] for r in alone[0]]  # in call order
    assert len(layers) == len(attention_modules(pipe.unet))
    calls = 3
    handle = entropy_attn.enable(pipe, record_entropy=True)
    # Each call waits for the other thread half-way through (at the mid block), so the two
    # threads' calls interleave on every step.
    barrier = threading.Barrier(2, timeout=120)

    def meet(*_):
        barrier.wait()  # returns an int, which a pre-hook must not return (it replaces args)

    hook = pipe.unet.mid_block.register_forward_pre_hook(meet)
    errors = []

    def worker(x):
        try:
            for _ in range(calls):
                run(pipe, x)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(x,)) for x in inputs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    hook.remove()
    assert not errors, errors
    rows = handle.entropy_rows()
    entropy_attn.disable(pipe)
    steps = sorted({r["step"] for r in rows})
    assert steps == list(range(2 * calls))
    for step in steps:
        mine = [r for r in rows if r["step"] == step]
        assert [r["layer"] for r in mine] == layers, f"step {step}: layers of several calls"
        # All of one step's values come from one call, i.e. equal one input's values alone.
        entropies = [r["entropy"] for r in mine]
        matches = [
            all(abs(a - b["entropy"]) <= 1e-6 for a, b in zip(entropies, ref, strict=True))
            for ref in alone
        ]
        assert sum(matches) == 1, f"step {step} mixes the two threads' calls"


def test_item6_mean_mode_is_bounded_and_equals_the_mean_of_all_rows():
    pipe = tiny_sd_pipeline()
    layers = len(attention_modules(pipe.unet))
    small = unet_inputs(pipe, latent=(8, 8), seed=3)
    wide = [unet_inputs(pipe, seed=s) for s in (4, 5)]
    every = wide + [small]
    rows_all = recorded(pipe, every, record_entropy=True)
    assert len(rows_all) == 3 * layers
    handle = entropy_attn.enable(pipe, record_entropy="mean")
    for x in every:
        run(pipe, x)
    rows = handle.entropy_rows()
    assert len(rows) == len(handle.recorder) == 2 * layers  # one per (layer, call shape)
    for row in rows:
        same = [
            r
            for r in rows_all
            if r["layer"] == row["layer"]
            and r["n_tokens"] == row["n_tokens"]
            and r["query_tokens"] == row["query_tokens"]
        ]
        assert row["calls"] == row["steps"] == len(same) in (1, 2)
        assert row["scale"] == same[0]["scale"] and "step" not in row
        mean = sum(r["entropy"] for r in same) / len(same)
        assert row["entropy"] == pytest.approx(mean, abs=1e-6)
    for _ in range(4):
        run(pipe, small)
    assert len(handle.recorder) == 2 * layers  # bounded: nothing grows with the run
    assert len(handle.recorder.scalars()) == 2 * layers
    entropy_attn.disable(pipe)


def test_item6_last_steps_keeps_a_ring_of_steps():
    pipe = tiny_sd_pipeline()
    layers = len(attention_modules(pipe.unet))
    every = [unet_inputs(pipe, seed=s) for s in range(5)]
    rows_all = recorded(pipe, every, record_entropy=True)
    handle = entropy_attn.enable(pipe, record_entropy=True, record_last_steps=2)
    for x in every:
        run(pipe, x)
    rows = handle.entropy_rows()
    assert len(handle.recorder) == len(rows) == 2 * layers
    assert rows == [r for r in rows_all if r["step"] in (3, 4)]
    handle.reset_entropy()
    run(pipe, every[0])
    assert handle.entropy_rows() == rows_all[:layers]  # steps restart at 0
    entropy_attn.disable(pipe)


@pytest.mark.parametrize(
    "options,exc,pattern",
    [
        ({"record_entropy": "sum"}, ValueError, "record_entropy must be"),
        ({"record_entropy": 1}, TypeError, "record_entropy must be"),
        ({"record_entropy": True, "record_last_steps": 0}, ValueError, "record_last_steps"),
        ({"record_entropy": "mean", "record_last_steps": 3}, ValueError, "record_last_steps"),
        ({"record_last_steps": 3}, ValueError, "record_last_steps"),
    ],
)
def test_item6_bad_recording_options(options, exc, pattern):
    pipe = tiny_sd_pipeline()
    with pytest.raises(exc, match=pattern):
        entropy_attn.enable(pipe, **options)
    assert not any(
        isinstance(p, entropy_attn.EntropyAttnProcessor) for p in pipe.unet.attn_processors.values()
    )


# ---------------------------------------------------------------------------------------------
# Issue 19: reliability, round two


MEAN_FIELDS = dict(
    layer="mid_block.attentions.0.transformer_blocks.0.attn1",
    kind="self",
    heads=2,
    head_dim=32,
    query_tokens=16,
    n_tokens=16,
    train_tokens=16,
    scale=32**-0.5,
)


def feed_mean(recorder, values: torch.Tensor) -> None:
    """One denoiser call (a step) per value, each recording one layer call."""
    for value in values:
        recorder.next_step()
        recorder.add(value.reshape(1, 1, 1), **MEAN_FIELDS)


def test_r2_item4_mean_mode_memory_is_independent_of_steps_and_exact():
    import tracemalloc

    from entropy_attn.integration.recording import EntropyRecorder

    generator = torch.Generator().manual_seed(19)
    calls = 150_000  # a float32 running total is off by 2e-5 relative here
    values = (7.9 + 0.05 * torch.randn(calls, generator=generator)).float()
    recorder = EntropyRecorder("mean")
    feed_mean(recorder, values[:1000])  # every structure that exists at all exists now
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        feed_mean(recorder, values[1000:21000])
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # 20k more steps: a set of every step number would hold over 1 MB more here.
    assert grown < 100_000, f"{grown} bytes more after 20000 more steps"
    feed_mean(recorder, values[21000:])
    (row,) = recorder.rows()
    assert row["calls"] == row["steps"] == calls
    exact = values.double().mean().item()
    assert abs(row["entropy"] - exact) <= 1e-6 * exact, (row["entropy"], exact)


def test_r2_item4_mean_mode_counts_steps_with_layers_called_twice():
    from entropy_attn.integration.recording import EntropyRecorder

    recorder = EntropyRecorder("mean")
    for step in range(5):
        recorder.next_step()
        for value in (1.0, 2.0):  # one layer called twice in a step, same shape
            recorder.add(torch.full((1, 1, 1), value + step), **MEAN_FIELDS)
    (row,) = recorder.rows()
    assert (row["calls"], row["steps"]) == (10, 5)
    assert row["entropy"] == pytest.approx(1.5 + 2.0, abs=1e-12)


@pytest.mark.parametrize("mode", ["all", "mean"])
def test_r2_item5_gradient_checkpointing_records_each_forward_once(mode):
    pipe = tiny_sd_pipeline()
    layers = len(attention_modules(pipe.unet))
    inputs = unet_inputs(pipe)
    reference = recorded(pipe, [inputs], record_entropy=mode)
    pipe.unet.enable_gradient_checkpointing()
    pipe.unet.train()  # diffusers checkpoints its blocks in training mode with gradients on
    handle = entropy_attn.enable(pipe, record_entropy=mode)
    out = pipe.unet(*inputs).sample
    assert len(handle.entropy_rows()) == layers
    out.square().mean().backward()  # re-runs each checkpointed block's attention
    assert any(p.grad is not None for p in pipe.unet.parameters())
    rows = handle.entropy_rows()
    assert len(rows) == layers, f"{len(rows)} rows for {layers} layers after backward"
    if mode == "mean":
        assert all(r["calls"] == r["steps"] == 1 for r in rows)
    else:
        assert {r["step"] for r in rows} == {0}
    assert [r["layer"] for r in rows] == [r["layer"] for r in reference]
    for row, ref in zip(rows, reference, strict=True):
        assert row["entropy"] == pytest.approx(ref["entropy"], abs=1e-5)  # another entropy path
    entropy_attn.disable(pipe)


def copied(model, how: str, tmp_path):
    import copy
    import pickle

    if how == "deepcopy":
        return copy.deepcopy(model)
    if how == "pickle":
        return pickle.loads(pickle.dumps(model))
    torch.save(model, tmp_path / "unet.pt")
    return torch.load(tmp_path / "unet.pt", weights_only=False)


@pytest.mark.parametrize("how", ["deepcopy", "pickle", "torch.save"])
def test_r2_item7_recording_denoiser_can_be_copied_and_saved(how, tmp_path):
    from entropy_attn.integration import handles

    pipe = tiny_sd_pipeline()
    stock = {name: type(p) for name, p in pipe.unet.attn_processors.items()}
    inputs, other = unet_inputs(pipe, seed=1), unet_inputs(pipe, seed=2)
    handle = entropy_attn.enable(pipe, record_entropy=True)
    run(pipe, inputs)
    first = handle.entropy_rows()
    twin = copied(pipe.unet, how, tmp_path)
    # The copy carries its own enable state and recorder, with the rows recorded so far.
    (twin_handle,) = handles(twin)
    assert twin_handle is not handle and twin_handle.recorder is not handle.recorder
    assert twin_handle.denoiser is twin and twin_handle.active
    assert twin_handle.entropy_rows() == first
    with torch.no_grad():
        twin(*other)
    assert handle.entropy_rows() == first  # the original's recorder saw nothing of the copy's
    rows = twin_handle.entropy_rows()
    assert len(rows) == 2 * len(first) and {r["step"] for r in rows} == {0, 1}
    run(pipe, other)
    assert [r["entropy"] for r in handle.entropy_rows()[len(first) :]] == [
        r["entropy"] for r in rows[len(first) :]
    ]  # same weights, same input, same path: the same numbers
    # disable on either one restores its own stock processors and leaves the other enabled.
    entropy_attn.disable(twin)
    assert {name: type(p) for name, p in twin.attn_processors.items()} == stock
    assert handles(twin) == [] and handle.active
    assert not twin._forward_pre_hooks and pipe.unet._forward_pre_hooks  # each its own hook
    entropy_attn.disable(pipe)
    assert {name: type(p) for name, p in pipe.unet.attn_processors.items()} == stock
