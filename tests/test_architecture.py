"""Architecture checks: the package's import graph has no cycles, output file names
are spelled only by the derivatives layout module, and only the top-level workflow
factories read the settings (docs/architecture.md)."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import typing
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pet_synth_app"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def import_graph() -> dict[str, set[str]]:
    """Intra-package imports of every ``pet_synth_app`` module, counting every import
    statement wherever it stands (module level, inside functions and under
    ``TYPE_CHECKING``): ``from .x import y`` counts as an import of ``x.y`` when ``y`` is
    a module, else of ``x``. A package's ``__init__`` counts as the package itself."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, is_package, node)
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                    for a in node.names
                ]
            else:
                continue
            for target in targets:
                while target and target not in modules:  # a.b.func -> a.b
                    target = target.rpartition(".")[0]
                if target.startswith("pet_synth_app") and target != name:
                    deps.add(target)
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (a list of modules, first == last) or None."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if dep == "pet_synth_app":  # the root package only holds __version__
                continue
            if state.get(dep) == 1:
                return [*stack[stack.index(dep) :], dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_import_graph_is_acyclic():
    graph = import_graph()
    assert "pet_synth_app.workflows.base" in graph  # the walk found the package
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_subpackage_graph_is_acyclic():
    """The same graph folded onto the top-level modules and subpackages (``analysis``,
    ``synthesis``, ``preproc``, ``cli``...): the layers of docs/architecture.md import
    each other in one direction only (e.g. no ``analysis <-> synthesis``)."""
    folded: dict[str, set[str]] = {}
    for module, deps in import_graph().items():
        top = ".".join(module.split(".")[:2])
        folded.setdefault(top, set()).update(
            d for d in (".".join(dep.split(".")[:2]) for dep in deps) if d != top
        )
    assert find_cycle(folded) is None, " -> ".join(find_cycle(folded))


OUTPUT_NAMES = (
    "desc-preproc_T1w",
    "desc-brain_mask",
    "desc-preproc_pet",
    "desc-pseudonormal",
    "desc-hypometabolism",
    "desc-ocsvm",
    "_stat-z_statmap",
    "stat-score",
    "_statmap.nii",
    "_dseg.nii",
    "_clusters.tsv",
    "label-GM_probseg",
    "label-WM_probseg",
    "label-CSF_probseg",
    "_probseg.nii",
    "mode-image_xfm",
    "from-petref",
    "desc-lesion_mask",
    "desc-residual",
    "desc-controlpet",
    "desc-normative_mask",
    "desc-brain_T1w",
    "desc-nonlinear_xfm",
    "_sensitivity.tsv",
    "_summary.json",
)
"""Pieces of the file names PetSynth writes and reads; only ``layout.py`` spells them."""
LAYOUT = PACKAGE / "layout.py"


def _string_constants(tree: ast.AST) -> list[tuple[int, str]]:
    """Every string constant of a module, f-string pieces included, docstrings excluded
    (prose may name files)."""
    docstrings = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            value = body[0].value
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                docstrings.add(id(value))
    # attribute docstrings: a string expression right after an assignment
    for node in ast.walk(tree):
        for field in ("body", "orelse", "finalbody"):
            stmts = getattr(node, field, None)
            if not isinstance(stmts, list):
                continue
            for prev, stmt in zip(stmts, stmts[1:], strict=False):
                if (
                    isinstance(prev, ast.Assign | ast.AnnAssign)
                    and isinstance(stmt, ast.Expr)
                    and isinstance(stmt.value, ast.Constant)
                ):
                    docstrings.add(id(stmt.value))
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    ]


def output_name_literals(paths) -> list[str]:
    """``file:line: name`` for every string constant holding a piece of ``OUTPUT_NAMES``."""
    hits = []
    for path in paths:
        tree = ast.parse(path.read_text(), str(path))
        for line, text in _string_constants(tree):
            hits += [f"{path.name}:{line}: {name}" for name in OUTPUT_NAMES if name in text]
    return hits


def test_literal_check_finds_a_planted_name(tmp_path):
    planted = tmp_path / "reader.py"
    planted.write_text(
        '"""Reads *_desc-preproc_T1w.nii.gz."""\nX = f"{s}_desc-preproc_T1w.nii.gz"\n'
    )
    assert output_name_literals([planted]) == ["reader.py:2: desc-preproc_T1w"]


def test_no_output_name_literal_outside_the_layout_module():
    files = [p for p in (*PACKAGE.rglob("*.py"), *(ROOT / "bench").rglob("*.py")) if p != LAYOUT]
    assert len(files) > 50
    assert output_name_literals(files) == []
    assert output_name_literals([LAYOUT]) == []  # layout.py builds them from entities...
    from pet_synth_app import layout

    built = {layout.filename("s", k, desc=d) for k, d in (("t1w", None), ("clusters", "ocsvm"))}
    assert built == {"s_desc-preproc_T1w.nii.gz", "s_desc-ocsvm_clusters.tsv"}  # ...and has them


TOP_LEVEL_FACTORIES = {
    "pet_synth_app.workflows.base.init_petsynth_wf",
    "pet_synth_app.workflows.base.init_single_subject_wf",
}
"""The only workflow factories that read ``Settings`` (and the ``RunPlan``)."""


def workflow_factories() -> dict[str, Callable]:
    """Every ``init_*_wf`` function defined in the package, by qualified name (modules
    found by parsing, imported only when they define one)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        names = [
            n.name
            for n in tree.body
            if isinstance(n, ast.FunctionDef) and re.fullmatch(r"init_\w+_wf", n.name)
        ]
        if names:
            module = importlib.import_module(_module_name(path))
            found.update({f"{module.__name__}.{n}": getattr(module, n) for n in names})
    return found


def settings_parameters(factory: Callable) -> list[str]:
    """Parameters of ``factory`` that take the run's ``Settings``: named ``settings`` or
    annotated with ``Settings`` (also inside ``Settings | None``, as a string or resolved)."""
    try:
        hints = typing.get_type_hints(factory)
    except NameError:  # an annotation that does not resolve: the strings are checked
        hints = {}
    out = []
    for param in inspect.signature(factory).parameters.values():
        annotations = f"{param.annotation!s} {hints.get(param.name, '')!s}"
        if param.name == "settings" or re.search(r"\bSettings\b", annotations):
            out.append(param.name)
    return out


def test_settings_check_finds_a_planted_parameter():
    from pet_synth_app.config import Settings

    def init_bad_wf(settings, name: str = "bad_wf"): ...

    def init_sneaky_wf(*, config: Settings | None, name: str = "sneaky_wf"): ...

    def init_good_wf(*, omp_nthreads: int, settings_file: str, name: str = "good_wf"): ...

    assert settings_parameters(init_bad_wf) == ["settings"]
    assert settings_parameters(init_sneaky_wf) == ["config"]
    assert settings_parameters(init_good_wf) == []


def test_only_the_top_level_factories_take_settings():
    """fMRIPrep style: ``init_petsynth_wf`` / ``init_single_subject_wf`` read the settings
    and the run plan once and hand each sub-workflow factory the values it uses, as
    keyword arguments; no other ``init_*_wf`` may accept the whole ``Settings``."""
    factories = workflow_factories()
    assert TOP_LEVEL_FACTORIES <= set(factories)
    assert {
        "pet_synth_app.workflows.anatomical.init_anat_preproc_wf",
        "pet_synth_app.workflows.pet.init_pet_preproc_wf",
        "pet_synth_app.workflows.hypometabolism.init_hypometabolism_wf",
        "pet_synth_app.workflows.anomaly.init_anomaly_wf",
        "pet_synth_app.workflows.outputs.init_statmap_derivatives_wf",
    } <= set(factories)
    for name in TOP_LEVEL_FACTORIES:  # the check sees the real signatures
        assert settings_parameters(factories[name]) == ["settings"], name
    offenders = {
        name: params
        for name, factory in factories.items()
        if name not in TOP_LEVEL_FACTORIES and (params := settings_parameters(factory))
    }
    assert offenders == {}


def test_a_new_synthesis_model_is_its_module_plus_one_registry_entry(tmp_path, monkeypatch):
    """The worked example of docs/architecture.md: a model class and one ``MODELS`` entry
    are enough to train a step, save, load through the card and predict a volume."""
    import numpy as np
    import torch

    from pet_synth_app.synthesis import registry
    from pet_synth_app.synthesis.inference import predict_with_config
    from pet_synth_app.synthesis.model import SynthesisModel, kind_from_config
    from pet_synth_app.synthesis.networks import UnetGenerator
    from pet_synth_app.synthesis.weights import load_generator, save_generator

    class UnetL1(SynthesisModel):  # its own module in real life: synthesis/unet_l1.py
        def __init__(self, config: dict) -> None:
            super().__init__(config)
            c = self.config
            dims, ch = int(c["spatial_dims"]), int(c["channels"])
            self.kind = kind_from_config(c)
            self.G = UnetGenerator(dims, ch, ch, int(c["ngf"]), int(c["n_down"]))

        @property
        def generator(self) -> UnetGenerator:
            return self.G

        def parameter_groups(self) -> dict:
            return {"G": list(self.G.parameters())}

        def train_step(self, t1, pet, optimizers, paired=True, priors=None) -> dict:
            loss = torch.nn.functional.l1_loss(self.G(t1), pet)
            optimizers["G"].zero_grad(set_to_none=True)
            loss.backward()
            optimizers["G"].step()
            return {"G": loss.item()}

    entry = registry.ModelSpec(
        "unet-l1",
        UnetL1,
        {**registry._TRAINING, **registry._SEMI3D, "ngf": 4, "n_down": 2},
        paired=True,
        citation="pix2pix",
        description="semi-3D U-Net, L1 only",
    )
    monkeypatch.setitem(registry.MODELS, entry.name, entry)  # the one registry line

    torch.manual_seed(0)
    model = registry.build_model("unet-l1")
    assert registry.get_spec("unet-l1").kind == model.kind == "slices"
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    losses = model.train_step(x, x.flip(-1), model.make_optimizers())
    assert np.isfinite(losses["G"])
    card = {"model": "unet-l1", "config": model.config}
    card["input"] = {"pet_scale": 3.0, "voxel_size_mm": 2.0}
    path = tmp_path / "unet-l1.safetensors"
    save_generator(model.generator, path, card)
    generator, loaded = load_generator(path)
    volume = np.zeros((16, 16, 6), np.float32)
    volume[4:12, 4:12, 1:5] = 0.5
    out = predict_with_config(volume, generator, loaded["config"])
    assert out.shape == volume.shape and np.isfinite(out).all() and out[volume > 0].any()
