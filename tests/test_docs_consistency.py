"""README.md and docs/*.md agree with the repository and with each other, where a test can tell (fast: no training).

- The README's layout table names only paths that exist, and names every module and package directly under
  ``src/pacofr`` and every top-level folder.
- Every repository path named in README.md, docs/*.md, bench/RESULTS.md, the Makefile, the SLURM scripts and the
  docstrings of bench/*.py exists (a path with a placeholder such as ``<name>``, a glob, or one given as the value
  of an output option such as ``--out`` is not checked); relative links and anchors of the Markdown pages resolve;
  every ``pacofr.<module>[.<name>]`` they name imports.
- Docs, bench, README.md and src cite only the repository: no numbered items or pages of an outside tracker. A
  public upstream project's issue is cited as ``owner/repo#N``.
- The counts and lists the pages state match the code and configs: the methods, the commands, the layers, the
  studies' arms, seeds and steps, the eval tasks and the synthetic suite, the SLURM variables, ``make`` targets.

The files are read at test time, so renamed configs or modules fail here until the pages follow them.
"""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = [README, *DOCS]

# The first segment of a repository path as the pages write it; anything else (runs/, data/, results/) is output.
REPO_ROOTS = ("configs", "bench", "slurm", "docs", "src", "tests", "data_prep")
PATH_RE = re.compile(rf"(?<![\w./\-$])(?:{'|'.join(REPO_ROOTS)})/[\w./<>*?{{}}\[\]\-]*")
PLACEHOLDER_RE = re.compile(r"[<>*?{}\[\]]|\.\.\.")
OUTPUT_OPTION_RE = re.compile(r"--(?:out|output|json|plots-dir|dir)[ =]$")


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def section(text: str, heading: str) -> str:
    """The body of the Markdown section ``heading``, up to the next heading of the same or a higher level (lines in
    code blocks, such as shell comments, are not headings)."""
    lines, body, level, fenced = text.splitlines(), None, 0, False
    for line in lines:
        if line.startswith("```"):
            fenced = not fenced
        match = None if fenced else re.match(r"^(#+) (.*?)\s*$", line)
        if body is None:
            if match and match.group(2) == heading:
                body, level = [], len(match.group(1))
        elif match and len(match.group(1)) <= level:
            break
        else:
            body.append(line)
    assert body is not None, f"no section {heading!r}"
    return "\n".join(body)


def table_rows(text: str) -> list[list[str]]:
    """The body rows of the first Markdown table in ``text``, as lists of cells."""
    rows, started = [], False
    for line in text.splitlines():
        if line.startswith("|"):
            started = True
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(re.fullmatch(r":?-+:?", c) for c in cells):
                rows.append(cells)
        elif started:
            break
    return rows[1:]  # without the header


def code_spans(text: str) -> list[str]:
    return re.findall(r"`([^`\n]+)`", text)


def without_code_blocks(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def line_of(text: str, index: int) -> int:
    return text.count("\n", 0, index) + 1


def tracked_top_level_folders() -> set[str]:
    """The repository's top-level folders: git's when this is a checkout, else the visible folders on disk that are
    not outputs (data, runs, results, the venv, build metadata)."""
    try:
        files = subprocess.run(
            ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True, timeout=30
        ).stdout.split()
        return {f.split("/")[0] for f in files if "/" in f and not f.startswith(".")}
    except (OSError, subprocess.SubprocessError):
        outputs = {"data", "runs", "results", "build", "dist"}
        return {
            p.name
            for p in REPO.iterdir()
            if p.is_dir() and not p.name.startswith(".") and p.name not in outputs and not p.name.endswith("egg-info")
        }


# --- the layout table ---------------------------------------------------------------------------------------------


def layout_paths() -> list[str]:
    """The paths the README's layout table names: ``a/b/c.py``, then ``d.py`` in the same cell is ``a/b/d.py``."""
    paths = []
    for row in table_rows(section(read(README), "Layout")):
        previous = None
        for item in code_spans(row[0]):
            path = item if "/" in item.rstrip("/") or previous is None else f"{previous.rsplit('/', 1)[0]}/{item}"
            paths.append(path)
            previous = path
    return paths


def test_the_layout_table_names_only_paths_that_exist():
    paths = layout_paths()
    assert len(paths) > 10, paths
    missing = [p for p in paths if not (REPO / p).exists() or (p.endswith("/") and not (REPO / p).is_dir())]
    assert not missing, f"README's layout table names paths that do not exist: {missing}"


def test_the_layout_table_names_every_module_package_and_folder():
    named = {p.rstrip("/") for p in layout_paths()}
    package = REPO / "src" / "pacofr"
    expected = {
        str(p.relative_to(REPO))
        for p in package.iterdir()
        if (p.suffix == ".py" and p.name != "__init__.py") or (p / "__init__.py").is_file()
    }
    expected |= tracked_top_level_folders() - {"src"}  # src is named by its modules and packages
    missing = sorted(expected - named)
    assert not missing, f"README's layout table (## Layout) does not name: {missing}"


# --- paths, links and module names ---------------------------------------------------------------------------------


def texts_naming_paths() -> dict[str, str]:
    """file -> the text whose repository paths must exist (bench/*.py: the docstrings only)."""
    files = [*PAGES, REPO / "bench" / "RESULTS.md", REPO / "Makefile"]
    files += sorted((REPO / "slurm").glob("*.sh")) + sorted((REPO / "slurm").glob("*.sbatch"))
    texts = {str(f.relative_to(REPO)): read(f) for f in files}
    for path in sorted((REPO / "bench").glob("*.py")):
        tree = ast.parse(read(path))
        nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef)))]
        texts[str(path.relative_to(REPO))] = "\n".join(filter(None, (ast.get_docstring(n) for n in nodes)))
    return texts


def named_paths(text: str) -> list[tuple[int, str]]:
    found = []
    for match in PATH_RE.finditer(text):
        path = match.group(0).rstrip(".,:;")
        before = text[max(0, match.start() - 20) : match.start()]
        if PLACEHOLDER_RE.search(path) or OUTPUT_OPTION_RE.search(before):
            continue
        found.append((line_of(text, match.start()), path))
    return found


def test_every_repository_path_named_in_the_docs_exists():
    texts = texts_naming_paths()
    checked = {name: named_paths(text) for name, text in texts.items()}
    assert sum(map(len, checked.values())) > 50, "the path pattern finds (almost) nothing"
    missing = [f"{name}:{line}: {path}" for name, found in checked.items() for line, path in found]
    missing = [entry for entry in missing if not (REPO / entry.rsplit(": ", 1)[1]).exists()]
    assert not missing, "paths named but not in the repository:\n" + "\n".join(missing)


def heading_anchors(path: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*$", without_code_blocks(read(path)), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def test_links_and_anchors_of_the_pages_resolve():
    broken, count = [], 0
    for page in PAGES:
        text = without_code_blocks(read(page))
        for match in re.finditer(r"\]\(([^)\s]+)\)", text):
            target = match.group(1)
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            count += 1
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path) if path else page
            if not resolved.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and resolved.suffix == ".md" and anchor not in heading_anchors(resolved):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert count > 10
    assert not broken, "broken links:\n" + "\n".join(broken)


def resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


def test_every_pacofr_name_in_the_docs_imports():
    texts = {name: text for name, text in texts_naming_paths().items() if not name.endswith(("Makefile", ".sh"))}
    names = {
        (name, line_of(text, m.start()), m.group(0))
        for name, text in texts.items()
        for m in re.finditer(r"(?<![\w./])pacofr(?:\.[A-Za-z_]\w*)+", text)
    }
    assert len(names) > 20
    broken = sorted(f"{name}:{line}: {dotted}" for name, line, dotted in names if not resolves(dotted))
    assert not broken, "names that do not import:\n" + "\n".join(broken)


# --- citing only the repository ------------------------------------------------------------------------------------

TRACKER_WORDS = re.compile(r"\b(?:issues?|issue's|tickets?|work items?|tracker|pull requests?)\b", re.I)
PULL_REQUEST = re.compile(r"\bPRs?\b")  # upper case only: `pr` may be a variable
# text before a `#N` that makes it a public project's number: `owner/repo` right before it, or a list that one starts
UPSTREAM_BEFORE = re.compile(r"[\w.\-]+/[\w.\-]+(?:#\d+(?:,\s*#\d+)*,\s*)?$")
CITED_FILES = ("md", "py", "sh", "sbatch", "txt", "yaml", "json", "csv")


def tracker_references(text: str) -> list[tuple[int, str]]:
    """(line, excerpt) of each reference to an outside tracker: its words (issue, ticket, work item, tracker, pull
    request, PR) and any ``#N`` that is not part of an ``owner/repo#N[, #M]`` citation of a public project."""
    found = [(line_of(text, m.start()), m.group(0)) for m in TRACKER_WORDS.finditer(text)]
    found += [(line_of(text, m.start()), m.group(0)) for m in PULL_REQUEST.finditer(text)]
    for match in re.finditer(r"(?<![\w&#])#(\d+)\b", text):
        before = text[text.rfind("\n", 0, match.start()) + 1 : match.start()]
        if re.search(r"[\"']$", before) and len(match.group(1)) in (3, 6):  # a colour, "#333333"
            continue
        if not UPSTREAM_BEFORE.search(before):
            found.append((line_of(text, match.start()), match.group(0)))
    return sorted(found)


def cited_files() -> list[Path]:
    files = [README]
    for folder in ("docs", "bench", "src"):
        files += [p for p in sorted((REPO / folder).rglob("*")) if p.is_file() and p.suffix[1:] in CITED_FILES]
    return files


def test_docs_bench_and_src_cite_only_the_repository():
    found = [
        f"{path.relative_to(REPO)}:{line}: {excerpt!r}"
        for path in cited_files()
        for line, excerpt in tracker_references(read(path))
    ]
    assert not found, (
        "references to an outside tracker (say what the repository holds instead; cite a public project's issue as "
        "owner/repo#N):\n" + "\n".join(found)
    )


@pytest.mark.parametrize(
    "text, flagged",
    [
        ("as issue #12 asked", True),
        ("the issue's rate", True),
        ("see ticket 4", True),
        ("done in (#23)", True),
        ("a work item of the tracker", True),
        ("hangs (opencv/opencv#5150)", False),
        ("reads it (pytorch/pytorch#190512, #109115)", False),
        ('color="#08519c"', False),
        ("## Heading #1", True),
        ("see PR 31", True),
        ("pr = prs[0]", False),
        ("fixed upstream (Lightning #21406)", True),
    ],
)
def test_the_tracker_check_tells_citations_apart(text, flagged):
    assert bool(tracker_references(text)) == flagged


# --- the pages' claims against the code ----------------------------------------------------------------------------

# Exported from pacofr.objectives but not methods a config picks: the interface, the core every method extends,
# and the value types of the interface.
OBJECTIVE_BASES = {"PretrainObjective", "MaskedAutoencoder", "StepOutput", "ParamGroup"}


def objective_methods() -> set[str]:
    import pacofr.objectives as objectives

    return {name for name in objectives.__all__ if name not in OBJECTIVE_BASES}


def test_the_layout_table_names_every_method_and_only_methods():
    row = next(r for r in table_rows(section(read(README), "Layout")) if "`src/pacofr/objectives/`" in r[0])
    named = set(code_spans(row[1]))
    assert named == objective_methods(), "README's layout row of src/pacofr/objectives/ vs pacofr.objectives"


def test_the_methods_the_readme_names_are_objectives():
    pretraining = section(read(README), "Pretraining")
    lists = re.findall(r"`(?:src/pacofr/objectives/|model\.objective\.class_path)`:? \(?([^)]*)\)", pretraining)
    assert len(lists) == 2, lists
    for names in lists:
        named = {span.removeprefix("pacofr.objectives.") for span in code_spans(names)} - {"model.objective.class_path"}
        assert named and named <= objective_methods(), names
    configs = re.findall(r"^\| `(method/\w+\.yaml)` \|", pretraining, flags=re.M)
    assert len(configs) >= 4, "README's method table names the method files"
    for config in configs:
        assert (REPO / "configs" / "pretrain" / config).is_file(), f"README's method table: configs/pretrain/{config}"


def test_the_cli_commands_the_readme_lists():
    from pacofr.cli import EXTRA_COMMANDS, LIGHTNING_COMMANDS

    row = next(r for r in table_rows(section(read(README), "Layout")) if "`src/pacofr/cli.py`" in r[0])
    listed = re.search(r"subcommands: ([\w, ]+)", row[1]).group(1).split(", ")
    assert set(listed) == {*LIGHTNING_COMMANDS, *EXTRA_COMMANDS}


def test_architecture_layers_are_the_ones_test_layers_checks():
    sys.path.insert(0, str(REPO / "tests"))
    try:
        from test_layers import LAYERS
    finally:
        sys.path.remove(str(REPO / "tests"))
    rows = table_rows(section(read(REPO / "docs" / "architecture.md"), "The packages, bottom-up"))
    documented = [(int(row[0]), {f"pacofr.{name}" for name in code_spans(row[1])}) for row in rows]
    checked = [(i, set(prefixes) - {"pacofr"}) for i, prefixes in enumerate(LAYERS)]
    assert documented == checked, "docs/architecture.md's layer table vs tests/test_layers.py LAYERS"


@pytest.fixture
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)  # study configs name their parents and base configs from the repository root


def number(text: str) -> int:
    return int(text.replace(",", ""))


def test_study_sizes_stated_in_the_pages(in_repo):
    from pacofr.study.spec import load_study

    readme, study_page, makefile = read(README), read(REPO / "docs" / "study.md"), read(REPO / "Makefile")
    default = load_study("configs/study/default.yaml")
    arms, seeds = re.search(r"configs/study/default\.yaml\): (\d+) arms x (\d+) seeds", readme).groups()
    assert (len(default.arms), len(default.seeds)) == (int(arms), int(seeds)), "README: the default study's size"

    quick = load_study("configs/study/default.yaml", quick=True)
    size = (len(quick.arms), len(quick.seeds), quick.common["trainer.max_steps"])
    stated = re.findall(r"(\d+) arms x (\d+) seeds? x (\d+) steps", readme + study_page + makefile)
    assert len(stated) >= 3 and {tuple(map(int, s)) for s in stated} == {size}, "study-quick's size"

    compute3x = load_study("configs/study/compute3x.yaml")
    readme_line = next(line for line in readme.splitlines() if "configs/study/compute3x.yaml" in line)
    factor, seeds = re.search(r"(\d+)x the steps \((\d+) seeds\)", readme_line).groups()
    assert compute3x.common["trainer.max_steps"] == int(factor) * default.common["trainer.max_steps"]
    assert len(compute3x.seeds) == int(seeds)
    steps, seeds = re.search(r"compute3x\.yaml`: the decisive arms at ([\d,]+) steps, (\d+) seeds", study_page).groups()
    assert (compute3x.common["trainer.max_steps"], len(compute3x.seeds)) == (number(steps), int(seeds))
    assert {a.name for a in compute3x.arms} <= {a.name for a in default.arms}


def test_the_default_study_protocol_table(in_repo):
    from pacofr.study.spec import load_study

    spec = load_study("configs/study/default.yaml")
    protocol = dict(
        r[:2] for r in table_rows(section(read(REPO / "docs" / "study.md"), "Protocol of the default study"))
    )
    steps = re.search(r"^([\d,]+) steps", protocol["pretraining"]).group(1)
    warmup = re.search(r"warmup (\d+) steps", protocol["pretraining"]).group(1)
    incubation = re.search(r"incubation (\d+) steps", protocol["codebook arms"]).group(1)
    assert number(steps) == spec.common["trainer.max_steps"]
    assert number(warmup) == spec.common["model.warmup_steps"]
    assert number(incubation) == spec.common["model.objective.init_args.incubation_steps"]
    assert tuple(int(s) for s in re.findall(r"\d+", protocol["seeds"])) == spec.seeds
    faces = re.search(r"([\d,]+) training faces", protocol["probe"]).group(1)
    area = re.search(r"covering (\d+) %", protocol["probe"]).group(1)
    assert number(faces) == spec.probe.train_faces
    assert int(area) / 100 == pytest.approx(spec.probe.occlusion_area)


def test_the_eval_tasks_and_the_synthetic_suite():
    from pacofr.eval.cli import SUITES
    from pacofr.eval.tasks import TASKS

    rows = table_rows(section(read(README), "One benchmark"))
    listed = {task for row in rows for task in code_spans(row[0])}
    assert listed == set(TASKS), "README's benchmark table vs pacofr.eval.tasks.TASKS"
    assert all((REPO / "configs" / "eval" / f"{task}.yaml").is_file() for task in TASKS)
    suite = section(read(README), "The synthetic suite (offline, on CPU)")
    mode, faces, epochs = re.search(r"\((\w+), (\d+) training faces, (\d+) epochs;", suite).groups()
    defaults = SUITES["synth"].defaults
    assert (mode, int(faces), int(epochs)) == (
        defaults["model.mode"],
        defaults["data.max_train_samples"],
        defaults["trainer.max_epochs"],
    )
    assert {f"`{task}`" for task in SUITES["synth"].tasks} <= set(re.findall(r"`synth_\w+`", read(README)))


def test_the_slurm_variables_and_their_defaults():
    """Every variable of the README's table is read by slurm/pretrain.sbatch; a default given as one literal is the
    script's ``${VAR:-default}`` (a file name may stand for its path)."""
    script = read(REPO / "slurm" / "pretrain.sbatch")
    defaults: dict[str, set[str]] = {}
    for variable, default in re.findall(r"\$\{(PACOFR_\w+):-([^}$]*)\}", script):
        defaults.setdefault(variable, set()).add(default)
    rows = [r for r in table_rows(section(read(README), "Submit")) if r[0].startswith("`PACOFR_")]
    assert len(rows) >= 6
    compared = 0
    for row in rows:
        variables = code_spans(row[0])
        for variable in variables:
            assert re.search(rf"\b{variable}\b", script), f"{variable} is not read by slurm/pretrain.sbatch"
        literal = re.fullmatch(r"`([^`]+)`", row[2])
        if len(variables) == 1 and literal and variables[0] in defaults:
            stated, actual = literal.group(1), defaults[variables[0]]
            assert any(a == stated or a.endswith("/" + stated) for a in actual), (variables[0], stated, actual)
            compared += 1
    assert compared >= 4


def test_make_targets_named_in_the_pages_exist():
    makefile = read(REPO / "Makefile")
    targets = set(re.findall(r"^([\w-]+):", makefile, flags=re.M))
    named = set()
    for page in PAGES:
        text = read(page)
        named |= {m for span in code_spans(text) for m in re.findall(r"^make ([\w-]+)", span)}
        named |= set(
            re.findall(r"^make ([\w-]+)", "\n".join(re.findall(r"^```.*?^```", text, flags=re.S | re.M)), re.M)
        )
    assert len(named) > 5
    assert named <= targets, f"make targets named in the pages but not in the Makefile: {sorted(named - targets)}"
    stated = re.search(r"`TORCH_SPEC` \(default\s+`([^`]+)`", read(README)).group(1)
    assert stated == re.search(r"^TORCH_SPEC \?= (.+)$", makefile, flags=re.M).group(1).strip()


def test_the_label_and_region_counts():
    from pacofr.data.format import NUM_LABELS, NUM_REGIONS

    words = {"eight": 8, "nine": 9, "ten": 10}
    stated = [
        (page.name, count)
        for page in PAGES
        for count in re.findall(r"\b(\w+) region groups", read(page))
        if count in words or count.isdigit()
    ]
    assert stated, "no page states the number of region groups"
    wrong = [(name, count) for name, count in stated if words.get(count, count) not in (NUM_REGIONS, str(NUM_REGIONS))]
    assert not wrong, f"pacofr.data.format has {NUM_REGIONS} region groups; the pages say {wrong}"
    labels = re.search(r"\b(\d+) CelebAMask-HQ classes", read(README)).group(1)
    assert int(labels) == NUM_LABELS


def test_the_readme_study_verdict_quotes_docs_study_md():
    """README's verdict summary quotes docs/study.md's generated verdict (bench/study_verdict_doc.py): every paired
    difference with its interval that README gives is, character for character, one the data gave there."""
    readme = read(README)
    section = readme[readme.index("**Verdict so far**") : readme.index("## Running on SLURM")]
    quoted = re.findall(r"[+−-]\d+\.\d+°? \[[+−-]\d+\.\d+, [+−-]\d+\.\d+\]", section)
    assert quoted, "README's study verdict quotes no interval: the pattern no longer matches its format"
    study = read(REPO / "docs" / "study.md")
    verdict = study[study.index("## Verdict so far") : study.index("## Running it")]
    missing = [q for q in quoted if q not in verdict]
    assert not missing, f"README quotes intervals docs/study.md's verdict does not give: {missing}"
