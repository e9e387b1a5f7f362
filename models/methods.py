"""The names of the methods and where each lives: a table without imports, so the CLI can list methods (and
start in well under a second) without importing torch. `models.registry.get_method` imports one on demand."""

# name -> "module:Class"; a method lands here when its implementation does
METHODS: dict[str, str] = {
    "dpdy": "models.dpdy.method:DpDyMethod",
    "osn": "models.osn.method:OSNMethod",
    "dyst": "models.dyst.method:DySTMethod",
    "gcd": "models.gcd.method:GCDMethod",
}
