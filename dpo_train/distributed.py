"""Process-group plumbing: one code path for 1 process, DDP and FSDP2, on CPU (gloo) or GPU (nccl).

FSDP is torch's FSDP2 (`fully_shard`): every decoder layer (the model's `_no_split_modules`) and then the root
are sharded, which replaces the parameters with DTensor shards; the optimizer and the clipping list must be
built from `model.parameters()` AFTER `wrap`. Checkpoints go through `torch.distributed.checkpoint.state_dict`
(collective: every rank calls it, rank 0 gets the full, unsharded tensors and writes the HF directory).

Precision: dtype="bfloat16" keeps float32 master weights and optimizer state and computes in bf16 (autocast;
under FSDP also the mixed-precision policy, so all-gathers move bf16 and gradients are reduced in fp32).
"""

from __future__ import annotations

import atexit
import os
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    mode: str = "none"  # none | ddp | fsdp

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(name: str, local_rank: int) -> torch.device:
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was asked for but torch sees no CUDA device")
    return torch.device("cuda", local_rank)


def init(mode: str, device: str) -> DistInfo:
    """Join the process group that torchrun describes in the environment (WORLD_SIZE, RANK, ...).

    `fsdp` joins a group even with one process (FSDP2 needs a device mesh), so one GPU can run it.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if mode == "none" or (mode in ("auto", "ddp") and world == 1):
        return DistInfo(device=pick_device(device, 0))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29500")
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("WORLD_SIZE", str(world))
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        # Left up for the life of the process, so train() can run again in it (rounds under torchrun): a group
        # destroyed and re-created on the same MASTER_PORT can hang its first collective.
        atexit.register(_destroy)
    resolved = "fsdp" if mode == "fsdp" else "ddp"
    return DistInfo(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank, device=dev,
                    mode=resolved)


def autocast(dtype: str, info: DistInfo) -> AbstractContextManager[Any]:
    """bf16 compute over float32 weights; a no-op for float32."""
    if dtype == "bfloat16":
        return torch.autocast(info.device.type, dtype=torch.bfloat16)
    return nullcontext()


def _layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The decoder blocks (HF's `_no_split_modules` names them), the units FSDP shards one at a time."""
    names: set[str] = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or [])
    return [m for m in model.modules() if type(m).__name__ in names]


def wrap(model: torch.nn.Module, info: DistInfo, *, dtype: str = "float32", frozen: bool = False) -> torch.nn.Module:
    """DDP or FSDP2 around the model (a frozen reference is sharded under FSDP and left alone under DDP)."""
    if info.mode == "ddp" and not frozen:
        from torch.nn.parallel import DistributedDataParallel

        ids = [info.device.index] if info.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    if info.mode == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = init_device_mesh(info.device.type, (info.world,))
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
            if dtype == "bfloat16" else MixedPrecisionPolicy()
        for layer in _layers(model):
            fully_shard(layer, mesh=mesh, mp_policy=mp)
        fully_shard(model, mesh=mesh, mp_policy=mp)
    return model


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, torch.nn.Module) else model


def full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> tuple[dict, dict | None]:
    """Full (unsharded, CPU) model and optimizer state dicts, keyed by parameter name. Collective."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    inner = unwrap(model)
    weights = get_model_state_dict(inner, options=opts)
    # tied parameters (embeddings = LM head) come out under every name; keep the first, as save_pretrained does
    first: dict[int, str] = {}
    for name, p in inner.named_parameters(remove_duplicate=False):
        first.setdefault(id(p), name)
    tied = {name for name, p in inner.named_parameters(remove_duplicate=False) if first[id(p)] != name}
    weights = {k: v for k, v in weights.items() if k not in tied}
    optim = get_optimizer_state_dict(inner, optimizer, options=opts) if optimizer is not None else None
    return weights, optim


def load_optimizer(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a `full_state` optimizer dict into a (possibly sharded) optimizer. Collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(unwrap(model), optimizer, optim_state_dict=state,
                             options=StateDictOptions(full_state_dict=True))


def grad_norm_value(norm: torch.Tensor) -> torch.Tensor:
    """clip_grad_norm_ returns a DTensor under FSDP; the full value is the same on every rank."""
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


def gather_rows(values: np.ndarray, idx: np.ndarray, n: int, info: DistInfo) -> np.ndarray:
    """Assemble per-rank results `values` (for rows `idx`) into the full length-n array on every rank."""
    full = np.zeros((n, *values.shape[1:]), dtype=values.dtype)
    if info.world == 1:
        full[idx] = values
        return full
    parts: list[Any] = [None] * info.world
    dist.all_gather_object(parts, (idx, values))
    for i, v in parts:
        full[i] = v
    return full


def broadcast(obj: Any, info: DistInfo) -> Any:
    """Rank 0's `obj` on every rank."""
    if info.world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.world > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier(info: DistInfo) -> None:
    if info.world > 1 and dist.is_initialized():
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    """The end of a run: every rank waits for the others (the group itself lives until the process exits)."""
    barrier(info)


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
