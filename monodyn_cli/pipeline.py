"""The preprocessing chain: which stages exist, what each depends on, and running them through the cache.

A stage is a module under `stages/` with NAME, VERSION and `run(ctx, cfg) -> list[str]` (its output files).
Here each is described by a `StageSpec`; `run_chain` runs the requested stages in dependency order, and
`--force STAGE` redoes that stage and every stage downstream of it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, is_dataclass
from typing import Any, Callable

from models.errors import InputError
from monodyn_cli.workspace import Progress, StageContext, StageResult, Workspace


@dataclass
class StageSpec:
    name: str
    version: int
    depends: tuple[str, ...]
    run: Callable[[StageContext, Any], list[str]]  # (ctx, typed config) -> output names


@dataclass
class StageRequest:
    """One stage to run: its spec, its typed config, and the JSON config that goes into the cache key."""

    spec: StageSpec
    config: Any
    key_config: dict | None = None

    def cache_config(self) -> dict:
        if self.key_config is not None:
            return self.key_config
        return asdict(self.config) if is_dataclass(self.config) else dict(self.config)


def downstream(stage: str, requests: list[StageRequest]) -> set[str]:
    """`stage` and every requested stage that depends on it, directly or not."""
    out = {stage}
    changed = True
    while changed:
        changed = False
        for r in requests:
            if r.spec.name not in out and out.intersection(r.spec.depends):
                out.add(r.spec.name)
                changed = True
    return out


def run_chain(ws: Workspace, requests: list[StageRequest], progress: Progress, force: list[str] | None = None,
              log: Callable[[str], None] = lambda s: None) -> dict[str, StageResult]:
    """Run stages in the given (dependency) order; a dependency not requested is taken from the workspace."""
    names = [r.spec.name for r in requests]
    forced: set[str] = set()
    for f in force or []:
        if f not in names:
            raise InputError(f"--force {f}: unknown stage (stages here: {', '.join(names)})")
        forced |= downstream(f, requests)
    results: dict[str, StageResult] = {}
    for req in requests:
        inputs = {}
        for dep in req.spec.depends:
            inputs[dep] = results.get(dep) or ws.require(dep)
        results[req.spec.name] = ws.run_stage(
            req.spec.name, req.spec.version, req.cache_config(), inputs,
            run=lambda ctx, req=req: req.spec.run(ctx, req.config),
            progress=progress, force=req.spec.name in forced, log=log)
    return results
