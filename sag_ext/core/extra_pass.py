"""Guidance by an extra UNet pass per sampling step: what SAG, PAG and SEG have in common.

Each method guides the step's CFG result by one more prediction of the model over some of the step's rows:

    method  rows    the pass's input                  attention change          equation
    SAG     uncond  x, re-noised from its x0 blurred  none (its own attention   guidance.py
                    where the middle block attends    is recorded: capture.py)
    PAG     cond    x                                 output = V                perturbed.py, perturbation.py
    SEG     cond    x                                 query blurred             perturbed.py, perturbation.py

A session is one generation's pass of one or more methods (SAG's own; PAG and SEG share one, whose rows go
once per method into one call), on the host's per-generation object (the webui's `p`). This base holds the
generation's side of it, the same for every method: which methods joined and which stepped aside (one
console line each), the steps that did no work and why, whether every pass so far was finite and how many
steps each method guided (both kept on the device and read once per batch), and the report at the end.
A subclass (`SagSession`, `PerturbedSession`) adds its rows, its pass and its equation; a host adapter
drives it per step (`begin_step`, `end_step`, `apply`) and the generation per batch and at the end.
"""
import contextlib
from dataclasses import dataclass
from typing import Any, Optional

import torch

from .console import report_off, report_unchanged
from .hooks import MarkedHooks


@dataclass
class Step:
    """A step with work: its methods' (params, scale), and what the adapter keeps of it for its pass."""

    methods: list
    host: Any


class ExtraPassSession:
    """One generation's extra pass, for the methods that joined it. Never shared between generations or tabs."""

    ATTRIBUTE = ""  # where the host's per-generation object holds the session
    HOOKS = MarkedHooks  # the class of its hooks on the model (they name the session as their owner)
    NON_FINITE = (RuntimeError, "")  # what end_batch raises after a non-finite pass: (class, message)
    # why a step did nothing
    SCALE_ZERO = "the scale is 0 (in a hires pass: hires pass \"off\", or a hires scale of 0)"
    OUTSIDE_RANGE = "steps outside start..end"

    def __init__(self):
        self.methods = {}  # method key -> params, in the order the generation added them
        self.infotext = {}  # method key -> the infotext entries it wrote (generation.drop_infotext)
        self.stopped_methods = set()  # turned off by an error or an unsupported input
        self.resting_methods = set()  # on, but with parameters under which no step has work
        self.idle_reasons = {}  # method key -> why its steps did nothing
        self.hooks: Optional[MarkedHooks] = None  # its hooks on the model (SAG: the capture; PAG, SEG: the changes)
        self.step: Optional[Step] = None
        self.result = None  # what the step in progress's pass gave, for `apply`
        self.passes_finite: Optional[torch.Tensor] = None  # device bool: was every pass so far finite?
        self.guided_steps = {}  # method key -> device int: the steps whose guidance reached the image
        self.started = False  # a step has begun: the session is sampling, no method joins any more
        self.ended = set()  # the methods whose Script's postprocess ran
        self.previews = []  # finished preview pictures, for the host to show

    # ---- the generation's side ------------------------------------------------------------------------

    @classmethod
    def of(cls, generation) -> Optional["ExtraPassSession"]:
        """The session attached to a host's per-generation object, if one of its methods is on."""
        return getattr(generation, cls.ATTRIBUTE, None)

    @classmethod
    def for_generation(cls, generation, key: str) -> "ExtraPassSession":
        """The session the method `key` joins: the generation's, where another method made one for it, or a
        new one where there is none or it is left from an earlier generation."""
        session = cls.of(generation)
        if session is None or key in session.methods or session.started:
            if session is not None:
                session.close()
            session = cls()
            session.attach_to(generation)
        return session

    def attach_to(self, generation) -> None:
        setattr(generation, self.ATTRIBUTE, self)

    @classmethod
    def detach_from(cls, generation) -> None:
        setattr(generation, cls.ATTRIBUTE, None)

    @classmethod
    def owning(cls, module: torch.nn.Module) -> Optional["ExtraPassSession"]:
        """The session whose hooks are attached to `module` (the one whose step is in progress), if any."""
        return getattr(cls.HOOKS.attached(module), "owner", None)

    def add(self, params) -> None:
        self.methods[params.METHOD.key] = params
        self.idle_reasons.setdefault(params.METHOD.key, set())

    def rest(self, params, reason: str) -> None:
        """`params`' method is on but no step can have work (`reason`, reported at the end)."""
        self.resting_methods.add(params.METHOD.key)
        self.idle_reasons[params.METHOD.key].add(reason)

    def active_methods(self) -> list:
        return [params for key, params in self.methods.items()
                if key not in self.stopped_methods and key not in self.resting_methods]

    @property
    def active(self) -> bool:
        return bool(self.active_methods())

    @property
    def stopped(self) -> bool:
        return bool(self.stopped_methods)

    def stop(self, reason: str, keys=None) -> None:
        """Turn the methods `keys` (all if None) off for the rest of this generation, one line each."""
        for params in self.active_methods():
            if keys is None or params.METHOD.key in keys:
                report_off(params.METHOD, reason)
                self.stopped_methods.add(params.METHOD.key)
        if not self.active:
            self.close()

    @contextlib.contextmanager
    def guard(self):
        """Run host-facing work; an exception stops the methods for this generation instead of reaching the host."""
        try:
            yield
        except Exception as error:
            self.stop(f"{type(error).__name__}: {error}")

    def close(self) -> None:
        """Remove the hooks and drop the step in progress; safe to call more than once."""
        if self.hooks is not None:
            self.hooks.remove()
            self.hooks = None
        self.step, self.result = None, None

    # ---- steps ------------------------------------------------------------------------------------------

    def methods_of_step(self, progress: float, hires_pass: bool) -> list:
        """[(params, scale)] of the methods that guide a step at `progress` (its place in its pass's schedule,
        0 first) of a first or hires pass; the others note why they did nothing."""
        self.started = True
        methods = []
        for params in self.active_methods():
            scale = params.scale_for(hires_pass)
            idle = self.SCALE_ZERO if scale == 0 else self.OUTSIDE_RANGE if not params.in_range(progress) else None
            if idle:
                self.idle_reasons[params.METHOD.key].add(idle)
            else:
                methods.append((params, scale))
        return methods

    def note_pass(self, finite: torch.Tensor) -> None:
        """A pass ran; `finite` (device bool): were all its outputs finite? After one that was not, no
        guidance reaches the image any more (the methods gate on `passes_finite`)."""
        self.passes_finite = finite if self.passes_finite is None else self.passes_finite & finite

    def count_guided(self, key: str, reached: torch.Tensor) -> None:
        """`reached` (device bool): did this step's guidance of the method `key` reach the image?"""
        steps = self.guided_steps.get(key)
        self.guided_steps[key] = reached.int() if steps is None else steps + reached

    # ---- batches and the end ------------------------------------------------------------------------------

    def end_batch(self) -> None:
        """When a batch ends (one host sync): raise NON_FINITE if a pass was not finite; its step and all later
        ones were left unguided, so the methods step aside."""
        if self.passes_finite is not None and not bool(self.passes_finite):
            error, message = self.NON_FINITE
            raise error(message)

    def changed_nothing(self, key: str) -> bool:
        """Whether no step got the method's guidance: its images are exactly those without it (one host sync)."""
        steps = self.guided_steps.get(key)
        return steps is None or int(steps) == 0

    def unchanged_reasons(self, key: str) -> set:
        """Why the method `key` changed nothing (for the console line)."""
        return self.idle_reasons[key]

    def take_preview(self) -> Optional[torch.Tensor]:
        """A method's picture over the batch's images, (B, H, W) in [0, 1], where it makes one; else None."""
        return None

    def end(self, key: str, report: bool) -> bool:
        """Script.postprocess of the method `key`: with `report`, one console line if it changed nothing in
        this generation; True once every method of the session has ended (the hooks are then removed)."""
        if key not in self.methods:
            return False
        params = self.methods[key]
        if report and key not in self.stopped_methods and self.changed_nothing(key):
            report_unchanged(params.METHOD, self.unchanged_reasons(key),
                             f"no sampling step reached {params.METHOD.abbreviation}")
        self.ended.add(key)
        if set(self.methods) <= self.ended:
            self.close()
            return True
        return False
