"""`monodyn preprocess INPUT`: decode -> flow -> segment -> sfm (-> object_sfm) -> depth, every stage cached in the
workspace (object_sfm, per-object SfM, only with --per-object-sfm).

The stage options are generated from the stage configs (monodyn_cli/stages/configs.py): one declaration gives
the flag, its type, default and help, and `validate()` checks every value before the workspace is touched.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from pathlib import Path
from typing import Optional

import typer

from monodyn_cli.console import handle_errors
from monodyn_cli.options import base_type, field_docs
from monodyn_cli.stages.configs import STAGE_CONFIGS

STAGES = tuple(STAGE_CONFIGS)


def register(app: typer.Typer) -> None:
    app.command(help="Decode a clip and run the preprocessing stages (flow, segmentation, SfM, depth) into a "
                     "cached workspace.")(preprocess)


def _stage_parameters() -> list[inspect.Parameter]:
    """One keyword parameter `<stage>__<field>` per command-line field of every stage config."""
    params = []
    for stage, cls in STAGE_CONFIGS.items():
        hints, docs = typing.get_type_hints(cls), field_docs(cls)
        for f in dataclasses.fields(cls):
            if not f.metadata.get("cli", True):
                continue
            flag = f.metadata.get("option") or "--" + f.name.replace("_", "-")
            base = base_type(hints[f.name])
            default = f.default
            if f.metadata.get("parse"):
                annotation, default, decls = list[str], [], [flag]
            elif base is bool:
                annotation, decls = bool, [f"{flag}/--no-{flag[2:]}"]
            else:
                kind = str if typing.get_origin(base) is typing.Literal else base
                annotation, decls = (Optional[kind] if default is None else kind), [flag]
            option = typer.Option(default, *decls, help=docs.get(f.name, "").replace("[", "\\["),
                                  rich_help_panel=f"{stage} stage")
            params.append(inspect.Parameter(f"{stage}__{f.name}", inspect.Parameter.KEYWORD_ONLY, default=option,
                                            annotation=annotation))
    return params


def stage_configs(values: dict) -> dict:
    """The stage configs from the generated parameters' values (repeatable options parsed), each validated."""
    configs = {}
    for stage, cls in STAGE_CONFIGS.items():
        kwargs = {}
        for f in dataclasses.fields(cls):
            key = f"{stage}__{f.name}"
            if key not in values:
                continue
            parse = f.metadata.get("parse")
            kwargs[f.name] = tuple(parse(v) for v in values[key]) if parse else values[key]
        cfg = cls(**kwargs)
        cfg.validate()
        configs[stage] = cfg
    return configs


@handle_errors
def preprocess(
    input: str = typer.Argument(..., help="Video file (mp4/mov/mkv/webm/avi), folder of images, or a quoted glob "
                                          "like 'frames/*.jpg'."),
    workspace: Optional[Path] = typer.Option(None, "--workspace", "-w",
                                             help="Workspace folder (default: INPUT's name + .monodyn beside it)."),
    until: str = typer.Option("depth", help="Stop after this stage: decode, flow, segment, sfm, depth "
                                           "(object_sfm: after per-object SfM, with --per-object-sfm)."),
    device: str = typer.Option("auto", help="Torch device for RAFT / SAM / Depth Anything (auto: cuda if present)."),
    force: list[str] = typer.Option([], "--force", help="Redo this stage and every stage after it (repeatable)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
    **stage_options,
) -> None:
    from models.errors import InputError

    if until not in STAGES:
        raise InputError(f"--until must be one of {', '.join(STAGES)}, not {until!r}")
    for f in force:
        if f not in STAGES:
            raise InputError(f"--force {f}: unknown stage (stages: {', '.join(STAGES)})")
    configs = stage_configs(stage_options)  # every option is checked before the workspace is touched
    if "sfm" in STAGES[:STAGES.index(until) + 1]:
        _require("pycolmap", "the sfm stage needs pycolmap: `pip install pycolmap` (or stop before it with --until "
                             "segment)")
    _run(input, workspace, configs, STAGES[:STAGES.index(until) + 1], device, force, quiet)


preprocess.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [p for p in inspect.signature(preprocess.__wrapped__, eval_str=True).parameters.values()
     if p.kind != inspect.Parameter.VAR_KEYWORD] + _stage_parameters())


def _run(input: str, workspace: Optional[Path], configs: dict, wanted: tuple[str, ...], device: str,
         force: list[str], quiet: bool) -> None:
    import importlib
    import shutil

    from models.devices import resolve_device
    from monodyn_cli import pipeline
    from monodyn_cli.console import RichProgress, RunLog, stdout
    from monodyn_cli.stages import decode
    from monodyn_cli.stages.outputs import OPTIONAL_STAGES
    from monodyn_cli.workspace import Workspace

    torch_device = str(resolve_device(device))  # a string: stage configs are JSON
    for stage in ("flow", "segment", "depth"):
        configs[stage].device = torch_device
    if configs["depth"].backend == "auto":
        configs["depth"].backend = "depth-anything" if _depth_weights_found(configs["depth"].checkpoint) else "sfm"
    source = decode.resolve_source(input)
    if source.kind == "video" and configs["decode"].backend == "pyav":
        _require("av", "decoding a video needs PyAV: `pip install av` (or --decoder decord with decord installed)")
    ws = Workspace(workspace or Workspace.default_for(Path(input)))
    _refuse_inside_input(ws.root, source)
    first_run = not ws.root.exists()
    dcfg = configs["decode"]
    decode_spec = pipeline.StageSpec(decode.NAME, decode.VERSION, (), run=lambda ctx, cfg: decode.run(ctx, source, cfg))
    requests = [pipeline.StageRequest(decode_spec, dcfg, decode.config_for(source, dcfg))]
    for stage in wanted[1:]:  # stage modules are imported only when asked for (sfm needs pycolmap)
        if stage in OPTIONAL_STAGES and not configs[stage].enabled:
            continue
        module = importlib.import_module(f"monodyn_cli.stages.{stage}")
        spec = module.SPEC_WITH_SEGMENT if stage == "depth" else module.SPEC
        key = configs[stage].key() if hasattr(configs[stage], "key") else None
        requests.append(pipeline.StageRequest(spec, configs[stage], key))
    ws.ensure(source=str(Path(input).resolve()) if Path(input).exists() else input)
    try:
        with ws.lock():
            log = RunLog(ws.root, "preprocess")
            progress = RichProgress(quiet, log)
            ws.clean_trash()
            results = pipeline.run_chain(ws, requests, progress, force=force, log=log)
            log.close()
    except BaseException:
        if first_run and ws.current("decode") is None:  # nothing decoded: leave nothing beside the input
            shutil.rmtree(ws.root, ignore_errors=True)
        raise
    for name, res in results.items():
        state = "cached" if res.cached else f"{res.manifest['seconds']:.1f}s"
        stdout.print(f"[green]{name:>8}[/green] {res.manifest.get('summary', '')} ({state})")
    stdout.print(f"workspace: {ws.root}")


def _require(module: str, message: str) -> None:
    """A missing optional dependency, named with the fix, before any work."""
    import importlib

    from models.errors import InputError

    try:
        importlib.import_module(module)
    except ImportError:
        raise InputError(message) from None


def _depth_weights_found(explicit: Optional[str]) -> bool:
    from models import weights

    try:
        weights.hub_source(weights.KNOWN["depth-anything"], Path(explicit) if explicit else None)
        return True
    except weights.WeightsNotFoundError:
        return False


def _refuse_inside_input(root: Path, source) -> None:
    """The user's input folder is read-only to us: a workspace must not be created inside it."""
    from models.errors import InputError

    if source.kind == "images":
        folder = source.files[0].parent.resolve()
        if root.resolve() == folder or folder in root.resolve().parents:
            raise InputError(f"workspace {root} is inside the input folder {folder}; pass --workspace elsewhere")
