"""The documentation the code relies on is in the project and true: the configuration reference is generated from
the config dataclasses and the README carries it unchanged; the architecture notes the modules cite exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from finedetail.knobs import knob
from job import configdoc
from job.__main__ import _put, main
from job.config import job_config_from_dict
from job.models import backend_configs

ROOT = Path(__file__).resolve().parents[1]
FIX = "run `python -m job config --doc --readme README.md` and commit the README"


def test_every_config_field_is_documented():
    assert configdoc.undocumented() == [], (
        "these config fields have no documentation: declare them with finedetail.knobs.knob(default, doc, ...) "
        "(backend model configs: add them to job.configdoc.BACKEND_OPTION_DOCS)")


def test_readme_reference_is_the_generated_text():
    section = configdoc.readme_section((ROOT / "README.md").read_text(encoding="utf-8"))
    assert section is not None, f"README.md has no {configdoc.SECTION!r} section; {FIX}"
    assert section == configdoc.render(), f"README.md's configuration reference is out of date; {FIX}"


def test_config_doc_command_prints_the_reference(capsys):
    assert main(["config", "--doc"]) == 0
    assert capsys.readouterr().out == configdoc.render()


def test_config_doc_rewrites_only_its_section(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nintro\n\n{configdoc.SECTION}\n\nstale\n\n## After\n\nkept\n", encoding="utf-8")
    assert main(["config", "--doc", "--readme", str(readme)]) == 0
    text = readme.read_text(encoding="utf-8")
    assert text == f"# x\n\nintro\n\n{configdoc.render()}\n## After\n\nkept\n"
    assert configdoc.readme_section(text) == configdoc.render()


@pytest.mark.parametrize("backend", ["seggpt-sam", "classical", "proxy"])
def test_every_documented_key_takes_its_documented_default(backend):
    """The reference names real keys and its defaults, read back as YAML, are values the config accepts."""
    values = {"input": "in", "output": "out", "prompts": "prompts", "backend": backend}
    keys = [k for group in configdoc.config_keys().values() for k in group
            if k.default != "required" and k.name not in values
            and (not k.name.startswith("backend_options.") or k.backends == backend)]
    for k in keys:
        _put(values, k.name, yaml.safe_load(k.default))
    cfg = job_config_from_dict(values)
    backend_configs(cfg)  # refuses unknown or bad backend_options
    got = cfg.to_dict()
    for k in keys:
        value = got
        for part in k.name.split("."):
            value = value[part]
        assert configdoc._yaml(value) == k.default, k.name


def test_knob_refuses_a_field_without_doc():
    with pytest.raises(ValueError, match="needs a doc"):
        knob(1)


def test_cited_architecture_notes_exist():
    """Modules cite the README's sections ("README, The method, step 2", "README, Architecture"), which exist; none
    cites the DESIGN.md planning note, which is not part of the project."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    headings = {m.group(1).strip() for m in re.finditer(r"^#{2,3} (.+)$", readme, re.M)}
    assert "Architecture" in headings
    for folder in ("finedetail", "job", "tests"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            assert "DESIGN" not in text or path.name == "test_docs.py", (
                f"{path.relative_to(ROOT)} cites DESIGN, which is not in the project; cite the README's "
                "Architecture section")
            for cited in re.findall(r"(?<![\w-] )README, \"?([A-Z][A-Za-z -]+?)\"?[),;.:]", text):
                assert cited.strip() in headings, f"{path.relative_to(ROOT)} cites README section {cited!r}"


def test_ci_runs_the_readmes_second_command_exactly():
    """The README starts with two commands: the quickstart, then the test command; `.ci/run` ends with that test
    command, character for character (no other code block may come between them)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```[a-z]*\n(.*?)```", readme, flags=re.S)
    assert "job quickstart" in blocks[0], blocks[0]
    test_command = blocks[1].strip()
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()
    assert ci[-1] == test_command, (ci[-1], test_command)
