"""The names of the methods and where each lives: a table without imports, so the CLI can list methods (and
start in well under a second) without importing torch. `models.registry.get_method` imports one on demand."""

# name -> "module:Class"; a method lands here when its implementation does
METHODS: dict[str, str] = {
    "dpdy": "models.dpdy.method:DpDyMethod",
    "osn": "models.osn.method:OSNMethod",
    "dyst": "models.dyst.method:DySTMethod",
    "gcd": "models.gcd.method:GCDMethod",
}

# methods whose fitted model is a set of 3D Gaussians (`renderer.model.gaussians_at(time)`): `monodyn export`
GAUSSIAN_METHODS: tuple[str, ...] = ("dpdy",)

# name -> (fit options, render options) as "module:Class" (None: no such options), in modules that import no
# torch, so `monodyn fit|render --method NAME --help` lists them quickly
OPTIONS: dict[str, tuple[str | None, str | None]] = {
    "dpdy": ("models.dpdy.config:DpDyConfig", None),
    "osn": ("models.osn.config:OSNConfig", "models.osn.config:OSNRenderOptions"),
    "dyst": (None, "models.dyst.options:DySTRenderOptions"),
    "gcd": (None, "models.gcd.method:GCDRenderOptions"),
}


def options_class(name: str, kind: str) -> type | None:
    """The fit ("Config") or render ("RenderOptions") options dataclass of method `name`, or None."""
    import importlib

    path = OPTIONS[name][0 if kind == "Config" else 1]
    if path is None:
        return None
    module, cls = path.split(":")
    return getattr(importlib.import_module(module), cls)
