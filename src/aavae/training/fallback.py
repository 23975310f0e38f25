"""The training step on the best engine that works: CUDA graph, then compiled, then eager.

Compiling and capturing make the step fast and are its fragile parts: a new card, driver or
torch version can break either, in ways no test on another machine shows, and a run must not
end in such an exception. So :class:`FallbackStep` verifies the first :data:`VERIFIED_STEPS`
steps of every engine above eager on a copy of what a step changes (:class:`StepSnapshot`): if
compiling or capturing raises, or the loss is not finite where the engine below gives a finite
one, the copy is put back, one warning names what failed, and the same step runs on the next
engine down (a compile error inside a graph drops only the compiling). A failed attempt leaves
no trace, so a run that fell back resumes to the uninterrupted weights. Verified steps are where
compiling happens (minutes on a CPU), so a SIGTERM, which Lightning only notes for its loop,
stops them at once too, after the copy is put back: the checkpoint written on the way out is
that of the last finished step.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import Tensor

from aavae.training.distributed import max_over_ranks
from aavae.training.step import CudaGraphed, TrainStep

log = logging.getLogger(__name__)

GRAPH, COMPILED, EAGER = "cuda_graph", "compiled", "eager"
VERIFIED_STEPS = 2  # steps of an engine above eager checked once it is up (after capture)
GRAPH_WARMUP = 3  # eager calls before a capture (cuDNN's choices, the optimizer's state)


class StepSnapshot:
    """A copy of everything one call of a :class:`TrainStep` changes, put back *into* the same
    tensors (``copy_``), never by swapping them: a captured graph and a compiled step hold their
    addresses."""

    def __init__(self, step: TrainStep) -> None:
        self.step = step
        tensors: dict[int, Tensor] = {}
        for module in (step.net, step.probe):
            if module is not None:
                for tensor in (*module.parameters(), *module.buffers()):
                    tensors.setdefault(id(tensor), tensor)
        for tensor in (step.lr, step.position, step.step, step.sums, step.first_bad_step,
                       step.warmup_steps, step.total_steps):
            tensors.setdefault(id(tensor), tensor)
        self.tensors = list(tensors.values())
        with torch.no_grad():
            self.saved = [tensor.detach().clone() for tensor in self.tensors]
        self.optimizer_state = {
            param: {key: value.detach().clone() if isinstance(value, Tensor) else copy.deepcopy(value)
                    for key, value in state.items()}
            for param, state in step.optimizer.state.items()
        }
        self.generator_state = step.generator.get_state()
        self.last = (step.last_input, step.last_target)

    def restore(self) -> None:
        step = self.step
        with torch.no_grad():
            for tensor, saved in zip(self.tensors, self.saved, strict=True):
                tensor.copy_(saved)
            state = step.optimizer.state
            for param in [p for p in state if p not in self.optimizer_state]:
                del state[param]  # created by the failed call (the first step of a run)
            for param, saved_state in self.optimizer_state.items():
                current = state[param]
                for key in [k for k in current if k not in saved_state]:
                    del current[key]
                for key, value in saved_state.items():
                    held = current.get(key)
                    if isinstance(value, Tensor) and isinstance(held, Tensor) and held.shape == value.shape:
                        held.copy_(value)
                    else:
                        current[key] = value.clone() if isinstance(value, Tensor) else copy.deepcopy(value)
        step.generator.set_state(self.generator_state)
        step.last_input, step.last_target = self.last
        step.optimizer.zero_grad(set_to_none=True)


class FallbackStep:
    """Call it once per step, as the step itself; it runs on :attr:`engine` ("cuda_graph",
    "compiled" or "eager": the run's records name it). ``compiled``/``graph`` are the engines asked
    for; a failure turns one off for the rest of the run."""

    def __init__(self, step: TrainStep, compiled: bool, graph: bool, graph_warmup: int = GRAPH_WARMUP) -> None:
        self.step = step
        self.compiled, self.graph = compiled, graph
        self.graph_warmup = graph_warmup
        self.setup_seconds = 0.0  # spent compiling and capturing: not the step's rate
        self.failures: list[str] = []  # what failed, in the order it did
        self._runner: Callable[[], None] = step
        self._verify_left = 0
        self._compiling = False  # the next call compiles
        self._build()

    @property
    def engine(self) -> str:
        return GRAPH if self.graph else COMPILED if self.compiled else EAGER

    def describe(self, after_kind: str = "") -> str:
        return (COMPILED if self.compiled else EAGER) + after_kind + (", replayed as a CUDA graph" if self.graph else "")

    def use_compiled(self) -> None:
        """Compile the step from the next call on (verified like any new engine)."""
        if not self.compiled:
            self.compiled = True
            self._build()

    # -- the hot path ------------------------------------------------------------------------
    def __call__(self) -> None:
        if not self._verify_left:
            self._runner()  # a trusted engine: nothing is added to the step
            return
        self._verified_call()

    # -- the first steps of an engine --------------------------------------------------------
    def _build(self) -> None:
        """The runner of the engines asked for (a compiler that refuses at once fails as any)."""
        step = self.step
        if not self.compiled:
            step.loss_fn = step.loss_and_metrics
        elif step.loss_fn == step.loss_and_metrics:  # asked for and not compiled yet
            try:
                step.compile()
            except Exception as error:  # noqa: BLE001 - any compiler failure falls back
                step.loss_fn = step.loss_and_metrics
                self.compiled = False
                self._warn("torch.compile", error)
            else:
                self._compiling = True
        self._runner = CudaGraphed(step, step.generator, self.graph_warmup) if self.graph else step
        self._verify_left = VERIFIED_STEPS if self.engine != EAGER else 0

    def _verified_call(self) -> None:
        step = self.step
        snapshot = StepSnapshot(step)
        bad_before = int(step.first_bad_step)  # host sync: on verified steps only
        setting_up = self._compiling or not getattr(self._runner, "captured", True)
        if self._compiling:
            log.info("Compiling the training step: minutes on a CPU the first time, seconds when "
                     "torch's compile cache (%s) holds it. Ctrl+C or SIGTERM stops at once.",
                     os.environ.get("TORCHINDUCTOR_CACHE_DIR", "its default folder"))
        started = time.perf_counter()
        try:
            with sigterm_stops_at_once("compiling the step" if self._compiling else "verifying the step"):
                self._runner()
                bad_after = int(step.first_bad_step)  # host sync: the device has finished the step
        except Exception as error:  # noqa: BLE001 - the engine failed: the next one down runs the step
            snapshot.restore()
            failed = self._drop(error)
            self._build()
            self._warn(_engine_words(failed), error)
            self()
            return
        except BaseException:
            snapshot.restore()  # interrupted: the checkpoint on the way out is the last finished step's
            raise
        seconds = time.perf_counter() - started
        if setting_up:
            self.setup_seconds += seconds
        if self._compiling:
            self._compiling = False
            log.info("Compiled the training step in %.1f s (the first compiled step included)", seconds)
        # on any rank, so that every rank falls back together
        if max_over_ranks(bad_before < 0 <= bad_after, step.device):
            self._replace_non_finite(snapshot, bad_before)
            return
        if getattr(self._runner, "captured", True):
            self._verify_left -= 1

    def _replace_non_finite(self, snapshot: StepSnapshot, bad_before: int) -> None:
        """The engine's loss was not finite: run the step again on the next engine down and
        blame the engine only if that one's is finite."""
        snapshot.restore()
        at = int(self.step.step)
        engine = self._drop(None)
        self._build()
        self()
        if int(self.step.first_bad_step) >= 0:
            log.warning("The loss of step %d is not finite with the %s step either: the training "
                        "itself diverged, not the %s (the epoch's end reports it).",
                        at, self.describe(), _engine_words(engine))
            return
        self.failures.append(f"{engine}: non-finite loss at step {at}")
        log.warning("The %s gave a non-finite loss at step %d where the %s step gives a finite "
                    "one: training goes on %s (the run records engine=%s).",
                    _engine_words(engine), at, self.describe(), f"with the {self.describe(' step')}", self.engine)

    def _drop(self, error: BaseException | None) -> str:
        """Turn off the engine at fault, the graph unless the error is the compiler's; return it."""
        if self.graph and not (self.compiled and _is_compiler_error(error)):
            self.graph = False
            return GRAPH
        self.compiled = False
        return COMPILED

    def _warn(self, what: str, error: BaseException) -> None:
        """The one warning of a failure: what failed, why, and what trains instead."""
        reason = f"{type(error).__name__}: {_first_line(error)}"
        self.failures.append(f"{what}: {reason}")
        log.warning("The %s failed (%s); training goes on %s, slower but the same computation "
                    "(the run records engine=%s).", what, reason, f"with the {self.describe(' step')}", self.engine)
        log.debug("What the %s raised:", what, exc_info=error)


@contextlib.contextmanager
def sigterm_stops_at_once(doing: str) -> Iterator[None]:
    """While ``doing``, a SIGTERM raises :class:`SIGTERMException` at once: Lightning's handler
    (called first, so its bookkeeping and the stopping of spawned ranks still happen) only sets
    a flag its loop reads between steps, minutes away during a compile. Only where Lightning
    installed a handler, in the main thread (Python runs signal handlers there)."""
    previous = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread() or not callable(previous):
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        previous(signum, frame)
        log.warning("SIGTERM while %s: stopping now.", doing)
        raise SIGTERMException

    signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _is_compiler_error(error: BaseException | None) -> bool:
    """Whether ``error`` (or what caused it) comes from TorchDynamo or Inductor."""
    seen: BaseException | None = error
    while seen is not None:
        if type(seen).__module__.startswith(("torch._dynamo", "torch._inductor")):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _engine_words(engine: str) -> str:
    return {GRAPH: "CUDA graph", COMPILED: "compiled step (torch.compile)", EAGER: "eager step"}[engine]


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else "no message"
