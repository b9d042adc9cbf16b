"""Data parallelism across processes started by ``torchrun`` (one per GPU; gloo on CPU, NCCL on CUDA).

Every process holds the whole model, reads the whole data and walks the same shuffled batches; each takes a
contiguous share of every batch's rows (``batching.shard_bounds``). A step then:

1. embeds its own share's queries and passages (one pass, or GradCache chunks),
2. all-gathers every process's embeddings into the whole batch, its own share kept in its autograd graph and the
   others' as constants (``gather_rows``), so every query is scored against every passage of the *global* batch,
3. computes the global batch's loss (the same value on every process) and back-propagates: each process gets
   exactly the gradient that flows through its own share's embeddings,
4. sums the gradients over processes (``all_reduce_grads``): the total is the single-process gradient of the
   global batch, so N processes take the same optimizer steps one process would (up to float rounding and each
   process's own dropout masks).

Why not ``DistributedDataParallel``: its reducer expects one forward per backward, while a step here runs several
forward passes (length buckets, GradCache chunks) before one backward, and the all-gathered loss needs a *sum* of
gradients where DDP averages. One flattened all-reduce after backward is the same communication DDP does, done
once per step.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    """This process's place in the data-parallel group (world_size 1: a plain single-process run)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # True when this object initialised the process group (and so destroys it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, backend: str | None = None, timeout_s: float = 1800.0) -> Dist:
        """Join the group ``torchrun`` describes (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR/PORT); else single."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        owns = False
        if not dist.is_initialized():
            if backend is None:
                backend = "nccl" if torch.cuda.is_available() else "gloo"
            if backend == "nccl":
                torch.cuda.set_device(local_rank)
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
            owns = True
        return cls(rank=rank, world_size=world, local_rank=local_rank, owns_group=owns)

    def device(self) -> torch.device | None:
        """This process's GPU under torchrun with CUDA; None lets the encoder choose (single process)."""
        if self.world_size > 1 and torch.cuda.is_available():
            return torch.device("cuda", self.local_rank)
        return None

    def gather_rows(self, local: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        """Every process's rows [sizes[r], D] concatenated in rank order; this process's rows keep their graph.

        ``sizes`` is known on every process (all see the whole batch), so no size exchange is needed; rows are padded
        to the largest share for the collective and cut back after.
        """
        if self.world_size == 1:
            return local
        width, biggest = local.shape[1], max(sizes)
        padded = local.new_zeros((biggest, width))
        padded[: local.shape[0]] = local.detach()
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded.contiguous())
        rows = [part[:n] for part, n in zip(parts, sizes, strict=True)]
        rows[self.rank] = local  # the only slice gradients flow back through
        return torch.cat(rows)

    def all_reduce_grads(self, model: torch.nn.Module) -> None:
        """Sum every parameter's gradient over processes, in one flattened buffer (a missing gradient counts 0)."""
        if self.world_size == 1:
            return
        params = [p for p in model.parameters() if p.requires_grad]
        for p in params:
            if p.grad is None:  # e.g. a process whose share of a last, short batch was empty
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for p in params:
            n = p.grad.numel()
            p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
            offset += n

    def sum(self, value: float, device: torch.device) -> float:
        """``value`` summed over processes (the same result on every process)."""
        if self.world_size == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return float(t.item())

    def gather_objects(self, obj: object) -> list[object]:
        """Every process's ``obj``, in rank order (pickled; for small things such as RNG states)."""
        if self.world_size == 1:
            return [obj]
        out: list[object] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
