"""The generic training loop shared by every fine-tuning task (STT, TTS, voices).

A task (:class:`TrainTask`) owns the data and the loss; the loop owns everything else:

* **sampling**: step ``s`` takes the global items ``[s * B, (s + 1) * B)`` of an endless
  sequence of per-epoch permutations drawn from ``seed``. Rank ``r`` of ``W`` processes takes
  every ``W``-th of them and splits its share into ``grad_accum`` micro-batches. So a resumed run
  and a run on several processes see exactly the items of one process with the same global
  batch;
* **the loss scale**: a task returns the *sum* of its losses and the number of targets; the loop
  divides the accumulated gradients by the number of targets of the whole global batch (summed
  over micro-batches and processes), so the update does not depend on how the batch is split;
* AdamW, linear warm-up then cosine decay, gradient clipping, bf16 autocast, gradient
  checkpointing of the transformer layers, DDP (``torch.distributed``, any backend) or, with
  ``fsdp``, FSDP2 (``fully_shard`` per transformer layer, then the root: parameters, gradients
  and optimizer state sharded over the processes; at the end the full weights are gathered
  into rank 0's CPU memory, which writes the artefacts);
* progress bar (loss, learning rate, audio seconds per second), metrics as JSON lines in
  ``metrics.jsonl`` (and TensorBoard when installed), a validation hook every ``eval_every``
  steps, a resumable training state every ``save_every`` steps.

The loop never writes the task's artefacts: :meth:`TrainTask.save` does, at the end.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from dsm.models.lora_loading import DEFAULT_B_LR_RATIO

__all__ = [
    "LossSum",
    "TrainConfig",
    "TrainResult",
    "TrainTask",
    "enable_gradient_checkpointing",
    "train",
]

STATE_DIR = "train_state"  # resumable state inside the output directory
METRICS_FILE = "metrics.jsonl"
PRECISIONS = ("bf16", "fp32")


@dataclass
class LossSum:
    """What a task returns for one micro-batch.

    ``total``: the **sum** of the per-target losses (a scalar tensor with a graph); ``count``:
    how many targets it sums (the loop divides by the count of the whole global batch);
    ``audio_seconds``: audio in the micro-batch (throughput); ``metrics``: extra sums to log,
    divided by ``count`` too (e.g. a second loss).
    """

    total: torch.Tensor
    count: float
    audio_seconds: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)


class TrainTask(Protocol):
    """A fine-tuning task, as the loop sees it.

    ``model`` is the module trained: its parameters with ``requires_grad`` are optimized (and
    the only ones saved in the resumable state); it is wrapped in DDP on several processes, or
    sharded in place by FSDP (``TrainConfig.fsdp``; then it must have ``transformer.layers``,
    and it holds full, plain CPU parameters again on rank 0 when :meth:`save` is called).
    """

    model: nn.Module

    def __len__(self) -> int:
        """Number of training items."""
        ...

    def collate(self, indices: Sequence[int]) -> Any:
        """The micro-batch of the items ``indices`` (on the model's device)."""
        ...

    def loss(self, model: nn.Module, batch: Any) -> LossSum:
        """Forward ``batch`` through ``model`` (``self.model`` or its DDP wrapper: call it,
        not ``self.model``, so that DDP sees the forward) and return the summed loss."""
        ...

    def validate(self) -> dict[str, float]:
        """Validation metrics of the current weights (empty if there is no validation set).
        Called on rank 0 only, in eval mode without gradients."""
        ...

    def save(self, directory: Path) -> list[Path]:
        """Write the task's artefacts (adapter, checkpoint) into ``directory``; return the
        paths written. Called on rank 0 only, at the end of training."""
        ...


@dataclass
class TrainConfig:
    """Settings of one training run (the ``dsm finetune`` options)."""

    out_dir: Path
    steps: int = 1000
    lr: float = 1e-4
    batch_size: int = 8  # items per optimizer step, over all processes
    grad_accum: int = 1  # micro-batches per process and step
    warmup_steps: int | None = None  # default: 5% of the steps
    weight_decay: float = 0.1
    # LoRA+: the ``lora_B`` matrices' rate over ``lr`` (see :func:`param_groups`); 1.0 for plain
    # LoRA. No effect on full fine-tuning.
    lora_b_lr_ratio: float = DEFAULT_B_LR_RATIO
    max_grad_norm: float = 1.0
    precision: str = "fp32"
    gradient_checkpointing: bool = False
    seed: int = 0
    eval_every: int = 0  # 0: validate at the end only
    save_every: int = 0  # 0: no resumable training state at all
    resume: bool = False
    progress: bool = True
    tensorboard: bool = True  # when the package is installed
    fsdp: bool = False  # shard with FSDP2 instead of replicating with DDP (several processes)

    def check(self, world_size: int = 1) -> None:
        """Raise ``ValueError`` for settings that cannot run."""
        if self.fsdp:
            if world_size < 2:
                raise ValueError(
                    "--fsdp shards the model over several processes, but this is a single "
                    "process: launch with 'torchrun --nproc-per-node N -m dsm finetune ...' "
                    "(N >= 2), or drop --fsdp"
                )
            if self.resume or self.save_every:
                raise ValueError(
                    "--resume and --save-every are not supported with --fsdp (the resumable "
                    "state holds unsharded weights and optimizer moments); drop them, or "
                    "train without --fsdp"
                )
            if self.eval_every:
                raise ValueError(
                    "--eval-every is not supported with --fsdp (validation needs the whole "
                    "model on one process); evaluate the saved adapter or checkpoint afterwards"
                )
        if self.steps <= 0:
            raise ValueError(f"--steps must be positive, got {self.steps}")
        if self.lr <= 0:
            raise ValueError(f"--lr must be positive, got {self.lr}")
        if self.lora_b_lr_ratio <= 0:
            raise ValueError(f"--lora-b-lr-ratio must be positive, got {self.lora_b_lr_ratio}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.grad_accum <= 0:
            raise ValueError(f"--grad-accum must be positive, got {self.grad_accum}")
        per_rank, rest = divmod(self.batch_size, world_size)
        if self.batch_size <= 0 or rest or per_rank < self.grad_accum:
            raise ValueError(
                f"--batch-size {self.batch_size} must be a positive multiple of the number of "
                f"processes ({world_size}) with at least --grad-accum ({self.grad_accum}) items "
                "per process"
            )


@dataclass
class TrainResult:
    """What a run did: its last step, last loss, validation metrics and artefacts."""

    steps: int
    loss: float
    validation: dict[str, float]
    artefacts: list[Path]
    audio_seconds_per_second: float
    peak_memory_bytes: int | None


# -- sampling -----------------------------------------------------------------------------------


def step_items(num_items: int, batch_size: int, step: int, seed: int) -> list[int]:
    """The global items of optimizer step ``step`` (0-based): see the module docstring."""
    if num_items <= 0:
        raise ValueError("the training set is empty")
    items: list[int] = []
    position = step * batch_size
    while len(items) < batch_size:
        epoch, offset = divmod(position, num_items)
        order = list(range(num_items))
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        take = min(batch_size - len(items), num_items - offset)
        items += order[offset : offset + take]
        position += take
    return items


def micro_batches(items: list[int], rank: int, world_size: int, accum: int) -> list[list[int]]:
    """This process's share of a step's items, cut into ``accum`` micro-batches."""
    mine = items[rank::world_size]
    size = -(-len(mine) // accum)
    return [mine[i : i + size] for i in range(0, len(mine), size)]


def lr_at(step: int, config: TrainConfig) -> float:
    """Learning rate of ``step``: linear warm-up, then cosine decay to 0 at ``config.steps``."""
    warmup = config.warmup_steps
    if warmup is None:
        warmup = max(1, round(0.05 * config.steps))
    if step < warmup:
        return config.lr * (step + 1) / warmup
    span = max(1, config.steps - warmup)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / span)))


# -- gradient checkpointing ---------------------------------------------------------------------


def enable_gradient_checkpointing(layers: Sequence[nn.Module]) -> None:
    """Recompute each layer's activations in the backward pass (less memory, ~30% more time).

    The layers keep their names (nothing is wrapped), so checkpoints and state dicts are
    unchanged; only ``forward`` of each instance is replaced.
    """
    from torch.utils.checkpoint import checkpoint

    for layer in layers:
        plain = layer.forward

        def forward(*args: Any, _plain: Callable[..., Any] = plain, **kwargs: Any) -> Any:
            if not torch.is_grad_enabled():
                return _plain(*args, **kwargs)
            return checkpoint(_plain, *args, use_reentrant=False, **kwargs)

        layer.forward = forward


# -- distributed --------------------------------------------------------------------------------


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process (``(0, 1)`` without ``torch.distributed``)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_reduce(values: list[float]) -> list[float]:
    import torch.distributed as dist

    if world()[1] == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor)
    return [float(v) for v in tensor.cpu()]


# -- state --------------------------------------------------------------------------------------


def _trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


LORA_B_SUFFIX = "lora_B.weight"


def param_groups(model: nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    """The optimizer's parameter groups: every trainable parameter at the schedule's rate,
    except LoRA's ``B`` matrices at ``config.lora_b_lr_ratio`` times it (``lr_scale``).

    Why: ``B`` starts at zero, so early on the update ``B @ A`` grows only as fast as ``B``
    does; with one rate for both, an adapter trails full fine-tuning by several times on the
    same data. LoRA+ gives ``B`` a larger rate (16x is the paper's default), which closes
    that gap without raising ``A``'s rate (``A`` multiplies every input, so it is the
    sensitive one)."""
    named = _trainable(model)
    b = [p for n, p in named.items() if n.endswith(LORA_B_SUFFIX)]
    rest = [p for n, p in named.items() if not n.endswith(LORA_B_SUFFIX)]
    groups: list[dict[str, Any]] = []
    if rest:
        groups.append({"params": rest, "lr_scale": 1.0})
    if b:
        groups.append({"params": b, "lr_scale": config.lora_b_lr_ratio})
    return groups


def _save_state(
    directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer, step: int
) -> None:
    """Write the resumable state atomically (a new directory renamed over the old one)."""
    tmp = directory.with_name(directory.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    params = {name: p.detach().cpu() for name, p in _trainable(model).items()}
    torch.save(
        {"step": step, "params": params, "optimizer": optimizer.state_dict()}, tmp / "state.pt"
    )
    old = directory.with_name(directory.name + ".old")
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    if old.exists():
        (old / "state.pt").unlink()
        old.rmdir()


def _shard(model: nn.Module, device: torch.device, world_size: int) -> None:
    """FSDP2 in place: ``fully_shard`` each layer of ``model.transformer.layers``, then the
    root (the remaining weights: embeddings, heads, depformer). Parameters become sharded
    ``DTensor``s; frozen ones (LoRA's base weights) are sharded too."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    layers = getattr(getattr(model, "transformer", None), "layers", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise ValueError(
            f"--fsdp needs a model with transformer.layers; {type(model).__name__} has none"
        )
    mesh = init_device_mesh(device.type, (world_size,))
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    if world()[0] == 0:
        from torch.distributed.tensor import DTensor

        total = sum(p.numel() for p in model.parameters())
        local = sum(
            (p.to_local() if isinstance(p, DTensor) else p).numel() for p in model.parameters()
        )
        print(
            f"dsm: FSDP over {world_size} processes: rank 0 holds {local:,} of the "
            f"{total:,} weights",
            file=sys.stderr,
        )


def _unshard_to_rank0(model: nn.Module) -> None:
    """Undo :func:`_shard` for saving: every process takes part in gathering each parameter in
    full (one at a time, in the same order), rank 0 keeping them in CPU memory; rank 0 then puts
    them back into ``model`` as plain parameters and removes FSDP from the modules (class, hooks,
    state), so that the task's ``save`` (adapter, checkpoint, ``copy.deepcopy`` for ``--merge``)
    sees an ordinary module. The other ranks' ``model`` stays sharded and must not be used any
    more.

    Parameters are gathered by their module paths (``named_parameters``), not through the state
    dict: the attention's state-dict hooks rename keys (``in_proj.weight`` is stored as the
    checkpoint's ``in_proj_weight``), which ``torch.distributed.checkpoint``'s
    ``get_model_state_dict`` cannot map back to parameters.
    """
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    lead = world()[0] == 0
    full: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, param in model.named_parameters():
            value = param.detach()
            if isinstance(value, DTensor):
                value = value.full_tensor()  # collective
            if lead:
                full[name] = value.cpu()
            del value
    if not lead:
        return
    for module in model.modules():
        if isinstance(module, FSDPModule):
            _strip_fsdp(module)
    for name, param in list(model.named_parameters()):
        owner_name, _, attr = name.rpartition(".")
        owner = model.get_submodule(owner_name)
        owner._parameters[attr] = nn.Parameter(full.pop(name), requires_grad=param.requires_grad)
    left = [n for n, p in model.named_parameters() if isinstance(p, DTensor)]
    if left or full:
        raise RuntimeError(
            f"--fsdp: could not unshard the model for saving: {left[:5]} still sharded, "
            f"{list(full)[:5]} gathered but not found"
        )


def _strip_fsdp(module: nn.Module) -> None:
    """Turn a ``fully_shard``-ed module back into its own class, without FSDP's hooks and
    state (``fully_shard`` swaps the class for ``FSDP<Class>(FSDPModule, Class)``)."""
    from torch.distributed.fsdp import FSDPModule

    cls = type(module)
    plain = [
        base
        for base in cls.__bases__
        if issubclass(base, nn.Module) and not issubclass(base, FSDPModule)
    ]
    if len(plain) != 1:
        raise RuntimeError(f"--fsdp: cannot unwrap {cls.__name__} (bases {cls.__bases__})")
    module.__class__ = plain[0]

    def fsdp_hook(hook: Any) -> bool:
        target = getattr(hook, "hook", hook)  # load_state_dict pre-hooks come wrapped
        owner = getattr(target, "__self__", None)
        text = f"{getattr(target, '__qualname__', '')} {type(owner).__module__ if owner else ''}"
        return "fsdp" in text.lower()

    for hooks in (
        module._forward_pre_hooks,
        module._forward_hooks,
        module._state_dict_pre_hooks,
        module._state_dict_hooks,
        module._load_state_dict_pre_hooks,
        module._load_state_dict_post_hooks,
    ):
        for handle in [k for k, h in hooks.items() if fsdp_hook(h)]:
            del hooks[handle]
            module._forward_hooks_with_kwargs.pop(handle, None)
            module._forward_pre_hooks_with_kwargs.pop(handle, None)
            module._forward_hooks_always_called.pop(handle, None)
    for key in [k for k in vars(module) if k.startswith("__composable_api_state_key")]:
        delattr(module, key)
    for key in ("_is_fsdp_managed_module", "_fsdp_use_orig_params"):
        module.__dict__.pop(key, None)


def _load_state(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    path = directory / "state.pt"
    if not path.is_file():
        raise FileNotFoundError(
            f"--resume: no training state in {directory}; start without --resume"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    params = _trainable(model)
    if set(state["params"]) != set(params):
        raise ValueError(
            f"--resume: the state in {directory} was saved with other trainable parameters "
            "(a different --lora-rank / --full or model); start a new output directory"
        )
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(state["params"][name])
    optimizer.load_state_dict(state["optimizer"])
    return int(state["step"])


# -- metrics ------------------------------------------------------------------------------------


class _Metrics:
    """JSON lines (and TensorBoard scalars when installed) on rank 0."""

    def __init__(self, out_dir: Path, enabled: bool, tensorboard: bool, append: bool) -> None:
        self.file = None
        self.writer: Any = None
        if not enabled:
            return
        self.file = open(out_dir / METRICS_FILE, "a" if append else "w", encoding="utf-8")  # noqa: SIM115
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                return
            self.writer = SummaryWriter(str(out_dir / "tensorboard"))

    def log(self, step: int, values: dict[str, float]) -> None:
        if self.file is not None:
            self.file.write(json.dumps({"step": step, **values}) + "\n")
            self.file.flush()
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.writer is not None:
            self.writer.close()


def _progress(total: int, start: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, unit="step", file=sys.stderr, dynamic_ncols=True)


def _peak_memory(device: torch.device) -> int | None:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        import resource

        # ru_maxrss is in KiB on Linux: the peak resident memory of the process.
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    except (ImportError, OSError):
        return None


# -- the loop -----------------------------------------------------------------------------------


def _autocast(device: torch.device, precision: str) -> AbstractContextManager[Any]:
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def train(task: TrainTask, config: TrainConfig) -> TrainResult:
    """Train ``task.model`` for ``config.steps`` optimizer steps; see the module docstring.

    On several processes (``torchrun``), initialise ``torch.distributed`` first; every process
    calls this with the same task and config. Rank 0 logs, validates and saves.
    """
    rank, world_size = world()
    config.check(world_size)
    model = task.model
    params = list(_trainable(model).values())
    if not params:
        raise ValueError("the model has no trainable parameters")
    device = params[0].device
    if config.fsdp:  # before the optimizer: sharding replaces the parameters
        _shard(model, device, world_size)
        params = list(_trainable(model).values())
    torch.manual_seed(config.seed)
    optimizer = torch.optim.AdamW(
        param_groups(model, config),
        lr=config.lr,
        betas=(0.9, 0.95),
        weight_decay=config.weight_decay,
    )
    out_dir = Path(config.out_dir)
    state_dir = out_dir / STATE_DIR
    start = 0
    if config.resume:
        start = _load_state(state_dir, model, optimizer)
        # The saved groups carry the ratio they were made with; this run's options win.
        for group, fresh in zip(optimizer.param_groups, param_groups(model, config), strict=True):
            group["lr_scale"] = fresh["lr_scale"]
    trained: nn.Module = model
    if world_size > 1 and not config.fsdp:
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        trained = DistributedDataParallel(model, device_ids=ids)
    lead = rank == 0
    if lead:
        out_dir.mkdir(parents=True, exist_ok=True)
    metrics = _Metrics(out_dir, lead, config.tensorboard, append=config.resume)
    bar = _progress(config.steps, start, lead and config.progress)
    audio_total, clock = 0.0, time.monotonic()
    loss_value = float("nan")
    validation: dict[str, float] = {}
    model.train()
    try:
        for step in range(start, config.steps):
            lr = lr_at(step, config)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            items = step_items(len(task), config.batch_size, step, config.seed)
            parts = micro_batches(items, rank, world_size, config.grad_accum)
            local_loss, local_count, local_audio = 0.0, 0.0, 0.0
            extra: dict[str, float] = {}
            for i, part in enumerate(parts):
                batch = task.collate(part)
                # FSDP reduce-scatters every micro-batch into the sharded gradients.
                sync = i == len(parts) - 1 or world_size == 1 or config.fsdp
                context = nullcontext() if sync else trained.no_sync()  # type: ignore[operator]
                with context, _autocast(device, config.precision):
                    out = task.loss(trained, batch)
                    out.total.float().backward()
                local_loss += float(out.total.detach())
                local_count += out.count
                local_audio += out.audio_seconds
                for key, value in out.metrics.items():
                    extra[key] = extra.get(key, 0.0) + value
            keys = sorted(extra)
            totals = _all_reduce([local_loss, local_count, local_audio, *(extra[k] for k in keys)])
            loss_sum, count, audio = totals[0], max(totals[1], 1.0), totals[2]
            # DDP and FSDP average gradients over processes; this makes them the global-batch
            # mean.
            scale = world_size / count
            for p in params:
                if p.grad is not None:
                    p.grad.mul_(scale)
            norm = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            grad_norm = float(_full(norm))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss_value = loss_sum / count
            audio_total += audio
            elapsed = time.monotonic() - clock
            speed = audio_total / elapsed if elapsed > 0 else 0.0
            row = {"loss": loss_value, "lr": lr, "grad_norm": grad_norm, "audio_s_per_s": speed}
            row.update({k: v / count for k, v in zip(keys, totals[3:], strict=True)})
            done = step + 1
            if lead and config.eval_every and done % config.eval_every == 0 and done < config.steps:
                row.update(_validate(task, model))
            metrics.log(done, row)
            if bar is not None:
                bar.set_postfix_str(f"loss {loss_value:.3f}, lr {lr:.2e}, {speed:.1f} s audio/s")
                bar.update(1)
            if config.save_every and done % config.save_every == 0 and done < config.steps:
                if lead:
                    _save_state(state_dir, model, optimizer, done)
                _barrier()
        artefacts: list[Path] = []
        if config.fsdp:
            _unshard_to_rank0(model)  # collective; rank 0 gets plain CPU weights
        if lead:
            # FSDP: rank 0's weights are on the CPU now, and the model may not fit one device.
            validation = {} if config.fsdp else _validate(task, model)
            if validation:
                metrics.log(config.steps, validation)
            if config.save_every:  # the final state too (optimizer moments: 3x the weights)
                _save_state(state_dir, model, optimizer, config.steps)
            artefacts = task.save(out_dir)
        _barrier()
    finally:
        if bar is not None:
            bar.close()
        metrics.close()
    elapsed = time.monotonic() - clock
    return TrainResult(
        steps=config.steps,
        loss=loss_value,
        validation=validation,
        artefacts=artefacts,
        audio_seconds_per_second=audio_total / elapsed if elapsed > 0 else 0.0,
        peak_memory_bytes=_peak_memory(device),
    )


def _validate(task: TrainTask, model: nn.Module) -> dict[str, float]:
    model.eval()
    try:
        with torch.no_grad():
            values = task.validate()
    finally:
        model.train()
    return {f"val_{k}": v for k, v in values.items()}


def _full(tensor: torch.Tensor) -> torch.Tensor:
    """A plain tensor (the gradient norm is a replicated ``DTensor`` under FSDP)."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def _barrier() -> None:
    import torch.distributed as dist

    if world()[1] > 1:
        dist.barrier()


def init_distributed() -> tuple[int, int]:
    """Initialise ``torch.distributed`` when launched by ``torchrun`` (``WORLD_SIZE`` > 1):
    NCCL on CUDA, gloo on CPU. Returns ``(rank, world_size)``."""
    import torch.distributed as dist

    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return world()
