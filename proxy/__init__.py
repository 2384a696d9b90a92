"""cutover's data plane (see setup.py for how its hot modules are built)."""


def build() -> str:
    """build: "compiled (mypyc)" when the hot path runs as C extensions, else "pure Python"."""
    from . import exchange
    return "pure Python" if exchange.__file__.endswith(".py") else "compiled (mypyc)"
