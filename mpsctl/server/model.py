"""ModelHolder: device choice, load-with-release, generation, out-of-memory recovery.

Imported only by the service (``mpsctl serve``); torch and transformers load with it.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, StoppingCriteria, StoppingCriteriaList
from transformers.utils import logging as hf_logging

from mpsctl.errors import ConfigError, MpsctlError
from mpsctl.server.demo import demo_label
from mpsctl.server.detokenize import decode_text
from mpsctl.server.memory import ReleaseResult, release

log = logging.getLogger("mpsctl.server")

MPS_OOM_PREFIX = "MPS backend out of memory"
CPU_OOM_WORDS = (
    "DefaultCPUAllocator: can't allocate memory",
    "DefaultCPUAllocator: not enough memory",
)


class ModelUnavailable(MpsctlError):
    """No model is loaded (a failed reload, or a reload in progress)."""


class ModelLoadError(MpsctlError):
    """from_pretrained failed; the service holds no model afterwards."""


class ModelNotFound(MpsctlError):
    """The model to load is plainly not there; nothing was released, the old model serves on."""


class OutOfMemory(MpsctlError):
    """The backend ran out of memory during a query; memory was released afterwards."""

    def __init__(self, message: str, *, original: str, exc_type: str) -> None:
        super().__init__(message)
        self.original = original
        self.exc_type = exc_type


def is_out_of_memory(exc: BaseException) -> bool:
    """True for PyTorch's OOM errors: CUDA's dedicated types, MPS's plain RuntimeError."""
    oom_types = tuple(
        t
        for t in (getattr(torch, "OutOfMemoryError", None), torch.cuda.OutOfMemoryError)
        if isinstance(t, type)
    )
    if oom_types and isinstance(exc, oom_types):
        return True
    if not isinstance(exc, RuntimeError):
        return False
    text = str(exc)
    # a service on device = "cpu" (or under a memory limit): the CPU allocator's refusal,
    # "[enforce fail at alloc_cpu.cpp:N] ... DefaultCPUAllocator: can't allocate memory: ..."
    return text.lstrip().startswith(MPS_OOM_PREFIX) or any(w in text for w in CPU_OOM_WORDS)


def forget_frames(exc: BaseException) -> None:
    """Drop the locals of every finished frame ``exc`` (and its chain) still pins.

    A traceback keeps the frames it passed through alive, and with them their locals: the
    activations of a failed forward pass, or a half-loaded model. Until those go,
    ``empty_cache()`` cannot give their memory back.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        traceback.clear_frames(current.__traceback__)  # skips frames still running
        current = current.__cause__ or current.__context__


def choose_device(requested: str) -> str:
    """auto = mps, else cuda, else cpu; an explicit choice must be available."""
    if requested == "auto":
        if torch.backends.mps.is_available():
            return "mps"
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--device mps: the MPS backend is not available on this machine")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available to PyTorch")
    if requested not in ("mps", "cuda", "cpu"):
        raise ConfigError(f"unknown device {requested!r} (expected auto, mps, cuda or cpu)")
    return requested


def choose_dtype(requested: str, device: str) -> torch.dtype:
    if requested != "auto":
        return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[
            requested
        ]
    if device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device == "mps":
        return torch.float16  # half the memory of float32; bf16 support varies by macOS
    return torch.float32


@dataclass(frozen=True)
class Answer:
    text: str
    tokens: int
    latency_ms: float
    #: generation was stopped early through ``cancel`` (the client went away)
    cancelled: bool = False


class _StopWhenSet(StoppingCriteria):
    """Ends generation at the next token once ``event`` is set."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        return torch.full(
            (input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device
        )


@dataclass(frozen=True)
class LoadResult:
    model: str
    label: str
    device: str
    dtype: str
    released: ReleaseResult | None
    after: ReleaseResult
    duration_ms: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "label": self.label,
            "device": self.device,
            "dtype": self.dtype,
            "release_of_previous": self.released.as_dict() if self.released else None,
            "memory_after_load": self.after.after.as_dict(),
            "duration_ms": round(self.duration_ms, 1),
        }


class ModelHolder:
    """Holds at most one model; queries run in worker threads, loads wait for them.

    A reload releases the current model *before* loading the next one (two models at once
    is how a service that reloads in place reaches its MPS limit), so a failed reload leaves
    no model.
    """

    def __init__(
        self,
        *,
        device: str = "auto",
        dtype: str = "auto",
        max_new_tokens: int = 128,
        drain_timeout: float = 300.0,
    ) -> None:
        self.device = choose_device(device)
        self.dtype_name = dtype
        self.max_new_tokens = max_new_tokens
        self.drain_timeout = drain_timeout
        self.model: Any = None
        self.tokenizer: Any = None
        self.model_id: str | None = None
        self.label: str | None = None
        self.last_error: str | None = None
        self.active = 0
        self.max_active_seen = 0
        self._loading = False
        self._cond = threading.Condition()
        hf_logging.disable_progress_bar()

    @property
    def loaded(self) -> bool:
        return self.model is not None

    # ------------------------------------------------------------------ load / unload
    def load(self, model_id: str, *, label: str | None = None) -> LoadResult:
        """Release the current model, then load ``model_id`` (a local dir or hub id)."""
        started = time.perf_counter()
        local_dir = _local_model_dir(model_id)
        if local_dir is not None and not local_dir.is_dir():
            # checked before anything is released or drained: a typo must not stop service
            raise ModelNotFound(f"no model directory at {model_id}")
        with self._cond:
            if self._loading:
                raise ModelUnavailable("another model load is in progress")
            self._loading = True
            try:
                if not self._cond.wait_for(lambda: self.active == 0, self.drain_timeout):
                    raise ModelUnavailable(
                        f"queries still running after {self.drain_timeout:g} s; not reloading"
                    )
            except BaseException:
                self._loading = False
                raise
        try:
            released = self._drop_model() if self.model is not None else None
            if released is not None:
                log.info("released the previous model: %s", _figures_line(released))
            before = release(self.device)
            log.info("memory before loading %s: %s", model_id, _figures_line(before, after=False))
            log.info("loading model %s on %s", model_id, self.device)
            error: str | None = None
            try:
                self._from_pretrained(model_id)
            except Exception as exc:
                # one line: it ends up in a log line and in `mpsctl: error: ...`
                error = " ".join(f"{type(exc).__name__}: {exc}".split())
                if log.isEnabledFor(logging.DEBUG):
                    trace = "".join(traceback.format_exception(exc))
                    log.debug("loading %s failed:\n%s", model_id, trace)
                # the traceback pins from_pretrained's frames and the half-loaded model in
                # them (an out-of-memory .to(device) is the usual way a load fails)
                forget_frames(exc)
                del exc
            if error is not None:
                self.last_error = error
                failed = self._drop_model()
                log.error("loading %s failed: %s", model_id, error)
                log.info("released memory after the failed load: %s", _figures_line(failed))
                raise ModelLoadError(f"loading model {model_id!r} failed: {error}")
            self.model_id = model_id
            self.label = label or demo_label(Path(model_id)) or model_id
            self.last_error = None
            after = release(self.device)
            took = time.perf_counter() - started
            log.info("model loaded in %.1f s: %s on %s: %s", took, model_id, self.device,
                     _figures_line(after))  # fmt: skip
            return LoadResult(
                model=model_id,
                label=self.label,
                device=self.device,
                dtype=str(self.model.dtype).replace("torch.", ""),
                released=released,
                after=after,
                duration_ms=took * 1000.0,
            )
        finally:
            with self._cond:
                self._loading = False
                self._cond.notify_all()

    def _from_pretrained(self, model_id: str) -> None:
        local_dir = _local_model_dir(model_id)
        if local_dir is not None and not local_dir.is_dir():
            raise FileNotFoundError(f"no model directory at {model_id}")
        source = str(local_dir) if local_dir is not None else model_id
        dtype = choose_dtype(self.dtype_name, self.device)
        tokenizer = AutoTokenizer.from_pretrained(source)
        model: Any = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
        model.to(self.device)
        model.eval()
        self.tokenizer, self.model = tokenizer, model

    def _drop_model(self) -> ReleaseResult:
        # every reference, or the memory stays: the attributes here are the only ones,
        # generate() never keeps the model beyond a call
        self.model = None
        self.tokenizer = None
        self.model_id = None
        self.label = None
        return release(self.device)

    # ------------------------------------------------------------------ generation
    def generate(
        self,
        question: str,
        max_new_tokens: int | None = None,
        *,
        cancel: threading.Event | None = None,
    ) -> Answer:
        """Answer one question (blocking: run it in a worker thread).

        Setting ``cancel`` stops the generation at its next token (the client went away:
        its slot and its memory are worth more to the next query).
        """
        with self._cond:
            if self._loading:
                raise ModelUnavailable("a model is being loaded; try again shortly")
            if self.model is None:
                raise ModelUnavailable("no model is loaded")
            model, tokenizer = self.model, self.tokenizer
            self.active += 1
            self.max_active_seen = max(self.max_active_seen, self.active)
        started = time.perf_counter()
        oom: tuple[str, str] | None = None
        try:
            try:
                text, tokens = self._run(model, tokenizer, question, max_new_tokens, cancel)
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                # keep only the text: the exception's traceback pins the frames holding
                # the activations, which must be gone before release() can return them
                oom = (type(exc).__name__, str(exc))
                forget_frames(exc)
                del exc
            finally:
                del model, tokenizer
            if oom is None:
                latency_ms = (time.perf_counter() - started) * 1000.0
                return Answer(text, tokens, latency_ms, cancel is not None and cancel.is_set())
        finally:
            with self._cond:
                self.active -= 1
                self._cond.notify_all()
        exc_type, original = oom
        # verbatim and on one line per message, so `mpsctl oom` can parse it from the log
        log.error("out of memory during a query: %s: %s", exc_type, original)
        result = release(self.device)
        log.warning("released memory after the out-of-memory error: %s", _figures_line(result))
        raise OutOfMemory(
            f"{self.device} ran out of memory during this query; memory was released",
            original=original,
            exc_type=exc_type,
        )

    def _run(
        self,
        model: Any,
        tokenizer: Any,
        question: str,
        max_new_tokens: int | None,
        cancel: threading.Event | None = None,
    ) -> tuple[str, int]:
        if getattr(tokenizer, "chat_template", None):
            inputs = tokenizer.apply_chat_template(
                [{"role": "user", "content": question}],
                add_generation_prompt=True,
                return_tensors="pt",
                return_dict=True,
            )
        else:
            inputs = tokenizer(question, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        prompt_len = int(inputs["input_ids"].shape[1])
        extra: dict[str, Any] = {}
        if cancel is not None:
            extra["stopping_criteria"] = StoppingCriteriaList([_StopWhenSet(cancel)])
        with torch.inference_mode():
            output = model.generate(
                **inputs,
                **extra,
                max_new_tokens=max_new_tokens or self.max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
            )
        new_tokens = output[0, prompt_len:]
        # not tokenizer.decode: an answer cut off inside a character would end in U+FFFD
        text = decode_text(tokenizer, new_tokens.tolist())
        return text, int(new_tokens.shape[0])


def _local_model_dir(model_id: str) -> Path | None:
    """The directory ``model_id`` names, or None for a hub id.

    transformers treats a missing directory as a malformed hub id and says so confusingly;
    a hub id is "name" or "owner/name", never "/x", "./x", "~/x" or "a/b/c", and an
    existing directory wins over a hub id of the same name (as in from_pretrained).
    """
    path = Path(model_id).expanduser()
    if model_id.startswith(("/", ".", "~")) or model_id.count("/") > 1 or path.is_dir():
        return path
    return None


def _figures_line(result: ReleaseResult, *, after: bool = True) -> str:
    figures = result.after if after else result.before
    parts = [f"{name}={_mib(value)}" for name, value in figures.as_dict().items()]
    if after and result.reclaimed_bytes is not None:
        parts.append(f"reclaimed={_mib(result.reclaimed_bytes)}")
    return ", ".join(parts)


def _mib(value: int | None) -> str:
    return "unknown" if value is None else f"{value / 2**20:.1f}MiB"
