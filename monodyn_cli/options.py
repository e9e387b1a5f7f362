"""Options of every command: method configs are dataclasses whose fields become `--kebab-case` options of
`monodyn fit` / `render` / `eval`, and the numeric checks every command shares.

A field's help is the string literal written right under it (an attribute docstring, read from the source),
so the config class is the one place that documents an option:

    @dataclass
    class DpDyConfig:
        steps: int = 3000
        \"\"\"Optimisation steps.\"\"\"
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import math
import textwrap
import types
import typing
from functools import lru_cache

from models.errors import InputError


@lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass (and its bases), by field name."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body
        for node, nxt in zip(body, body[1:]):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and \
                    isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant) and \
                    isinstance(nxt.value.value, str):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def base_type(tp):
    """int for `int`, `int | None`, `Optional[int]`; the type of the first non-None member of a union."""
    if typing.get_origin(tp) not in (typing.Union, types.UnionType):
        return tp  # Literal[...], tuple[...] are types of their own, not unions to unwrap
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return base_type(args[0]) if args else tp


def _convert(value: str, tp, option: str):
    base = base_type(tp)
    if typing.get_origin(base) is typing.Literal:
        choices = typing.get_args(base)
        if value not in choices:
            raise InputError(f"{option} must be one of {', '.join(map(str, choices))}, not {value!r}")
        return value
    try:
        if base is bool:
            if value.lower() in {"1", "true", "yes", "on"}:
                return True
            if value.lower() in {"0", "false", "no", "off"}:
                return False
            raise ValueError
        if base is float:
            number = float(value)
            if not math.isfinite(number):
                raise InputError(f"{option} must be a finite number, got {value!r}")
            return number
        if base in (int, str):
            return base(value)
        if typing.get_origin(base) in (tuple, list):
            inner = typing.get_args(base)[0]
            items = typing.get_origin(base)(inner(v) for v in value.split(","))
            if inner is float and not all(math.isfinite(v) for v in items):
                raise InputError(f"{option} must be finite numbers, got {value!r}")
            return items
    except ValueError:
        raise InputError(f"{option}: cannot read {value!r} as {getattr(base, '__name__', base)}") from None
    raise InputError(f"{option}: unsupported option type {base}")


def parse_options(cls: type, args: list[str]):
    """Build `cls(**values)` from `--name value`, `--name=value`, `--flag` / `--no-flag` arguments."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    by_option = {_option(n): n for n in fields}
    values: dict = {}
    i = 0
    while i < len(args):
        arg = args[i]
        key, _, inline = arg.partition("=")
        negated = key.startswith("--no-") and key[:2] + key[5:] in by_option
        name = by_option.get(key[:2] + key[5:] if negated else key)
        if name is None:
            known = ", ".join(sorted(by_option))
            raise InputError(f"unknown option {key} for this method ("
                             + (f"its options: {known})" if known else "it has no options of its own)"))
        if base_type(hints[name]) is bool and not inline:
            values[name] = not negated
            i += 1
            continue
        if not inline:
            if i + 1 >= len(args):
                raise InputError(f"{key} needs a value")
            inline = args[i + 1]
            i += 1
        values[name] = _convert(inline, hints[name], key)
        i += 1
    return cls(**values)


def options_table(cls: type) -> list[tuple[str, str, str, str]]:
    """(option, type, default, help) rows for `--help`."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "required")
        base = base_type(hints[f.name])
        tname = "/".join(map(str, typing.get_args(base))) if typing.get_origin(base) is typing.Literal \
            else getattr(base, "__name__", str(base))
        opt = f"{_option(f.name)}/--no-{f.name.replace('_', '-')}" if base is bool else _option(f.name)
        rows.append((opt, tname, str(default), docs.get(f.name, "")))
    return rows


# ---- checks shared by every command's numeric options ------------------------------------------------------
def check_finite(option: str, value) -> None:
    """A given number must be finite (nan and inf are never meaningful options)."""
    if value is not None and isinstance(value, float) and not math.isfinite(value):
        raise InputError(f"{option} must be a finite number, got {value}")


def check_range(option: str, value, lo: float, hi: float, inclusive: bool = True, low_open: bool = False) -> None:
    """`value` (if given) is finite and in [lo, hi] (open ends with inclusive=False, or only the low end with
    low_open=True); the message names the option and the range."""
    if value is None:
        return
    check_finite(option, value)
    low_ok = value > lo if (low_open or not inclusive) else value >= lo
    high_ok = value <= hi if inclusive else value < hi
    if not (low_ok and high_ok):
        left = "(" if (low_open or not inclusive) else "["
        right = "]" if inclusive else ")"
        fmt = lambda v: str(int(v)) if float(v).is_integer() else f"{v:g}"  # noqa: E731
        raise InputError(f"{option} must be in {left}{fmt(lo)}, {fmt(hi)}{right}, got {value}")


# ---- method options (fit: Method.Config; render: Method.RenderOptions) -------------------------------------
def parse_method_options(method: str | None, kind: str, args: list[str], workspace=None):
    """(name, method, options) for `monodyn fit|render|eval`: `kind` is "Config" or "RenderOptions"; without
    --method, render takes the method fitted last in the workspace. Options are validated here, before any work."""
    from models.registry import get_method

    if method is None:
        from monodyn_cli.fits import latest_method
        from monodyn_cli.scene_loader import resolve_workspace

        method = latest_method(resolve_workspace(workspace))
        if method is None:
            from models.methods import METHODS

            raise InputError("nothing fitted in this workspace yet: run `monodyn fit --method dpdy` first, or pass "
                             f"--method (one of {', '.join(sorted(METHODS))})")
    impl = get_method(method)
    cls = getattr(impl, kind)
    if cls is None:
        if args:
            raise InputError(f"{method} has no fit options (it is pretrained); unexpected: {' '.join(args)}")
        return method, impl, None
    options = parse_options(cls, args)
    if hasattr(options, "validate"):
        options.validate()
    return method, impl, options


def method_options_help(ctx, method: str | None, kind: str, command: str) -> None:
    """The command's help and, when --method is given, a table of that method's options."""
    from rich.table import Table

    from monodyn_cli.console import stdout

    stdout.print(ctx.get_help())
    if method is None:
        from models.methods import METHODS

        stdout.print(f"Method options: `monodyn {command} --method NAME --help` (methods: "
                     f"{', '.join(sorted(METHODS))}).")
        return
    from models.methods import METHODS, options_class

    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; available: {', '.join(sorted(METHODS))}")
    cls = options_class(method, kind)
    rows = options_table(cls) if cls is not None else []
    if not rows:
        stdout.print(f"--method {method} has no {command} options of its own.")
        return
    table = Table(title=f"{command} options of --method {method}")
    for col in ("option", "type", "default", "help"):
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*row)
    stdout.print(table)
