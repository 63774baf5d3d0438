"""The shape of the code, kept by tests: no import cycle, no import from a lower layer to a higher one (the layers are
the table in docs/design.md), and no file written anywhere but through the run-folder owner (`atu.runs`)."""

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "atu"
DESIGN = Path(__file__).resolve().parents[1] / "docs" / "design.md"


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every atu module `path` imports, at the top or inside a function."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("atu")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            if not base.startswith("atu"):
                continue
            for alias in node.names:  # `from . import x` may name a submodule
                sub = f"{base}.{alias.name}"
                found.add(
                    sub
                    if (SRC.parent / sub.replace(".", "/")).with_suffix(".py").exists()
                    or (SRC.parent / sub.replace(".", "/") / "__init__.py").exists()
                    else base
                )
    return found - {name}


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in SRC.rglob("*.py")}


def layers() -> dict[str, int]:
    """docs/design.md's layer table: `| N | \\`mod\\`, \\`mod\\` | role |` rows."""
    out = {}
    for number, mods in re.findall(r"^\| (\d+) \| ([^|]+) \|", DESIGN.read_text(), flags=re.M):
        for mod in re.findall(r"`([\w.]+)`", mods):
            out["atu." + mod] = int(number)
    return out


def layer_of(module: str, table: dict[str, int]) -> int:
    """The layer of a module or of the package it is in (atu.methods.atu is in atu.methods' layer)."""
    while module not in table and "." in module:
        module = module.rpartition(".")[0]
    return table.get(module, -1)


def test_every_module_has_a_layer():
    table = layers()
    missing = [m for m in graph() if m != "atu" and layer_of(m, table) < 0]
    assert not missing, f"modules without a layer in docs/design.md: {missing}"


def test_no_import_reaches_up_a_layer():
    table = layers()
    upward = [
        (a, b)
        for a, deps in graph().items()
        for b in deps
        if layer_of(a, table) >= 0 and layer_of(b, table) > layer_of(a, table)
    ]
    assert not upward, f"imports from a lower layer to a higher one: {upward}"


def test_no_import_cycle():
    g = graph()
    seen, stack, cycles = set(), [], []

    def visit(node):
        if node in stack:
            cycles.append(stack[stack.index(node) :] + [node])
            return
        if node in seen:
            return
        seen.add(node)
        stack.append(node)
        for dep in sorted(g.get(node, ())):
            visit(dep)
        stack.pop()

    for node in sorted(g):
        visit(node)
    assert not cycles, f"import cycles: {cycles}"


def test_the_checker_sees_cycles_and_upward_imports(tmp_path):
    """The rules above would fail on a real violation: a cycle and an upward import planted in a copy."""
    (tmp_path / "atu").mkdir()
    bad = tmp_path / "atu" / "runs_copy.py"
    bad.write_text("from .report import Table\n")
    global SRC
    saved, SRC = SRC, tmp_path / "atu"
    try:
        assert imports(bad) == {"atu.report"}
    finally:
        SRC = saved
    assert layer_of("atu.report", layers()) > layer_of("atu.runs", layers())


WRITERS = {
    "write_text",
    "write_bytes",
    "savefig",
    "to_csv",
    "save_file",
    "save_pretrained",
    "dump",
    "copy",
    "copyfile",
    "copy2",
    "copytree",
}


def writes(path: Path) -> list[str]:
    """Calls that write a file, other than through `atu.runs` (`runs.write_text(...)` is the owner's writer)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        mode = next((a.value for a in node.args[1:2] if isinstance(a, ast.Constant)), None)
        mode = next(
            (k.value.value for k in node.keywords if k.arg == "mode" and isinstance(k.value, ast.Constant)), mode
        )
        if isinstance(func, ast.Name) and func.id == "open" and isinstance(mode, str) and set(mode) & set("wax"):
            found.append(f"{path.name}:{node.lineno} open(..., {mode!r})")
        if isinstance(func, ast.Name) and func.id == "save_file":  # safetensors' writer, imported by name
            found.append(f"{path.name}:{node.lineno} save_file(")
        if isinstance(func, ast.Attribute):
            receiver = func.value.id if isinstance(func.value, ast.Name) else ""
            first = node.args[0].value if node.args and isinstance(node.args[0], ast.Constant) else None
            if func.attr == "open" and isinstance(first, str) and set(first) & set("wax"):
                found.append(f"{path.name}:{node.lineno} .open({first!r})")
            elif func.attr in WRITERS and receiver not in ("runs", "copy"):  # copy.copy copies objects, not files
                found.append(f"{path.name}:{node.lineno} .{func.attr}(")
            elif func.attr == "save" and receiver in ("torch", "OmegaConf", "np", "numpy"):
                found.append(f"{path.name}:{node.lineno} {receiver}.save(")
    return found


def test_only_the_run_folder_owner_writes_files():
    offenders = [w for p in SRC.rglob("*.py") if p.name != "runs.py" for w in writes(p)]
    assert not offenders, f"files written outside atu.runs: {offenders}"


def test_the_writer_check_catches_each_kind_of_write(tmp_path):
    planted = tmp_path / "bad.py"
    planted.write_text(
        "open('x', 'w')\np.open('a')\nq.write_text('t')\nfig.savefig('f.png')\ndf.to_csv('c')\n"
        "save_file(t, 'x')\nst.save_file(t, 'x')\nm.save_pretrained(d)\njson.dump(o, f)\n"
        "torch.save(t, 'x')\nOmegaConf.save(c, 'x')\nshutil.copy(a, b)\nruns.write_text(p, 't')\n"
        "open('x')\np.open()\n"
    )
    found = writes(planted)
    assert len(found) == 12, found  # every write but the owner's writer and the two reads
