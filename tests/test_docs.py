"""The docs name no path of the machine they were written on (issue 24): a path is relative to the
repository or to the user's workdir (`<workdir>/...`), or the placeholder `/path/to/...`."""
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "bench").glob("*.md"))]
# An absolute path of at least two parts; not part of a URL (gs://b/x, http://h/x), of $VAR/x or .../x.
ABSOLUTE = re.compile(r"(?<![\w.:/~$<>*-])/[A-Za-z_][\w.-]*/[\w.<>/-]*")
WINDOWS = re.compile(r"(?<![\w])[A-Za-z]:\\")
# Absolute paths a doc may name: the placeholder, system tools, and TF Serving's container layout.
ALLOWED = ("/path/to/", "/usr/bin/", "/models/")


def test_docs_name_no_absolute_path_of_a_machine():
    assert {d.name for d in DOCS} >= {"README.md", "SYNTHETIC.md", "RELIABILITY.md", "KUAIRAND.md"}
    found = [f"{doc.relative_to(REPO)}:{number}: {path}"
             for doc in DOCS for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1)
             for path in ABSOLUTE.findall(line) + WINDOWS.findall(line) if not path.startswith(ALLOWED)]
    assert found == []


def test_the_check_finds_machine_paths_and_spares_urls_and_placeholders():
    line = ("output in `/work/synth_out/default`, or /tmp/synth, or C:\\Users\\me; not gs://b/tmp/x, "
            "https://grouplens.org/datasets/, $PWD/data, .../KuaiRand-Pure/data, <workdir>/models/default")
    assert ABSOLUTE.findall(line) + WINDOWS.findall(line) == ["/work/synth_out/default", "/tmp/synth", "C:\\"]


def test_the_datasets_reference_names_every_key_of_a_declaration():
    """docs/DATASETS.md's schema reference cannot fall behind features/declaration/schema.py."""
    from features.declaration import schema
    text = (REPO / "docs" / "DATASETS.md").read_text(encoding="utf-8")
    models = [schema.Declaration, schema.Files, schema.FileSpec, schema.Keys, schema.Time, schema.Column,
              schema.Feature, schema.Task, schema.Negatives, schema.Split, schema.Duplicates]
    missing = [f"{model.__name__}.{field.alias or name}" for model in models
               for name, field in model.model_fields.items() if f"`{field.alias or name}`" not in text]
    assert missing == []


def test_ci_runs_the_readmes_test_command():
    """The README's test command is what .ci/run runs after installing (pip's own flags aside)."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    command = re.search(r'```bash\npip install -e "\.\[test\]" && (pytest .+)\n```', readme).group(1)
    assert command.startswith('pytest -n 2 -m "not slow" && ')  # the fast subset first
    assert command in (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()


def test_benchmark_results_name_no_path_of_a_machine():
    """bench/results/*.json are read on other machines: a data folder is described, not named by its path."""
    found = [f"{result.name}: {path}" for result in sorted((REPO / "bench" / "results").glob("*.json"))
             for path in ABSOLUTE.findall(result.read_text(encoding="utf-8")) if not path.startswith(ALLOWED)]
    assert found == []
