"""The sync sentinel: on a CPU run, what in a training or validation step would stall a GPU, and where.

On an accelerator the host runs ahead of the device, queueing kernels. A step stalls it when the host

* **reads a device value** (``.item()``, ``bool(t)``, ``float(t)``, ``int(t)``, an f-string, ``.tolist()``,
  ``.numpy()``, ``.cpu()``, ``.to("cpu")``, ``torch.equal``): it waits until every queued kernel has run;
* runs an op whose **output shape depends on values** (``nonzero``, ``masked_select``, ``unique``, indexing
  with a boolean mask, ``repeat_interleave`` without ``output_size``, ``bincount``, ``masked_fill``/``fill_``
  with a device tensor as the value): the same wait, inside the op;
* **builds a device tensor from Python data** (``torch.tensor(x, device=d)``, ``torch.as_tensor(list, ...)``,
  Lightning's ``self.log`` of a Python number): a copy from pageable host memory, which waits for the queue;
* **copies a host tensor to the device** (``host.to(device)``): the same copy.

On CPU nothing waits, but the same calls happen. :class:`SyncSentinel` sees them with a
``TorchDispatchMode`` (every aten op of its thread: ``aten._local_scalar_dense`` is what ``.item()``, ``bool``,
``float``, ``int`` and formatting reach; ``aten.lift_fresh`` is what ``torch.tensor(data)`` and
``torch.as_tensor(data)`` reach) and a few patched Python methods for what never reaches the dispatcher on CPU
(``Tensor.tolist``, ``Tensor.numpy``, ``Tensor.cpu``, ``Tensor.to``; ``torch.tensor``/``as_tensor``/``from_numpy``,
to see whether a device was asked for). Each event keeps a short location: the innermost pacofr line (else the
innermost line outside torch) and the innermost line outside torch (``via``).

**Host or device.** On a CPU run every tensor is a CPU tensor, but on a GPU some are host tensors on purpose
(host copies made without waiting, counters, the workers' batch before its transfer), and reading those costs
nothing. The sentinel keeps track: a tensor is *host* when it is in the batch handed to
``on_before_batch_transfer``, built from Python data without a device (``torch.tensor(x)``), copied with
``.to("cpu")``, or computed from host tensors only; anything else (parameters, the batch after its transfer,
what is computed from them, factories) counts as a device tensor. A read of a host tensor is recorded as
``host_read`` (free); a host tensor built from Python data as ``host_from_python`` (no copy, but still work done
per step: pacofr's steps make none outside documented exceptions).

**Python scalars in ops** (``x * 2.0``, ``torch.where(m, 1.0, 0.0)``) are not counted: a CUDA kernel takes them
as arguments (or fills a device tensor with them), with no copy and no wait.

**Not seen**: other threads and processes (``TorchDispatchMode`` is per thread: data-loader workers and CUDA's
own threads are out of scope); ``torch.cuda.synchronize`` and events; a device-to-host copy written as
``x.to(some_device_variable)`` (a no-op on CPU, so nothing to see); and code paths that only run on CUDA
(``if t.is_cuda: ...``). So the sentinel finds the per-step syncs of the path a GPU run takes as far as that path
is the CPU one; it is a floor, not a proof.

:class:`SyncSentinelCallback` scopes it to Lightning's steps: one *train* scope per batch (Lightning's
``advance``: fetching the batch, its transfer, every callback's ``on_train_batch_start``/``_end``, the
step, backward, the optimiser, and the logger write of ``log_every_n_steps``) and one *validation* scope per
validation batch (``_evaluation_step``). Add it to a run's ``trainer.callbacks``
(``pacofr.training.sync_sentinel.SyncSentinelCallback`` with ``report: <path>``) and read the JSON report with
:meth:`SyncSentinel.load`; :func:`unexplained` leaves out what a list of :class:`Allowance` explains (e.g.
logging every N steps), :func:`format_counts` prints counts per location per step.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.utils._pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.weak import WeakTensorKeyDictionary

# --- what is recorded -----------------------------------------------------------------------------------------
READ = "read"  # a device value into Python: waits for the device's queue
SYNC = "sync"  # an op whose output shape depends on values: waits inside the op
FROM_PYTHON = "from_python"  # a device tensor built from Python data: a copy from pageable memory
TO_DEVICE = "to_device"  # a host tensor copied to the device
HOST_FROM_PYTHON = "host_from_python"  # a host tensor built from Python data: no copy, but per-step work
HOST_READ = "host_read"  # a host tensor read into Python: free
# what a step must not do outside documented exceptions (``host_read`` is free)
CHECKED_KINDS: tuple[str, ...] = (READ, SYNC, FROM_PYTHON, TO_DEVICE, HOST_FROM_PYTHON)

aten = torch.ops.aten
_READ_OPS = {aten._local_scalar_dense.default, aten.equal.default}
# output shape from values: the host waits for the count before it can allocate the output
_SHAPE_FROM_VALUES = {
    aten.nonzero,
    aten.masked_select,
    aten.unique_consecutive,
    aten.unique_dim,
    aten._unique,
    aten._unique2,
    aten.bincount,
}
_BOOL_INDEXED = {aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_}
_REPEAT_INTERLEAVE = aten.repeat_interleave
# a 0-dim device tensor as the fill value: CUDA reads it with .item() (pytorch/pytorch#190512, #109115)
_VALUE_READ = {aten.masked_fill.Tensor: 2, aten.masked_fill_.Tensor: 2, aten.fill_.Tensor: 1, aten.fill.Tensor: 1}


@dataclass(frozen=True)
class SyncEvent:
    kind: str  # one of the kinds above
    op: str  # the aten op or the Python call
    where: str  # the innermost pacofr line inside Lightning's loops (not the CLI that started them), else ``via``
    via: str  # the innermost line outside torch
    stage: str  # the scope's stage: "train" | "validation" | whatever ``watch`` was given
    step: int  # the trainer's global step when the scope began
    scope: int  # index into ``SyncSentinel.scopes``


@dataclass(frozen=True)
class Scope:
    stage: str
    step: int


@dataclass(frozen=True)
class Allowance:
    """A documented exception: events matching it are explained, not failures.

    ``where``, ``via``, ``op``: substrings of the event's fields (None: any); ``kinds``, ``stages``: which
    events; ``steps``: a predicate on the scope's global step (None: any step), e.g. the logging steps;
    ``reason``: why it is acceptable, for whoever reads the list."""

    reason: str
    where: str | None = None
    via: str | None = None
    op: str | None = None
    kinds: tuple[str, ...] = CHECKED_KINDS
    stages: tuple[str, ...] = ("train", "validation")
    steps: Callable[[int], bool] | None = None

    def covers(self, event: SyncEvent) -> bool:
        fields = ((self.where, event.where), (self.via, event.via), (self.op, event.op))
        return (
            event.kind in self.kinds
            and event.stage in self.stages
            and all(want is None or want in got for want, got in fields)
            and (self.steps is None or self.steps(event.step))
        )


# --- locations ------------------------------------------------------------------------------------------------
_THIS_FILE = os.path.abspath(__file__)
_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep
_PACOFR_DIR = os.path.dirname(os.path.dirname(_THIS_FILE)) + os.sep  # .../src/pacofr/
# Lightning's loops and hook calls: a pacofr frame outside them (the CLI that started the fit) is not the place to
# blame for what Lightning does itself (the batch transfer, the progress bar, the logger write)
_LIGHTNING_LOOPS = tuple(
    os.sep + os.path.join("lightning", "pytorch", *part)
    for part in (("loops", ""), ("trainer", "call.py"), ("trainer", "trainer.py"))
)


def _short(filename: str, line: int) -> str:
    path = os.path.abspath(filename)
    if path.startswith(_PACOFR_DIR):
        return f"pacofr/{path[len(_PACOFR_DIR) :]}:{line}"
    parts = Path(path).parts
    for anchor in ("site-packages", "dist-packages"):
        if anchor in parts:
            return f"{'/'.join(parts[parts.index(anchor) + 1 :])}:{line}"
    try:
        return f"{os.path.relpath(path)}:{line}"
    except ValueError:  # another drive (Windows)
        return f"{path}:{line}"


def _locate() -> tuple[str, str]:
    """(where, via) of the code that triggered the current event (see ``SyncEvent``)."""
    frame = sys._getframe(1)
    via = where = None
    while frame is not None:
        name = os.path.abspath(frame.f_code.co_filename)
        if name != _THIS_FILE and not name.startswith(_TORCH_DIR):
            if via is None:
                via = _short(name, frame.f_lineno)
            if name.startswith(_PACOFR_DIR):
                where = _short(name, frame.f_lineno)
                break
            if any(part in name for part in _LIGHTNING_LOOPS):
                break  # Lightning's own work (the batch transfer, the progress bar...): ``via`` says where
        frame = frame.f_back
    via = via or "?"
    return where or via, via


# --- the sentinel ---------------------------------------------------------------------------------------------
def _tensors(obj: Any) -> list[torch.Tensor]:
    return [t for t in pytree.tree_leaves(obj) if isinstance(t, torch.Tensor)]


def _accelerator_in_use() -> bool:
    """A CUDA run (the sentinel also runs there, e.g. in bench/train_step.py): CPU tensors are host tensors."""
    return torch.cuda.is_available() and torch.cuda.is_initialized()


def _literal_cpu(device: Any) -> bool:
    """A device written as the string "cpu": host on purpose."""
    return isinstance(device, str) and device.split(":")[0] == "cpu"


class _Mode(TorchDispatchMode):
    def __init__(self, sentinel: SyncSentinel) -> None:
        super().__init__()
        self.sentinel = sentinel

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 - torch's signature
        kwargs = kwargs or {}
        sentinel = self.sentinel
        inputs = _tensors((args, kwargs))
        all_host = bool(inputs) and all(sentinel.is_host(t) for t in inputs)
        if not sentinel._quiet:
            kind = self._classify(func, args, kwargs, inputs, all_host)
            if kind is not None:
                sentinel._record(kind, str(func))
        out = func(*args, **kwargs)
        if all_host:  # computed from host tensors only: a host tensor on a GPU too
            sentinel.mark_host(out)
        return out

    def _classify(self, func, args, kwargs, inputs: list[torch.Tensor], all_host: bool) -> str | None:  # noqa: ANN001
        packet = func.overloadpacket
        if func in _READ_OPS:
            return HOST_READ if all_host else READ
        if func is aten.lift_fresh.default:  # torch.tensor(...) from code the Python patches did not see
            # on a CPU run its device says nothing: counted as the device's
            return HOST_FROM_PYTHON if all_host and _accelerator_in_use() else FROM_PYTHON
        if all_host:
            return None  # host work: nothing waits for the device
        if packet in _SHAPE_FROM_VALUES:
            return SYNC
        if packet is _REPEAT_INTERLEAVE and isinstance(args[0], torch.Tensor) and kwargs.get("output_size") is None:
            return SYNC
        if packet in _BOOL_INDEXED and len(args) > 1:
            indices = args[1] if isinstance(args[1], (list, tuple)) else ()
            if any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices):
                return SYNC
        position = _VALUE_READ.get(func)
        if position is not None and len(args) > position and isinstance(args[position], torch.Tensor):
            return None if self.sentinel.is_host(args[position]) else SYNC
        return None


@dataclass
class SyncSentinel:
    """Records the events of the module docstring while :meth:`watch` is active (in the watching thread)."""

    events: list[SyncEvent] = field(default_factory=list)
    scopes: list[Scope] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._host: WeakTensorKeyDictionary = WeakTensorKeyDictionary()
        self._scope: int | None = None
        self._thread: int | None = None
        self._quiet = 0  # > 0 inside a patched call: its own aten ops are not separate events
        # ``torch.device`` objects read off host tensors in this scope (kept alive, so their ids stay theirs)
        self._host_devices: dict[int, torch.device] = {}

    # host tensors
    def mark_host(self, obj: Any) -> None:
        """Take every tensor in ``obj`` for a host tensor (e.g. the workers' batch before its transfer)."""
        for t in _tensors(obj):
            self._host[t] = True

    def mark_device(self, obj: Any) -> None:
        """Take every tensor in ``obj`` for a device tensor (e.g. the batch after its transfer: on CPU the same
        objects)."""
        for t in _tensors(obj):
            self._host.pop(t, None)

    def is_host(self, t: torch.Tensor) -> bool:
        # on a GPU run a CPU tensor is a host tensor, whatever its history (``is_cpu``: not the patched ``device``)
        return t in self._host or (t.is_cpu and _accelerator_in_use())

    def host_target(self, device: Any) -> bool:
        """Whether a ``device`` argument means the host: the string "cpu", or a ``torch.device`` read off a host
        tensor (``x.to(host_tensor.device)``). Any other ``torch.device`` is ambiguous on a CPU run (``cpu`` here,
        ``cuda`` on a GPU) and counts as the device."""
        return _literal_cpu(device) or (isinstance(device, torch.device) and id(device) in self._host_devices)

    # scopes
    @property
    def watching(self) -> bool:
        return self._scope is not None and threading.get_ident() == self._thread

    @contextmanager
    def watch(self, stage: str, step: int) -> Iterator[None]:
        """Record the events of this thread inside the block, as one scope of ``stage`` at ``step``."""
        if self._scope is not None:  # nested (e.g. a validation inside a watched train scope): one scope
            yield
            return
        self.scopes.append(Scope(stage, int(step)))
        self._scope, self._thread = len(self.scopes) - 1, threading.get_ident()
        try:
            with _patched(self), _Mode(self):
                yield
        finally:
            self._scope = self._thread = None
            self._host_devices.clear()

    def _record(self, kind: str, op: str) -> None:
        where, via = _locate()
        scope = self.scopes[self._scope]  # type: ignore[index]
        self.events.append(SyncEvent(kind, op, where, via, scope.stage, scope.step, self._scope))  # type: ignore[arg-type]

    # reports
    def to_json(self) -> dict[str, Any]:
        return {"scopes": [asdict(s) for s in self.scopes], "events": [asdict(e) for e in self.events]}

    def save(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(self.to_json(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> SyncSentinel:
        data = json.loads(Path(path).read_text())
        return cls(events=[SyncEvent(**e) for e in data["events"]], scopes=[Scope(**s) for s in data["scopes"]])


def unexplained(
    events: Iterable[SyncEvent], allowances: Iterable[Allowance] = (), kinds: tuple[str, ...] = CHECKED_KINDS
) -> list[SyncEvent]:
    """The events of ``kinds`` that no allowance covers."""
    allowances = list(allowances)
    return [e for e in events if e.kind in kinds and not any(a.covers(e) for a in allowances)]


def format_counts(sentinel: SyncSentinel, events: Iterable[SyncEvent] | None = None) -> str:
    """One line per (stage, kind, location, op): total count and count per scope of that stage."""
    events = sentinel.events if events is None else list(events)
    per_stage = Counter(s.stage for s in sentinel.scopes)
    counts = Counter((e.stage, e.kind, e.where, e.via, e.op) for e in events)
    scopes: dict[tuple, set[int]] = {}
    for e in events:
        scopes.setdefault((e.stage, e.kind, e.where, e.via, e.op), set()).add(e.scope)
    lines = [f"scopes: {dict(per_stage)}"]
    for key, n in sorted(counts.items()):
        stage, kind, where, via, op = key
        place = where if via == where else f"{where} (via {via})"
        steps = sorted({sentinel.scopes[i].step for i in scopes[key]})
        seen = f"in {len(scopes[key])} of {per_stage[stage]} scopes, steps {','.join(map(str, steps))}"
        lines.append(f"{stage:10s} {kind:16s} {n:4d} ({n / max(1, per_stage[stage]):.2f}/step, {seen})  {place}  {op}")
    return "\n".join(lines)


# --- the Python-level patches ---------------------------------------------------------------------------------
@contextmanager
def _patched(sentinel: SyncSentinel) -> Iterator[None]:
    """``Tensor.tolist/numpy/cpu/to`` and ``torch.tensor/as_tensor/from_numpy`` report to ``sentinel`` while the
    block runs (in the watching thread only; other threads call the originals)."""
    originals: dict[tuple[Any, str], tuple[bool, Any]] = {}

    def patch(owner: Any, name: str, make: Callable[[Any], Any]) -> None:
        original = getattr(owner, name)
        originals[(owner, name)] = (name in owner.__dict__, owner.__dict__.get(name))
        setattr(owner, name, make(original))

    def reader(op: str) -> Callable[[Any], Any]:
        def make(original: Any) -> Any:
            def read(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
                if sentinel.watching and not sentinel._quiet:
                    sentinel._record(HOST_READ if sentinel.is_host(self) else READ, op)
                sentinel._quiet += 1
                try:
                    return original(self, *args, **kwargs)
                finally:
                    sentinel._quiet -= 1

            return read

        return make

    def to(original: Any) -> Any:
        def to_(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if not sentinel.watching or sentinel._quiet:
                return original(self, *args, **kwargs)
            raw = kwargs.get("device", next((a for a in args if isinstance(a, (str, torch.device))), None))
            other = next((a for a in args if isinstance(a, torch.Tensor)), None)  # .to(other): its device
            parsed = dict(kwargs)
            parsed.pop("copy", None)
            device, _, non_blocking, _ = torch._C._nn._parse_to(*args, **parsed)
            to_host = sentinel.host_target(raw) or (other is not None and sentinel.is_host(other))
            host = sentinel.is_host(self)
            if device is not None and host and not to_host:
                sentinel._record(TO_DEVICE, "Tensor.to(device)")
            elif device is not None and not host and to_host and not non_blocking:
                sentinel._record(READ, "Tensor.to('cpu')")
            sentinel._quiet += 1
            try:
                out = original(self, *args, **kwargs)
            finally:
                sentinel._quiet -= 1
            if to_host and out is not self:
                sentinel.mark_host(out)
            elif device is not None and not to_host:
                # On CPU a move to the device returns ``self``; on a GPU the caller goes on with a device copy
                # (``t = t.to(device)``, a module's ``_apply``): take the object for that copy, so the next move
                # of it is not counted again.
                sentinel.mark_device(out)
            # a dtype change alone: the dispatch mode marked the copy from its input
            return out

        return to_

    def builder(op: str, data_arg: bool) -> Callable[[Any], Any]:
        def make(original: Any) -> Any:
            def build(*args: Any, **kwargs: Any) -> Any:
                if not sentinel.watching or sentinel._quiet:
                    return original(*args, **kwargs)
                data = args[0] if args else kwargs.get("data")
                if data_arg and isinstance(data, torch.Tensor):  # as_tensor of a tensor: no Python data
                    return original(*args, **kwargs)
                device = kwargs.get("device")
                host = device is None or sentinel.host_target(device)
                sentinel._record(HOST_FROM_PYTHON if host else FROM_PYTHON, op)
                sentinel._quiet += 1
                try:
                    out = original(*args, **kwargs)
                finally:
                    sentinel._quiet -= 1
                (sentinel.mark_host if host else sentinel.mark_device)(out)
                return out

            return build

        return make

    def device(original: Any) -> Any:
        def get(self: torch.Tensor) -> torch.device:
            value = original.__get__(self)
            if sentinel.watching and sentinel.is_host(self):
                sentinel._host_devices[id(value)] = value
            return value

        return property(get)

    patch(torch.Tensor, "device", device)
    patch(torch.Tensor, "tolist", reader("Tensor.tolist"))
    patch(torch.Tensor, "numpy", reader("Tensor.numpy"))
    patch(torch.Tensor, "cpu", reader("Tensor.cpu"))
    patch(torch.Tensor, "to", to)
    patch(torch, "tensor", builder("torch.tensor", data_arg=False))
    patch(torch, "as_tensor", builder("torch.as_tensor", data_arg=True))
    patch(torch, "from_numpy", builder("torch.from_numpy", data_arg=False))
    try:
        yield
    finally:
        for (owner, name), (had, value) in originals.items():
            if had:
                setattr(owner, name, value)
            else:
                delattr(owner, name)


# --- the Lightning callback -----------------------------------------------------------------------------------
class SyncSentinelCallback(L.Callback):
    """Watches every training batch (Lightning's ``advance``) and validation batch (``_evaluation_step``) of a fit
    with a :class:`SyncSentinel`, and writes its JSON report at the end.

    The batch is taken for host tensors in ``on_before_batch_transfer`` and for device tensors from
    ``on_after_batch_transfer`` on (the data module's hooks, wrapped on the instance). The loops' methods are
    wrapped on their instances in ``setup`` and put back in ``teardown``; they are Lightning 2.x's, and a
    Lightning without them is refused in one line rather than silently watched by nothing.

    Args:
        report: where to write the report (JSON, :meth:`SyncSentinel.load`); None: keep it in ``self.sentinel``.
        stages: which scopes to watch: ``train`` and/or ``validation``.
    """

    def __init__(self, report: str | None = None, stages: tuple[str, ...] = ("train", "validation")) -> None:
        self.report = report
        self.stages = tuple(stages)
        self.sentinel = SyncSentinel()
        self._restore: list[tuple[Any, str]] = []

    def _wrap(self, owner: Any, name: str, wrapper: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
        original = getattr(owner, name, None)
        if original is None:
            raise RuntimeError(f"SyncSentinelCallback: {type(owner).__name__}.{name} is gone (Lightning changed)")
        self._restore.append((owner, name))
        setattr(owner, name, wrapper(original))

    def _scoped(self, stage: str, trainer: L.Trainer) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def wrapper(original: Callable[..., Any]) -> Callable[..., Any]:
            def watched(*args: Any, **kwargs: Any) -> Any:
                with self.sentinel.watch(stage, trainer.global_step):
                    return original(*args, **kwargs)

            return watched

        return wrapper

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        loops = {"fit": trainer.fit_loop.epoch_loop.val_loop, "validate": trainer.validate_loop}
        if stage == "fit" and "train" in self.stages:
            self._wrap(trainer.fit_loop.epoch_loop, "advance", self._scoped("train", trainer))
        if stage in loops and "validation" in self.stages:
            self._wrap(loops[stage], "_evaluation_step", self._scoped("validation", trainer))
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is not None:

            def before(original: Callable[..., Any]) -> Callable[..., Any]:
                def hook(batch: Any, dataloader_idx: int) -> Any:
                    self.sentinel.mark_host(batch)  # what the workers made: host tensors on a GPU run too
                    return original(batch, dataloader_idx)

                return hook

            def after(original: Callable[..., Any]) -> Callable[..., Any]:
                def hook(batch: Any, dataloader_idx: int) -> Any:
                    self.sentinel.mark_device(batch)  # moved by batch_to_device (on CPU: the same objects)
                    return original(batch, dataloader_idx)

                return hook

            self._wrap(datamodule, "on_before_batch_transfer", before)
            self._wrap(datamodule, "on_after_batch_transfer", after)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for owner, name in reversed(self._restore):
            if name in vars(owner):
                delattr(owner, name)  # the instance attribute: the class's method shows through again
        self._restore.clear()
        if self.report is not None and trainer.is_global_zero:
            self.sentinel.save(self.report)
