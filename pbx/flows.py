"""IVR flows on real calls: the ``ivr:MODULE:FUNCTION`` destination kind.

A flow is ``async def flow(call)`` written against :class:`ccpbx.ivr.flow.Call`; :class:`PbxFlowCall`
implements that protocol on a :class:`~ccpbx.pbx.calls.Call`. The module is imported from ``[ivr] paths`` (put
first on ``sys.path``) or from installed packages, and imported again when its file changes, for the next call
(only the module the destination names: helpers it imports are reloaded when it reloads them).

What the handler guarantees the caller, whatever the flow does:
- the flow runs as its own task; when the caller hangs up during an operation on the call the flow gets
  :class:`~ccpbx.ivr.errors.CallHangup` there, during anything else (a database look-up) the task is cancelled,
  and either way its ``finally`` blocks run (bounded by ``CLEANUP_S``);
- ``transfer()`` ends the flow and sends the call on through the destination registry (queues get the
  priority and skills as :attr:`Call.queue_request`);
- a flow that raises, or cannot be imported, is logged with the call id and traceback and the caller goes to
  ``[ivr] fallback``, never to silence; a flow that returns with the caller still there hangs up.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import os
import shutil
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from ccpbx.ivr.errors import CallHangup, CallTransferred, FlowError, SpeechUnavailableError
from ccpbx.ivr.flow import FlowCall, QueueRequest
from ccpbx.ivr.prompt_library import PromptLibrary, ToneRequest
from ccpbx.media.errors import MediaError
from ccpbx.media.prompts import PromptPlayer, load_prompt
from ccpbx.media.source import FRAME_SAMPLES, AudioSource
from ccpbx.media.tones import TONES, Region, ToneKind, ToneSource, ToneSpec
from ccpbx.pbx.calls import Call
from ccpbx.pbx.config import Destination, IvrConfig
from ccpbx.pbx.destinations import Finished, Outcome, Redirect
from ccpbx.pbx.log import get_logger
from ccpbx.pbx.routing import CallRouter

__all__ = ["FlowLoadError", "FlowLoader", "IvrFlows", "PbxFlowCall", "Speech"]

log = get_logger("ccpbx.ivr")

CLEANUP_S = 10.0  # how long a hung-up flow's own cleanup may run before it is cancelled
POLL_S = 0.1  # how often a recording checks for silence and its length
SILENCE_RMS = 350.0  # below this (about -40 dBov) a 20 ms frame counts as silence
MAX_SPEECH_CHARS = 2000
FRAME_S = FRAME_SAMPLES / 8000


class FlowLoadError(Exception):
    """A flow could not be imported or found; ``file`` and ``line`` say where, when known."""

    def __init__(self, message: str, file: str | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.file = file
        self.line = line

    def __str__(self) -> str:
        if self.file is None:
            return self.message
        return f"{self.file}:{self.line}: {self.message}" if self.line else f"{self.file}: {self.message}"


class FlowLoader:
    """Finds ``MODULE:FUNCTION`` flows and imports a module again when its source file has changed."""

    def __init__(self, paths: Sequence[Path] = ()) -> None:
        self.paths = [Path(p).resolve() for p in paths]
        self._stamps: dict[str, tuple[int, int] | None] = {}

    @staticmethod
    def split(target: str) -> tuple[str, str]:
        module, sep, function = target.rpartition(":")
        if not sep or not module or not function:
            raise FlowLoadError(f'flow {target!r} must be "MODULE:FUNCTION" (ivr:flows:main)')
        if not all(part.isidentifier() for part in module.split(".")) or not function.isidentifier():
            raise FlowLoadError(f"flow {target!r}: module and function must be Python names")
        return module, function

    def load(self, target: str) -> Callable[..., Any]:
        """The flow function ``target`` names, from a fresh import when its file changed."""
        module_name, function = self.split(target)
        module = self._module(module_name)
        flow = getattr(module, function, None)
        where = getattr(module, "__file__", None)
        if flow is None:
            raise FlowLoadError(f"module {module_name} has no function {function!r}", where)
        if not inspect.iscoroutinefunction(flow):
            raise FlowLoadError(f"{module_name}.{function} must be an async def taking the call", where)
        return flow  # type: ignore[no-any-return]

    def source_file(self, target: str) -> Path | None:
        module_name, _ = self.split(target)
        module = self._module(module_name)
        file = getattr(module, "__file__", None)
        return Path(file) if file else None

    def check(self, target: str) -> str | None:
        """Why ``target`` cannot be served (file and line of an import error), or None."""
        try:
            self.load(target)
        except FlowLoadError as exc:
            return f"flow {target}: {exc}"
        return None

    def _module(self, name: str) -> ModuleType:
        for path in reversed(self.paths):
            if str(path) not in sys.path:
                sys.path.insert(0, str(path))
        module = sys.modules.get(name)
        try:
            if module is None:
                importlib.invalidate_caches()
                module = importlib.import_module(name)
            else:
                stamp = _stamp(module)
                if stamp is not None and stamp != self._stamps.get(name):
                    _forget_bytecode(module)
                    module = importlib.reload(module)
        except SyntaxError as exc:
            raise FlowLoadError(f"syntax error: {exc.msg}", exc.filename, exc.lineno) from exc
        except ModuleNotFoundError as exc:
            if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
                where = ", ".join(str(p) for p in self.paths) or "no [ivr] paths"
                raise FlowLoadError(f"no module {name!r} in {where} or the installed packages") from exc
            raise self._import_error(name, exc) from exc
        except Exception as exc:  # the module's own code failed while importing
            raise self._import_error(name, exc) from exc
        self._stamps[name] = _stamp(module)
        return module

    def _import_error(self, name: str, exc: BaseException) -> FlowLoadError:
        frames = traceback.extract_tb(exc.__traceback__)
        ours = [f for f in frames if not f.filename.startswith("<") and "importlib" not in f.filename]
        frame = ours[-1] if ours else (frames[-1] if frames else None)
        return FlowLoadError(f"importing {name} raised {type(exc).__name__}: {exc}",
                             frame.filename if frame else None, frame.lineno if frame else None)


def _stamp(module: ModuleType) -> tuple[int, int] | None:
    file = getattr(module, "__file__", None)
    if not file:
        return None
    try:
        st = os.stat(file)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _forget_bytecode(module: ModuleType) -> None:
    """A .pyc records its source's mtime in whole seconds: an edit within the same second would be missed."""
    file = getattr(module, "__file__", None)
    if file and file.endswith(".py"):
        with contextlib.suppress(OSError, ValueError, NotImplementedError):
            os.unlink(importlib.util.cache_from_source(file))


def uses_speech(file: Path) -> bool:
    """Whether a flow module calls ``.say(...)`` anywhere (it then needs espeak-ng)."""
    try:
        tree = ast.parse(file.read_text(encoding="utf-8"), str(file))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return False
    return any(isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "say"
               for node in ast.walk(tree))


class Speech:
    """``call.say(text)``: espeak-ng renders each distinct text once into a cached WAV."""

    def __init__(self, cache_dir: Path, voice: str = "en-us") -> None:
        self.cache_dir = cache_dir
        self.voice = voice
        self._locks: dict[str, asyncio.Lock] = {}

    @staticmethod
    def available() -> bool:
        return shutil.which("espeak-ng") is not None

    async def render(self, text: str) -> Path:
        text = " ".join(text.split())
        if not text:
            raise FlowError("say() needs some text")
        if len(text) > MAX_SPEECH_CHARS:
            raise FlowError(f"say() takes at most {MAX_SPEECH_CHARS} characters, got {len(text)}")
        key = hashlib.sha256(f"{self.voice}\0{text}".encode()).hexdigest()[:32]
        path = self.cache_dir / f"{key}.wav"
        if path.is_file():
            return path
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            if path.is_file():
                return path
            if not self.available():
                raise SpeechUnavailableError("say() needs espeak-ng: apt-get install espeak-ng")
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            proc = await asyncio.create_subprocess_exec(
                "espeak-ng", "-v", self.voice, "-w", str(tmp), "--", text,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
            _, err = await proc.communicate()
            if proc.returncode != 0 or not tmp.is_file():
                with contextlib.suppress(OSError):
                    tmp.unlink()
                raise FlowError(f"espeak-ng failed ({proc.returncode}): {err.decode(errors='replace').strip()}")
            os.replace(tmp, path)
        self._locks.pop(key, None)
        return path


class _Timed:
    """An endless source cut to ``frames`` frames."""

    def __init__(self, source: AudioSource, frames: int) -> None:
        self.source = source
        self.left = frames

    def read_frame(self) -> npt.NDArray[np.int16] | None:
        if self.left <= 0:
            return None
        self.left -= 1
        return self.source.read_frame()


def tone_player(request: ToneRequest, region: Region) -> AudioSource:
    if request.kind is not None:
        spec = TONES[(ToneKind(request.kind), region)]
    else:
        spec = ToneSpec(request.frequencies_hz, -10.0)
    return _Timed(ToneSource(spec), max(1, request.duration_ms * 8 // FRAME_SAMPLES))


class _SilenceWatch:
    """Counts trailing silent frames of a recording (fed by the media engine, frame by frame)."""

    def __init__(self) -> None:
        self.frames = 0
        self.silent = 0

    def __call__(self, frame: npt.NDArray[np.int16]) -> None:
        self.frames += 1
        rms = float(np.sqrt(np.mean(np.square(frame.astype(np.float64))))) if frame.size else 0.0
        self.silent = self.silent + 1 if rms < SILENCE_RMS else 0

    @property
    def silent_s(self) -> float:
        return self.silent * FRAME_S


class PbxFlowCall(FlowCall):
    """The :class:`ccpbx.ivr.flow.Call` protocol on a real call."""

    def __init__(self, call: Call, number: str, flows: IvrFlows) -> None:
        self.call = call
        self.flows = flows
        self.id = call.id
        self.caller = call.caller.number
        self.caller_name = call.caller.name
        self.dialled = number
        self.data = call.data  # the same dict: what the flow sets lands in the CDR and follows transfers
        self.redirect: tuple[Destination, str] | None = None
        self.recordings: list[Path] = []
        self.busy = 0  # operations on the call in progress (a hang-up reaches those as CallHangup)
        self.hung_up = False  # the flow hung up itself: its code after that runs to its end

    @contextlib.contextmanager
    def _op(self) -> Iterator[None]:
        self.busy += 1
        try:
            yield
        finally:
            self.busy -= 1

    async def answer(self) -> None:
        with self._op():
            await self.call.answer()

    async def hangup(self) -> None:
        self.hung_up = True
        if not self.call.finished:
            self.call.hangup()

    async def play_one(self, prompt: str | Path, *, interruptible: bool) -> str | None:
        source = await self.flows.source(prompt)
        await self.answer()  # as Asterisk's Playback: a prompt answers the call
        with self._op():
            return await self.call.play(source, interruptible=interruptible)

    async def next_digit(self, timeout: float | None) -> str | None:
        await self.answer()
        with self._op():
            return await self.call.next_digit(timeout=timeout)

    def flush_digits(self) -> None:
        self.call.flush_digits()

    async def say(self, text: str, *, interruptible: bool = False) -> str | None:
        return await self.play_one(await self.flows.speech.render(text), interruptible=interruptible)

    async def record(self, *, max_seconds: float = 60.0, silence_stop: float | None = 5.0, beep: bool = True,
                     terminator: str = "#") -> Path:
        if not 0 < max_seconds <= 3600:
            raise FlowError(f"record max_seconds must be in (0, 3600], got {max_seconds}")
        if silence_stop is not None and silence_stop <= 0:
            raise FlowError(f"record silence_stop must be positive or None, got {silence_stop}")
        if beep:
            await self.play_one("tone:beep", interruptible=False)
        else:
            await self.answer()
        self.call.flush_digits()
        path = self.flows.recording_path(self.call, len(self.recordings) + 1)
        watch = _SilenceWatch()
        capture = self.call.capture(path, monitor=watch)
        self.recordings.append(path)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            with self._op():
                while True:
                    remaining = max_seconds - (loop.time() - started)
                    if remaining <= 0:
                        break
                    digit = await self.call.next_digit(timeout=min(POLL_S, remaining))
                    if digit is not None and terminator and digit in terminator:
                        break
                    if silence_stop is not None and watch.silent_s >= silence_stop:
                        break
        except CallHangup:
            pass  # the recording ends with the caller and is kept (a voicemail message); the next await raises
        finally:
            capture.stop()
        await self.call.manager.media.sync()  # a media worker has closed the file: the flow may read it now
        log.info("ivr.recorded", path=str(path), seconds=round(watch.frames * FRAME_S, 2))
        return path

    async def hand_over(self, destination: str, request: QueueRequest | None) -> None:
        router = self.flows.router
        try:
            target, number = router.resolve(destination, self.caller)
        except ValueError as exc:
            raise FlowError(f"transfer to {destination!r}: {exc}") from None
        problem = router.destinations.problem(target)
        if problem is not None:
            raise FlowError(f"transfer to {destination!r}: {problem}")
        self.redirect = (target, number)
        self.call.queue_request = request

    def in_schedule(self, name: str) -> bool:
        return self.flows.in_schedule(name)


class IvrFlows:
    """The ``ivr`` destination handler: runs flows on calls, with reloading, fallback and clean hang-ups."""

    def __init__(self, router: CallRouter, config: IvrConfig, data_dir: Path) -> None:
        self.router = router
        self.config = config
        self.loader = FlowLoader(config.paths)
        self.library = PromptLibrary(config.prompt_paths, config.language)
        self.speech = Speech(data_dir / "cache" / "speech", config.voice)
        self.recordings_dir = data_dir / "recordings" / "ivr"

    def validate(self, target: str) -> str | None:
        """``ccpbx config check`` and start-up: the flow imports, and espeak-ng is there if it speaks."""
        problem = self.loader.check(target)
        if problem is not None:
            return problem
        file = self.loader.source_file(target)
        if file is not None and uses_speech(file) and not Speech.available():
            return (f"flow {target} ({file}) uses call.say(), which needs espeak-ng: "
                    "apt-get install espeak-ng")
        return None

    def in_schedule(self, name: str) -> bool:
        try:
            return self.router.in_schedule(name)
        except KeyError as exc:  # UnknownScheduleError: its message lists the schedules there are
            raise FlowError(str(exc.args[0]) if exc.args else f"no schedule {name!r}") from None

    def recording_path(self, call: Call, n: int) -> Path:
        day = time.strftime("%Y/%m/%d", time.gmtime(call.started))
        return self.recordings_dir / day / f"{call.id}-{n}.wav"

    async def source(self, prompt: str | Path) -> AudioSource:
        item = self.library.resolve(prompt)
        if isinstance(item, ToneRequest):
            return tone_player(item, self.router.region)
        try:
            pcm = await asyncio.to_thread(load_prompt, item)
        except MediaError as exc:
            raise FlowError(f"prompt {str(prompt)!r}: {exc}") from exc
        return PromptPlayer(pcm)

    async def __call__(self, call: Call, target: str, number: str) -> Outcome:
        with structlog.contextvars.bound_contextvars(flow=target):
            try:
                flow = self.loader.load(target)
            except FlowLoadError as exc:
                log.error("ivr.flow.load_failed", error=str(exc))
                return await self._fallback(call, number)
            return await self.run(call, number, flow)

    async def run(self, call: Call, number: str, flow: Callable[[PbxFlowCall], Awaitable[None]]) -> Outcome:
        """Run ``flow`` on ``call`` to its end with the guarantees of the module docstring (voicemail runs its
        flows through here too)."""
        flow_call = PbxFlowCall(call, number, self)
        log.info("ivr.flow.started", caller=flow_call.caller, dialled=number)
        task: asyncio.Future[None] = asyncio.ensure_future(flow(flow_call))
        gone: asyncio.Future[Any] = asyncio.ensure_future(call.a.gone.wait())
        try:
            await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():  # the caller left: a call operation raises CallHangup, anything else cancels
                if not flow_call.busy and not flow_call.hung_up:
                    task.cancel()
                await asyncio.wait({task}, timeout=CLEANUP_S)
                if not task.done():
                    task.cancel()
                    await asyncio.wait({task}, timeout=1.0)
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            gone.cancel()
        return await self._outcome(call, number, task, flow_call)

    async def _outcome(self, call: Call, number: str, task: asyncio.Future[None], flow_call: PbxFlowCall) -> Outcome:
        if not task.done() or task.cancelled():
            log.info("ivr.flow.ended", reason="hangup")
            return Finished()
        exc = task.exception()
        if exc is None:
            log.info("ivr.flow.ended", reason="returned")
            return Finished()
        if isinstance(exc, CallTransferred) and flow_call.redirect is not None:
            destination, target_number = flow_call.redirect
            log.info("ivr.flow.transferred", destination=str(destination), number=target_number)
            if call.a.ended or call.finished:
                return Finished()
            return Redirect(destination, target_number)
        if isinstance(exc, CallHangup):
            log.info("ivr.flow.ended", reason="hangup")
            return Finished()
        log.error("ivr.flow.failed", error=f"{type(exc).__name__}: {exc}", exc_info=exc)
        return await self._fallback(call, number)

    async def _fallback(self, call: Call, number: str) -> Outcome:
        """To ``[ivr] fallback``; a caller already answered hears an apology first rather than silence."""
        if call.a.ended or call.finished:
            return Finished()
        log.warning("ivr.flow.fallback", destination=str(self.config.fallback))
        if call.a.up:
            with contextlib.suppress(FlowError, CallHangup):
                await call.play(await self.source("technical-difficulty"))
            if call.a.ended or call.finished:
                return Finished()
        return Redirect(self.config.fallback, number)
