"""``sealboot-agent status``: what happened on this instance, from the state file.

Example::

    >>> show_status(Path("/"), sys.stdout)
    0
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TextIO

from sealboot_agent.config import DEFAULT_STATE_DIR
from sealboot_agent.errors import shown
from sealboot_agent.state import PHASES, StateStore

_OUTCOMES = {
    "ok": "ok",
    "failed": "failed",
    # A killed run leaves "running" behind; the next run resumes after the last step.
    "running": "running, or stopped before it finished (the next run resumes)",
}


def _stamp(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def show_status(root: Path, out: TextIO, *, as_json: bool = False, verbose: int = 0) -> int:
    """Print the state file's story under *root*; 0 when the last run succeeded, else 1."""
    store = StateStore(root / DEFAULT_STATE_DIR.lstrip("/"), root=root)
    state = store.load()
    if state is None:
        if as_json:
            out.write(json.dumps({"phase": None, "outcome": "never-run"}) + "\n")
        else:
            out.write("sealboot-agent has not run on this instance\n")
        return 0
    if as_json:
        out.write(state.to_json())
        return 0 if state.outcome == "ok" else 1
    # The state file is under the root, so its text is shown like any text from outside.
    out.write(f"outcome:   {_OUTCOMES.get(state.outcome) or shown(state.outcome)}\n")
    if state.error:
        err = state.error
        kind = f"{shown(err.get('kind'))} " if err.get("kind") else ""
        out.write(
            f"error:     {kind}(exit {shown(err.get('exit_code'))}): "
            f"{shown(err.get('message'), limit=4096)}\n"
        )
        if err.get("fragment"):
            out.write(f"fragment:  {shown(err.get('fragment'), limit=1024)}\n")
    # The phase saved is the last step that finished, not the one that failed.
    out.write(f"last completed step: {state.phase}\n")
    out.write(f"manifest:  {shown(state.manifest_id)}\n")
    out.write(
        f"instance:  {shown(state.instance_id or '-')}  region: {shown(state.region or '-')}\n"
    )
    out.write(f"output:    {shown(state.output or '-')}  hand-off: {shown(state.handoff or '-')}\n")
    out.write(f"fragments: {len(state.fragments)}\n")
    for name in state.fragments:
        out.write(f"  {shown(name)}{'  (left behind)' if name in state.left_behind else ''}\n")
    out.write("steps completed:\n")
    first = min(state.times.values(), default=0.0)
    for phase in PHASES:
        if phase not in state.times:
            continue
        at = state.times[phase]
        since = f"  +{at - first:.3f}s" if verbose else ""
        out.write(f"  {phase:<11} {_stamp(at)}{since}\n")
    if verbose:
        out.write(f"state file: {shown(store.file, limit=4096)}\n")
        out.write(f"agent:     {shown(state.agent_version or '-')}\n")
    if state.outcome == "running":
        out.write(
            "what to do: unless a sealboot-agent is running now, run 'sealboot-agent fetch' "
            "again (safe: fragments are deleted only after a verified durable write)\n"
        )
    elif state.outcome != "ok":
        out.write(
            "what to do: the log (/var/log/cloud-init-output.log, or fetch's --log-file) has "
            "the advice next to the error; 'sealboot-agent doctor' checks what a fetch needs\n"
        )
    return 0 if state.outcome == "ok" else 1
