"""Load a training job by name: a built-in job, or ``FILE.py:FUNCTION`` from your own code.

``compute-allocator apply --job JOB`` and :func:`allocator.evaluation.evaluate`
take a job *source*, not a job: a job runs once, and every controller must
start from the same fresh job (same initial weights, same seed). A source is

* a built-in job name (``compute-allocator jobs`` lists them), built with
  :func:`allocator.jobs.make_job`; or
* ``path/to/file.py:FUNCTION``, where ``FUNCTION`` builds and returns an
  :class:`allocator.TrainingJob` from your own model and data. It is called
  once per run; if it accepts a ``seed`` keyword (or ``**kwargs``) it gets the
  run's seed, and it should then seed the model's initial weights with it so
  that every controller trains the same starting point::

      # my_job.py
      def make_job(seed=0):
          torch.manual_seed(seed)
          model = MyNet()
          return TrainingJob(model, train=(x, y), val=(xv, yv), budget_steps=300, seed=seed)

      $ compute-allocator apply --policy runs/policy --job my_job.py:make_job

>>> from allocator.job_loading import load_job_source
>>> source = load_job_source("examples/my_cnn_job.py:make_job")
>>> job = source.build(seed=0)          # a fresh TrainingJob, every call

.. warning:: Loading ``FILE.py`` **executes that file**, as-is, with your
   permissions (exactly like ``python FILE.py`` would, minus the ``__main__``
   block). Only load job files you wrote or trust.

Every problem with a source -- an unknown job name, a missing file, a syntax
error or an exception in the file, a missing or non-callable function, a
function that returns something other than a ``TrainingJob`` -- raises
``ValueError`` or ``FileNotFoundError`` with a one-line message saying what is
wrong (the command line prints it without a traceback; set
``COMPUTE_ALLOCATOR_DEBUG=1`` to see the traceback of an error in your code).
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import itertools
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from allocator.job import TrainingJob

_module_counter = itertools.count()


@dataclass(frozen=True)
class JobSource:
    """Builds fresh, identical :class:`TrainingJob` s of one job: ``build(seed)``.

    Attributes:
        name: the built-in job's name, or ``FILE.py:FUNCTION`` as given.
        build_function: ``build_function(seed) -> TrainingJob``, unchecked.
    """

    name: str
    build_function: Callable[[int], object]

    def build(self, seed: int = 0) -> TrainingJob:
        """A fresh job for ``seed``; ``ValueError`` if the source does not give a ``TrainingJob``."""
        job = self.build_function(seed)
        if not isinstance(job, TrainingJob):
            raise ValueError(
                f"{self.name} returned {_describe_type(job)}, not an allocator.TrainingJob; "
                "the function must build and return a TrainingJob"
            )
        return job


def load_job_source(job: str, device: str = "auto") -> JobSource:
    """The :class:`JobSource` of a built-in job name or of ``FILE.py:FUNCTION``.

    Args:
        job: a built-in job name, or ``path/to/file.py:FUNCTION``.
        device: device of built-in jobs (``"auto"``: CUDA when available). A
            function from a file decides its job's device itself.

    Raises:
        FileNotFoundError: the job file does not exist.
        ValueError: an unknown job name, a file that cannot be loaded (syntax
            error, exception while running it), a missing or non-callable
            function.
    """
    if not isinstance(job, str) or not job.strip():
        raise ValueError("--job must name a built-in job or FILE.py:FUNCTION")
    job = job.strip()
    if ":" in job or job.endswith(".py"):
        return _file_source(job)
    from allocator.jobs import make_job, recipe

    recipe(job)  # an unknown name fails now, before any run starts
    return JobSource(job, lambda seed: make_job(job, seed=seed, device=device))


def _file_source(job: str) -> JobSource:
    path_text, _, function_name = job.rpartition(":")
    if not path_text:  # "file.py" with no function
        path_text, function_name = job, ""
    path = Path(path_text).expanduser()
    if not function_name:
        raise ValueError(
            f"--job {job!r} names no function: use FILE.py:FUNCTION, e.g. {path_text}:make_job"
        )
    if not path.exists():
        raise FileNotFoundError(f"job file {str(path)!r} does not exist (from --job {job!r})")
    if not path.is_file():
        raise ValueError(f"job file {str(path)!r} is not a file (from --job {job!r})")
    module = _load_module(path)
    if not hasattr(module, function_name):
        available = sorted(
            name
            for name, value in vars(module).items()
            if callable(value)
            and not name.startswith("_")
            and getattr(value, "__module__", None) == module.__name__
        )
        hint = f"; functions defined there: {', '.join(available)}" if available else ""
        raise ValueError(f"{path} has no function {function_name!r}{hint}")
    function = getattr(module, function_name)
    if not callable(function):
        raise ValueError(f"{path}:{function_name} is a {type(function).__name__}, not a function")
    label = f"{path_text}:{function_name}"
    return JobSource(label, _caller(function, label, path))


def _load_module(path: Path) -> ModuleType:
    """Execute the job file as a fresh module (its directory importable while it loads)."""
    name = f"_compute_allocator_job_{next(_module_counter)}_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot load {path} as a Python module (is it a .py file?)")
    module = importlib.util.module_from_spec(spec)
    directory = str(path.resolve().parent)
    sys.path.insert(0, directory)  # so the file can import its neighbours
    sys.modules[name] = module  # dataclasses and pickling look their module up here
    try:
        spec.loader.exec_module(module)
    except SyntaxError as error:
        sys.modules.pop(name, None)
        where = f"line {error.lineno}" if error.lineno else "somewhere"
        raise ValueError(f"syntax error in job file {path}, {where}: {error.msg}") from error
    except Exception as error:
        sys.modules.pop(name, None)
        raise ValueError(
            f"job file {path} raised {_one_line(error)} {_where(error, path)}while loading"
        ) from error
    finally:
        with contextlib.suppress(ValueError):  # the file may have removed it itself
            sys.path.remove(directory)
    return module


def _caller(function: Callable, label: str, path: Path) -> Callable[[int], object]:
    """``build(seed)`` that passes ``seed=`` when the function accepts it."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # builtins and some C callables have no signature
        parameters = []
    takes_seed = any(
        p.kind is inspect.Parameter.VAR_KEYWORD
        or (
            p.name == "seed"
            and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        )
        for p in parameters
    )

    def build(seed: int) -> object:
        try:
            return function(seed=seed) if takes_seed else function()
        except Exception as error:
            raise ValueError(
                f"{label} raised {_one_line(error)} {_where(error, path)}while building the job"
            ) from error

    return build


def _one_line(error: BaseException) -> str:
    message = str(error).strip().splitlines()
    return f"{type(error).__name__}: {message[0]}" if message else type(error).__name__


def _where(error: BaseException, path: Path) -> str:
    """``(at file.py line N) `` for the innermost frame in the job file, if any."""
    resolved = path.resolve()
    frames = [
        f
        for f in traceback.extract_tb(error.__traceback__)
        if Path(f.filename).resolve() == resolved
    ]
    if not frames:
        return ""
    frame = frames[-1]
    return f"(at {Path(frame.filename).name} line {frame.lineno}) "


def _describe_type(value: object) -> str:
    if value is None:
        return "None"
    kind = type(value)
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    return f"a value of type {name}"
