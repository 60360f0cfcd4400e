"""Two CPU processes over gloo running diffusers' context parallelism (tests only).

diffusers 0.42 assumes an accelerator in three places; :func:`patch_diffusers_for_cpu` patches
them inside the worker processes only (never in the package, never in the pytest process):

- ``ModelMixin._resolve_parallel_config`` computes ``rank % torch.accelerator.device_count()``,
  which is a division by zero on a CPU-only torch: ``device_count`` is made to return 1.
- The ``native`` backend's ring step (``_native_attention_forward_op``) refuses ``return_lse``:
  it is replaced by one that takes the output and the log-sum-exp from PyTorch's CPU flash
  attention op (what a CUDA run gets from the flash/cuDNN backends).
- The output gather (``hooks.context_parallel.AllGatherFunction``) returns a functional
  all-gather without waiting for it; a CUDA stream orders the next kernels after it, but gloo's
  CPU work does not, so the model's output was read before it arrived (values of 1e37 seen on
  rank 0): the patched forward waits for it.

:func:`run_workers` spawns ``world`` processes that each call ``scenario(rank, world, **kwargs)``
and return what it returns (tensors and plain Python objects, through ``torch.save``).
"""

from __future__ import annotations

import os
import socket
import tempfile
import traceback

import helpers
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import FLUX_TEXT_TOKENS, flux_inputs

TEXT = FLUX_TEXT_TOKENS  # text tokens of the tiny FLUX inputs (divisible by the world size)


def patch_diffusers_for_cpu() -> None:
    """The three CPU patches described in the module docstring (worker processes only)."""
    import torch.distributed._functional_collectives as funcol
    from diffusers.hooks import context_parallel
    from diffusers.models import attention_dispatch

    torch.accelerator.device_count = lambda: 1

    def native_forward_op(
        ctx, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
        enable_gqa=False, return_lse=False, _save_ctx=True, _parallel_config=None,
    ):  # fmt: skip
        if not return_lse:
            return stock_op(
                ctx, query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa,
                False, _save_ctx=_save_ctx, _parallel_config=_parallel_config,
            )  # fmt: skip
        assert attn_mask is None and not is_causal and dropout_p == 0.0
        q, k, v = (x.permute(0, 2, 1, 3) for x in (query, key, value))
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, scale=scale)
        return out.permute(0, 2, 1, 3), lse.permute(0, 2, 1)

    stock_op = attention_dispatch._native_attention_forward_op
    attention_dispatch._native_attention_forward_op = native_forward_op

    gather = context_parallel.AllGatherFunction
    stock_gather = gather.forward

    def gather_and_wait(ctx, tensor, dim, group):
        return funcol.wait_tensor(stock_gather(ctx, tensor, dim, group))

    gather.forward = staticmethod(gather_and_wait)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world: int, port: int, scenario, kwargs: dict, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    result_path = os.path.join(out_dir, f"rank{rank}.pt")
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world)
        patch_diffusers_for_cpu()
        result = scenario(rank, world, **kwargs)
        torch.save({"ok": result}, result_path)
    except BaseException:
        torch.save({"error": traceback.format_exc()}, result_path)
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_workers(scenario, world: int = 2, **kwargs) -> list:
    """``[scenario(rank, world, **kwargs) for each rank]``, run in ``world`` spawned processes
    joined by a gloo process group. ``scenario`` must be importable (a module-level function)."""
    with tempfile.TemporaryDirectory() as out_dir:
        port = _free_port()
        try:
            mp.spawn(_worker, args=(world, port, scenario, kwargs, out_dir), nprocs=world)
        except Exception:
            errors = []
            for rank in range(world):
                path = os.path.join(out_dir, f"rank{rank}.pt")
                if os.path.exists(path):
                    errors.append(torch.load(path, weights_only=False).get("error"))
            raise RuntimeError("worker failed:\n" + "\n".join(filter(None, errors))) from None
        results = []
        for rank in range(world):
            saved = torch.load(os.path.join(out_dir, f"rank{rank}.pt"), weights_only=False)
            results.append(saved["ok"])
        return results


# Tiny models and inputs shared by the workers and the single-process references.


def tiny_flux():
    return helpers.tiny_flux(seed=0)


def run_model(model, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs, return_dict=False)[0]


# Scenarios (run in every worker; module-level so that spawn can import them).

FLUX_OPTIONS = dict(text_tokens=TEXT, train_size=128)  # latent 16x16: 64 image tokens + text


def _cp_config(mode: str, world: int):
    from diffusers import ContextParallelConfig

    if mode == "unified":  # ring of 2 across Ulysses groups of world / 2
        return ContextParallelConfig(ring_degree=2, ulysses_degree=world // 2)
    return ContextParallelConfig(**{f"{mode}_degree": world})


def model_scenarios(make, inputs: dict, options: dict, world: int, modes, prefix: str = ""):
    """Per mode: stock CP; enable then enable_parallelism; enable_parallelism then enable (both
    recording entropy, then disabled); enable without recording; the user's diffusers backend
    under entropy-attn. Returns
    {(mode, prefix + what): tensor or rows}."""
    import entropy_attn

    results = {}
    for mode in modes:
        model = make()
        model.enable_parallelism(config=_cp_config(mode, world))
        results[mode, prefix + "stock"] = run_model(model, inputs)

        model = make()
        handle = entropy_attn.enable(model, record_entropy=True, **options)
        model.enable_parallelism(config=_cp_config(mode, world))
        results[mode, prefix + "enable_first"] = run_model(model, inputs)
        results[mode, prefix + "enable_first_rows"] = handle.entropy_rows()
        entropy_attn.disable(model)
        results[mode, prefix + "enable_first_disabled"] = run_model(model, inputs)

        model = make()
        model.enable_parallelism(config=_cp_config(mode, world))
        handle = entropy_attn.enable(model, record_entropy=True, **options)
        results[mode, prefix + "parallel_first"] = run_model(model, inputs)
        results[mode, prefix + "parallel_first_rows"] = handle.entropy_rows()
        entropy_attn.disable(model)
        results[mode, prefix + "parallel_first_disabled"] = run_model(model, inputs)

        # Not recording: entropy-attn's op inside diffusers' templates, without the entropy.
        model = make()
        model.enable_parallelism(config=_cp_config(mode, world))
        entropy_attn.enable(model, **options)
        results[mode, prefix + "unrecorded"] = run_model(model, inputs)

        # A diffusers backend the user chose (set_attention_backend) runs its own CP template,
        # with entropy-attn's scale of the global N.
        model = make()
        model.set_attention_backend("native")
        entropy_attn.enable(model, **options)
        model.enable_parallelism(config=_cp_config(mode, world))
        results[mode, prefix + "user_backend"] = run_model(model, inputs)
    return results


def flux_scenarios(rank: int, world: int, latent: tuple[int, int], modes=("ulysses", "ring")):
    """:func:`model_scenarios` on the tiny FLUX transformer."""
    return model_scenarios(tiny_flux, flux_inputs(*latent), FLUX_OPTIONS, world, modes)


# Wan 2.1 (tiny): diffusers splits the video tokens (self-attention goes through CP) but not the
# text tokens (cross-attention stays local, with the rank's query shard).

WAN_TRANSFORMER = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4,
    out_channels=4, text_dim=16, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
)  # fmt: skip
WAN_TEXT = 6
# A training size of 5 frames of 64x64 px: 2 latent frames of 8x8, 2 x 4 x 4 = 32 video tokens
# (patch 1x2x2).
WAN_OPTIONS = dict(text_tokens=WAN_TEXT, train_size=64, train_frames=5)


def tiny_wan():
    import diffusers

    torch.manual_seed(0)
    return diffusers.WanTransformer3DModel(**WAN_TRANSFORMER).eval()


def wan_inputs(frames: int, latent_h: int, latent_w: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(
        hidden_states=torch.randn(1, 4, frames, latent_h, latent_w, generator=g),
        timestep=torch.tensor([500]),
        encoder_hidden_states=torch.randn(1, WAN_TEXT, 16, generator=g),
    )


WAN_SIZE = (3, 8, 12)  # 3 latent frames of 8x12: 72 video tokens, 36 per rank


def wan_scenarios(rank: int, world: int, modes=("ulysses", "ring")):
    """:func:`model_scenarios` on the tiny Wan transformer (keys prefixed ``wan_``)."""
    return model_scenarios(tiny_wan, wan_inputs(*WAN_SIZE), WAN_OPTIONS, world, modes, "wan_")


def all_scenarios(rank: int, world: int, latent: tuple[int, int], modes=("ulysses", "ring")):
    """FLUX and Wan in one spawn (starting the processes costs more than the scenarios)."""
    return {**flux_scenarios(rank, world, latent, modes), **wan_scenarios(rank, world, modes)}
