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

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

TEXT = 8  # text tokens of the tiny FLUX inputs (divisible by the world size)


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
    import diffusers

    from entropy_attn import tiny

    torch.manual_seed(0)
    return diffusers.FluxTransformer2DModel(**tiny.TINY_FLUX_TRANSFORMER).eval()


def flux_inputs(latent_h: int, latent_w: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    h, w = latent_h // 2, latent_w // 2  # FLUX packs 2x2 latent pixels per token
    ids = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij"), -1)
    img_ids = torch.cat([torch.zeros(h * w, 1), ids.reshape(-1, 2).float()], dim=1)
    return dict(
        hidden_states=torch.randn(1, h * w, 16, generator=g),
        encoder_hidden_states=torch.randn(1, TEXT, 32, generator=g),
        pooled_projections=torch.randn(1, 32, generator=g),
        timestep=torch.tensor([0.5]),
        img_ids=img_ids,
        txt_ids=torch.zeros(TEXT, 3),
    )


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


def flux_scenarios(rank: int, world: int, latent: tuple[int, int], modes=("ulysses", "ring")):
    """Per mode: stock CP; enable then enable_parallelism; enable_parallelism then enable (both
    recording entropy, then disabled); the user's diffusers backend under entropy-attn. Returns
    {(mode, what): tensor or rows}."""
    import entropy_attn

    inputs = flux_inputs(*latent)
    results = {}
    for mode in modes:
        model = tiny_flux()
        model.enable_parallelism(config=_cp_config(mode, world))
        results[mode, "stock"] = run_model(model, inputs)

        model = tiny_flux()
        handle = entropy_attn.enable(model, record_entropy=True, **FLUX_OPTIONS)
        model.enable_parallelism(config=_cp_config(mode, world))
        results[mode, "enable_first"] = run_model(model, inputs)
        results[mode, "enable_first_rows"] = handle.entropy_rows()
        entropy_attn.disable(model)
        results[mode, "enable_first_disabled"] = run_model(model, inputs)

        model = tiny_flux()
        model.enable_parallelism(config=_cp_config(mode, world))
        handle = entropy_attn.enable(model, record_entropy=True, **FLUX_OPTIONS)
        results[mode, "parallel_first"] = run_model(model, inputs)
        results[mode, "parallel_first_rows"] = handle.entropy_rows()
        entropy_attn.disable(model)
        results[mode, "parallel_first_disabled"] = run_model(model, inputs)

        # A diffusers backend the user chose (set_attention_backend) runs its own CP template,
        # with entropy-attn's scale of the global N.
        model = tiny_flux()
        model.set_attention_backend("native")
        entropy_attn.enable(model, **FLUX_OPTIONS)
        model.enable_parallelism(config=_cp_config(mode, world))
        results[mode, "user_backend"] = run_model(model, inputs)
    return results


# Wan 2.1 (tiny): diffusers splits the video tokens (self-attention goes through CP) but not the
# text tokens (cross-attention stays local, with the rank's query shard).

WAN_TRANSFORMER = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4,
    out_channels=4, text_dim=16, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
)  # fmt: skip
WAN_TEXT = 6
WAN_TRAIN_TOKENS = 2 * 4 * 4  # a training size of 2 latent frames of 8x8 (patch 1x2x2)


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


class GenericDispatch:
    """A stand-in for the generic dispatcher path of issue 21 (not in the package yet): replaces
    ``dispatch_attention_fn`` in Wan's module with entropy-attn, using entropy_attn.parallel's
    pieces under context parallelism. Self-attention (as many keys as queries) gets the scale of
    the global N; cross-attention keeps 1/sqrt(d). Records one mean entropy per call, averaged
    over the model's CP ranks (cross-attention too: its queries are sharded)."""

    def __init__(self, model):
        self.model = model
        self.entropies: list[torch.Tensor] = []

    def __call__(
        self, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
        enable_gqa=False, attention_kwargs=None, *, backend=None, parallel_config=None,
    ):  # fmt: skip
        import entropy_attn
        from entropy_attn import parallel

        assert attn_mask is None and scale is None
        q, k, v = (x.transpose(1, 2) for x in (query, key, value))
        cp = parallel.context_parallel_config(parallel_config) is not None
        n_tokens = parallel.global_key_tokens(k.shape[2], parallel_config if cp else None)
        self_attention = key.shape[1] == query.shape[1]
        head_dim = q.shape[-1]
        call_scale = (
            entropy_attn.log_scale(n_tokens, WAN_TRAIN_TOKENS, head_dim) if self_attention else None
        )
        if cp:
            out, entropy = parallel.context_parallel_attention(
                q, k, v, call_scale, parallel_config, backend="torch", return_entropy=True
            )
        else:
            out, entropy = entropy_attn.attention(q, k, v, call_scale, return_entropy=True)
        self.entropies.append(parallel.cp_mean(entropy, self.model._parallel_config))
        return out.transpose(1, 2)


def run_wan_generic(model, inputs) -> tuple[torch.Tensor, list[float]]:
    """The model's output and per-call entropies with :class:`GenericDispatch` patched in."""
    from diffusers.models.transformers import transformer_wan

    stock = transformer_wan.dispatch_attention_fn
    generic = GenericDispatch(model)
    transformer_wan.dispatch_attention_fn = generic
    try:
        out = run_model(model, inputs)
    finally:
        transformer_wan.dispatch_attention_fn = stock
    return out, [float(e) for e in generic.entropies]


WAN_SIZE = (3, 8, 12)  # 3 latent frames of 8x12: 72 video tokens, 36 per rank


def wan_scenarios(rank: int, world: int, modes=("ulysses", "ring")):
    inputs = wan_inputs(*WAN_SIZE)
    results = {}
    for mode in modes:
        model = tiny_wan()
        model.enable_parallelism(config=_cp_config(mode, world))
        results[mode, "wan_stock"] = run_model(model, inputs)
        results[mode, "wan_generic"], results[mode, "wan_generic_rows"] = run_wan_generic(
            model, inputs
        )
    return results


def all_scenarios(rank: int, world: int, latent: tuple[int, int]):
    """FLUX and Wan in one spawn (starting the processes costs more than the scenarios)."""
    return {**flux_scenarios(rank, world, latent), **wan_scenarios(rank, world)}
